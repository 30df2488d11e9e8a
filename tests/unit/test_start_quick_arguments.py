"""`start`'s arguments read without argparse (cli.main's quick path) are exactly what argparse reads, and
everything the quick reader does not know goes to argparse."""

import subprocess
import sys

import pytest

from pyenroot.cli import build_parser
from pyenroot.commands import start

READ_QUICKLY = [
    ["bench"],
    ["bench", "true"],
    ["bench", "sh", "-c", "echo $HOME"],
    ["bench", "-e", "X", "true"],  # after NAME everything is the command
    ["bench", "true", "--help"],
    ["-e", "A=1", "--env", "B", "--env=C=3", "bench", "-v"],
    ["-v", "-v", "bench"],
    ["--verbose", "bench"],
    ["--conf=x.sh", "--rc", "rc.sh", "bench"],
    ["-c", "x.sh", "image.sqsh", "id"],
    ["-m", "a:b", "--mount", "c:d", "--mount=e:f", "bench", "sh", "-c", "x"],
    ["-r", "-w", "--pid", "--net", "--ipc", "--uts", "bench", "x", "--pid"],
    ["--root", "--rw", "/images/a.sqsh"],
    ["", "x"],
]

LEFT_TO_ARGPARSE = [
    [],
    ["--help"],
    ["-h", "bench"],
    ["-e"],
    ["-e", "-x", "bench"],  # a value that looks like an option
    ["-rw", "bench"],  # clustered flags
    ["-eX", "bench"],
    ["-e=X", "bench"],
    ["--mou", "a:b", "bench"],  # abbreviated
    ["--env=", "bench"],
    ["--root=y", "bench"],
    ["--verbose=2", "bench"],
    ["--", "bench"],
    ["bench", "--", "true"],
    ["-e", "X"],  # no NAME
    ["--bogus", "bench"],
    ["-", "bench"],
]


@pytest.mark.parametrize("words", READ_QUICKLY)
def test_quick_arguments_are_argparse_s(words):
    quick = start.quick_arguments(words)
    assert quick is not None
    assert vars(quick) == vars(build_parser(only="start").parse_args(["start", *words]))


@pytest.mark.parametrize("words", LEFT_TO_ARGPARSE)
def test_everything_else_is_left_to_argparse(words):
    assert start.quick_arguments(words) is None


def test_the_table_is_the_parser_s_options():
    parser = build_parser(only="start")
    verb = next(a for a in parser._actions if a.dest == "verb").choices["start"]
    declared = {(tuple(sorted(action.option_strings)), action.dest) for action in verb._actions
                if action.option_strings and action.dest not in ("help", "verbose")}
    table = {(tuple(sorted(s for s in (short, long) if s)), attribute) for short, long, attribute in
             start.FLAGS + start.VALUES}
    assert table == declared
    takes_value = {action.dest for action in verb._actions if action.option_strings and action.nargs != 0}
    assert takes_value - {"verbose"} == {attribute for _, _, attribute in start.VALUES}
    repeatable = {action.dest for action in verb._actions if type(action).__name__ == "_AppendAction"}
    assert repeatable == start.REPEATABLE


def test_a_plain_start_imports_no_argparse():
    code = ("import sys; from pyenroot import cli; cli._quick_arguments(['start', '-e', 'A', 'bench', 'true']);"
            " print('argparse' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_modules_of_a_start_import_nothing_slow():
    """What `start NAME` and `start IMAGE.sqsh` import (up to the exec) keeps argparse, dataclasses (and its
    inspect), shutil, tempfile and threading out: each costs a start more than a few of its steps."""
    modules = ["pyenroot.cli", "pyenroot.commands.start", "pyenroot.config", "pyenroot.runtime.assemble",
               "pyenroot.runtime.launcher", "pyenroot.runtime.hooks", "pyenroot.runtime.builtin_hooks",
               "pyenroot.runtime.mounter", "pyenroot.runtime.imagemount", "pyenroot.runtime.seccomp",
               "pyenroot.runtime.readahead",
               "pyenroot.squashfs", "pyenroot.atomic",
               # the GPU hook runs whenever the image asks for GPUs (CUDA images set NVIDIA_VISIBLE_DEVICES),
               # the MPI hook whenever a site injects its MPI
               "pyenroot.gpu.hook", "pyenroot.mpi.hook"]
    slow = ["argparse", "dataclasses", "inspect", "shutil", "tempfile", "threading", "typing"]
    code = (f"import importlib, sys\nfor name in {modules!r}: importlib.import_module(name)\n"
            f"print(','.join(m for m in {slow!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_the_gpu_hook_loads_openssl_only_for_a_plan():
    """On a node without GPUs a CUDA image's start makes no GPU plan: hashlib (OpenSSL) waits for one."""
    code = ("import sys\nimport pyenroot.cli, pyenroot.runtime.launcher, pyenroot.runtime.builtin_hooks, "
            "pyenroot.gpu.hook\nprint('hashlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
