"""Starting and joining containers: a start is planned as pure data (plan.py) and carried out by one small
module (launcher.py) whose every kernel call goes through the syscalls seam (syscalls.Syscalls)."""
