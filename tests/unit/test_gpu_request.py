"""NVIDIA_* variables -> GPU request: devices, capabilities, requirements, precedence, Slurm allocation."""

import pytest

from pyenroot.gpu.request import (
    DEFAULT_CAPABILITIES,
    Facts,
    GpuError,
    from_environ,
    parse_capabilities,
    parse_devices,
    parse_requirement,
    requirement_holds,
    slurm_allocation,
    unmet_requirements,
    version_key,
)


@pytest.mark.parametrize("value", ["", "void", "  void "])
def test_unset_or_void_asks_for_nothing(value):
    assert parse_devices(value) is None
    assert from_environ({"NVIDIA_VISIBLE_DEVICES": value}, {}) is None
    assert from_environ({}, {}) is None


def test_all_none_and_lists():
    assert parse_devices("all") == (True, ())
    assert parse_devices("none") == (False, ())
    assert parse_devices("0, 2,GPU-1234abcd-00") == (False, ("0", "2", "GPU-1234abcd-00"))
    assert parse_devices("MIG-aaaa-bbbb,1:0") == (False, ("MIG-aaaa-bbbb", "1:0"))
    assert parse_devices("MIG-GPU-1234/1/0") == (False, ("MIG-GPU-1234/1/0",))


@pytest.mark.parametrize("value", ["gpu0", "0,all", "1;2", "-1"])
def test_invalid_device_entries_are_named(value):
    with pytest.raises(GpuError) as error:
        parse_devices(value)
    assert "NVIDIA_VISIBLE_DEVICES" in error.value.message


def test_capabilities_default_all_and_unknown():
    assert parse_capabilities(None) == DEFAULT_CAPABILITIES == {"utility", "compute"}
    assert parse_capabilities("") == DEFAULT_CAPABILITIES
    assert parse_capabilities("video, compute") == {"video", "compute"}
    assert parse_capabilities("all") == {"compute", "compat32", "display", "graphics", "utility", "video"}
    with pytest.raises(GpuError, match="'ngx'"):
        parse_capabilities("compute,ngx")


def test_host_environment_beats_the_image():
    request = from_environ({"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "video"},
                           {"NVIDIA_VISIBLE_DEVICES": "1", "NVIDIA_DRIVER_CAPABILITIES": ""})
    assert request.selectors == ("1",) and not request.all_devices and request.explicit
    assert request.capabilities == {"video"}  # an empty host value does not override
    assert from_environ({"NVIDIA_VISIBLE_DEVICES": "all"}, {"NVIDIA_VISIBLE_DEVICES": "void"}) is None


def test_requirements_collected_and_disabled():
    env = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_REQUIRE_CUDA": "cuda>=12.0 brand=tesla,driver>=535",
           "NVIDIA_REQUIRE_ARCH": "arch>=8.0"}
    request = from_environ(env, {})
    assert [r.variable for r in request.requirements] == ["NVIDIA_REQUIRE_ARCH", "NVIDIA_REQUIRE_CUDA"]
    assert from_environ({**env, "NVIDIA_DISABLE_REQUIRE": "1"}, {}).requirements == ()
    assert len(from_environ({**env, "NVIDIA_DISABLE_REQUIRE": "false"}, {}).requirements) == 2


def test_requirement_alternatives_and_conjunctions():
    requirement = parse_requirement("NVIDIA_REQUIRE_CUDA", "cuda>=12.4 brand=tesla,driver>=535,driver<536")
    assert len(requirement.alternatives) == 2 and len(requirement.alternatives[1]) == 3
    assert requirement_holds(requirement, Facts(cuda="12.4", driver="550.54.15"))
    assert not requirement_holds(requirement, Facts(cuda="12.2", driver="535.104.05"))
    assert requirement_holds(requirement, Facts(cuda="12.2", driver="535.104.05", brands=("tesla",)))
    assert not requirement_holds(requirement, Facts(cuda="12.2", driver="535.104.05", brands=("tesla", "geforce")))


def test_requirement_operators_and_unknown_facts():
    facts = Facts(cuda="12.2", driver="535.104.05", archs=("9.0",))
    for text, expected in [("cuda=12.2", True), ("cuda==12.2.0", True), ("cuda!=12.2", False), ("cuda<12.10", True),
                           ("driver>535.54", True), ("driver<=535.104.05", True), ("arch>=8.0", True),
                           ("arch<9.0", False), ("brand=tesla", False)]:
        assert requirement_holds(parse_requirement("NVIDIA_REQUIRE_X", text), facts) is expected, text
    unknown = parse_requirement("NVIDIA_REQUIRE_CUDA", "cuda>=11.0")
    assert unmet_requirements((unknown,), Facts(cuda=None, driver="535")) == [unknown]


def test_invalid_constraints_are_named():
    with pytest.raises(GpuError, match="unknown key 'os'"):
        parse_requirement("NVIDIA_REQUIRE_OS", "os=linux")
    with pytest.raises(GpuError, match="'cuda~12'"):
        parse_requirement("NVIDIA_REQUIRE_CUDA", "cuda~12")


def test_version_key_numeric():
    assert version_key("12.10") > version_key("12.9")
    assert version_key("535.104.05") == (535, 104, 5)


def test_slurm_allocation():
    assert slurm_allocation({"SLURM_JOB_GPUS": "0,1"}) is None  # not in a job
    assert slurm_allocation({"SLURM_JOB_ID": "7"}) is None
    assert slurm_allocation({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "2,3"}) == ("2", "3")
    assert slurm_allocation({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "2,3", "SLURM_STEP_GPUS": "3"}) == ("3",)
    assert slurm_allocation({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "GPU-abc"}) == ("GPU-abc",)
    request = from_environ({"NVIDIA_VISIBLE_DEVICES": "all"}, {"SLURM_JOB_ID": "7", "SLURM_STEP_GPUS": "1"})
    assert request.allocated == ("1",)
