"""One sweep point: evaluated with the worker process's cache, flattened to one row."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from moesim.errors import MoesimError
from moesim.inputs.config import Scenario
from moesim.planning.evaluate import EvaluationCache, Infeasible, try_evaluate
from moesim.planning.sweep_rows import ROW_COLUMNS

__all__ = ["point_key", "evaluate_point", "pareto_front", "input_files", "missing_inputs",
           "with_absolute_inputs", "shown_inputs"]

# Scenario fields added after sweeps were first written: left out of a point's key while they
# are unset, so an output written before them still resumes.
_LATER_FIELDS = ("expert_placement", "layers", "trace_tokens", "serve")

# One cache per worker process: inputs, route tables and recent steps' traffic are shared by
# the points a worker runs (topology is the grid's innermost field, so neighbours share a step).
_CACHE: EvaluationCache | None = None


def point_key(scenario: Scenario) -> str:
    """Stable 16-hex-digit hash of what a point computes (its name and description excluded)."""
    fields = scenario.model_dump(exclude={"name", "description"})
    for name in _LATER_FIELDS:
        if fields.get(name) is None:
            fields.pop(name, None)
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---- the files a point reads ------------------------------------------------------------------
# A point runs wherever a worker is (another process, another Ray node, another folder): the
# files it names travel as absolute paths, and a file a worker cannot find is never a row.

_FILE_SUFFIXES = {".npz", ".yaml", ".yml", ".json", ".jsonl", ".csv"}


def _names_file(field: str, value: str) -> bool:
    """Whether a Scenario value names a file (else a preset, bundled trace or hub id)."""
    if value.startswith("bundled:"):
        return False
    if field in ("expert_placement", "serve.requests_file"):
        return True
    suffix = Path(value).suffix.lower() in _FILE_SUFFIXES
    # a model with a slash may be a hub id ("mistralai/Mixtral-8x7B-v0.1"): only its suffix
    return suffix if field == "model" else suffix or "/" in value


def input_files(scenario: Scenario) -> dict[str, str]:
    """The Scenario fields naming a file (or an existing path) -> the path as written."""
    values: dict[str, Any] = {name: getattr(scenario, name) for name in
                              ("model", "trace", "topology", "expert_placement", "kernels")}
    if scenario.serve is not None:
        values["serve.requests_file"] = scenario.serve.requests_file
    return {field: value for field, value in values.items() if isinstance(value, str)
            and (_names_file(field, value) or _exists(field, value))}


def _exists(field: str, value: str) -> bool:
    """Whether the file is here (a model may be a Hugging Face folder with a config.json)."""
    path = Path(value)
    return path.is_file() or (field == "model" and (path / "config.json").is_file())


def missing_inputs(scenario: Scenario) -> list[str]:
    """One line per file the point names that does not exist here."""
    return [f"{field} file {value} does not exist"
            for field, value in input_files(scenario).items() if not _exists(field, value)]


def with_absolute_inputs(scenario: Scenario) -> Scenario:
    """The point with every relative file path that exists here made absolute, so it reads
    the same files from any working folder (its key is the original's: `point_key`)."""
    absolute: dict[str, Any] = {field: str(Path(value).resolve()) for field, value in
                                input_files(scenario).items() if _exists(field, value)
                                and not Path(value).is_absolute()}
    if not absolute:
        return scenario
    serve = absolute.pop("serve.requests_file", None)
    if serve is not None and scenario.serve is not None:
        absolute["serve"] = scenario.serve.model_copy(update={"requests_file": serve})
    return scenario.model_copy(update=absolute)


def shown_inputs(scenario: Scenario) -> dict[str, Any]:
    """The row's input cells of `scenario` as the grid wrote them."""
    return {name: value for name, value in _input_row(scenario).items() if name != "key"}


def _input_row(sc: Scenario) -> dict[str, Any]:
    return {
        "key": point_key(sc),
        "model": sc.model if isinstance(sc.model, str) else json.dumps(sc.model),
        "trace": sc.trace,
        "topology": sc.topology,
        "placement": sc.placement if isinstance(sc.placement, str) else json.dumps(sc.placement),
        "batch": sc.batch,
        "context": sc.context,
        "phase": sc.phase,
        "fidelity": sc.fidelity,
        "act_dtype": sc.act_dtype,
        "weight_dtype": sc.weight_dtype,
        "dedup": sc.dedup,
        "sp_variant": sc.sp_variant,
    }


def evaluate_point(scenario: Scenario, *, with_ttft: bool = True) -> dict[str, Any]:
    """One row (keys `ROW_COLUMNS`, missing figures None); a point that cannot run is a row
    with `feasible` false and the reason (`try_evaluate`)."""
    global _CACHE
    if _CACHE is None:
        _CACHE = EvaluationCache()
    row: dict[str, Any] = dict.fromkeys(ROW_COLUMNS)
    row.update(_input_row(scenario))
    if scenario.topology is None:
        row.update(feasible=False, reason="a sweep point needs a topology; list some under "
                   "'topologies'")
        return row
    outcome = try_evaluate(scenario, with_ttft=with_ttft, cache=_CACHE)
    row["world"] = outcome.world
    row["gpu_price_per_hour_usd"] = outcome.gpu_price_per_hour_usd
    if outcome.memory is not None:
        row["memory_total_bytes"] = outcome.memory.total_bytes
        row["memory_headroom_bytes"] = outcome.memory.headroom_bytes
    if isinstance(outcome, Infeasible):
        row.update(feasible=False, reason=outcome.reason)
        return row
    price = outcome.gpu_price_per_hour_usd
    row.update(
        feasible=True,
        reason="",
        ttft_s=outcome.ttft_s,
        tpot_s=outcome.tpot_s,
        tokens_per_s=outcome.tokens_per_s,
        tokens_per_s_per_gpu=outcome.tokens_per_s_per_gpu,
        a2a_bytes=outcome.a2a_bytes,
        expert_imbalance_max=outcome.imbalance["expert_max_over_mean"].max,
        rank_imbalance_max=outcome.imbalance["rank_max_over_mean"].max,
        usd_per_hour=None if price is None else price * outcome.world,
        usd_per_million_tokens=outcome.usd_per_million_tokens,
    )
    if scenario.serve is not None:
        row.update(_served(scenario, _CACHE))
    return row


def _served(scenario: Scenario, cache: EvaluationCache) -> dict[str, Any]:
    """The `served_*` cells of a feasible point with a served workload; a layout that cannot
    serve it (SP, no room for a KV cache) has only `served_reason`."""
    from moesim.planning.serving import serve

    try:
        data = serve(scenario, cache).to_json()
    except MoesimError as exc:
        return {"served_reason": str(exc)}
    cells: dict[str, Any] = {"served_reason": ""}
    for metric in ("ttft", "tpot"):
        for p in ("p50", "p90", "p99"):
            cells[f"served_{metric}_{p}_s"] = data[f"{metric}_s"][p]
    for name in ("request_throughput_per_s", "output_tokens_per_s_per_gpu", "goodput_per_s",
                 "preemptions", "usd_per_million_tokens"):
        cells[f"served_{name}"] = data[name]
    return cells


def pareto_front(rows: list[dict[str, Any]], tpot: str = "tpot_s",
                 throughput: str = "tokens_per_s_per_gpu") -> list[dict[str, Any]]:
    """Feasible typed rows no other beats on both lower `tpot` and higher `throughput` (per
    GPU): the one-step columns, or served ones such as `served_tpot_p90_s`."""
    timed = [r for r in rows if r.get("feasible") and r.get(tpot) is not None]
    timed.sort(key=lambda r: (r[tpot], -r[throughput]))
    front, best = [], -math.inf
    for row in timed:
        if row[throughput] > best:
            front.append(row)
            best = row[throughput]
    return front
