"""/etc/rc, /etc/environment, /etc/fstab from an image config."""

from __future__ import annotations

import subprocess

import pytest

from pyenroot.image import imagefiles


def config(**inner):
    return {"architecture": "amd64", "config": inner}


@pytest.mark.parametrize("word", ["plain", "a b", "it's", 'say "hi"', "$HOME", "`id`", "back\\slash", "*", "",
                                  "new\nline", "'", "$(rm -rf /)"])
def test_shell_quote_round_trips(word):
    out = subprocess.run(["sh", "-c", f"printf '%s' {imagefiles.shell_quote(word)}"], capture_output=True,
                         text=True, check=True).stdout
    assert out == word


def test_rc_entrypoint_and_cmd():
    rc = imagefiles.render_rc(config(Entrypoint=["/entry", "a b"], Cmd=["--flag", "$X"], WorkingDir="/w d"),
                              "docker://r#i:t")
    assert rc.startswith("# enroot-provenance: docker://r#i:t\n")
    assert "exec '/entry' 'a b' \"$@\"" in rc
    assert "exec '/entry' 'a b' '--flag' '$X'" in rc
    assert "cd '/w d' && unset OLDPWD || exit 1" in rc
    assert ". /etc/rc.local" in rc


def test_rc_only_cmd_and_nothing():
    rc = imagefiles.render_rc(config(Cmd=["python3"]), "x")
    assert 'exec "$@"' in rc and "exec 'python3'" in rc
    rc = imagefiles.render_rc(config(), "x")
    assert "exec '/bin/sh'" in rc and "cd '/'" in rc


def test_rc_string_cmd_and_labels():
    rc = imagefiles.render_rc(config(Cmd="echo hi", Labels={"b": "two\nlines", "a": "1"}), "x")
    assert "exec 'echo hi'" in rc
    assert "# a 1\n# b two lines\n" in rc


def test_rc_runs(tmp_path):
    rc = tmp_path / "rc"
    rc.write_text(imagefiles.render_rc(config(Entrypoint=["printf", "%s|"], Cmd=["a b", "$c"]), "x"))
    assert subprocess.run(["sh", str(rc)], capture_output=True, text=True).stdout == "a b|$c|"
    assert subprocess.run(["sh", str(rc), "x", "y z"], capture_output=True, text=True).stdout == "x|y z|"


def test_environment():
    text, skipped = imagefiles.render_environment(config(Env=["PATH=/bin", "A=b c", "BAD=x\ny", "NOEQ"]))
    assert text == "PATH=/bin\nA=b c\n"
    assert skipped == ["BAD", "NOEQ"]


def test_fstab():
    fstab = imagefiles.render_fstab(config(Volumes={"/data": {}, "/var/lib/x/": {}, "/with space": {}}))
    assert fstab == ("${ENROOT_ROOTFS}/data /data none x-create=dir,bind,rw,nosuid,nodev\n"
                     "${ENROOT_ROOTFS}/var/lib/x /var/lib/x none x-create=dir,bind,rw,nosuid,nodev\n")
    assert imagefiles.render_fstab(config()) == ""


def test_generated_files():
    files, warnings = imagefiles.generated_files(config(Env=["A=1"]), "docker://x#y:z")
    assert set(files) == {"etc/rc", "etc/rc.local", "etc/environment", "etc/fstab"}
    assert files["etc/environment"] == b"A=1\n" and warnings == []


def test_workdir_and_arch_warning():
    assert imagefiles.workdir_of(config(WorkingDir="/app")) == "/app"
    assert imagefiles.workdir_of(config(WorkingDir="/")) is None
    assert imagefiles.architecture_warning({"architecture": "arm64"}, "amd64")
    assert imagefiles.architecture_warning({"architecture": "amd64"}, "amd64") is None
