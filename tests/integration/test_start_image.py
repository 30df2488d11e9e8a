"""Direct start of squashfs images (FUSE + overlay, unpacked for --rw), the fallback without FUSE, and a real
Debian image."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.helpers import debpkg, users
from tests.helpers.processes import stopped_anchor
from tests.integration.imagecheck import HTTP, import_as
from tests.integration.test_start import data_path, popen


def test_sqsh_start_read_only(user, busybox_sqsh):
    result = user.pyenroot("start", str(busybox_sqsh), "sh", "-c", "id -u; cat /etc/os-release; touch /x")
    assert result.stdout.splitlines()[0] == str(user.uid)
    assert "pyenroot busybox" in result.stdout
    assert result.returncode != 0 and "Read-only" in result.stderr


def test_sqsh_start_writable_and_nothing_persists(user, busybox_sqsh):
    result = user.pyenroot("start", "--rw", str(busybox_sqsh), "sh", "-c",
                           "echo data > /etc/new && cat /etc/new && rm /bin/ls && (test -e /bin/ls || echo gone)")
    assert result.stdout.split() == ["data", "gone"], result.stderr
    again = user.pyenroot("start", str(busybox_sqsh), "sh", "-c", "test -e /etc/new || echo clean; test -e /bin/ls")
    assert again.stdout.strip() == "clean" and again.returncode == 0
    assert not data_path(user).exists() or not any(data_path(user).iterdir())


def test_sqsh_start_as_root(user, busybox_sqsh):
    result = user.pyenroot("start", "--root", "--rw", str(busybox_sqsh), "sh", "-c",
                           "id -u; stat -c %u /bin/busybox; touch /made && stat -c %u /made")
    assert result.stdout.split() == ["0", "0", "0"], result.stderr


def test_sqsh_files_belong_to_the_user_without_root(user, busybox_sqsh):
    result = user.pyenroot("start", "--rw", str(busybox_sqsh), "sh", "-c", "stat -c %u /bin/busybox; "
                           "echo x >> /etc/passwd && echo appended")
    assert result.stdout.split() == [str(user.uid), "appended"], result.stderr


def test_sqsh_anchor_keeps_the_image_mounted(user, busybox_sqsh):
    """A stopped container from an image (the Slurm anchor) still serves its files: FUSE lives with it."""
    proc = popen(user, "start", str(busybox_sqsh), "sh", "-c", "kill -STOP $$; exit 0")
    with stopped_anchor(proc) as pid:
        assert "pyenroot busybox" in Path(f"/proc/{pid}/root/etc/os-release").read_text()


def test_sqsh_start_with_a_pid_namespace_and_a_missing_command(user, busybox_sqsh):
    """The programs read ahead while the container is configured (runtime/readahead.py) change nothing a start
    shows: with a PID namespace (the start forks while the reading thread may still run) the command is PID 2
    of one-thread processes; a missing command is still exit 127 with one line; the thread leaves no message."""
    result = user.pyenroot("start", "--pid", str(busybox_sqsh), "sh", "-c",
                           "echo $$; ls /proc/1/task /proc/$$/task | grep -c '^[0-9]'; exit 3")
    assert result.returncode == 3, result.stderr
    assert result.stdout.split() == ["2", "2"]
    assert result.stderr == ""
    missing = user.pyenroot("start", str(busybox_sqsh), "no-such-program", "arg")
    assert missing.returncode == 127
    assert missing.stderr.count("\n") == 1 and "no-such-program" in missing.stderr, missing.stderr
    ran = user.pyenroot("start", str(busybox_sqsh), "/bin/busybox", "echo", "absolute")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "absolute\n", "")


def test_sqsh_with_image_rc(user, busybox_rootfs_dir, session_dir, tmp_path):
    """An image of the current format (/etc/rc) started directly."""
    import shutil
    import subprocess

    tree = tmp_path / "tree"
    shutil.copytree(busybox_rootfs_dir, tree, symlinks=True)
    (tree / "etc/rc").write_text('#!/bin/sh\necho "image rc: $*"\nexec "$@"\n')
    image = session_dir / f"rc-{os.getpid()}-{tmp_path.name}.sqsh"
    subprocess.run(["mksquashfs", str(tree), str(image), "-all-root", "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    image.chmod(0o644)
    try:
        result = user.pyenroot("start", str(image), "echo", "hi")
        assert result.stdout.splitlines() == ["image rc: echo hi", "hi"], result.stderr
    finally:
        image.unlink()


def _path_with(user, tools: list[str]) -> str:
    bin_dir = user.make_dir("limited-bin")
    for tool in tools:
        (bin_dir / tool).symlink_to(f"/usr/bin/{tool}")
    return str(bin_dir)


def test_sqsh_without_fuse_unpacks(user, busybox_sqsh):
    path = _path_with(user, ["unsquashfs"])
    result = user.pyenroot("start", str(busybox_sqsh), "cat", "/etc/os-release", env={"PATH": path})
    assert result.returncode == 0, result.stderr
    assert "pyenroot busybox" in result.stdout
    assert "squashfuse is not installed" in result.stderr and "unpacking" in result.stderr


def test_sqsh_without_fuse_or_unsquashfs(user, busybox_sqsh):
    result = user.pyenroot("start", str(busybox_sqsh), "true", env={"PATH": _path_with(user, [])})
    assert result.returncode != 0
    assert "unsquashfs is not installed" in result.stderr and "FUSE" in result.stderr
    assert "Traceback" not in result.stderr


def test_not_a_squashfs_image(user, tmp_path):
    fake = user.home / "fake.sqsh"
    fake.write_text("not an image")
    result = user.pyenroot("start", str(fake), "true")
    assert result.returncode != 0 and "not a squashfs image" in result.stderr
    missing = user.pyenroot("start", str(user.home / "missing.sqsh"), "true")
    assert missing.returncode != 0 and "no such image" in missing.stderr


@pytest.fixture
def debian(user, debian_rootfs_tar) -> Path:
    target = data_path(user) / "debian"
    user.make_dir(".local/share/enroot/debian")
    # Device nodes cannot be made by a user (the container gets the host's /dev anyway).
    user.run(["tar", "-x", "-f", "-", "-C", str(target), "--exclude=./dev/*"], input=debian_rootfs_tar.read_bytes(),
             text=False)
    assert (target / "usr/bin/apt-get").exists()
    return target


def test_debian_apt_get_install_as_root(user, debian):
    update = user.pyenroot("start", "--root", "--rw", "debian", "apt-get", "update", timeout=600)
    if update.returncode != 0 and ("Could not resolve" in update.stdout + update.stderr
                                   or "Temporary failure" in update.stdout + update.stderr):
        pytest.skip("no network to the Debian mirrors")
    assert update.returncode == 0, update.stdout + update.stderr
    install = user.pyenroot("start", "--root", "--rw", "debian", "apt-get", "install", "-y", "--no-install-recommends",
                            "hello", timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    assert user.pyenroot("start", "debian", "hello").stdout.strip() == "Hello, world!"
    installed = debian / "usr/bin/hello"
    assert installed.stat().st_uid == user.uid


def test_debian_login_environment(user, debian):
    result = user.pyenroot("start", "debian", "sh", "-c", 'echo "$USER $HOME"; id -un')
    assert result.returncode == 0, result.stderr
    home = user.run(["sh", "-c", "getent passwd $(id -u) | cut -d: -f6"]).stdout.strip()
    assert result.stdout.split() == [user.name, home, user.name]


def test_sqsh_with_fuse_overlayfs(user, busybox_sqsh):
    result = user.pyenroot("start", "--rw", str(busybox_sqsh), "sh", "-c",
                           "grep ' / / ' /proc/self/mountinfo | grep -c fuse-overlayfs; touch /x && echo wrote",
                           env={"ENROOT_NATIVE_OVERLAYFS": "n", "PYENROOT_SQSH_WRITABLE": "overlay"})
    assert result.stdout.split() == ["1", "wrote"], result.stderr


def _root_fstype(result) -> str:
    """The file system type of / from its line of /proc/self/mountinfo."""
    assert result.returncode == 0, result.stderr
    return result.stdout.split(" - ", 1)[1].split()[0]


def test_sqsh_read_only_start_mounts_writable_start_unpacks(user, busybox_sqsh):
    """Read-only starts keep the overlay (fast, nothing copied); --rw gets the image unpacked into a tmpfs."""
    show_root = ["sh", "-c", "grep -E '^([^ ]+ ){4}/ ' /proc/self/mountinfo"]  # mount point (5th field) /
    assert _root_fstype(user.pyenroot("start", str(busybox_sqsh), *show_root)) == "overlay"
    assert _root_fstype(user.pyenroot("start", "--rw", str(busybox_sqsh), *show_root)) == "tmpfs"
    overlay = user.pyenroot("start", "--rw", str(busybox_sqsh), *show_root, env={"PYENROOT_SQSH_WRITABLE": "overlay"})
    assert _root_fstype(overlay) == "overlay"


def test_sqsh_writable_method_is_checked(user, busybox_sqsh):
    result = user.pyenroot("start", "--rw", str(busybox_sqsh), "true", env={"PYENROOT_SQSH_WRITABLE": "copy"})
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == "pyenroot: error: invalid PYENROOT_SQSH_WRITABLE: 'copy' (config)"
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def debian_sqsh(account, pyenroot_wrapper, session_dir, debian_image) -> Path:
    """The Debian test image as `pyenroot import` writes it, readable by everyone."""
    importer = users.make_private_home(session_dir, account, pyenroot_wrapper, "homes/debian-sqsh-import")
    result, output = import_as(importer, debian_image.uri, "debian.sqsh", HTTP)
    assert result.returncode == 0, result.stderr
    yield output
    shutil.rmtree(importer.home, ignore_errors=True)


# rename(2) itself, as dpkg calls it: mv would fall back to copying and hide an EXDEV.
RENAME_IMAGE_DIRECTORY = (
    """perl -e 'rename("/usr/share/doc", "/usr/share/doc.moved") or die "rename: $!\\n"' && """
    "test -d /usr/share/doc.moved/dpkg && test ! -e /usr/share/doc && echo renamed && "
    "rm -r /usr/share/doc.moved/dpkg && mkdir /usr/share/doc.moved/dpkg && echo recreated"
)


def test_sqsh_writable_renames_a_directory_of_the_image(user, debian_sqsh):
    result = user.pyenroot("start", "--rw", str(debian_sqsh), "sh", "-c", RENAME_IMAGE_DIRECTORY)
    assert (result.returncode, result.stdout) == (0, "renamed\nrecreated\n"), result.stderr
    again = user.pyenroot("start", str(debian_sqsh), "test", "-d", "/usr/share/doc/dpkg")
    assert again.returncode == 0, again.stderr  # nothing persists


def test_sqsh_writable_dpkg_replaces_a_directory_of_the_image(user, debian_sqsh):
    deb = debpkg.directory_swap_deb(user.make_dir("debs"))
    result = user.pyenroot("start", "--root", "--rw", "-m", f"{deb}:/pkg.deb", str(debian_sqsh), "sh", "-c",
                           f"dpkg -i /pkg.deb >/dev/null && cat {debpkg.REPLACED_DIRECTORY} "
                           f"&& test -f {debpkg.NEW_DIRECTORY_FILE} && echo installed")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout == debpkg.REPLACEMENT_TEXT + "installed\n"


def test_sqsh_writable_overlay_on_request_cannot_rename_image_directories(user, debian_sqsh):
    """The trade PYENROOT_SQSH_WRITABLE=overlay makes: a fast start, but the kernel refuses the rename."""
    result = user.pyenroot("start", "--rw", str(debian_sqsh), "sh", "-c", RENAME_IMAGE_DIRECTORY,
                           env={"PYENROOT_SQSH_WRITABLE": "overlay"})
    assert result.returncode != 0 and "rename: Invalid cross-device link" in result.stderr
    # Removing a directory of the image and making it again works there (userxattr; EIO without it).
    again = user.pyenroot("start", "--rw", str(debian_sqsh), "sh", "-c",
                          "rm -r /usr/share/doc/dpkg && mkdir /usr/share/doc/dpkg && echo recreated",
                          env={"PYENROOT_SQSH_WRITABLE": "overlay"})
    assert (again.returncode, again.stdout) == (0, "recreated\n"), again.stderr


def _fuse_servers_of(image: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(image).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_fuse_server_dies_with_the_container_even_with_blocked_signals(user, busybox_sqsh, session_dir, tmp_path):
    """The FUSE server ends when its container does, whatever signal state the caller handed down."""
    import shutil
    import subprocess

    image = session_dir / f"own-{tmp_path.name}.sqsh"  # a path no other test's FUSE server uses
    shutil.copy(busybox_sqsh, image)
    image.chmod(0o644)
    proc = subprocess.Popen([str(user.wrapper), "start", str(image), "sh", "-c", "kill -STOP $$; exit 0"],
                            env=user.env(), cwd=str(user.home), user=user.uid, group=user.gid, extra_groups=[],
                            preexec_fn=_block_signals, stdin=subprocess.DEVNULL)
    try:
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        servers = _fuse_servers_of(image)
        assert servers
        os.kill(proc.pid, signal.SIGKILL)
        os.waitpid(proc.pid, 0)
        proc.returncode = -9
        import time

        give_up = time.monotonic() + 60  # only against a hang: SIGKILL is delivered at once
        for server in servers:
            while Path(f"/proc/{server}").exists() and "Z" not in _state(server) and time.monotonic() < give_up:
                time.sleep(0.01)
        assert all(not Path(f"/proc/{pid}").exists() or "Z" in _state(pid) for pid in servers)
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
            proc.returncode = -9
        image.unlink()


def _block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


IMPORT_THEN_START = """
import os, sys, threading
from pyenroot.config import load_settings
from pyenroot.runtime import syscalls
from pyenroot.image.importer import import_image
from pyenroot.runtime import assemble
from pyenroot.runtime.options import StartOptions

