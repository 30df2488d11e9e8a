"""Starting and joining containers: a start is planned as pure data (plan.py) and carried out by one small
module that talks to the kernel (launcher.py via syscalls.py)."""
