"""The pure part of `exec`: PID, environment and namespace choices."""

from __future__ import annotations

import os
import signal

import pytest

from pyenroot.errors import UsageError
from pyenroot.runtime import attach


def test_parse_pid():
    assert attach.parse_pid("42") == 42
    for bad in ("0", "-1", "abc", "", "4 2"):
        with pytest.raises(UsageError):
            attach.parse_pid(bad)


def test_parse_environ():
    data = b"PATH=/bin\0EMPTY=\0NOEQUALS\0EQ=a=b\0"
    assert attach.parse_environ(data) == {"PATH": "/bin", "EMPTY": "", "EQ": "a=b"}


def test_environment_precedence():
    base = {"PATH": "/bin", "A": "container"}
    env = attach.environment(base, ["A=mine", "FROM_HOST", "UNSET_ON_HOST", "B=x=y"], {"FROM_HOST": "h"})
    assert env == {"PATH": "/bin", "A": "mine", "FROM_HOST": "h", "UNSET_ON_HOST": "", "B": "x=y"}
    for bad in ("1A=x", "A-B=1", "=x", ""):
        with pytest.raises(UsageError):
            attach.environment(base, [bad], {})


def test_namespaces_to_join_skips_shared_and_missing():
    ours = {kind: (4, 100 + i) for i, (kind, _) in enumerate(attach.NAMESPACE_ORDER)}
    theirs = dict(ours, mnt=(4, 1), user=(4, 2), net=(4, 3))
    del theirs["cgroup"]
    assert attach.namespaces_to_join(theirs, ours) == ("user", "mnt", "net")


def test_exit_code():
    assert attach.exit_code(0) == 0
    assert attach.exit_code(7 << 8) == 7
    assert attach.exit_code(signal.SIGTERM) == 128 + signal.SIGTERM
    assert os.WIFSIGNALED(signal.SIGKILL)
