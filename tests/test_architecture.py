"""The house plan (docs/architecture.md), checked: layered imports, no cycles, small files and functions."""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "torchrl_sapg"
#: what each layer may import (besides itself); the package root re-exports everything
ALLOWED = {
    "runtime": set(),
    "envs": {"runtime"},
    "modules": {"runtime"},
    "collectors": {"envs", "modules", "runtime"},
    "objectives": {"modules", "runtime"},
    "trainers": {"objectives", "collectors", "modules", "envs", "runtime"},
    "population": {"trainers", "objectives", "collectors", "modules", "envs", "runtime"},
}
MAX_FILE_LINES, MAX_FUNCTION_LINES = 500, 80


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        yield path, ".".join(p for p in rel.parts if p != "__init__")


def _imports(path: pathlib.Path):
    """``(imported module, names)`` for every ``torchrl_sapg`` import, at any depth (lazy imports included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("torchrl_sapg"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("torchrl_sapg"):
                    yield a.name, []


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_import_points_up_a_layer():
    upward = []
    for path, module in _modules():
        layer = _layer(module)
        if layer is None:  # the package root re-exports the public API
            continue
        for target, _ in _imports(path):
            other = _layer(target)
            if other is not None and other != layer and other not in ALLOWED[layer]:
                upward.append(f"{module} -> {target}")
    assert not upward


def test_the_layers_form_no_cycle():
    graph = {layer: set() for layer in ALLOWED}
    for path, module in _modules():
        layer = _layer(module)
        for target, _ in _imports(path) if layer else ():
            other = _layer(target)
            if other and other != layer:
                graph[layer].add(other)
    seen, stack = set(), set()

    def visit(node):
        assert node not in stack, f"import cycle through {node}"
        if node in seen:
            return
        stack.add(node)
        for nxt in graph[node]:
            visit(nxt)
        stack.discard(node)
        seen.add(node)

    for layer in graph:
        visit(layer)


def test_no_private_name_is_imported_across_modules():
    crossing = [f"{module}: from {target} import {name}" for path, module in _modules()
                for target, names in _imports(path) for name in names
                if name.startswith("_") and target != module]
    assert not crossing


@pytest.mark.parametrize("path", [p for p, _ in _modules()], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_and_functions_stay_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_FILE_LINES
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long
