"""prefkit's import graph has no cycle between its parts, and follows one layering.

A *part* is a subpackage (``prefkit.data``, ``prefkit.rank``, ...) or a top-level module
(``prefkit.cli``, ``prefkit.demo``, ``prefkit.importing``, ``prefkit.specs`` is a package).
The graph is built with grimp from the source and counts EVERY import statement: at module
level, inside functions (a lazy import is still a dependency) and under ``TYPE_CHECKING``.

The layering, lowest first (a part imports only parts on lower layers; parts on one layer
import nothing from each other; the package's ``__init__`` holds ``__version__`` only and is
below them all):

0. ``cache_dir``, ``extras``, ``importing``, ``losses``, ``rank``, ``report`` -- leaves: import
   nothing from prefkit (``report`` only reads ``prefkit.__version__``);
1. ``data`` -- records, readers, the store, the bundled examples (``data.examples``), data
   statistics (Krippendorff's alpha lives here: ``data.krippendorff``);
2. ``models`` -- loading, packing, log-probs, generation;
3. ``rewards`` -- reward models and reward sources (resolved objects, no spec strings);
4. ``train`` -- the loop and the trainers (given a model, prompts and a reward source);
5. ``judges`` -- the judge interface and backends (no lab judges, no spec strings);
6. ``evaluate`` -- win rates, RM benchmarks, agreement, judge validation (``evaluate.
   judge_agreement``), AlpacaEval files;
7. ``lab`` -- the simulated world (tasks, annotators, simulated judges, the pipeline that
   builds its objects directly from these parts);
8. ``leaderboard`` (the leaderboard of a votes file, shared by ``prefkit arena rank`` and the
   web app) and ``specs`` (spec strings such as ``lab:TASK:NAME``, ``gold:TASK``, ``rm:PATH``,
   ``implicit:POLICY``, ``judge:CONFIG``, ``python:mod:fn``, ``hf:PATH`` resolved into
   objects for the layers below);
9. ``serve`` -- the web app;
10. ``commands`` -- the CLI commands;
11. ``demo`` -- the guided tour;
12. ``cli``, then ``__main__``.

DESIGN.md's rules are checked on their own too: ``losses`` and ``rank`` import nothing from
the rest of prefkit, and ``train`` never imports ``serve``. Every failure lists the imports
that break the rule (importing module, imported module, line), so it names the fix.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

grimp = pytest.importorskip("grimp")

LAYERS: tuple[tuple[str, ...], ...] = (
    ("prefkit",),
    ("cache_dir", "extras", "importing", "losses", "rank", "report"),
    ("data",),
    ("models",),
    ("rewards",),
    ("train",),
    ("judges",),
    ("evaluate",),
    ("lab",),
    ("leaderboard", "specs"),
    ("serve",),
    ("commands",),
    ("demo",),
    ("cli",),
    ("__main__",),
)
"""The layering of the module docstring, below it all ``prefkit``: the package's ``__init__``
(``__version__`` only)."""

Edges = dict[tuple[str, str], list[str]]


def part(module: str) -> str:
    """The part a module belongs to: ``prefkit.data.io`` -> ``data``; ``prefkit`` -> itself."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else pieces[0]


def build(package: str):
    """grimp's graph of ``package`` with every import statement: module level, inside
    functions and under ``TYPE_CHECKING``; no cache written."""
    return grimp.build_graph(package, exclude_type_checking_imports=False, cache_dir=None)


@pytest.fixture(scope="module")
def edges() -> Edges:
    """``{(importer part, imported part): ["importer -> imported line N: source", ...]}`` over
    every import between two different parts."""
    graph = build("prefkit")
    out: Edges = defaultdict(list)
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            a, b = part(importer), part(imported)
            if a == b:
                continue
            for detail in graph.get_import_details(importer=importer, imported=imported):
                out[(a, b)].append(f"{importer} -> {imported} line {detail['line_number']}: "
                                   f"{detail['line_contents']}")
    return out


