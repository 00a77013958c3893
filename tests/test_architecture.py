"""The layering of docs/architecture.md, checked on the source: which package may import which,
no import cycle between modules, and no module over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "isdm"

# package -> the isdm packages it may import (docs/architecture.md, "The map")
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "seeds": set(),
    "utils": {"errors"},
    "config": {"errors", "utils"},
    "data": {"config", "errors", "seeds", "utils"},
    "models": {"config", "errors"},
    "diffusion": {"errors"},
    "solvers": {"diffusion", "errors"},
    "tracking": {"config", "errors", "utils"},
    "lineage": {"config", "data", "errors", "tracking", "utils"},
    "training": {"config", "data", "diffusion", "errors", "lineage", "models", "seeds",
                 "tracking", "utils"},
    "sampling": {"config", "data", "diffusion", "errors", "lineage", "models", "seeds", "solvers",
                 "tracking", "training", "utils"},
    "evaluation": {"config", "data", "errors", "lineage", "seeds", "tracking", "utils"},
    "curation": {"config", "data", "errors", "evaluation", "lineage", "seeds", "tracking",
                 "utils"},
    "tuning": {"config", "curation", "data", "errors", "evaluation", "lineage", "sampling",
               "seeds", "tracking", "training", "utils"},
    "original": {"config", "errors", "models", "training", "utils"},
    "serving": {"config", "errors", "sampling", "utils"},
    "cli": {"config", "curation", "data", "errors", "evaluation", "lineage", "models",
            "original", "sampling", "seeds", "tracking", "training", "tuning", "utils"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(tree: ast.AST, modules: dict[str, Path], top_only: bool) -> set[str]:
    """isdm modules imported anywhere in ``tree`` (or only by its top-level statements)."""
    nodes = tree.body if top_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("isdm"):
            subs = [f"{node.module}.{a.name}" for a in node.names]
            found.update(s for s in subs if s in modules)
            if any(s not in modules for s in subs):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "isdm"


def test_every_package_imports_only_what_the_map_allows():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        pkg = _package(name)
        if pkg in ("isdm", "bench"):  # the package root and the benchmarks may import anything
            continue
        assert pkg in ALLOWED, f"{pkg}: a new package; add it to docs/architecture.md and ALLOWED"
        for dep in _imports(ast.parse(path.read_text()), modules, top_only=False):
            other = _package(dep)
            if other not in (pkg, "isdm") and other not in ALLOWED[pkg]:
                wrong.append(f"{name} imports {dep}")
    assert wrong == []


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {m: _imports(ast.parse(p.read_text()), modules, top_only=False) - {m}
             for m, p in modules.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph.get(m, ()):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400
