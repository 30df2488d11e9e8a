"""A recording `Syscalls` for unit tests: every kernel call a start makes is appended to `calls` instead of
made, a chosen call can fail with an errno, and the exec ends the start by raising `Executed`."""

from __future__ import annotations

import os
from pathlib import Path

from pyenroot.runtime.syscalls import Syscalls


class Executed(Exception):
    """Not an error: where a real start becomes the container's program."""

    def __init__(self, path: str, argv: list[str], env: dict[str, str]):
        super().__init__(path)
        self.path, self.argv, self.env = path, argv, env


class RecordingSyscalls(Syscalls):
    """`fail`: method name -> errno it raises. `child_log`: where calls made in a forked child (a hook's
    process before it executes) are written, one name a line, since the child's memory is not ours."""

    def __init__(self, *, fail: dict[str, int] | None = None, mount_flags: int = 0, child_log: Path | None = None):
        self.calls: list[tuple] = []
        self.fail = fail or {}
        self.current_mount_flags = mount_flags
        self.child_log = child_log
        self._pid = os.getpid()

    def _record(self, name: str, *args) -> None:
        if os.getpid() != self._pid:
            if self.child_log is not None:
                with open(self.child_log, "a") as log:
                    log.write(name + "\n")
        else:
            self.calls.append((name, *args))
        if name in self.fail:
            raise OSError(self.fail[name], f"{name}: {os.strerror(self.fail[name])}")

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def unshare(self, flags):
        self._record("unshare", flags)

    def enter_user_namespace(self, flags, uid_map, gid_map):
        self._record("enter_user_namespace", flags, uid_map, gid_map)

    def bring_loopback_up(self):
        self._record("bring_loopback_up")

    def mount(self, source, target, fstype=None, flags=0, data=None):
        self._record("mount", source, str(target), fstype, flags, data)

    def umount2(self, target, flags=0):
        self._record("umount2", str(target), flags)

    def mount_flags(self, path):
        return self.current_mount_flags

    def pivot_root(self, new_root, put_old):
        self._record("pivot_root", str(new_root), str(put_old))

    def chdir(self, path):
        self._record("chdir", str(path))

    def chroot(self, path):
        self._record("chroot", str(path))

    def set_no_new_privs(self):
        self._record("set_no_new_privs")

    def set_parent_death_signal(self, signal_number):
        self._record("set_parent_death_signal", signal_number)

    def set_process_name(self, name):
        self._record("set_process_name", name)

    def load_seccomp_filter(self, program):
        self._record("load_seccomp_filter", program)

    def keep_capabilities_across_exec(self):
        self._record("keep_capabilities_across_exec")

    def close_fds_except(self, keep):
        self._record("close_fds_except", keep)

    def reset_signals(self):
        self._record("reset_signals")

    def execve(self, path, argv, env):
        self._record("execve", path, argv)
        raise Executed(path, argv, env)

    def execvpe(self, file, argv, env):
        self._record("execvpe", file, argv)
        raise Executed(file, argv, env)


def mounting_hook(ctx) -> None:
    """A built-in style hook: one mount at once, one for after the hooks."""
    ctx.mount_now("/host/now /now none bind,x-create=dir 0 0")
    ctx.add_mount("/host/after /after none bind,x-create=dir 0 0")
