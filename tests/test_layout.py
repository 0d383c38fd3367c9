"""The package layout shows the flow: stages import only earlier stages, no module imports
itself back through another (top-level or inside a function), plotting never runs the engine,
and `import moesim` offers the curated API without importing the stages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import moesim

ROOT = Path(__file__).resolve().parents[1]
# Stages in data-flow order; a module may import its own stage or an earlier one.
STAGES = ("errors", "inputs", "trace", "traffic", "engine", "serve", "output", "planning",
          "calibrate", "cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every moesim/validate module and the project modules it imports, anywhere in it."""
    modules = {_module_name(p): p for d in ("moesim", "validate") for p in (ROOT / d).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _stage(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "moesim" or len(parts) < 2 or parts[1] not in STAGES:
        return None
    return STAGES.index(parts[1])


def test_no_import_cycles() -> None:
    """The import graph of moesim and validate (function-level imports included, packages
    re-exporting nothing) has no cycle."""
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.rsplit(".", 1)[0] == node:  # a package importing its own submodule
                continue
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(path + [nxt])}"
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_stages_import_only_earlier_stages() -> None:
    """inputs < trace < traffic < engine < serve < output < planning < calibrate < cli."""
    for module, imported in _imports().items():
        own = _stage(module)
        for other in imported:
            theirs = _stage(other)
            if own is not None and theirs is not None:
                assert theirs <= own, f"{module} (stage {STAGES[own]}) imports {other}"


def test_plots_and_reports_never_run_the_engine() -> None:
    """moesim.output reads results; it imports no backend, network or planning module."""
    for module, imported in _imports().items():
        if module.startswith("moesim.output"):
            banned = [m for m in imported if m.startswith(("moesim.engine.backends",
                                                           "moesim.engine.network",
                                                           "moesim.planning"))]
            assert not banned, f"{module} imports {banned}"


def test_public_api_is_small_and_lazy() -> None:
    """`import moesim` gives the curated names; importing it loads no stage package."""
    assert {"evaluate", "Scenario", "RunResult", "load_topology", "load_trace",
            "load_model"} <= set(moesim.__all__)
    code = "import sys, moesim; print(sorted(m for m in sys.modules if m.startswith('moesim.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert moesim.evaluate.__module__ == "moesim.planning.evaluate"
