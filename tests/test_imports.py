"""The import graph of ``aigp_train`` has no cycle (read statically with ``ast``; nothing is imported).

Nodes are modules (a package is its ``__init__``). An edge ``a -> b`` is any ``import`` or
``from ... import`` in ``a`` of an ``aigp_train`` module ``b``, at the top or inside a function:
a function-local import hides a cycle from import time but not from the design. ``from pkg import
name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg`` (its ``__init__``); a
package ``__init__`` re-exporting from its submodules is an edge ``__init__ -> submodule``.
Imports under ``if TYPE_CHECKING:`` never run and are not edges (annotations only).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "aigp_train"

# Edges (importer, imported) allowed to close a cycle, each with the reason it is not broken yet.
# Empty: the graph is acyclic. Add an entry only with its reason; a stale entry fails the test.
ALLOWED_CYCLE_EDGES: dict[tuple[str, str], str] = {}


def module_files(root: Path = REPO / PACKAGE) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest existing module prefix of a dotted name (``aigp_train.x.y`` of ``aigp_train.x.y.z``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    modules = module_files() if modules is None else modules
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's own package, one level up per extra dot
                    anchor = mod.split(".") if is_package else mod.split(".")[:-1]
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    resolved = _resolve(target, modules)
                    if resolved is not None and resolved != mod:
                        graph[mod].add(resolved)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search, sorted for a stable answer)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_graph_reads_the_package():
    graph = import_graph()
    assert "aigp_train.llm.backends" in graph and "aigp_train.llm.backends.factory" in graph
    # a re-export from a submodule is an edge __init__ -> submodule
    assert "aigp_train.llm.backends.factory" in graph["aigp_train.llm.backends"]
    # the factory imports its backends inside make_backend: still edges
    assert "aigp_train.llm.backends.hf_backend" in graph["aigp_train.llm.backends.factory"]


def test_find_cycle_on_small_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_resolution_of_from_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from aigp_train.sub.leaf import thing\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import aigp_train.other\n"
        "def f():\n    from aigp_train import sub\n    from aigp_train.sub import leaf2, thing\n"
        "if TYPE_CHECKING:\n    from aigp_train.typing_only import T\n")
    (pkg / "sub" / "leaf2.py").write_text("from . import leaf\nfrom .. import other\n")
    (pkg / "other.py").write_text("")
    (pkg / "typing_only.py").write_text("")
    graph = import_graph(module_files(pkg))
    assert graph["aigp_train.sub"] == {"aigp_train.sub.leaf"}
    assert graph["aigp_train.sub.leaf"] == {"aigp_train.other", "aigp_train.sub", "aigp_train.sub.leaf2"}
    assert graph["aigp_train.sub.leaf2"] == {"aigp_train.sub.leaf", "aigp_train.other"}


def test_no_import_cycle():
    graph = import_graph()
    for (a, b), reason in ALLOWED_CYCLE_EDGES.items():
        assert b in graph.get(a, ()), f"stale allow-list entry {a} -> {b} ({reason}): remove it"
        graph[a].discard(b)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Layers: the CLI on top, then the stage modules (each only wires library code), then the library.
STAGES_PACKAGE = f"{PACKAGE}.stages"
CLI = f"{PACKAGE}.cli"


def _is_stage(mod: str) -> bool:
    return mod == STAGES_PACKAGE or mod.startswith(STAGES_PACKAGE + ".")


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges that break the layers: a stage importing another stage or the CLI, or a library module (anything
    but the CLI and the stages) importing a stage or the CLI. The stages package's own ``__init__`` is no stage."""
    bad = []
    for mod, targets in graph.items():
        if mod == CLI:
            continue
        for target in sorted(targets):
            if target == CLI or (_is_stage(target) and target != STAGES_PACKAGE and mod != STAGES_PACKAGE):
                bad.append(f"{mod} -> {target}")
            elif _is_stage(target) and not _is_stage(mod):
                bad.append(f"{mod} -> {target}")
    return sorted(bad)


def test_layering_rule_on_small_graphs():
    ok = {CLI: {f"{STAGES_PACKAGE}.a", f"{PACKAGE}.lib"}, f"{STAGES_PACKAGE}.a": {f"{PACKAGE}.lib"},
          f"{PACKAGE}.lib": set()}
    assert layering_violations(ok) == []
    assert layering_violations({f"{STAGES_PACKAGE}.a": {f"{STAGES_PACKAGE}.b"}}) == [
        f"{STAGES_PACKAGE}.a -> {STAGES_PACKAGE}.b"]
    assert layering_violations({f"{STAGES_PACKAGE}.a": {CLI}}) == [f"{STAGES_PACKAGE}.a -> {CLI}"]
    assert layering_violations({f"{PACKAGE}.lib": {f"{STAGES_PACKAGE}.a", CLI, STAGES_PACKAGE}}) == sorted(
        [f"{PACKAGE}.lib -> {STAGES_PACKAGE}.a", f"{PACKAGE}.lib -> {CLI}", f"{PACKAGE}.lib -> {STAGES_PACKAGE}"])


def test_stages_import_no_stage_and_the_library_never_reaches_up():
    """Stages wire library code: a stage imports no other stage and no CLI (what two stages share lives below
    them, e.g. aigp_train.llm.config, aigp_train.ltve.transitions, aigp_train.stage_runner); nothing below the
    stages imports a stage or the CLI. Function-local imports count (``import_graph``)."""
    bad = layering_violations(import_graph())
    assert not bad, "imports across the layers:\n  " + "\n  ".join(bad)


# Optional extras: imported inside the functions that need them, never when a module is imported.
OPTIONAL = ("d3rlpy", "vllm")


def _top_level_imports(tree: ast.Module):
    """Imports that run when the module is imported: module body and ``if``/``try`` blocks at the top."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node.test):
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody)


def test_optional_extras_are_not_imported_at_module_level():
    offenders = []
    for mod, path in module_files().items():
        for node in _top_level_imports(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            offenders += [f"{mod}: {n}" for n in names if n.split(".")[0] in OPTIONAL]
    assert not offenders, offenders


def test_importing_the_toolkit_does_not_load_d3rlpy():
    """The baselines' modules, the stages that use them and the CLI import without d3rlpy (it loads on use)."""
    import subprocess
    import sys

    code = ("import sys, aigp_train, aigp_train.cli, aigp_train.baselines.policy, aigp_train.baselines.models, "
            "aigp_train.stages.baselines, aigp_train.stages.evaluate, aigp_train.stages.abtest; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'd3rlpy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
