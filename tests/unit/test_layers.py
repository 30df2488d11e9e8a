"""Merge planning over layer headers: whiteouts, replacement, links and every hostile case."""

from __future__ import annotations

import pytest

from pyenroot.image import layers as L
from pyenroot.image.layers import Action, Header, MergePlanner


def f(name, link=""):
    return Header(name, L.FILE, link)


def d(name):
    return Header(name, L.DIR)


def sym(name, link):
    return Header(name, L.SYMLINK, link)


def hard(name, link):
    return Header(name, L.HARDLINK, link)


def merge(*layers_top_first):
    """Run the planner; return ({path: (action, link)} of emitted/deferred entries, planner, materializations)."""
    planner = MergePlanner()
    emitted: dict[str, tuple[Action, str]] = {}
    materialized = []
    for number, headers in enumerate(layers_top_first):
        planner.start_layer(f"layer{number}")
        for header in headers:
            decision = planner.decide(header)
            if decision.action in (Action.EMIT, Action.DEFERRED):
                assert decision.path not in emitted, f"{decision.path} emitted twice"
                emitted[decision.path] = (decision.action, decision.link)
        materialized += planner.finish_layer()
    cross = planner.finish()
    return emitted, planner, materialized, cross


def names(emitted):
    return set(emitted)


@pytest.mark.parametrize("name,expected", [
    ("./a/b", ("a/b", False)), ("a//b/", ("a/b", False)), ("/etc/x", ("etc/x", True)), (".", ("", False)),
    ("./", ("", False)), ("a/./b", ("a/b", False)),
])
def test_normalize(name, expected):
    assert L.normalize_name(name) == expected


@pytest.mark.parametrize("name", ["../x", "a/../../x", "a/..", "..", "/../etc"])
def test_normalize_rejects_dotdot(name):
    with pytest.raises(L.HostileEntry):
        L.normalize_name(name)


def test_upper_file_shadows_lower():
    emitted, *_ = merge([f("a")], [f("a"), f("b")])
    assert names(emitted) == {"a", "b"}


def test_whiteout_hides_lower_file_and_directory_tree():
    emitted, *_ = merge([f(".wh.a"), f("d/.wh.x")], [f("a"), d("d"), f("d/x"), f("d/x/../y"), f("d/y")])
    assert "a" not in emitted and "d/x" not in emitted
    assert {"d", "d/y"} <= names(emitted)


def test_whiteout_of_directory_hides_its_content():
    emitted, *_ = merge([f(".wh.dir")], [d("dir"), f("dir/a"), d("dir/sub"), f("dir/sub/b")])
    assert names(emitted) == set()


def test_whiteout_does_not_apply_to_its_own_layer():
    emitted, *_ = merge([f(".wh.a"), f("a")], [f("a")])
    assert "a" in emitted


def test_whiteout_and_directory_in_same_layer_make_it_opaque():
    emitted, *_ = merge([f(".wh.d"), d("d"), f("d/new")], [d("d"), f("d/old")])
    assert {"d", "d/new"} <= names(emitted) and "d/old" not in emitted


def test_opaque_directory():
    emitted, *_ = merge([d("d"), f("d/.wh..wh..opq"), f("d/new")], [d("d"), f("d/old"), d("d/sub"), f("d/sub/x"),
                                                                    f("other")])
    assert names(emitted) == {"d", "d/new", "other"}


def test_opaque_marker_alone_implies_the_directory():
    emitted, *_ = merge([f("d/.wh..wh..opq")], [d("d"), f("d/old")])
    # the lower explicit directory gives its attributes (the upper one was only implied)
    assert names(emitted) == {"d"}


def test_opaque_root_hides_all_lower_layers():
    emitted, *_ = merge([f(".wh..wh..opq"), f("new")], [f("old"), d("dir")])
    assert names(emitted) == {"new"}


def test_opaque_applies_to_every_lower_layer():
    emitted, *_ = merge([f("d/.wh..wh..opq")], [f("d/middle")], [f("d/bottom")])
    assert names(emitted) == set()


def test_file_replaces_directory():
    emitted, *_ = merge([f("x")], [d("x"), f("x/inner"), d("x/sub"), f("x/sub/deep")])
    assert names(emitted) == {"x"}


def test_directory_replaces_file_and_symlink():
    emitted, *_ = merge([d("x"), f("x/inner"), f("s/in")], [f("x"), sym("s", "/etc")])
    assert names(emitted) == {"x", "x/inner", "s/in"}


