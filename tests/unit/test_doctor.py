"""`pyenroot doctor` rendering and the child-process probe helper (no namespaces here)."""

from pyenroot.commands import doctor


def test_render_aligns_sections():
    text = doctor.render([("Containers", [("user namespaces", "ok", "works"), ("/dev/fuse", "no", "")]),
                          ("GPU", [("driver", "none", "no NVIDIA driver")])])
    assert text.splitlines() == [
        "Containers",
        "  user namespaces  ok       works",
        "  /dev/fuse        no",
        "GPU",
        "  driver           none     no NVIDIA driver",
    ]


def test_in_child_reports_success_and_failure():
    assert doctor._in_child(lambda: None) == (True, "")

    def fail() -> None:
        raise OSError(1, "unshare: Operation not permitted")

    ok, why = doctor._in_child(fail)
    assert not ok and "Operation not permitted" in why
