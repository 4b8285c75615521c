"""The layout reads as the architecture (docs/flow.md): module-level imports form no cycle,
config is a leaf, and the shared vocabulary (relaymail.common) is what the inbound side, the
policies, the relay and the console meet in, so no arrow runs from one of them into another
that it does not need (policy or relay into smtp, web into smtp, config into anything)."""

from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "relaymail")
FORBIDDEN = {("policy", "smtp"), ("policy", "web"), ("policy", "relay"), ("relay", "smtp"),
             ("relay", "web"), ("web", "smtp"), ("spool", "smtp"), ("spool", "relay"),
             ("spool", "web"), ("spool", "policy"), ("common", "smtp"), ("common", "relay"),
             ("common", "web"), ("common", "policy")}


def modules() -> dict[str, str]:
    found = {}
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path[:-3], os.path.dirname(ROOT)).replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def imports(path: str, known: dict[str, str]) -> set[str]:
    """relaymail modules imported at module level (not under TYPE_CHECKING)."""
    out = set()
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("relaymail"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names
                       if f"{node.module}.{a.name}" in known)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("relaymail"))
    return {m for m in out if m in known}


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and module in PACKAGES) else ""


PACKAGES = {f"relaymail.{d}" for d in os.listdir(ROOT)
            if os.path.isfile(os.path.join(ROOT, d, "__init__.py"))}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, known) - {m} for m, p in known.items()}


def test_no_import_cycle() -> None:
    edges, state, stack = graph(), {}, []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in edges[module]:
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in edges:
        if module not in state:
            visit(module)
    assert cycles == []


def test_no_arrow_runs_the_wrong_way() -> None:
    wrong = sorted(f"{m} -> {t}" for m, targets in graph().items() for t in targets
                   if (area(m), area(t)) in FORBIDDEN)
    assert wrong == []


def test_config_is_a_leaf() -> None:
    wrong = sorted(f"{m} -> {t}" for m, targets in graph().items() for t in targets
                   if area(m) == "config" and area(t) != "config")
    assert wrong == []
