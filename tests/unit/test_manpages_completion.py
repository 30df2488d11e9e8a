"""Manual pages and bash completion generated from the argparse definitions (pyenroot.devtools)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyenroot import cli
from pyenroot.devtools import completion, manpages

REPO = Path(__file__).resolve().parents[2]
# The generator runs with the system python3, which has Debian's python3-argparse-manpage (as `make man`).
SYSTEM_PYTHON = "/usr/bin/python3"


def _has_generator() -> bool:
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import build_manpages.manpage"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def man_dir(tmp_path_factory) -> Path:
    if not Path(SYSTEM_PYTHON).exists() or not _has_generator():
        pytest.skip("python3-argparse-manpage is not installed for the system python3")
    out = tmp_path_factory.mktemp("man")
    subprocess.run([SYSTEM_PYTHON, "-m", "pyenroot.devtools.manpages", str(out)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return out


def _man(page: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                          env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat", "PAGER": "cat"})


def test_one_page_per_verb_people_run(man_dir):
    expected = {"pyenroot.1"} | {f"pyenroot-{verb}.1" for verb in cli.VERBS if verb not in manpages.INTERNAL_VERBS}
    assert {path.name for path in man_dir.iterdir()} == expected


def test_man_renders_a_verb_page_with_its_options(man_dir):
    done = _man(man_dir / "pyenroot-import.1")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    text = done.stdout
    assert "PYENROOT-IMPORT(1)" in text
    assert "pyenroot-import - import an image from a registry or archive" in text
    assert "pyenroot import [-h] [-v] [-a ARCH] [-o IMAGE] URI" in text
    for option in ("--arch", "--output", "--verbose"):
        assert option in text


def test_man_renders_the_main_page_with_links_to_the_verbs(man_dir):
    done = _man(man_dir / "pyenroot.1")
    assert done.returncode == 0, done.stderr
    assert "SEE ALSO" in done.stdout
    assert "pyenroot-start(1)" in done.stdout.replace("\u2010\n", "").replace("-\n", "")


def test_every_page_renders_without_warnings(man_dir):
    for page in sorted(man_dir.iterdir()):
        done = _man(page)
        assert (done.returncode, done.stderr) == (0, ""), page.name


@pytest.fixture(scope="module")
def completion_script(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("completion") / "pyenroot"
    out.write_text(completion.render(completion.all_verb_options()))
    return out


@pytest.fixture
def workspace(tmp_path) -> Path:
    """Two containers, a .sqsh image, another file and a directory; a `pyenroot` on PATH runs this tree."""
    for name in ("alpha", "beta"):
        (tmp_path / "data" / name).mkdir(parents=True)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "ubuntu.sqsh").write_text("")
    (images / "notes.txt").write_text("")
    shim = tmp_path / "bin" / "pyenroot"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m pyenroot \"$@\"\n")
    shim.chmod(0o755)
    return tmp_path


def complete(script: Path, workspace: Path, *words: str) -> list[str]:
    """What the completion function offers for the command line `words` (the last one being typed)."""
    program = (f"source {script}\n"
               "COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1))\n"
               "_pyenroot\n"
               "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    env = {"PATH": f"{workspace / 'bin'}:/usr/bin:/bin", "HOME": str(workspace),
           "ENROOT_DATA_PATH": str(workspace / "data"), "ENROOT_RUNTIME_PATH": str(workspace / "run"),
           "ENROOT_CACHE_PATH": str(workspace / "cache"), "XDG_RUNTIME_DIR": str(workspace / "run")}
    done = subprocess.run(["bash", "--norc", "-c", program, "bash", *words], capture_output=True, text=True,
                          cwd=workspace / "images", env=env, check=True)
    return sorted(line for line in done.stdout.splitlines() if line)


def test_script_registers_the_function(completion_script):
    done = subprocess.run(["bash", "--norc", "-c", f"source {completion_script}; complete -p pyenroot"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "complete -F _pyenroot pyenroot"


def test_verbs_and_global_options(completion_script, workspace):
    assert complete(completion_script, workspace, "pyenroot", "st") == ["start", "store"]
    assert complete(completion_script, workspace, "pyenroot", "--deb") == ["--debug"]
    assert "spank" not in complete(completion_script, workspace, "pyenroot", "")


def test_a_verbs_options_come_from_its_parser(completion_script, workspace):
    offered = complete(completion_script, workspace, "pyenroot", "import", "--")
    assert offered == ["--arch", "--help", "--output", "--verbose"]


def test_container_names_and_images(completion_script, workspace):
    assert complete(completion_script, workspace, "pyenroot", "remove", "") == ["alpha", "beta"]
    assert complete(completion_script, workspace, "pyenroot", "remove", "alpha", "b") == ["beta"]
    assert complete(completion_script, workspace, "pyenroot", "export", "a") == ["alpha"]
    assert complete(completion_script, workspace, "pyenroot", "create", "") == ["sub", "ubuntu.sqsh"]
    assert complete(completion_script, workspace, "pyenroot", "start", "-m", "x", "") == [
        "alpha", "beta", "sub", "ubuntu.sqsh"]


def test_nothing_after_the_container_of_start(completion_script, workspace):
    assert complete(completion_script, workspace, "pyenroot", "start", "alpha", "") == []


def test_an_options_value_completes_file_names(completion_script, workspace):
    assert complete(completion_script, workspace, "pyenroot", "import", "-o", "n") == ["notes.txt"]


def test_compgen_with_the_function(completion_script, workspace):
    """bash's own `compgen -F` drives the function as TAB does."""
    program = f"source {completion_script}; COMP_WORDS=(pyenroot li); COMP_CWORD=1; compgen -F _pyenroot li"
    done = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, cwd=workspace)
    assert "list" in done.stdout.split()


def test_debian_changelog_has_the_package_version():
    """`make deb` names the packages after debian/changelog; it must follow pyproject.toml's version."""
    from pyenroot import __version__

    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"pyenroot ({__version__}-"), first
