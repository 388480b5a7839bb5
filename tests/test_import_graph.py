"""The import graph of fedrec, server/, client/ and simulations/ has no cycle and fedrec/ never imports Flower.

Every import counts: module level, inside functions and under ``TYPE_CHECKING``
(a cycle held together by a deferred import is still a cycle in the design).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Package name -> folder, as pyproject.toml maps them.
PACKAGES = {"fedrec": "fedrec", "fedrec.server": "server", "fedrec.client": "client",
            "fedrec.simulations": "simulations"}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg, folder in PACKAGES.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            parts = [p for p in path.relative_to(base).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".")
        base = base if path.name == "__init__.py" else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    return [stem, *(f"{stem}.{a.name}" for a in node.names)]


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (the nearest enclosing module of each name)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, path, node):
                while target and target not in mods:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_detector_finds_a_cycle_held_by_a_deferred_import() -> None:
    """The check can fail: a cycle closed only inside a function or under TYPE_CHECKING is found."""
    graph = import_graph()
    graph["fedrec.federated.plan"].add("fedrec.runconfig")  # what a `TYPE_CHECKING` import of RunConfig did
    assert ["fedrec.federated.plan", "fedrec.runconfig"] in cycles(graph)


def test_deferred_and_type_checking_imports_are_edges(tmp_path: Path) -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fedrec.runconfig import RunConfig\n" \
             "def f():\n    from .plan import build_plan\n"
    path = tmp_path / "policy.py"
    path.write_text(source)
    targets = [t for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))
               for t in _targets("fedrec.federated.policy", path, n)]
    assert "fedrec.runconfig" in targets and "fedrec.federated.plan" in targets


@pytest.mark.parametrize("module", sorted(m for m in _modules() if not m.startswith(("fedrec.server",
                                                                                      "fedrec.client",
                                                                                      "fedrec.simulations"))))
def test_core_never_imports_flower(module: str) -> None:
    tree = ast.parse(_modules()[module].read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
    assert not [n for n in names if n == "flwr" or n.startswith("flwr.")]


def test_server_and_client_never_import_each_other() -> None:
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("fedrec.server"):
            assert not {t for t in targets if t.startswith("fedrec.client")}, module
        if module.startswith("fedrec.client"):
            assert not {t for t in targets if t.startswith("fedrec.server")}, module
