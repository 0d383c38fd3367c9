"""Real router traces shipped inside the package (see moesim/data/README.md for provenance).

The real ones come from Mixtral-8x7B-Instruct-v0.1 served by vLLM on HumanEval prompts, logged
by the public repository Mario928/speculative-moe, converted with `moesim trace convert`.

Naming a trace (`named_trace`, every command's `--trace`): a path to a `.npz` file, or a bundled
trace as `NAME` or `bundled:NAME` (`moesim list traces` prints the names). An existing file wins
over a bundled name; a bundled trace is recorded as `bundled:NAME` however it was written.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from moesim.errors import TraceError
from moesim.trace.format import RouterTrace, load_trace

__all__ = [
    "BUNDLED_PREFIX",
    "BUNDLED_TRACES",
    "DEFAULT_BUNDLED_TRACE",
    "bundled_trace_path",
    "bundled_trace_name",
    "resolve_trace_path",
    "load_bundled_trace",
    "named_trace",
    "load_named_trace",
]

BUNDLED_PREFIX = "bundled:"

BUNDLED_TRACES: dict[str, str] = {
    "mixtral8x7b_humaneval_decode": (
        "Mixtral-8x7B-Instruct, HumanEval problems 0 and 1, decode tokens only: "
        "333 tokens x 32 layers, top-2"
    ),
    "mixtral8x7b_humaneval_synth": (
        "synthetic, fitted to mixtral8x7b_humaneval_decode (moesim trace synth --fit, seed 0): "
        "65,536 tokens in 32 independent sequences of 2,048 x 32 layers, top-2"
    ),
    "mixtral8x7b_humaneval0_prefill_decode": (
        "Mixtral-8x7B-Instruct, HumanEval problem 0, prefill and decode, only tokens logged at "
        "all 32 layers: 94 tokens (59 prefill, 35 decode), top-2"
    ),
}
DEFAULT_BUNDLED_TRACE = "mixtral8x7b_humaneval_decode"


def bundled_trace_path(name: str = DEFAULT_BUNDLED_TRACE) -> Path:
    """Filesystem path of the bundled trace `name` (a key of BUNDLED_TRACES)."""
    if name not in BUNDLED_TRACES:
        raise TraceError(f"no bundled trace named {name!r}; choose one of "
                         f"{', '.join(sorted(BUNDLED_TRACES))}")
    path = Path(str(resources.files("moesim") / "data" / f"{name}.npz"))
    if not path.is_file():
        raise TraceError(f"bundled trace {path} is missing from the installation; "
                         "reinstall moesim")
    return path


def load_bundled_trace(name: str = DEFAULT_BUNDLED_TRACE) -> RouterTrace:
    """Load the bundled trace `name`."""
    return load_trace(bundled_trace_path(name))


def bundled_trace_name(spec: str | Path) -> str | None:
    """The bundled trace `spec` names (`bundled:NAME`, or a bare `NAME` that is not an existing
    file), or None for a path."""
    if isinstance(spec, Path):
        return None
    if spec.startswith(BUNDLED_PREFIX):
        return spec[len(BUNDLED_PREFIX):]
    return spec if spec in BUNDLED_TRACES and not Path(spec).exists() else None


def resolve_trace_path(spec: str | Path) -> Path:
    """The `.npz` file a trace argument names: a path, `bundled:NAME` or a bundled `NAME`.
    TraceError listing the bundled names when it is neither an existing file nor one of them."""
    name = bundled_trace_name(spec)
    if name is not None:
        return bundled_trace_path(name)
    path = Path(spec)
    if not path.is_file():
        raise TraceError(
            f"trace '{spec}' does not exist as a file and is not a bundled trace; give a .npz "
            f"trace, or a bundled trace as NAME or bundled:NAME, NAME one of "
            f"{', '.join(sorted(BUNDLED_TRACES))} (see moesim list traces)")
    return path


def named_trace(spec: str | Path) -> tuple[RouterTrace, str]:
    """The trace a path, `bundled:NAME` or bundled `NAME` names, and the source it is recorded
    under (`bundled:NAME` for a bundled trace however it was written)."""
    name = bundled_trace_name(spec)
    if name is not None:
        return load_trace(bundled_trace_path(name)), f"{BUNDLED_PREFIX}{name}"
    return load_trace(resolve_trace_path(spec)), str(spec)


def load_named_trace(spec: str | Path) -> RouterTrace:
    """Load a `.npz` router trace from a path, or a bundled trace (`NAME` or `bundled:NAME`)."""
    return named_trace(spec)[0]
