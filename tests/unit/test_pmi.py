"""The 50-slurm-pmi hook's pure part: which variables and directories a Slurm step's PMI needs inside."""

from pyenroot.runtime import pmi

STEP = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"}


def test_outside_a_step_nothing():
    assert pmi.pmi_setup({"PMIX_SERVER_TMPDIR": "/spool/pmix.7.0"}) is None
    assert pmi.pmi_setup(STEP) is None  # a step without PMI


def test_pmix_variables_and_directories():
    environ = {**STEP, "SLURM_MPI_TYPE": "pmix", "PMIX_SERVER_TMPDIR": "/spool/node1/pmix.7.0/",
               "PMIX_SYSTEM_TMPDIR": "/tmp", "PMIX_RANK": "3", "PMIX_NAMESPACE": "slurm.pmix.7.0",
               "PMIX_SERVER_URI4": "pmix-server.12;tcp4://127.0.0.1:4000",
               "PMIX_SERVER_URI2": "pmix-server.12;usock:///run/pmix/sock", "PMIX_GDS_MODULE": "ds21,hash",
               "PMIX_PTL_MODULE": "tcp", "HOME": "/home/u"}
    setup = pmi.pmi_setup(environ, app_dir="/tmp/spmix_appdir_1000_7.0")
    assert setup is not None
    assert "PMIX_RANK" not in setup.environ and "HOME" not in setup.environ  # per task / not PMI
    assert setup.environ["PMIX_NAMESPACE"] == "slurm.pmix.7.0"
    assert setup.environ["PMIX_MCA_gds"] == "ds21,hash" and setup.environ["PMIX_MCA_ptl"] == "tcp"
    # PMIX_SYSTEM_TMPDIR (the node's /tmp) is not bound: it would hide the container's own /tmp
    assert setup.directories == ("/spool/node1/pmix.7.0", "/run/pmix", "/tmp/spmix_appdir_1000_7.0")


def test_pmi2_keeps_the_task_fd_and_rank_out():
    environ = {**STEP, "SLURM_MPI_TYPE": "pmi2", "PMI_FD": "11", "PMI_RANK": "1", "PMI_SIZE": "4",
               "PMI_JOBID": "7.0", "PMIX_SERVER_TMPDIR": "/spool/x"}
    setup = pmi.pmi_setup(environ)
    assert setup is not None
    assert setup.environ == {"PMI_SIZE": "4", "PMI_JOBID": "7.0"}
    assert setup.directories == ()


def test_socket_directory_forms():
    assert pmi.socket_directory("pmix-server.1;tcp4://127.0.0.1:5") is None
    assert pmi.socket_directory("pmix-server.1;usock:///var/run/s/pmix-1") == "/var/run/s"
    assert pmi.socket_directory("1234:/tmp/dir/pmix-1234") == "/tmp/dir"
    assert pmi.socket_directory("1234:/pmix-1234") is None  # never the root
    assert pmi.socket_directory("garbage") is None


def test_app_directory():
    assert pmi.app_directory(STEP, 1000) == "/tmp/spmix_appdir_1000_7.0"
    assert pmi.app_directory({**STEP, "SLURM_PMIX_TMPDIR": "/scratch"}, 5) == "/scratch/spmix_appdir_5_7.0"
    assert pmi.app_directory({}, 5) is None
