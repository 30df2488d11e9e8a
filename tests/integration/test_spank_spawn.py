"""How the SPANK plugin starts the Python side (spank_plugin/spawn.c), run as root outside Slurm by the
spank_plugin/tests/spawn.c driver: the child is exactly the job user, with the job's groups, and gets
/dev/null, its log and the result pipe on fds 0-3 even when fds 0-2 were closed (slurmd's epilog)."""

import subprocess
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "spank_plugin"
EXTRA_GROUP = 4242  # a group the account is not in: only the plugin's setgroups can give it


@pytest.fixture(scope="module")
def driver(tmp_path_factory, host_setup) -> Path:
    build = tmp_path_factory.mktemp("spawn")
    done = subprocess.run(["make", "-s", "-C", str(PLUGIN), "drivers", f"TEST_BUILD={build}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return build / "spawn"


def spawn(driver: Path, account, *, closed: bool) -> list[str]:
    ids = [str(account.pw_uid), str(account.pw_gid), str(account.pw_gid), str(EXTRA_GROUP)]
    done = subprocess.run([str(driver), *(["closed"] if closed else []), *ids], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed-0-2"])
def test_child_is_the_job_user_with_fds_0_to_3(driver, account, closed):
    lines = spawn(driver, account, closed=closed)
    uid, gid = account.pw_uid, account.pw_gid
    assert f"log pyenroot: uid={uid} gid={gid} groups={gid} {EXTRA_GROUP}" in lines
    # 0-3 are ours; 4 is the directory the child's shell reads to list them: anything else leaked.
    assert "log pyenroot: fds= 0 1 2 3 4" in lines
    assert "log pyenroot: stdin=[]" in lines
    assert "log pyenroot: result-fd=3" in lines
    assert "log pyenroot: no newline at the end" in lines  # a last result line without its newline
    assert "exit 0" in lines
    assert [line for line in lines if line.startswith("output ")] == ["output to-stdout", "output to-stderr"]
    log_fd, result_fd = (int(f.split("=")[1]) for f in lines[0].split()[1:])
    assert min(log_fd, result_fd) > 3, lines[0]  # moved above the fds the child gets


def test_a_group_list_the_kernel_refuses_stops_the_child(driver, account):
    """setgroups failing must not fall back to running without the job's groups."""
    done = subprocess.run([str(driver), str(account.pw_uid), str(account.pw_gid), "4294967295"],
                          capture_output=True, text=True)
    lines = done.stderr.splitlines()
    assert "exit 126" in lines
    assert "output pyenroot plugin: couldn't set the job's groups: Invalid argument" in lines
    assert not [line for line in lines if line.startswith("log ")]  # nothing ran