def test_shadowed_file_still_hides_what_is_below_it():
    # top: directory a; middle: file a (shadowed by the directory); bottom: a/x must stay hidden
    emitted, *_ = merge([d("a")], [f("a")], [d("a"), f("a/x")])
    assert names(emitted) == {"a"}


def test_whiteout_below_upper_directory_makes_it_opaque():
    emitted, *_ = merge([d("a"), f("a/new")], [f(".wh.a")], [d("a"), f("a/old")])
    assert names(emitted) == {"a", "a/new"}


def test_lower_explicit_directory_gives_attributes_when_upper_only_implies_it():
    emitted, *_ = merge([f("d/a")], [d("d"), f("d/b")])
    assert names(emitted) == {"d", "d/a", "d/b"}


def test_upper_explicit_directory_wins():
    emitted, *_ = merge([d("d")], [d("d"), f("d/b")])
    assert emitted["d"] == (Action.EMIT, "")
    assert names(emitted) == {"d", "d/b"}


def test_repeated_directory_entry_is_silent():
    emitted, planner, *_ = merge([d("d"), f("d/x"), d("d")])
    assert names(emitted) == {"d", "d/x"} and planner.warnings == []


def test_duplicate_file_in_layer_keeps_first():
    emitted, planner, *_ = merge([f("a"), f("a")])
    assert names(emitted) == {"a"}
    assert any("duplicate" in w for w in planner.warnings)


def test_root_entry_is_ignored():
    emitted, *_ = merge([d("."), d("./"), f("./a")])
    assert names(emitted) == {"a"}


# ----------------------------------------------------------------------------------- hostile


def test_dotdot_entries_dropped_with_warning():
    emitted, planner, *_ = merge([f("../escape"), f("a/../../b"), f("ok")])
    assert names(emitted) == {"ok"}
    assert any("../escape" in w for w in planner.warnings)
    assert any("a/../../b" in w for w in planner.warnings)


def test_absolute_names_become_relative():
    emitted, planner, *_ = merge([f("/etc/passwd")])
    assert names(emitted) == {"etc/passwd"}
    assert any("/etc/passwd" in w for w in planner.warnings)


def test_entry_under_symlink_of_same_layer_dropped():
    emitted, planner, *_ = merge([sym("link", "/etc"), f("link/passwd"), sym("rel", "../.."), f("rel/x")])
    assert names(emitted) == {"link", "rel"}
    assert any("link/passwd" in w for w in planner.warnings)


def test_entry_under_file_of_same_layer_dropped():
    emitted, *_ = merge([f("file"), f("file/x")])
    assert names(emitted) == {"file"}


def test_symlink_after_directory_of_same_layer_dropped():
    emitted, planner, *_ = merge([f("d/x"), sym("d", "/etc")])
    assert names(emitted) == {"d/x"}
    assert planner.warnings


def test_entry_under_upper_symlink_hidden():
    emitted, *_ = merge([sym("link", "/etc")], [d("link"), f("link/passwd")])
    assert names(emitted) == {"link"}


def test_lower_symlink_replaced_by_upper_directory():
    emitted, *_ = merge([f("lib/x")], [sym("lib", "/usr/lib"), f("lib2")])
    assert names(emitted) == {"lib/x", "lib2"}  # lib is a directory now, its symlink is gone


def test_every_emitted_entry_has_directory_ancestors():
    layers = [
        [sym("a", "/"), f("a/x"), f("b/c/d"), sym("b/c", "x")],
        [d("a"), f("a/y"), sym("b", "/etc"), f("b/c/e"), f("q/r")],
        [sym("q", "/tmp"), f("q/s"), f("a")],
    ]
    emitted, *_ = merge(*layers)
    kinds = {}
    for layer in layers:
        for h in layer:
            path, _ = L.normalize_name(h.name)
            kinds.setdefault(path, h.kind)
    for path in emitted:
        for ancestor in L.ancestors(path):
            assert ancestor not in emitted or kinds[ancestor] == L.DIR, (path, ancestor)


def test_device_nodes_dropped_fifo_kept():
    emitted, planner, *_ = merge([Header("dev/null", L.CHAR), Header("dev/sda", L.BLOCK), Header("p", L.FIFO),
                                  Header("etc/evil", L.CHAR)])
    assert names(emitted) == {"p"}
    # dev/ nodes in one summary line (at the end, after the bottom layer); one elsewhere is named with its layer
    assert planner.warnings == ["layer0: etc/evil: device node not created",
                                "2 device nodes under dev/ not created; /dev comes from the host at start"]


