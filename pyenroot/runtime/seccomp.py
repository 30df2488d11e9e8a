"""The seccomp filter that makes ownership and identity changes succeed without effect in a one-uid namespace.

With only the caller's uid mapped, package managers fail when they chown files to other users or drop
privileges to a service account. Like enroot, the filter answers chown/setuid-family calls with success and
does nothing; setfsuid/setfsgid(-1) (a query) still reaches the kernel. Other ABIs (x32, 32-bit) pass
unfiltered. `filter_program` is pure (bytes of a classic BPF program); `install` loads it through the
syscalls seam.
"""

from __future__ import annotations

import os
import struct

from pyenroot.runtime.syscalls import LinuxSyscalls, Syscalls

# Classic BPF opcodes (linux/filter.h).
BPF_LD_W_ABS = 0x20
BPF_JMP_JEQ_K = 0x15
BPF_JMP_JGE_K = 0x35
BPF_RET_K = 0x06

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000  # | errno; errno 0 makes the call return 0

# Offsets in struct seccomp_data.
_NR = 0
_ARCH = 4
_ARG0_LOW = 16  # little-endian: the low 32 bits of args[0]

X32_SYSCALL_BIT = 0x40000000


# Per architecture: audit arch, syscalls faked to succeed, syscalls faked unless their argument is -1.
ARCHITECTURES: dict[str, tuple[int, dict[str, int], dict[str, int]]] = {
    "x86_64": (0xC000003E, {
        "chown": 92, "fchown": 93, "lchown": 94, "fchownat": 260, "setuid": 105, "setgid": 106,
        "setreuid": 113, "setregid": 114, "setgroups": 116, "setresuid": 117, "setresgid": 119,
    }, {"setfsuid": 122, "setfsgid": 123}),
    "aarch64": (0xC00000B7, {
        "fchownat": 54, "fchown": 55, "setregid": 143, "setgid": 144, "setreuid": 145, "setuid": 146,
        "setresuid": 147, "setresgid": 149, "setgroups": 159,
    }, {"setfsuid": 151, "setfsgid": 152}),
    "ppc64le": (0xC0000015, {
        "chown": 181, "fchown": 95, "lchown": 16, "fchownat": 289, "setuid": 23, "setgid": 46,
        "setreuid": 70, "setregid": 71, "setgroups": 81, "setresuid": 164, "setresgid": 169,
    }, {"setfsuid": 138, "setfsgid": 139}),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def filter_program(machine: str) -> bytes:
    """The BPF program for `machine` (as os.uname().machine spells it)."""
    if machine not in ARCHITECTURES:
        raise ValueError(f"no seccomp filter for architecture {machine}")
    audit_arch, faked, faked_unless_query = ARCHITECTURES[machine]
    fake = _insn(BPF_RET_K, SECCOMP_RET_ERRNO | 0)
    allow = _insn(BPF_RET_K, SECCOMP_RET_ALLOW)
    body: list[bytes] = []
    # Each faked call: "if nr == N: return 0" (jump 0 to the return, else skip it).
    for number in faked.values():
        body += [_insn(BPF_JMP_JEQ_K, number, 0, 1), fake]
    # setfsuid(-1)/setfsgid(-1) ask for the current id: let them through, fake the rest.
    for number in faked_unless_query.values():
        body += [_insn(BPF_JMP_JEQ_K, number, 0, 4), _insn(BPF_LD_W_ABS, _ARG0_LOW),
                 _insn(BPF_JMP_JEQ_K, 0xFFFFFFFF, 0, 1), allow, fake]
    body.append(allow)
    head = [_insn(BPF_LD_W_ABS, _ARCH), _insn(BPF_JMP_JEQ_K, audit_arch, 1, 0), allow,
            _insn(BPF_LD_W_ABS, _NR)]
    if machine == "x86_64":
        head += [_insn(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1), allow]
    return b"".join(head + body)


def install(kernel: Syscalls | None = None, machine: str | None = None) -> None:
    """Load the filter into this process (needs no_new_privs or CAP_SYS_ADMIN; inherited across exec)."""
    (kernel or LinuxSyscalls()).load_seccomp_filter(filter_program(machine or os.uname().machine))
