"""The package layout docs/architecture.md promises: layers that only import downward, no import
cycle between files, one definition of the criteria, no test hooks in the library, and files
short enough to read (or saying why they are not)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "cvsjepa"
MAX_LINES = 450
LONG_REASON = "This file is long because"


def _modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every cvsjepa module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - (node.level - 1)] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_files():
    assert _cycles(_graph()) == []


def test_only_train_commands_and_the_demo_import_train():
    graph = _graph()
    allowed = ("cvsjepa.train", "cvsjepa.commands", "cvsjepa.demo")
    offenders = sorted(f"{a} -> {b}" for a, bs in graph.items() for b in bs
                       if b.startswith("cvsjepa.train") and not a.startswith(allowed))
    assert offenders == []


def test_the_criteria_are_defined_once():
    definitions = [f for f in SRC.rglob("*.py") if re.search(r"^CRITERIA\s*=", f.read_text(), re.M)]
    assert definitions == [SRC / "criteria.py"]


def test_no_fault_hook_in_the_library():
    hooks = [f for f in SRC.rglob("*.py") if re.search(r"os\.environ.*FAULT|FAULT.*os\.environ", f.read_text())]
    assert hooks == []


def test_long_files_say_why():
    long = [f"{f.relative_to(SRC)} ({n} lines)" for f in SRC.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LINES and LONG_REASON not in f.read_text()[:4000]]
    assert long == [], f"over {MAX_LINES} lines without '{LONG_REASON} ...' near the top"
