"""`pyenroot doctor --json` on this machine as the unprivileged user, and `--summary` of its output."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "doctor-report.schema.json").read_text())


def test_json_report_is_one_line_matching_the_schema(user):
    done = user.pyenroot("doctor", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    document = json.loads(done.stdout)
    jsonschema.validate(document, SCHEMA)
    assert document["containers"] == "ok"
    names = [check["name"] for check in document["checks"] if check["section"] == "containers"]
    assert names[:2] == ["user namespaces", "/dev/fuse"]


def test_summary_reads_reports_from_stdin_and_files(user):
    report = user.pyenroot("doctor", "--json").stdout
    saved = user.home / "node.json"
    saved.write_text(report)
    for done in (user.pyenroot("doctor", "--summary", input="0: " + report),
                 user.pyenroot("doctor", "--summary", str(saved))):
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0].split() == ["HOST", "CONTAINERS", "GPU", "NOT", "OK"]
        assert done.stdout.splitlines()[-1] == "1 node(s): 1 can start containers, 0 cannot"


def test_summary_of_something_else_is_one_error_line(user):
    done = user.pyenroot("doctor", "--summary", input="srun: error: node3: task 2: Exited with exit code 1\n")
    assert done.returncode == 1
    assert done.stderr.splitlines()[0].startswith("pyenroot: error: <stdin>: not doctor --json output")
    assert len(done.stderr.splitlines()) == 2  # and a hint
    assert done.stdout == ""


def test_json_and_summary_together_is_a_usage_error(user):
    done = user.pyenroot("doctor", "--json", "--summary")
    assert done.returncode == 2
    assert "not allowed with argument" in done.stderr