def test_one_device_node_summary_over_every_layer():
    _, planner, *_ = merge([Header("dev/null", L.CHAR)], [Header("dev/zero", L.CHAR)])
    assert planner.warnings == ["2 device nodes under dev/ not created; /dev comes from the host at start"]


def test_whiteouts_naming_outside_dropped():
    emitted, planner, *_ = merge([f("../.wh.etc"), f(".wh.."), f("a/.wh.."), f(".wh."), f(".wh..wh.plnk")],
                                 [f("etc"), f("a/b")])
    assert {"etc", "a/b"} <= names(emitted)
    assert len(planner.warnings) == 5


def test_hard_link_outside_dropped():
    emitted, planner, _, cross = merge([f("x"), hard("l1", "../../etc/passwd"), hard("l2", "/etc/passwd")])
    assert {p for p, (action, _) in emitted.items() if action is Action.EMIT} == {"x"}
    assert cross == []  # /etc/passwd is taken inside the image, where there is none
    assert any("l1" in w for w in planner.warnings) and any("l2" in w for w in planner.warnings)


def test_hard_link_to_directory_or_symlink_dropped():
    emitted, *_ = merge([d("d"), sym("s", "x"), hard("l1", "d"), hard("l2", "s")])
    assert names(emitted) == {"d", "s"}


# -------------------------------------------------------------------------------- hard links


def test_hard_link_to_surviving_file():
    emitted, *_ = merge([f("a"), hard("b", "a"), hard("c", "./a")])
    assert emitted["b"] == (Action.EMIT, "a") and emitted["c"] == (Action.EMIT, "a")


def test_hard_link_chain_resolves_to_file():
    emitted, *_ = merge([f("a"), hard("b", "a"), hard("c", "b")])
    assert emitted["c"] == (Action.EMIT, "a")


def test_hard_link_to_shadowed_target_is_materialized():
    emitted, _, materialized, _ = merge([f("a")], [f("a"), hard("b", "a"), hard("c", "a")])
    assert emitted["b"][0] is Action.DEFERRED and emitted["c"][0] is Action.DEFERRED
    assert materialized == [L.Materialization("a", "b", ("c",))]


def test_hidden_hard_link_is_not_materialized():
    emitted, _, materialized, _ = merge([f(".wh.b"), f("a")], [f("a"), hard("b", "a")])
    assert materialized == [] and "b" not in emitted


def test_cross_layer_hard_link():
    _, planner, _, cross = merge([hard("b", "a"), hard("c", "missing")], [f("a")])
    assert cross == [L.CrossLink("b", "a")]
    assert any("missing" in w for w in planner.warnings)


def test_cross_layer_hard_link_to_directory_dropped():
    _, _, _, cross = merge([hard("b", "d")], [d("d")])
    assert cross == []


# ----------------------------------------------------------------------------------- queries


def test_can_add_directory():
    _, planner, *_ = merge([f("file"), sym("link", "/"), d("dir")])
    assert planner.can_add_directory("new/sub")
    assert planner.has_directory("dir") and not planner.can_add_directory("dir")
    assert not planner.can_add_directory("file/sub") and not planner.can_add_directory("link/sub")


# ------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("kind,mode,expected", [
    (L.FILE, 0o4755, 0o755), (L.FILE, 0o2755, 0o755), (L.FILE, 0o000, 0o400), (L.FILE, 0o011, 0o511),
    (L.DIR, 0o555, 0o755), (L.DIR, 0o1777, 0o1777), (L.DIR, 0o2755, 0o2755), (L.SYMLINK, 0o777, 0o777),
])
def test_sanitize_mode(kind, mode, expected):
    assert L.sanitize_mode(kind, mode) == expected


def test_kept_xattrs():
    assert L.kept_xattrs({"user.a": "1", "security.capability": "x", "trusted.overlay.opaque": "y"}) == {"user.a": "1"}


def test_warnings_are_capped():
    planner = MergePlanner(max_warnings=3)
    planner.start_layer("l")
    for i in range(10):
        planner.decide(f(f"../{i}"))
    assert len(planner.warnings) == 3 and planner.suppressed_warnings == 7


# ------------------------------------------------------------- against a sequential reference model

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_NAMES = st.sampled_from(["a", "b", "c"])
_PATHS = st.lists(_NAMES, min_size=1, max_size=3).map("/".join)
_KINDS = st.sampled_from([L.FILE, L.FILE, L.DIR, L.DIR, L.SYMLINK, L.HARDLINK, "whiteout", "opaque"])


