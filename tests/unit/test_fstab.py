"""enroot's fstab dialect: omitted fields, escapes, substitution, pass numbers and the x- options."""

import pytest

from pyenroot.errors import ConfigError, UsageError
from pyenroot.runtime import flags, fstab, plan


def one(line: str) -> fstab.FstabEntry:
    entry = fstab.parse_line(line, "test:1")
    assert entry is not None
    return entry


def test_full_line():
    entry = one("/data /mnt/data none rbind,ro 0 -1")
    assert (entry.source, entry.target, entry.fstype, entry.options, entry.passno) == (
        "/data", "/mnt/data", "none", ("rbind", "ro"), -1)


@pytest.mark.parametrize(("line", "expected"), [
    ("/data", ("/data", "/data", "none", ("rbind", "x-create=auto"))),
    ("/data /mnt", ("/data", "/mnt", "none", ("rbind", "x-create=auto"))),
    ("/data ro,bind", ("/data", "/data", "none", ("ro", "bind"))),
    ("/data /mnt ro,rbind", ("/data", "/mnt", "none", ("ro", "rbind"))),
    ("tmpfs /scratch", ("tmpfs", "/scratch", "tmpfs", ("defaults",))),
    ("/data none none bind", ("/data", "/data", "none", ("bind",))),
])
def test_omitted_fields(line, expected):
    entry = one(line)
    assert (entry.source, entry.target, entry.fstype, entry.options) == expected
    assert entry.passno == 0


def test_comments_and_blank_lines():
    assert fstab.parse("# comment\n\n   \n/a /b none bind\n") == [
        fstab.FstabEntry("/a", "/b", "none", ("bind",), 0, "fstab:4")]


def test_octal_escapes():
    entry = one(r"/my\040data /mnt/with\040space none bind")
    assert entry.source == "/my data"
    assert entry.target == "/mnt/with space"
    assert fstab.unescape(fstab.escape("/a b\\c")) == "/a b\\c"


def test_substitution_only_braced():
    text = "${SRC} /mnt/$DST none bind ${UNSET}"
    assert fstab.substitute(text, {"SRC": "/x", "DST": "y"}) == "/x /mnt/$DST none bind "


@pytest.mark.parametrize(("fields", "passno"), [("0 -1", -1), ("-1", -1), ("0 0", 0), ("0 2", 2), ("", 0)])
def test_pass_numbers(fields, passno):
    assert one(f"/a /b none bind {fields}").passno == passno


def test_bad_lines():
    with pytest.raises(ConfigError):
        one("/a /b none bind 0 x")
    with pytest.raises(ConfigError):
        one("/a /b none bind 0 0 extra")
    with pytest.raises(ConfigError):
        one("/a " + "x" * 5000)


def test_cli_form():
    entry = fstab.from_cli("/host/dir:/ctr/dir:none:bind,ro")
    assert (entry.source, entry.target, entry.options) == ("/host/dir", "/ctr/dir", ("bind", "ro"))
    assert fstab.from_cli("/host").target == "/host"
    assert fstab.from_cli("/a\\040b:/c").source == "/a b"


@pytest.mark.parametrize(("spec", "says"), [
    ("", "invalid mount: ''"),
    ("/a b", "blanks need the \\040 escape"),
    (":::", "empty SRC, DST, TYPE, OPTIONS fields"),
    (":/d", "empty SRC field"),
    ("/a::/d", "empty DST field"),
    ("/a:", "empty DST field"),
    ("SRC:/d:none:bind:extra:more", "dump and pass must be numbers"),
    ("a:b:c:d:0:0:g", "more than 6 fields"),
    ("/a:/b:none:x-create=bogus", "x-create must be dir, file or auto"),
    ("/a:/b:none:bind,create=", "create must be dir, file or auto"),
])
def test_cli_form_errors_are_usage_errors(spec, says):
    """Every malformed --mount is a usage error (exit 2) found before anything starts, naming what is wrong."""
    with pytest.raises(UsageError) as info:
        fstab.from_cli(spec)
    assert says in info.value.message
    assert "fstab entry at" not in info.value.message