real_unshare = syscalls.unshare

def checked_unshare(flags):
    # what unshare(CLONE_NEWUSER) needs: no second thread, neither Python's nor the kernel's view
    assert threading.active_count() == 1, threading.enumerate()
    assert len(os.listdir("/proc/self/task")) == 1
    return real_unshare(flags)

syscalls.unshare = checked_unshare
settings = load_settings(dict(os.environ))
image = import_image(sys.argv[1], sys.argv[2], None, settings)
sys.exit(assemble.start(StartOptions(target=str(image), command=("cat", "/etc/pyenroot-test")), settings))
"""


def test_import_then_start_in_one_process(user, busybox_image):
    """What `pyenroot spank start` does with an image that is not cached yet: the import's download pool and
    read-ahead threads must be gone before the namespaces are entered."""
    script = user.home / "import_then_start.py"
    script.write_text(IMPORT_THEN_START)
    src = user.wrapper.parent.parent / "src"
    from tests.helpers.users import user_python

    result = user.run([user_python(), str(script), busybox_image.uri, str(user.home / "out.sqsh")],
                      env={"PYTHONPATH": str(src), "ENROOT_ALLOW_HTTP": "y"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "second layer\n"


def test_sqsh_id_maps_as_enroot_shows_them(user, busybox_sqsh):
    maps = "cat /proc/self/uid_map /proc/self/gid_map; stat -c %u /bin/busybox"
    result = user.pyenroot("start", str(busybox_sqsh), "sh", "-c", maps)
    assert result.returncode == 0, result.stderr
    uid, gid = str(user.uid), str(user.gid)
    assert [line.split() for line in result.stdout.splitlines()] == [[uid, uid, "1"], [gid, gid, "1"], [uid]]
    result = user.pyenroot("start", "--root", str(busybox_sqsh), "sh", "-c", maps)
    assert [line.split() for line in result.stdout.splitlines()] == [["0", uid, "1"], ["0", gid, "1"], ["0"]]
