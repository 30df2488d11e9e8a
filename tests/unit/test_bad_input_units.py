"""Bad input at the unit level: one-line errors for what slipped through before, and no leftovers."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import types

import pytest
import requests

from pyenroot import cli, tools
from pyenroot.config import Settings
from pyenroot.containers import create, export
from pyenroot.errors import (
    ConfigError,
    ImageError,
    RegistryError,
    RuntimeStartError,
    StorageError,
    UsageError,
)
from pyenroot.registry import auth, endpoints, session
from pyenroot.registry.uri import is_registry_host, parse_uri
from pyenroot.runtime import assemble, attach, imagemount

# ------------------------------------------------------------------------------------ the CLI's last line of defence


def _verb_raising(monkeypatch, tmp_path, exc: BaseException) -> None:
    """Make `pyenroot version` raise `exc` from its run()."""
    def run(args, settings):
        raise exc

    fake = types.SimpleNamespace(add_arguments=lambda parser: None, run=run)
    monkeypatch.setattr(cli, "command_module", lambda verb: fake)
    monkeypatch.setenv("ENROOT_SYSCONF_PATH", str(tmp_path))  # no settings file from the host
    monkeypatch.delenv("PYENROOT_DEBUG", raising=False)


def _stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_unexpected_os_error_is_one_line(monkeypatch, tmp_path, capsys):
    _verb_raising(monkeypatch, tmp_path, PermissionError(13, "Permission denied", "/some/file"))
    assert cli.main(["version"]) == 1
    lines = _stderr_lines(capsys)
    assert lines[0] == "pyenroot: error: Permission denied: /some/file (os-error)"
    assert len(lines) == 2 and lines[1].startswith("hint: ")


def test_unexpected_exception_is_one_line(monkeypatch, tmp_path, capsys):
    _verb_raising(monkeypatch, tmp_path, ValueError("bad value"))
    assert cli.main(["version"]) == 1
    lines = _stderr_lines(capsys)
    assert lines[0] == "pyenroot: error: unexpected ValueError: bad value (bug)"
    assert len(lines) == 2 and "--debug" in lines[1]


def test_debug_shows_the_traceback(monkeypatch, tmp_path):
    _verb_raising(monkeypatch, tmp_path, ValueError("bad value"))
    with pytest.raises(ValueError):
        cli.main(["--debug", "version"])


def test_multi_line_messages_are_joined(monkeypatch, tmp_path, capsys):
    _verb_raising(monkeypatch, tmp_path, ImageError("x is not valid:\n- method gz: no\n- method xz: no\n",
                                                    hint="one\ntwo"))
    assert cli.main(["version"]) == 1
    assert _stderr_lines(capsys) == ["pyenroot: error: x is not valid:; - method gz: no; - method xz: no (image)",
                                     "hint: one; two"]


def test_usage_errors_keep_exit_code_2(monkeypatch, tmp_path, capsys):
    _verb_raising(monkeypatch, tmp_path, UsageError("bad"))
    assert cli.main(["version"]) == 2
    assert _stderr_lines(capsys) == ["pyenroot: error: bad (usage)"]


def _fake_verb(monkeypatch, tmp_path, run) -> None:
    monkeypatch.setattr(cli, "command_module", lambda verb: types.SimpleNamespace(
        add_arguments=lambda parser: None, run=run))
    monkeypatch.setenv("ENROOT_SYSCONF_PATH", str(tmp_path))


def test_sigterm_unwinds_writing_verbs(monkeypatch, tmp_path):
    cleaned = []

    def run(args, settings):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # the handler raises out of here
        finally:
            cleaned.append(True)
        return 0

    _fake_verb(monkeypatch, tmp_path, run)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["create"]) == 128 + signal.SIGTERM
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before  # restored for whoever called main()


def test_sigterm_is_left_alone_for_other_verbs(monkeypatch, tmp_path):
    seen = []
    _fake_verb(monkeypatch, tmp_path, lambda args, settings: seen.append(signal.getsignal(signal.SIGTERM)) or 0)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["start"]) == 0
    assert seen == [before]


# ------------------------------------------------------------------------------------ tools that fail


def _tool_output(monkeypatch, returncode: int, stderr: str) -> None:
    def run(argv, **kwargs):
        return subprocess.CompletedProcess(argv, returncode, "", stderr)

    monkeypatch.setattr(tools, "run", run)


def test_full_disk_is_named(monkeypatch):
    _tool_output(monkeypatch, 1, "Write on output file failed because No space left on device\n"
                                 "FATAL ERROR: writer: failed to write file /data/x/bin/busybox\n")
    with pytest.raises(StorageError) as info:
        tools.check(["unsquashfs", "x"], "unpack x.sqsh")
    assert info.value.message == "unpack x.sqsh: unsquashfs failed: no space left on device"
    assert info.value.hint


def test_other_tool_failures_show_the_last_line(monkeypatch):
    _tool_output(monkeypatch, 1, "some detail\nFATAL ERROR: File system corruption detected\n")
    with pytest.raises(ImageError, match=r"^unpack x: unsquashfs failed: FATAL ERROR: File system corruption"):
        tools.check(["unsquashfs", "x"], "unpack x")


def test_unpack_in_a_user_namespace_skips_device_nodes_and_unmapped_owners(monkeypatch):
    """What unsquashfs says as root of a user namespace (a writable .sqsh start) for what it may not make."""
    _tool_output(monkeypatch, 2, "create_inode: failed to create character device root/dev/null, because "
                                 "Operation not permitted\nset_attributes: failed to change uid and gids on "
                                 "root/etc/gshadow, because Invalid argument\n")
    tools.check(["unsquashfs", "x"], "unpack x", accept=create.only_device_nodes_skipped)
    _tool_output(monkeypatch, 2, "write_file: failed to create file root/etc/x, because Permission denied\n")
    with pytest.raises(ImageError, match="Permission denied"):
        tools.check(["unsquashfs", "x"], "unpack x", accept=create.only_device_nodes_skipped)


def test_direct_start_out_of_memory_names_the_way_out(monkeypatch, tmp_path):
    target = tmp_path / "rootfs"
    target.mkdir()
    monkeypatch.setattr(imagemount, "find_program", lambda name: f"/usr/bin/{name}" if name == "unsquashfs" else None)
    _tool_output(monkeypatch, 1, "Write on output file failed because No space left on device\n"
                                 "FATAL ERROR: writer: failed to write file root/usr/lib/big\n")
    with pytest.raises(RuntimeStartError) as info:
        imagemount._unpack(tmp_path / "big.sqsh", target, 1)
    assert info.value.message.endswith("no space left on device (the image is unpacked into memory)")
    assert "PYENROOT_SQSH_WRITABLE=overlay" in info.value.hint


def test_direct_start_unpack_error_is_one_line(monkeypatch, tmp_path):
    target = tmp_path / "rootfs"
    target.mkdir()
    monkeypatch.setattr(imagemount, "find_program", lambda name: f"/usr/bin/{name}")
    _tool_output(monkeypatch, 1, "Read on filesystem failed because EOF\nread_id_table: failed\n"
                                 "FATAL ERROR: File system corruption detected\n")
    with pytest.raises(ImageError) as info:
        imagemount._unpack(tmp_path / "broken.sqsh", target, 1)
    assert "\n" not in info.value.message
    assert info.value.message.endswith(": FATAL ERROR: File system corruption detected")


# ------------------------------------------------------------------------------------ start's files


def test_unreadable_rc_script(monkeypatch, tmp_path):
    script = tmp_path / "rc"
    script.write_text("exec true\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(script))

    monkeypatch.setattr(assemble, "open", denied, raising=False)
    with pytest.raises(UsageError, match=r"^cannot read rc script .*: Permission denied$"):
        assemble._read_rc(str(script))


def test_start_target_that_is_not_an_image(monkeypatch, tmp_path):
    settings = types.SimpleNamespace()
    directory = tmp_path / "dir.sqsh"
    directory.mkdir()
    with pytest.raises(ImageError, match="is not a regular file"):
        assemble.resolve_target(settings, str(directory))
    with pytest.raises(ImageError, match="no such image file"):
        assemble.resolve_target(settings, str(tmp_path / "missing.sqsh"))
    text = tmp_path / "text.sqsh"
    text.write_text("hello\n")
    with pytest.raises(ImageError, match="not a squashfs image"):
        assemble.resolve_target(settings, str(text))
    monkeypatch.setattr(assemble.os, "access", lambda path, mode: False)
    with pytest.raises(ImageError, match=r"cannot read image .*: permission denied"):
        assemble.resolve_target(settings, str(text))


# ------------------------------------------------------------------------------------ exec


def test_exec_into_a_process_outside_any_container():
    # This very process shares our namespaces: there is no container to join.
    with pytest.raises(RuntimeStartError, match=f"process {os.getpid()} is not in a container"):
        attach.inspect(os.getpid())


# ------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("uri", ["docker://127.0.0.1:99999#a/b", "docker://127.0.0.1:0#a/b", "docker://a..b/c",
                                 "docker://a b#c", "docker://reg#../../etc/passwd", "docker://reg#a/./b",
                                 "docker://-x/y", "docker://x_/y"])
def test_image_references_that_fit_no_url(uri):
    with pytest.raises(UsageError, match="invalid image reference"):
        parse_uri(uri)


def test_registry_hosts():
    for good in ("reg", "127.0.0.1:5000", "my-reg.example.com:443", "[::1]:5000", "nvcr.io"):
        assert is_registry_host(good), good
    for bad in ("a..b", "a.b.", "-a", "[bad", "h:65536", "h:0", "h:", "a b", "x" * 64 + ".io"):
        assert not is_registry_host(bad), bad
    with pytest.raises(ConfigError, match="is not a HOST"):
        endpoints.parse_mirrors("reg=mirror..io")


def test_unusable_url_is_a_registry_error(tmp_path):
    from tests.unit.test_client import FakeRegistry, source_for

    fake = FakeRegistry()
    fake.faults.append(lambda request: requests.exceptions.InvalidProxyURL("Please check proxy URL. It is malformed"))
    settings = Settings({"ENROOT_CACHE_PATH": str(tmp_path / "cache"), "ENROOT_CONFIG_PATH": str(tmp_path),
                         "ENROOT_TRANSFER_RETRIES": "3", "ENROOT_CONNECT_TIMEOUT": "30"})
    source, _, sleeps = source_for(fake, settings)
    with pytest.raises(RegistryError) as info:
        source.manifest_digest(None)
    assert info.value.reference == "registry-url" and "proxy" in info.value.hint
    assert sleeps == []  # not retried: it cannot get better


def test_missing_ca_bundle_message():
    with pytest.raises(ConfigError) as info:
        session.make_ssl_context("/no/such/ca.pem")
    assert info.value.message == "PYENROOT_CA_BUNDLE: cannot load /no/such/ca.pem: No such file or directory"


def test_settings_directory_we_may_not_look_into(monkeypatch, tmp_path):
    from pyenroot import config

    real_stat = config.Path.stat

    def stat(path, *args, **kwargs):
        if path.name == "enroot.conf":
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(config.Path, "stat", stat)
    with pytest.raises(ConfigError, match=r"^cannot read .*enroot\.conf: Permission denied$"):
        config.load_settings({"ENROOT_SYSCONF_PATH": str(tmp_path), "HOME": str(tmp_path)}, uid=12345)


def test_public_credentials_are_never_read(monkeypatch, tmp_path):
    creds = tmp_path / ".credentials"
    creds.write_text("machine r.io login me password secret\n")
    creds.chmod(0o644)
    read = []
    monkeypatch.setattr(auth, "_read", lambda path: read.append(path) or None)
    with pytest.raises(RegistryError, match="accessible by group or others"):
        auth.find_credentials("r.io", None, tmp_path, {})
    assert creds not in read
    creds.write_text("")  # an empty file holds no secret: nothing to refuse
    assert auth.find_credentials("r.io", None, tmp_path, {}) is None


# ------------------------------------------------------------------------------------ export leftovers


def test_stale_export_temp_files_are_cleaned(tmp_path):
    out = tmp_path / "box.sqsh"
    stale = tmp_path / ".box.sqsh.123-0123abcd.tmp"
    live = tmp_path / ".box.sqsh.456-89abcdef.tmp"
    orphan_excludes = tmp_path / ".box.sqsh.789-deadbeef.tmp.excludes"
    unrelated = [tmp_path / ".other.sqsh.123-0123abcd.tmp", tmp_path / ".box.sqsh.notours.tmp", out]
    for path in (stale, live, orphan_excludes, *unrelated):
        path.write_text("x")
    for path in (stale, live):
        path.with_name(path.name + ".excludes").write_text("dev/null\n")
    holder = os.open(live, os.O_RDONLY)  # an export in progress holds this lock
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        removed = export.clean_stale_exports(out)
    finally:
        os.close(holder)
    assert sorted(removed) == sorted([stale.name, stale.name + ".excludes", orphan_excludes.name])
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, live.name + ".excludes", *(p.name for p in unrelated)])


def test_stale_export_cleaning_tolerates_a_missing_directory(tmp_path):
    assert export.clean_stale_exports(tmp_path / "missing" / "box.sqsh") == []


@pytest.mark.parametrize(("cls", "reference", "code"), [
    (ConfigError, "config", 1), (ImageError, "image", 1), (RegistryError, "registry", 1),
    (RuntimeStartError, "start", 1), (StorageError, "storage", 1), (UsageError, "usage", 2)])
def test_every_error_class_renders_as_one_line_with_its_exit_code(cls, reference, code, capsys):
    # What the CLI does with each class used above: a multi-line message still becomes one line, the hint another.
    def fail() -> int:
        raise cls("first part\nsecond part", hint="try\nthis")

    assert cli.run_guarded(fail, lambda: False) == code
    assert capsys.readouterr().err.splitlines() == [
        f"pyenroot: error: first part; second part ({reference})", "hint: try; this"]
