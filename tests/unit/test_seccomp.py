"""The seccomp program is generated as bytes; check its shape and run it through a tiny BPF interpreter."""

import struct

import pytest

from pyenroot.runtime import seccomp


def run_bpf(program: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """Evaluate the classic-BPF subset the filter uses against one seccomp_data record."""
    data = struct.pack("=iIQQQQQQQ", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == seccomp.BPF_LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == seccomp.BPF_JMP_JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == seccomp.BPF_JMP_JGE_K:
            pc += 1 + (jt if acc >= k else jf)
        elif code == seccomp.BPF_RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


X86 = seccomp.ARCHITECTURES["x86_64"][0]
FAKE = seccomp.SECCOMP_RET_ERRNO
ALLOW = seccomp.SECCOMP_RET_ALLOW


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHITECTURES))
def test_program_shape(machine):
    program = seccomp.filter_program(machine)
    assert len(program) % 8 == 0
    assert len(program) // 8 < 4096


@pytest.mark.parametrize("name", ["chown", "fchown", "lchown", "fchownat", "setuid", "setgid", "setgroups",
                                  "setresuid", "setresgid", "setreuid", "setregid"])
def test_ownership_calls_are_faked(name):
    nr = seccomp.ARCHITECTURES["x86_64"][1][name]
    assert run_bpf(seccomp.filter_program("x86_64"), nr, X86) == FAKE


def test_other_calls_pass():
    program = seccomp.filter_program("x86_64")
    for nr in (0, 1, 2, 59, 165):  # read, write, open, execve, mount
        assert run_bpf(program, nr, X86) == ALLOW


def test_setfsuid_query_passes():
    program = seccomp.filter_program("x86_64")
    assert run_bpf(program, 122, X86, arg0=0xFFFFFFFF) == ALLOW
    assert run_bpf(program, 122, X86, arg0=0) == FAKE
    assert run_bpf(program, 123, X86, arg0=1000) == FAKE


def test_foreign_abis_unfiltered():
    program = seccomp.filter_program("x86_64")
    assert run_bpf(program, 92, 0x40000003) == ALLOW  # i386 audit arch
    assert run_bpf(program, 92 | seccomp.X32_SYSCALL_BIT, X86) == ALLOW


def test_aarch64_numbers():
    arch = seccomp.ARCHITECTURES["aarch64"][0]
    program = seccomp.filter_program("aarch64")
    assert run_bpf(program, 55, arch) == FAKE  # fchown
    assert run_bpf(program, 63, arch) == ALLOW  # read


def test_unknown_architecture():
    with pytest.raises(ValueError):
        seccomp.filter_program("mips")
