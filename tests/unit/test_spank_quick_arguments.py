"""The SPANK plugin's `spank ...` command lines read without argparse (cli.main's quick path) are exactly what
argparse reads, and everything the quick reader does not know goes to argparse."""

import subprocess
import sys

import pytest

from pyenroot import cli
from pyenroot.cli import build_parser
from pyenroot.commands import spank

PLUGIN = ["--job", "17", "--step", "0", "--runtime-path", "/run/pyenroot"]

READ_QUICKLY = [
    ["start", *PLUGIN, "--total-tasks", "8", "--scope", "job", "--squashfuse", "y", "--cwd", "/home/u",
     "--image", "reg#busybox:1", "--name", "web:exec", "--mounts", "/a:/b,/c", "--save", "x.sqsh",
     "--env-names", "A,B,,A", "--unshare", "pid", "--mount-home", "n", "--remap-root", "y", "--entrypoint", "n",
     "--writable", "y", "--importer", "/usr/bin/imp", "--batch-script", "/spool/s", "--broadcast", "{}"],
    ["start", "--job", "1"],
    ["cleanup", *PLUGIN, "--incomplete"],
    ["epilog", "--job", "3", "--runtime-path", "/run/x"],
    ["fanout", *PLUGIN, "--nodes", "2", "--fanout", "sbcast", "--fanout-shared", "/a:/b", "--image", "x"],
    ["start", "--job=4", "--image=x"],
    ["start", "--job", "4", "--image", ""],
    ["start", "--job", "4", "--job", "5"],
]

LEFT_TO_ARGPARSE = [
    [],
    ["--help"],
    ["start"],  # --job is required
    ["start", "--step", "1"],
    ["attach", "--job", "1"],
    ["start", "--job", "x"],
    ["start", "--job", "1", "--scope", "node"],
    ["start", "--job", "1", "--fanout", "always"],
    ["start", "--job", "1", "--squashfuse", "yes"],
    ["start", "--job", "1", "--image", "-x"],
    ["start", "--job", "1", "--ima", "x"],  # abbreviated
    ["start", "--job", "1", "--incomplete=y"],
    ["start", "--job", "1", "extra"],
    ["start", "--job", "1", "--"],
    ["start", "--job", "1", "--image"],
    ["start", "--job", "1", "--image="],
]


@pytest.mark.parametrize("words", READ_QUICKLY)
def test_the_plugin_s_command_lines_read_as_argparse_reads_them(words):
    argv = ["spank", *words]
    quick = cli._quick_arguments(argv)  # the dispatch cli.main makes, then spank.quick_arguments
    assert quick is not None and vars(quick) == vars(build_parser(only="spank").parse_args(argv))


@pytest.mark.parametrize("words", LEFT_TO_ARGPARSE)
def test_anything_else_goes_to_argparse(words):
    assert spank.quick_arguments(words) is None and cli._quick_arguments(["spank", *words]) is None


def test_a_step_imports_no_argparse():
    code = ("import sys; from pyenroot import cli; "
            "assert cli._quick_arguments(['spank', 'start', '--job', '1', '--image', 'x']) is not None; "
            "print('argparse' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


STEP = ["pyenroot.cli", "pyenroot.commands.spank", "pyenroot.config", "pyenroot.slurm.step", "pyenroot.slurm.state",
        "pyenroot.slurm.translate", "pyenroot.slurm.reporter", "pyenroot.containers.discovery",
        "pyenroot.containers.names", "pyenroot.runtime.assemble", "pyenroot.runtime.launcher",
        "pyenroot.runtime.imagemount", "pyenroot.runtime.seccomp", "pyenroot.runtime.hooks",
        "pyenroot.runtime.builtin_hooks", "pyenroot.runtime.pmi"]  # (the last: every step's slurm-pmi hook)
# What a step that starts a tag the job resolved before loads on top to find the image built before.
CACHED_IMAGE = ["pyenroot.image.cached_images", "pyenroot.registry.uri", "pyenroot.registry.platforms"]


def loaded(modules: list[str], watched: list[str]) -> list[str]:
    code = (f"import importlib, sys\nfor name in {modules!r}: importlib.import_module(name)\n"
            f"print(','.join(m for m in {watched!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in result.stdout.strip().split(",") if m]


def test_the_modules_of_a_step_import_nothing_slow():
    """A step with a named container loads what `start NAME` loads, and as little: no argparse, dataclasses (and
    its inspect), shutil, tempfile, threading, typing, nor the registry client."""
    assert loaded(STEP, ["argparse", "dataclasses", "inspect", "shutil", "tempfile", "threading", "typing",
                         "subprocess", "requests"]) == []


def test_a_step_that_finds_its_image_loads_no_registry_client_nor_builder():
    assert loaded(STEP + CACHED_IMAGE, ["argparse", "dataclasses", "inspect", "tempfile", "typing", "subprocess",
                                        "threading", "shlex",
                                        "requests", "pyenroot.registry.source", "pyenroot.image.pipeline",
                                        "pyenroot.image.merge"]) == []


def test_a_writable_step_that_unpacks_its_image_loads_no_dataclasses_nor_typing():
    assert loaded(STEP + CACHED_IMAGE + ["pyenroot.containers.create"],
                  ["argparse", "dataclasses", "inspect", "typing", "requests", "pyenroot.image.pipeline"]) == []


# What the job's first step on a node loads on top to resolve the tag, when the image turns out to be built.
TAG_LOOKUP = ["pyenroot.image.uri_source", "pyenroot.registry.source", "pyenroot.registry.transport_stdlib"]


def test_a_step_that_resolves_a_tag_loads_no_requests_nor_builder():
    """The manifest request goes over http.client; blobs would load requests."""
    assert loaded(STEP + CACHED_IMAGE + TAG_LOOKUP,
                  ["requests", "urllib3", "argparse", "dataclasses", "typing", "concurrent.futures",
                   "pyenroot.image.pipeline", "pyenroot.image.merge", "pyenroot.registry.transport_requests"]) == []
