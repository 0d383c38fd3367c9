"""Reading input files: the one place that parses YAML and JSON into pydantic models.

Every user-facing file (scenario, topology, model config, grid) goes through `read_mapping`
and `parse_model`, so a malformed file always yields one `ConfigError` that names the
file, the field and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moesim.errors import ConfigError

__all__ = [
    "read_mapping",
    "parse_model",
    "load_model_file",
    "format_validation_error",
    "Scenario",
    "load_scenario",
]

ModelT = TypeVar("ModelT", bound=BaseModel)


def read_mapping(path: str | Path, what: str = "input") -> dict[str, Any]:
    """Parse a YAML or JSON file whose top level must be a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{what} file {path} is not valid JSON: {exc.msg} at line {exc.lineno}"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{what} file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{what} file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} file {path} must hold a mapping of fields at top level, "
            f"got {type(data).__name__}"
        )
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One readable message per pydantic error: `source: field.path: problem`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against the documented fields"
        lines.append(f"{source}: field '{loc}': {msg}")
    return "; ".join(lines)


def parse_model(model: type[ModelT], data: dict[str, Any], source: str) -> ModelT:
    """Validate `data` into `model`, turning pydantic errors into one ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_model_file(model: type[ModelT], path: str | Path, what: str) -> ModelT:
    """Read and validate a YAML/JSON file into `model`."""
    return parse_model(model, read_mapping(path, what), f"{what} file {path}")


class Scenario(BaseModel):
    """One simulation input: model, trace, placement, topology and workload; flags override it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "scenario"
    description: str = ""
    model: str = "mixtral-8x7b"
    trace: str = "bundled:mixtral8x7b_humaneval_decode"
    placement: str | dict[str, int] = "EP8"
    topology: str | None = None
    phase: Literal["prefill", "decode"] = "prefill"
    act_dtype: Literal["fp32", "bf16", "fp16", "fp8"] = "bf16"
    dedup: Literal["none", "gpu", "node"] = "none"
    sp_variant: Literal["ring", "allgather"] = "ring"
    batch: int | None = Field(None, ge=1)
    context: int | None = Field(None, ge=1)
    decode_steps: int = Field(1, ge=1, le=4096)  # TPOT averages this many consecutive steps
    # Prefill is scheduled in chunks of at most this many tokens (vLLM's chunked prefill;
    # memory.py sizes activations for the same chunk). TTFT sums the chunk steps.
    prefill_chunk_tokens: int = Field(8192, ge=1)
    weight_dtype: Literal["bf16", "fp8"] = "bf16"
    fidelity: Literal["des", "analytic"] = "des"


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario YAML; relative trace/topology/model paths resolve against its folder."""
    path = Path(path)
    scenario = load_model_file(Scenario, path, "scenario")
    updates: dict[str, Any] = {}
    for field_name in ("trace", "topology", "model"):
        value = getattr(scenario, field_name)
        if isinstance(value, str) and _looks_like_path(value):
            candidate = path.parent / value
            if candidate.exists():
                updates[field_name] = str(candidate)
    return scenario.model_copy(update=updates) if updates else scenario


def _looks_like_path(value: str) -> bool:
    """A value with a file suffix or a slash names a file rather than a preset."""
    return not value.startswith("bundled:") and (
        "/" in value or Path(value).suffix in {".npz", ".yaml", ".yml", ".json"}
    )