def _valid_layer(candidates: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Keep the entries that form a consistent tree (what a real layer tar holds); a hard link names the
    layer's latest regular file."""
    kinds: dict[str, str] = {}
    kept = []
    files: list[str] = []
    for path, kind in candidates:
        if kind == L.HARDLINK and not files:
            continue
        target = path if kind not in ("whiteout", "opaque") else L.parent_of(path) if kind == "opaque" else path
        parents = L.ancestors(target) + ([target] if kind == "opaque" and target else [])
        if kind == "opaque" and not target:
            continue
        if any(kinds.get(p, L.DIR) != L.DIR for p in parents) or path in kinds:
            continue
        if kind in (L.FILE, L.DIR, L.SYMLINK, L.HARDLINK):
            if kinds.get(path) is not None:
                continue
            kinds[path] = kind
        for p in parents:
            kinds.setdefault(p, L.DIR)
        kept.append((path, kind, files[-1] if kind == L.HARDLINK else ""))
        if kind == L.FILE:
            files.append(path)
    return kept


def _header(path: str, kind: str, link: str = "") -> Header:
    if kind == "whiteout":
        parent, _, name = path.rpartition("/")
        return f(f"{parent}/.wh.{name}" if parent else f".wh.{name}")
    if kind == "opaque":
        return f(f"{L.parent_of(path)}/.wh..wh..opq")
    return Header(path, kind, link or ("x" if kind == L.SYMLINK else ""))


def _reference(layers_bottom_first: list[list[tuple[str, str, str]]]) -> dict[str, tuple[str, int]]:
    """Apply layers one after another to a tree, as unpacking them in order (overlay semantics) would."""
    tree: dict[str, tuple[str, int]] = {}

    def remove(path: str) -> None:
        for p in [p for p in tree if p == path or p.startswith(path + "/")]:
            del tree[p]

    def make_dir(path: str, number: int) -> None:
        for p in [*L.ancestors(path), path]:
            if p in tree and tree[p][0] != L.DIR:
                remove(p)
            tree.setdefault(p, (L.DIR, number))

    for number, layer in enumerate(layers_bottom_first):
        for path, kind, _ in layer:  # whiteouts apply to lower layers only: before this layer's entries
            if kind == "whiteout":
                remove(path)
            elif kind == "opaque":
                directory = L.parent_of(path)
                for p in [p for p in tree if p.startswith(directory + "/")]:
                    del tree[p]
        for path, kind, _ in layer:
            if kind in ("whiteout", "opaque"):
                parent = L.parent_of(path)
                if parent:
                    make_dir(parent, number)
                continue
            for p in L.ancestors(path):
                make_dir(p, number)
            if kind == L.DIR:
                make_dir(path, number)
            else:
                remove(path)
                tree[path] = (L.FILE if kind == L.HARDLINK else kind, number)  # a link has its layer's content
    return tree


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(_PATHS, _KINDS), max_size=8), min_size=1, max_size=4))
def test_planner_matches_sequential_unpacking(raw_layers):
    layers = [_valid_layer(layer) for layer in raw_layers]  # bottom first
    planner = MergePlanner()
    emitted: dict[str, tuple[str, int]] = {}
    implied: set[str] = set()
    for number in reversed(range(len(layers))):
        planner.start_layer(f"layer{number}")
        for path, kind, link in layers[number]:
            decision = planner.decide(_header(path, kind, link))
            if decision.action in (Action.EMIT, Action.DEFERRED):
                assert decision.path not in emitted
                emitted[decision.path] = (L.FILE if kind == L.HARDLINK else kind, number)
                implied.update(L.ancestors(decision.path))
            if decision.action is Action.EMIT and kind == L.HARDLINK:
                assert emitted[decision.link] == (L.FILE, number)  # linked to the file of its own layer
        planner.finish_layer()
    for directory in planner.unwritten_directories():  # written at the end of the stream
        implied.update([directory, *L.ancestors(directory)])
    expected = _reference(layers)
    got = {p: k for p, (k, _) in emitted.items()}
    got.update({p: L.DIR for p in implied if p not in got})
    assert got == {p: k for p, (k, _) in expected.items()}
    for path, (kind, number) in emitted.items():
        if kind != L.DIR:
            assert expected[path] == (kind, number), path
