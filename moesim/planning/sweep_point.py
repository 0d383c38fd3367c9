"""One sweep point: inputs cached per worker process, evaluated to one flat row."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moesim.errors import MoesimError, PlacementError
from moesim.inputs.config import Scenario
from moesim.output.result import layer_imbalance
from moesim.planning.evaluate import (
    WEIGHT_DTYPE_BYTES,
    decode_step,
    prefill_steps,
    scenario_memory_fit,
    step_traffic,
)
from moesim.planning.resolve import RunInputs, load_any_trace, parse_layout
from moesim.planning.sweep_rows import ROW_COLUMNS
from moesim.traffic.experts import contiguous_placement
from moesim.traffic.memory import MemoryFit
from moesim.traffic.placement import Parallelism, check_tp_fits_model
from moesim.traffic.traffic import Traffic, compute_traffic
from moesim.traffic.workload import StepWorkload, build_step

__all__ = ["point_key", "PointMetrics", "run_point", "evaluate_point", "pareto_front"]

if TYPE_CHECKING:
    from moesim.inputs.topology import Topology


def point_key(scenario: Scenario) -> str:
    """Stable 16-hex-digit hash of what a point computes (its name and description excluded)."""
    fields = scenario.model_dump(exclude={"name", "description"})
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---- cached inputs (per worker process) -----------------------------------------------------


@functools.cache
def _model(spec: str):  # type: ignore[no-untyped-def]
    from moesim.inputs.model_files import load_model

    return load_model(spec)


@functools.lru_cache(maxsize=8)
def _trace(spec: str):  # type: ignore[no-untyped-def]
    return load_any_trace(spec)


@functools.cache
def _topology(spec: str) -> Topology:
    from moesim.inputs.topology import load_topology

    return load_topology(spec)


@functools.cache
def _routes(topology: str, world: int):  # type: ignore[no-untyped-def]
    from moesim.engine.routes import build_route_table

    return build_route_table(_topology(topology), world)


@functools.cache
def _placement(spec_json: str) -> Parallelism:
    return parse_layout(json.loads(spec_json))


@functools.lru_cache(maxsize=4)
def _step(trace: str, phase: str, batch: int | None, context: int | None) -> StepWorkload:
    # a prefill step holds batch x context tokens, so only the current point's are kept
    return build_step(_trace(trace)[0], phase, batch, context)


@functools.lru_cache(maxsize=64)
def _traffic(key: tuple[Any, ...], phase: str, gpus_per_node: int) -> Traffic:
    model, trace, placement, batch, context, act_dtype, dedup, sp_variant = key
    return compute_traffic(
        _step(trace, phase, batch, context).trace,
        _model(model),
        _placement(placement),
        act_dtype=act_dtype,
        dedup=dedup,
        gpus_per_node=gpus_per_node,
        phase=phase,
        sp_variant=sp_variant,
    )


def _step_traffic(inputs: RunInputs, phase: str) -> tuple[StepWorkload, Traffic]:
    """The scenario's `phase` step and its traffic, shared by points differing only in topology."""
    sc = inputs.scenario
    placement = json.dumps(sc.placement, sort_keys=True)
    key = (sc.model, sc.trace, placement, sc.batch, sc.context, sc.act_dtype, sc.dedup,
           sc.sp_variant)  # fmt: skip
    traffic = _traffic(key, phase, inputs.gpus_per_node)
    return _step(sc.trace, phase, sc.batch, sc.context), traffic


def _topo(inputs: RunInputs) -> Topology:
    """The point's topology (`_inputs` always loads one)."""
    if inputs.topology is None:  # pragma: no cover - _inputs raises first
        raise PlacementError("a sweep point needs a topology")
    return inputs.topology


def _inputs(sc: Scenario) -> RunInputs:
    """`simulate.resolve_inputs` from the per-process caches (a topology is required)."""
    if sc.topology is None:
        raise PlacementError("a sweep point needs a topology; list some under 'topologies'")
    par = _placement(json.dumps(sc.placement, sort_keys=True))
    topology = _topology(sc.topology)
    if topology.num_gpus < par.world:
        raise PlacementError(
            f"placement {par.label} needs {par.world} GPUs but topology {sc.topology} has "
            f"{topology.num_gpus}; pick a smaller layout or a larger topology"
        )
    trace, source = _trace(sc.trace)
    gpus_per_node = min(topology.gpus_per_node, par.world)
    model = _model(sc.model)
    experts = contiguous_placement(model.num_experts, par.moe_ep, model.num_moe_layers)
    return RunInputs(sc, model, trace, source, par, experts, topology, gpus_per_node)


# ---- one point ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointMetrics:
    """The figures of one point; `ttft_s` is None when the prefill was not timed."""

    ttft_s: float | None
    tpot_s: float
    tokens_per_s: float
    a2a_bytes: int
    expert_imbalance_max: float
    rank_imbalance_max: float


