"""`pyenroot doctor --json` (the report's layout, checked against docs/doctor-report.schema.json) and
`--summary` of many nodes' reports, on made-up input."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from pyenroot.commands import doctor
from pyenroot.errors import PyenrootError

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "doctor-report.schema.json").read_text())

SECTIONS = [
    ("Containers", [("user namespaces", "ok", "works"), ("/dev/fuse", "ok", "readable and writable"),
                    ("squashfuse_ll", "missing", "not on PATH"), ("overlay in userns", "no", "EPERM")]),
    ("GPU", [("driver", "ok", "550.54 (CUDA 12.4)"), ("GPU 0", "ok", "H100"), ("  MIG 0:1", "ok", "MIG-1")]),
]


def report(host: str, sections=SECTIONS) -> dict:
    return doctor.as_json(sections, host, "6.1.0")


def test_report_matches_the_documented_schema():
    document = report("node1")
    jsonschema.validate(document, SCHEMA)
    assert document["schema_version"] == doctor.SCHEMA_VERSION == SCHEMA["properties"]["schema_version"]["const"]
    assert (document["containers"], document["gpu"]) == ("ok", "ok")
    assert {"section": "gpu", "name": "MIG 0:1", "state": "ok", "detail": "MIG-1"} in document["checks"]


def test_gpu_only_report_has_no_container_verdict():
    document = report("node1", [("GPU", [("driver", "none", "no NVIDIA driver")])])
    jsonschema.validate(document, SCHEMA)
    assert (document["containers"], document["gpu"]) == (None, "none")


def test_states_in_code_and_schema_agree():
    items = SCHEMA["properties"]["checks"]["items"]["properties"]
    assert tuple(items["state"]["enum"]) == doctor.STATES


def test_summary_of_many_nodes_with_srun_labels():
    broken = [("Containers", [("user namespaces", "no", "unshare failed: EPERM"), ("/dev/fuse", "missing", "")]),
              ("GPU", [("driver", "none", "")])]
    lines = [
        "1: " + json.dumps(report("node2", broken)),
        "",
        "0: " + json.dumps(report("node1")),
        json.dumps(report("node1")),  # a second task on the same node
    ]
    nodes = doctor.summarize(doctor.parse_reports(lines, "<test>"))
    assert doctor.render_summary(nodes).splitlines() == [
        "HOST   CONTAINERS  GPU   NOT OK",
        "node1  ok          ok    squashfuse_ll (missing), overlay in userns (no)",
        "node2  no          none  user namespaces (no), /dev/fuse (missing)",
        "2 node(s): 1 can start containers, 1 cannot",
    ]


def test_summary_joins_the_pieces_srun_splits_a_long_report_into():
    """srun -l forwards about 1 KiB at a time, each piece on its own labelled line, tasks interleaved."""
    first, second = json.dumps(report("node1")), json.dumps(report("node2"))
    lines = [f"0: {first[:100]}", f"1: {second[:50]}", f"0: {first[100:]}", f"1: {second[50:]}"]
    hosts = [node.host for node in doctor.summarize(doctor.parse_reports(lines, "<test>"))]
    assert hosts == ["node1", "node2"]


def test_summary_of_files_with_one_report_per_line():
    lines = [json.dumps(report("node3")), json.dumps(report("node1"))]
    hosts = [node.host for node in doctor.summarize(doctor.parse_reports(lines, "<test>"))]
    assert hosts == ["node1", "node3"]


@pytest.mark.parametrize(("line", "message"), [
    ("pyenroot: error: something", "<test>: not doctor --json output: Expecting value"),
    ('3: {"schema_version": 2}', "<test>, task 3: doctor report schema_version 2, this pyenroot reads 1"),
    ("[1, 2]", "<test>: doctor report schema_version None"),
])
def test_summary_rejects_what_is_not_a_report(line, message):
    with pytest.raises(PyenrootError) as caught:
        doctor.parse_reports([line], "<test>")
    assert caught.value.message.startswith(message)