def test_bad_x_create_in_a_file_is_a_config_error():
    with pytest.raises(ConfigError, match="x-create must be dir, file or auto"):
        one("/a /b none x-create=bogus")


@pytest.mark.parametrize(("text", "target", "options"), [
    ("/tmp/.X11-unix tmp/.X11-unix none bind,create=dir 0 0", "tmp/.X11-unix", ("bind", "create=dir")),
    ("/data mnt/data", "mnt/data", ("rbind", "x-create=auto")),
    ("/data ./data", "./data", ("rbind", "x-create=auto")),
    ("/data ro,x-create=dir", "/data", ("ro", "x-create=dir")),
    ("/data lowerdir=/a", "/data", ("lowerdir=/a",)),
])
def test_relative_targets(text, target, options):
    """The seed's dialect: a target may be relative (taken from the container's root); the second of two
    fields is a target once a `/` comes before any `=`."""
    entry = one(text)
    assert (entry.target, entry.options) == (target, options)


@pytest.mark.parametrize(("spec", "target", "options"), [
    ("/home/u/data:relative/path", "relative/path", ("rbind", "x-create=auto")),
    ("/home/u/data:data", "data", ("rbind", "x-create=auto")),  # one relative component: still a target
    ("/home/u/data:my-data.d", "my-data.d", ("rbind", "x-create=auto")),
    ("/home/u/data:ro,data", "ro,data", ("rbind", "x-create=auto")),  # `data` is no option word
    ("/home/u/data:ro", "/home/u/data", ("ro",)),
    ("/home/u/data:ro,rbind,rslave,nofail", "/home/u/data", ("ro", "rbind", "rslave", "nofail")),
    ("/home/u/data:x-create=dir,bind", "/home/u/data", ("x-create=dir", "bind")),
    ("tmpfs:size=1g", "tmpfs", ("size=1g",)),
    ("tmpfs:scratch", "scratch", ("defaults",)),
    ("/home/u/data:relative/path:none:bind,ro", "relative/path", ("bind", "ro")),
])
def test_cli_relative_targets(spec, target, options):
    """The colon form goes through the one fstab parser: the second of two fields is options only when every
    word of it is an option."""
    entry = fstab.from_cli(spec)
    assert (entry.target, entry.options) == (target, options)


def test_every_option_word_reads_as_options():
    for word in [*fstab.FLAG_OPTIONS, *fstab.PROPAGATION_OPTIONS, *fstab.NOOP_OPTIONS, "x-create=file", "mode=700"]:
        assert fstab.is_options(word), word
    for target in ("data", "mnt/data", "./data", "tmp/.X11-unix", "lowerdir"):
        assert not fstab.is_options(target), target


def test_options_to_mount():
    mount = plan.mount_from_entry(one("/a /b none x-create=file,rbind,ro,nosuid,rslave,nofail,silent 0 -1"))
    assert mount.create == "file"
    assert mount.flags & flags.MS_BIND and mount.flags & flags.MS_REC
    assert mount.remount_flags == flags.MS_RDONLY | flags.MS_NOSUID
    assert mount.propagation == flags.MS_SLAVE | flags.MS_REC
    assert mount.nofail and mount.silent and mount.passno == -1


def test_first_release_create_option():
    assert plan.mount_from_entry(one("/a /b none create=dir,bind")).create == "dir"
    with pytest.raises(ConfigError):
        plan.mount_from_entry(one("/a /b none x-create=socket,bind"))


def test_move_detach_and_data():
    assert plan.mount_from_entry(one("/a /b none x-move")).move
    assert plan.mount_from_entry(one("none /proc none x-detach,nofail")).detach
    mount = plan.mount_from_entry(one("tmpfs /t tmpfs rw,nodev,mode=1777,size=10m,defaults,loud"))
    assert mount.fstype == "tmpfs"
    assert mount.data == "mode=1777,size=10m"
    assert mount.flags & flags.MS_NODEV and not mount.silent
    assert mount.remount_flags == 0  # only binds need a second call


def test_rw_clears_ro():
    assert not plan.mount_from_entry(one("/a /b none bind,ro,rw")).flags & flags.MS_RDONLY