def strongly_connected(nodes: set[str], arcs: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of a directed graph (Tarjan's algorithm), each
    sorted; a component with two or more parts holds a cycle, and every cycle lies in one."""
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(arcs):
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return components


def _listing(edges: Edges, arcs, limit: int = 8) -> str:
    """The import lines of each arc (at most ``limit`` per arc, then a count)."""
    out = []
    for a, b in arcs:
        lines = edges[(a, b)]
        more = [f"    ... and {len(lines) - limit} more"] if len(lines) > limit else []
        out.append(f"  {a} -> {b}:\n" + "\n".join([f"    {x}" for x in lines[:limit]] + more))
    return "\n".join(out)


def shortest_cycles(component: list[str], arcs: set[tuple[str, str]]) -> list[list[str]]:
    """For every arc ``a -> b`` inside a strongly connected component, the shortest cycle
    through it (``b`` back to ``a`` by breadth-first search within the component); distinct
    cycles, shortest first, each as its parts in order (rotated to start at the smallest)."""
    inside = sorted((a, b) for a, b in arcs if a in component and b in component)
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in inside:
        succ[a].append(b)
    found: set[tuple[str, ...]] = set()
    for a, b in inside:
        parent: dict[str, str | None] = {b: None}
        queue = [b]
        while queue and a not in parent:
            v = queue.pop(0)
            for w in succ[v]:
                if w not in parent:
                    parent[w] = v
                    queue.append(w)
        path: list[str] = []
        v: str | None = a
        while v is not None:
            path.append(v)
            v = parent[v]
        cycle = path[::-1]  # b ... a, then the arc a -> b closes it
        start = cycle.index(min(cycle))
        found.add(tuple(cycle[start:] + cycle[:start]))
    return [list(c) for c in sorted(found, key=lambda c: (len(c), c))]


def test_strongly_connected_finds_the_cycles_of_a_known_graph():
    arcs = {("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d"), ("f", "a")}
    found = strongly_connected({"a", "b", "c", "d", "e", "f", "g"}, arcs)
    assert sorted(found) == [["a", "b", "c"], ["d", "e"], ["f"], ["g"]]
    assert strongly_connected({"x", "y"}, {("x", "y")}) == [["y"], ["x"]]
    assert shortest_cycles(["a", "b", "c"], arcs) == [["a", "b", "c"]]
    assert shortest_cycles(["a", "b", "c"], arcs | {("b", "a")}) == [["a", "b"], ["a", "b", "c"]]


def test_no_cycle_between_prefkit_parts(edges):
    nodes = {p for arc in edges for p in arc}
    assert {"data", "rank", "train", "judges", "lab", "serve", "commands", "cli"} <= nodes
    cycles = [c for c in strongly_connected(nodes, set(edges)) if len(c) > 1]
    report = []
    for component in cycles:
        for cycle in shortest_cycles(component, set(edges))[:12]:
            arcs = list(zip(cycle, cycle[1:] + cycle[:1], strict=True))
            report.append(f"cycle {' -> '.join([*cycle, cycle[0]])}:\n" + _listing(edges, arcs))
    assert not cycles, "import cycles between prefkit parts:\n" + "\n".join(report)


def test_every_import_follows_the_layering(edges):
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    unknown = sorted({p for arc in edges for p in arc} - set(layer))
    assert not unknown, (f"parts missing from LAYERS (add each to its layer in "
                         f"tests/test_import_graph.py and its docstring): {unknown}")
    upward = [(a, b) for a, b in edges if layer[a] <= layer[b]]
    assert not upward, ("imports against the layering (a part may import only parts on a "
                        "lower layer; see tests/test_import_graph.py):\n"
                        + _listing(edges, sorted(upward)))


@pytest.mark.parametrize("leaf", ["losses", "rank"])
def test_pure_maths_imports_nothing_from_the_rest(edges, leaf):
    out = [(a, b) for a, b in edges if a == leaf]
    assert not out, f"{leaf} must import nothing from the rest of prefkit:\n" + _listing(edges,
                                                                                         out)


def test_train_never_imports_serve(edges):
    assert ("train", "serve") not in edges, "train imports serve:\n" + _listing(
        edges, [("train", "serve")])


def test_the_graph_sees_lazy_and_type_checking_imports(edges, tmp_path, monkeypatch):
    """The scan counts imports inside functions and under TYPE_CHECKING: checked on a package
    written here, and on a known lazy import of prefkit."""
    package = tmp_path / "graphprobe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "top.py").write_text("import json\n")
    (package / "lazy.py").write_text("def f():\n    from . import top\n    return top\n")
    (package / "typed.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                                      "    from .lazy import f\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = build("graphprobe")
    assert graph.direct_import_exists(importer="graphprobe.lazy", imported="graphprobe.top")
    assert graph.direct_import_exists(importer="graphprobe.typed", imported="graphprobe.lazy")
    lazy = edges[("commands", "rank")]  # commands.arena imports rank inside its functions
    assert any(line.startswith("prefkit.commands.arena -> prefkit.rank") for line in lazy)
    assert ("cli", "commands") in edges and ("data", "rank") in edges
