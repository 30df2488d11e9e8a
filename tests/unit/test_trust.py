"""trust.py: directories and files are trusted by owner and mode (lstat), never by their names."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyenroot import trust
from pyenroot.slurm import reporter, state, step

ME, OTHER = 1000, 54321  # OTHER: a uid no account has


def fake_stat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, uid, 0, 0, 0, 0))


@pytest.mark.parametrize(("mode", "uid", "problem"), [
    (stat.S_IFDIR | 0o700, ME, None),
    (stat.S_IFDIR | 0o755, ME, None),
    (stat.S_IFDIR | 0o700, OTHER, "belongs to"),
    (stat.S_IFDIR | 0o777, ME, "writable by group or others (mode 0777"),
    (stat.S_IFDIR | 0o1777, ME, "writable by group or others"),
    (stat.S_IFDIR | 0o770, ME, "writable by group or others"),
    (stat.S_IFLNK | 0o777, ME, "symbolic link"),
    (stat.S_IFREG | 0o600, ME, "not a directory"),
])
def test_private_dir_problems(mode, uid, problem):
    found = trust.private_problem(fake_stat(mode, uid), "dir", {ME})
    assert found == problem if problem is None else problem in found


@pytest.mark.parametrize(("mode", "uid", "ok"), [
    (stat.S_IFDIR | 0o755, 0, True),
    (stat.S_IFDIR | 0o1777, 0, True),  # /tmp: sticky, so others cannot replace what is ours
    (stat.S_IFDIR | 0o777, 0, False),
    (stat.S_IFDIR | 0o775, ME, False),
    (stat.S_IFDIR | 0o755, OTHER, False),
])
def test_ancestor_problems(mode, uid, ok):
    assert (trust.ancestor_problem(fake_stat(mode, uid), {ME, 0}) is None) == ok


def test_private_dir_is_made_0700_with_its_parents(tmp_path):
    made = trust.private_dir(tmp_path / "run" / "enroot", "the runtime directory")
    for path in (made, made.parent):
        assert stat.S_IMODE(path.lstat().st_mode) == 0o700
    assert trust.private_dir(made, "the runtime directory") == made  # existing and fine: kept


def test_planted_or_open_directories_are_refused(tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir()
    os.chown(planted, OTHER, OTHER)
    with pytest.raises(trust.UntrustedPathError, match=f"{planted} belongs to uid {OTHER}"):
        trust.check_private_dir(planted, "the runtime directory")
    with pytest.raises(trust.UntrustedPathError, match=f"{planted} above it belongs to uid {OTHER}"):
        trust.private_dir(planted / "enroot", "the runtime directory")
    assert list(planted.iterdir()) == []  # nothing made inside someone else's directory
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(trust.UntrustedPathError, match="symbolic link"):
        trust.check_private_dir(link, "the runtime directory")
    (tmp_path / "open").mkdir(mode=0o700)
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(trust.UntrustedPathError, match="writable by group or others"):
        trust.private_dir(tmp_path / "open" / "enroot", "the runtime directory")


def test_untrusted_files_and_configured_owners(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    mine, theirs = shared / "mine", shared / "theirs"
    mine.write_text("x")
    theirs.write_text("x")
    os.chown(theirs, OTHER, OTHER)
    assert trust.untrusted(mine, "file") is None
    assert "belongs to uid 54321" in trust.untrusted(theirs, "file")
    assert trust.untrusted(theirs, "file", owners={OTHER}) is None
    mine.chmod(0o666)
    assert "writable by group or others" in trust.untrusted(mine, "file")
    assert trust.untrusted(shared, "dir") is None  # sticky
    shared.chmod(0o777)
    assert "writable by group or others" in trust.untrusted(shared, "dir")
    assert "No such file" in trust.untrusted(shared / "missing", "file")


def test_uids_of_names_and_numbers():
    assert trust.uids_of("root, 1234 nosuchuser-xyz") == frozenset({0, 1234})
    assert trust.uids_of("") == frozenset()


def test_step_runtime_directory_must_be_private(tmp_path):
    runtime = tmp_path / "run"
    mine = runtime / str(os.getuid())
    mine.mkdir(parents=True)
    assert state.private_runtime(str(runtime)) == mine
    mine.chmod(0o777)
    with pytest.raises(trust.UntrustedPathError, match="the step's runtime directory"):
        state.private_runtime(str(runtime))
    mine.chmod(0o700)
    os.chown(mine, OTHER, OTHER)
    with pytest.raises(trust.UntrustedPathError, match="belongs to"):
        step.epilog(1, str(runtime), {}, reporter.Reporter(None))
    assert state.private_runtime(str(tmp_path / "missing")) == Path(tmp_path / "missing" / str(os.getuid()))
