"""moesim: simulate Mixture-of-Experts serving on multi-GPU clusters from real router traces.

The public API (everything else is reachable through the stage packages, documented in README):

    import moesim
    result = moesim.evaluate(moesim.Scenario(placement="EP8", topology="dgx-h100",
                                             phase="decode", batch=32, context=2048))
    result.tpot_s, result.a2a_bytes, result.to_json()

Names are imported on first use, so `import moesim` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "Scenario": ("moesim.inputs.config", "Scenario"),
    "ExpertPlacementSpec": ("moesim.inputs.config", "ExpertPlacementSpec"),
    "load_scenario": ("moesim.inputs.config", "load_scenario"),
    "ModelSpec": ("moesim.inputs.models", "ModelSpec"),
    "load_model": ("moesim.inputs.model_files", "load_model"),
    "load_topology": ("moesim.inputs.topology", "load_topology"),
    "load_trace": ("moesim.trace.bundled", "load_named_trace"),
    "RouterTrace": ("moesim.trace.format", "RouterTrace"),
    "evaluate": ("moesim.planning.evaluate", "evaluate"),
    "try_evaluate": ("moesim.planning.evaluate", "try_evaluate"),
    "EvaluationCache": ("moesim.planning.evaluate", "EvaluationCache"),
    "RunResult": ("moesim.output.result", "RunResult"),
    "MoesimError": ("moesim.errors", "MoesimError"),
}

__all__ = [
    "__version__",
    "Scenario",
    "ExpertPlacementSpec",
    "load_scenario",
    "ModelSpec",
    "load_model",
    "load_topology",
    "load_trace",
    "RouterTrace",
    "evaluate",
    "try_evaluate",
    "EvaluationCache",
    "RunResult",
    "MoesimError",
]

if TYPE_CHECKING:
    from moesim.errors import MoesimError
    from moesim.inputs.config import ExpertPlacementSpec, Scenario, load_scenario
    from moesim.inputs.model_files import load_model
    from moesim.inputs.models import ModelSpec
    from moesim.inputs.topology import load_topology
    from moesim.output.result import RunResult
    from moesim.planning.evaluate import EvaluationCache, evaluate, try_evaluate
    from moesim.trace.bundled import load_named_trace as load_trace
    from moesim.trace.format import RouterTrace


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'moesim' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