def _timed_s(inputs: RunInputs, step: StepWorkload, traffic: Traffic) -> float:
    """Seconds of one step on the point's topology, with the cached route table."""
    from moesim.engine.plan import build_step_plan
    from moesim.engine.step import simulate_step

    sc = inputs.scenario
    plan = build_step_plan(
        step,
        traffic,
        inputs.model,
        _topo(inputs).gpu_spec,
        act_dtype=sc.act_dtype,
        weight_bytes=WEIGHT_DTYPE_BYTES[sc.weight_dtype],
    )
    routes = _routes(sc.topology, inputs.parallelism.world)
    return simulate_step(plan, _topo(inputs), sc.fidelity, routes=routes).step_s


def run_point(scenario: Scenario, *, with_ttft: bool = True) -> PointMetrics:
    """The figures `simulate.run_scenario` reports, from cached inputs (a topology is required).

    `ttft_s` is the chunked prefill of the batch, `tpot_s` the mean over `decode_steps` decode
    steps, `tokens_per_s` decode sequences per `tpot_s`; `a2a_bytes` and imbalance are those of
    the scenario's own phase (its first step).
    """
    inputs = _inputs(scenario)
    decode, traffic = _step_traffic(inputs, "decode")
    decode_s = [_timed_s(inputs, decode, traffic)]
    for index in range(1, scenario.decode_steps):
        later = decode_step(inputs, index)
        decode_s.append(_timed_s(inputs, later, step_traffic(inputs, later)))
    tpot_s = sum(decode_s) / len(decode_s)
    prefill = prefill_steps(inputs) if with_ttft or scenario.phase == "prefill" else []
    ttft_s = None
    if with_ttft:
        ttft_s = sum(
            _timed_s(inputs, chunk, step_traffic(inputs, chunk)) * repeats
            for chunk, repeats in prefill
        )
    if scenario.phase == "prefill":
        traffic = step_traffic(inputs, prefill[0][0])
    imbalance = layer_imbalance(traffic)
    return PointMetrics(
        ttft_s=ttft_s,
        tpot_s=tpot_s,
        tokens_per_s=decode.num_sequences / tpot_s,
        a2a_bytes=int(2 * traffic.dispatch_cross_bytes().sum()),
        expert_imbalance_max=float(imbalance.expert_max_over_mean.max()),
        rank_imbalance_max=float(imbalance.rank_max_over_mean.max()),
    )


def _memory_fit(inputs: RunInputs) -> MemoryFit:
    """Per-rank memory of the point: `batch` sequences at `context` (KV in the act dtype)."""
    return scenario_memory_fit(inputs.scenario, inputs.model, inputs.parallelism, _topo(inputs))


def _input_row(sc: Scenario) -> dict[str, Any]:
    return {
        "key": point_key(sc),
        "model": sc.model,
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
    """One row (keys `ROW_COLUMNS`, missing figures None); a MoesimError makes it infeasible."""
    row: dict[str, Any] = dict.fromkeys(ROW_COLUMNS)
    row.update(_input_row(scenario))
    row["feasible"] = False
    try:
        row["world"] = _placement(json.dumps(scenario.placement, sort_keys=True)).world
        inputs = _inputs(scenario)
        price = _topo(inputs).spec.gpu_price_per_hour_usd
        row["gpu_price_per_hour_usd"] = price
        par, model = inputs.parallelism, inputs.model
        contiguous_placement(model.num_experts, par.moe_ep, model.num_moe_layers)
        check_tp_fits_model(par, model.num_attention_heads, model.expert_ffn_size)
        fit = _memory_fit(inputs)
        row["memory_total_bytes"] = fit.total_bytes
        row["memory_headroom_bytes"] = fit.headroom_bytes
        if not fit.fits:
            row["reason"] = f"out of memory: {fit.reason}"
            return row
        metrics = run_point(scenario, with_ttft=with_ttft)
    except MoesimError as exc:
        row["reason"] = str(exc)
        return row
    row.update(
        feasible=True,
        reason="",
        ttft_s=metrics.ttft_s,
        tpot_s=metrics.tpot_s,
        tokens_per_s=metrics.tokens_per_s,
        tokens_per_s_per_gpu=metrics.tokens_per_s / par.world,
        a2a_bytes=metrics.a2a_bytes,
        expert_imbalance_max=metrics.expert_imbalance_max,
        rank_imbalance_max=metrics.rank_imbalance_max,
    )
    if price is not None:
        row["usd_per_hour"] = price * par.world
        row["usd_per_million_tokens"] = row["usd_per_hour"] / 3600 / metrics.tokens_per_s * 1e6
    return row


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feasible typed rows no other beats on both lower `tpot_s` and higher throughput per GPU."""
    timed = [r for r in rows if r.get("feasible") and r.get("tpot_s") is not None]
    timed.sort(key=lambda r: (r["tpot_s"], -r["tokens_per_s_per_gpu"]))
    front, best = [], -math.inf
    for row in timed:
        if row["tokens_per_s_per_gpu"] > best:
            front.append(row)
            best = row["tokens_per_s_per_gpu"]
    return front
