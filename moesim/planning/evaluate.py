"""Evaluate: the one function that walks a Scenario through the whole chain to a RunResult.

`evaluate(scenario)` resolves the inputs (`moesim.planning.resolve`), fits the layout in
memory, builds the steps (`moesim.traffic.workload`), counts their traffic, costs and plans
them (`moesim.engine`), runs the plans on the chosen backend and assembles the typed
`RunResult`. Every command (run, compare, sweep, plan, the plots and the report, validate's
prediction) gets its figures here or from the step-level part (`step_traffic`, `time_step`).

What the figures mean:
- traffic, imbalance and `latency` describe the scenario's own phase: its first prefill chunk
  or its first decode step;
- `ttft_s` is the prefill of `batch` prompts of `context` tokens in chunks of at most
  `prefill_chunk_tokens`, summed over the chunk steps; `tpot_s` the mean of `decode_steps`
  consecutive decode steps; `tokens_per_s` = sequences / `tpot_s`.

An `EvaluationCache` keeps loaded inputs, route tables and the traffic of recent steps across
scenarios (a sweep worker or a comparison): points that differ only in topology share a step's
traffic.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from moesim.engine.a2a import compute_slowdown
from moesim.engine.backends import execute
from moesim.engine.cost import StepCosts, compute_model, step_costs
from moesim.engine.plan import MicroBatch, build_step_plan
from moesim.engine.timeline import StepTimeline
from moesim.errors import MoesimError, PlacementError, TopologyError
from moesim.inputs.config import Scenario
from moesim.output.result import RunResult, StepDetail, latency_of, traffic_figures
from moesim.planning.resolve import Resolver, RunInputs
from moesim.traffic.memory import MemoryFit, memory_fit
from moesim.traffic.traffic import Traffic, compute_traffic, deepep_ll_buffer_bytes
from moesim.traffic.workload import (
    StepWorkload,
    build_step,
    mtp_rates,
    mtp_tokens_per_step,
    prefill_chunks,
    split_step,
    trace_sequences,
)

__all__ = [
    "DoesNotFit",
    "Infeasible",
    "EvaluationCache",
    "evaluate",
    "try_evaluate",
    "step_traffic",
    "time_step",
    "prefill_steps",
    "decode_step",
    "scenario_memory_fit",
]

# Traffic of this many recent steps is kept by a caching evaluation (each is [L, W, W] small).
_TRAFFIC_KEPT = 64


class DoesNotFit(PlacementError):
    """The layout does not fit in GPU memory; `memory` says by how much and why."""

    def __init__(self, message: str, memory: MemoryFit) -> None:
        super().__init__(message)
        self.memory = memory


@dataclass(frozen=True)
class Infeasible:
    """A scenario that cannot run, with the reason and what was known before it stopped."""

    reason: str
    world: int | None = None
    gpu_price_per_hour_usd: float | None = None
    memory: MemoryFit | None = None


class EvaluationCache:
    """Inputs, route tables and recent steps' traffic shared by many evaluations."""

    def __init__(self) -> None:
        self.resolver = Resolver(cache=True)
        self._traffic: OrderedDict[Any, tuple[StepWorkload, Traffic]] = OrderedDict()

    def step(
        self, inputs: RunInputs, key: tuple[Any, ...], build: Callable[[], StepWorkload]
    ) -> tuple[StepWorkload, Traffic]:
        """The step `key` of the scenario and its traffic, computed once per traffic inputs."""
        sc = inputs.scenario
        full = (_traffic_key(sc), inputs.gpus_per_node, key)
        if full not in self._traffic:
            step = build()
            self._traffic[full] = (step, step_traffic(inputs, step))
            while len(self._traffic) > _TRAFFIC_KEPT:
                self._traffic.popitem(last=False)
        self._traffic.move_to_end(full)
        return self._traffic[full]


def _traffic_key(sc: Scenario) -> str:
    """Everything but the topology that a step's traffic depends on."""
    fields = ("model", "trace", "trace_tokens", "layers", "placement", "expert_placement",
              "batch", "context", "prefill_chunk_tokens", "act_dtype", "dedup", "sp_variant",
              "a2a", "dispatch_dtype", "eplb", "redundant_experts", "eplb_window", "mtp")
    return json.dumps(sc.model_dump(include=set(fields)), sort_keys=True)


def step_traffic(inputs: RunInputs, step: StepWorkload) -> Traffic:
    """Traffic of one step of the scenario."""
    sc = inputs.scenario
    return compute_traffic(
        step.trace,
        inputs.model,
        inputs.parallelism,
        experts=inputs.experts,
        token_group=step.token_group,
        act_dtype=sc.act_dtype,
        dedup=sc.dedup,
        gpus_per_node=inputs.gpus_per_node,
        phase=step.phase,
        sp_variant=sc.sp_variant,
        a2a=sc.a2a,
        dispatch_dtype=sc.dispatch_dtype,
    )


def time_step(
    inputs: RunInputs,
    step: StepWorkload,
    traffic: Traffic,
    *,
    costs: StepCosts | None = None,
    resolver: Resolver | None = None,
) -> StepTimeline:
    """Plan one step and run it on the scenario's topology at its fidelity; `costs` replaces
    the cost model's compute (the live harness runs only the expert GEMMs)."""
    topology = inputs.topology
    if topology is None:
        raise ValueError("time_step needs a scenario with a topology")
    sc = inputs.scenario
    compute = compute_model(sc.kernels, topology.gpu_spec)
    if costs is None:
        costs = step_costs(step, traffic, inputs.model, topology.gpu_spec,
                           precision=sc.precision, compute=compute)
    micro: tuple[MicroBatch, ...] = ()
    overlap = sc.overlap
    if overlap == "tbo" and inputs.parallelism.attn_sp > 1:
        raise PlacementError(f"placement {inputs.parallelism.label}: two-batch overlap with "
                             "sequence-parallel attention is not modelled (halving each SP "
                             "rank's slice would run tokens before the K/V they attend to); use "
                             "--overlap shared or none")
    if overlap == "tbo":
        halves = split_step(step, inputs.parallelism.token_groups)
        if min(h.num_tokens for h in halves) == 0:
            overlap = "none"  # nothing to split: the result's notes say so (`_notes`)
        else:
            for half in halves:
                half_traffic = step_traffic(inputs, half)
                micro += (MicroBatch(half_traffic, step_costs(
                    half, half_traffic, inputs.model, topology.gpu_spec,
                    precision=sc.precision, compute=compute)),)
    plan = build_step_plan(traffic, costs, inputs.model.first_dense_layers, overlap=overlap,
                           micro_batches=micro,
                           compute_slowdown=compute_slowdown(sc.a2a, topology))
    routes = (resolver or Resolver()).routes(topology, inputs.parallelism.world)
    return check_finite_times(execute(plan, topology, sc.fidelity, routes=routes),
                              topology.name)


def check_finite_times(timeline: StepTimeline, topology: str) -> StepTimeline:
    """The timeline, or a TopologyError when its step time is not a finite number of seconds
    (a link or GPU figure far out of range), so no NaN or Infinity reaches a result."""
    step_s = timeline.step_s
    if not math.isfinite(step_s) or bool(np.isinf(timeline.end_s).any()):
        raise TopologyError(
            f"topology '{topology}': the step time came out as {step_s!r} s, not a finite "
            "number; a bandwidth, latency, peak or efficiency of the topology is far out of "
            "range (check its figures against the GPU's and links' datasheets)")
    return timeline


def scenario_memory_fit(inputs: RunInputs) -> MemoryFit:
    """The memory fit of one scenario's layout on its topology (KV cache in the act dtype)."""
    sc = inputs.scenario
    if inputs.topology is None:
        raise ValueError("a memory fit needs a scenario with a topology")
    prec = sc.precision
    return memory_fit(
        inputs.model,
        inputs.parallelism,
        inputs.topology.gpu_spec.memory_bytes,
        batch=sc.batch or 1,
        context=sc.context or 1,
        weight_bytes=prec.weight_bytes,
        expert_weight_bytes=prec.expert_weight_bytes,
        act_bytes=prec.act_bytes,
        kv_bytes=prec.kv_bytes,
        prefill_chunk_tokens=sc.prefill_chunk_tokens,
        experts=inputs.experts,
        a2a_buffer_bytes=a2a_buffer_bytes(inputs),
    )


def a2a_buffer_bytes(inputs: RunInputs) -> int:
    """DeepEP low-latency's fixed RDMA buffer per rank (0 for the other implementations),
    sized by the most tokens a rank dispatches in any step of the scenario: a decode step
    (1 + mtp tokens per sequence) or a prefill chunk, over the attention groups."""
    sc, par = inputs.scenario, inputs.parallelism
    if sc.a2a != "deepep-ll" or par.moe_ep == 1:
        return 0
    batch = sc.batch or 1
    prefill = min(sc.prefill_chunk_tokens, batch * (sc.context or 1))
    most = max(batch * (1 + sc.mtp), prefill)
    per_rank = -(-most // par.world)  # every rank dispatches its share of the step's tokens
    return deepep_ll_buffer_bytes(per_rank, inputs.model.hidden_size,
                                  inputs.model.num_experts + sc.redundant_experts)


StepSource = tuple[tuple[Any, ...], Callable[[], StepWorkload], int]  # key, builder, repeats


def prefill_steps(inputs: RunInputs) -> list[StepSource]:
    """The chunk steps of the batch's prefill: (key, builder, how many times it runs)."""
    sc = inputs.scenario
    if sc.batch is None and sc.context is None:
        return [(("prefill",), lambda: build_step(inputs.trace, "prefill"), 1)]
    context = sc.context or int(trace_sequences(inputs.trace)[1].max())
    return [
        (("prefill", c.sequences, c.offset, c.length),
         partial(build_step, inputs.trace, "prefill", c.sequences, c.length, offset=c.offset),
         c.repeats)
        for c in prefill_chunks(sc.batch or 1, context, sc.prefill_chunk_tokens)
    ]


def decode_step(inputs: RunInputs, index: int = 0) -> StepWorkload:
    """Decode step `index` of the scenario's batch."""
    sc = inputs.scenario
    return build_step(inputs.trace, "decode", sc.batch, sc.context, decode_step=index,
                      tokens_per_sequence=1 + sc.mtp)


def _kernels_label(sc: Scenario, topology: Any) -> str | None:
    """The kernel profile a run was costed with (`roofline` where none covers its GPU)."""
    if topology is None:
        return None
    return compute_model(sc.kernels, topology.gpu_spec).profile


def _describe(inputs: RunInputs, step: StepWorkload, notes: list[str]) -> dict[str, Any]:
    """The `inputs` block of a result: what was run, so every number can be traced back."""
    par, sc = inputs.parallelism, inputs.scenario
    topology = inputs.topology
    return {
        "scenario": sc.name,
        "model": inputs.model.name,
        "trace": inputs.trace_source,
        "trace_metadata": dict(inputs.trace.metadata),
        "trace_tokens": inputs.trace.num_tokens,
        "tokens": step.num_tokens,
        "sequences": step.num_sequences,
        "batch": sc.batch,
        "context": sc.context,
        "layers": inputs.trace.num_layers,
        "top_k": inputs.trace.top_k,
        "placement": par.label,
        "parallelism": par.model_dump(exclude={"name"}),
        "world": par.world,
        "topology": sc.topology,
        "gpus_per_node": inputs.gpus_per_node,
        "gpu_price_per_hour_usd": topology.spec.gpu_price_per_hour_usd if topology else None,
        "phase": sc.phase,
        "act_dtype": sc.act_dtype,
        "weight_dtype": sc.weight_dtype,
        "expert_weight_dtype": sc.precision.expert_dtype,
        "kv_dtype": sc.kv_dtype or sc.act_dtype,
        "kernels": _kernels_label(sc, topology),
        "dedup": sc.dedup,
        "sp_variant": sc.sp_variant,
        "fidelity": sc.fidelity if topology is not None else None,
        "ownership": "default: contiguous token blocks per attention DP/SP group in trace order",
        "expert_placement": "contiguous: expert e on EP rank e // (E / ep)"
        if sc.expert_placement is None else inputs.experts.to_spec(),
        "notes": [*inputs.notes, *notes],
    }


def evaluate(
    scenario: Scenario, *, with_ttft: bool = True, cache: EvaluationCache | None = None
) -> RunResult:
    """Evaluate one scenario (module doc). Raises a MoesimError (DoesNotFit for memory) when it
    cannot run; `with_ttft=False` skips the prefill (its `ttft_s` is then None)."""
    cache = cache or EvaluationCache()
    inputs = cache.resolver.inputs(scenario)
    memory = None
    if inputs.topology is not None:
        memory = scenario_memory_fit(inputs)
        if not memory.fits:
            raise DoesNotFit(
                f"placement {inputs.parallelism.label} does not fit in memory on "
                f"{scenario.topology}: {memory.reason}; use more GPUs, --weight-dtype fp8, or a "
                "smaller --batch/--context", memory)
    prefill = prefill_steps(inputs)
    decode_key, decode_build = ("decode", 0), lambda: decode_step(inputs)
    if scenario.phase == "prefill":
        main_key, main_build, _ = prefill[0]
    else:
        main_key, main_build = decode_key, decode_build
    step, traffic = cache.step(inputs, main_key, main_build)
    figures = traffic_figures(traffic)
    detail = StepDetail(traffic.dispatch_bytes.sum(axis=0), traffic.expert_load)
    if inputs.topology is None:
        return RunResult(inputs=_describe(inputs, step, list(step.notes)), detail=detail,
                         moe_engine=_moe_engine(inputs, traffic, None), **figures)
    main = time_step(inputs, step, traffic, resolver=cache.resolver)

    def timed_s(key: tuple[Any, ...], build: Callable[[], StepWorkload]) -> float:
        if key == main_key:
            return main.step_s
        later, later_traffic = cache.step(inputs, key, build)
        return time_step(inputs, later, later_traffic, resolver=cache.resolver).step_s

    ttft_s = sum(timed_s(k, b) * n for k, b, n in prefill) if with_ttft else None
    decode_s = [timed_s(("decode", i), partial(decode_step, inputs, i))
                for i in range(scenario.decode_steps)]
    mtp = None
    if scenario.mtp:
        first_decode = main if main_key == decode_key else time_step(
            inputs, *cache.step(inputs, decode_key, decode_build), resolver=cache.resolver)
        mtp = mtp_figures(scenario, first_decode, decode_s)
        decode_s = [s / mtp["tokens_per_step"] for s in mtp["step_s"]]
    tpot_s = float(sum(decode_s) / len(decode_s))
    sequences = cache.step(inputs, decode_key, decode_build)[0].num_sequences
    notes = _notes(inputs, prefill, cache, decode_key, decode_build, with_ttft)
    prefill_tokens_per_s = None
    if ttft_s:
        tokens = sum(cache.step(inputs, k, b)[0].num_tokens * n for k, b, n in prefill)
        prefill_tokens_per_s = tokens / ttft_s
    return RunResult(
        inputs=_describe(inputs, step, notes),
        latency=latency_of(main, scenario.phase),
        ttft_s=ttft_s,
        tpot_s=tpot_s,
        tokens_per_s=sequences / tpot_s,
        prefill_tokens_per_s=prefill_tokens_per_s,
        tpot_steps_s=tuple(decode_s),
        moe_engine=_moe_engine(inputs, traffic, mtp),
        memory=memory,
        gpu_price_per_hour_usd=inputs.topology.spec.gpu_price_per_hour_usd,
        detail=StepDetail(detail.dispatch_rank_bytes, detail.expert_load, main),
        **_with_layer_times(figures, main),
    )


def mtp_draft_pass_s(timeline: StepTimeline) -> float:
    """Seconds of one draft pass of multi-token prediction: one MoE block plus the LM head of
    the verify step. DeepSeek-V3's MTP module is one transformer block sharing the embedding
    and output head (arXiv 2412.19437, section 2.2); at decode sizes both are bound by weight
    reads, so the verify step's block stands for the draft's (a slight over-estimate: the
    draft runs one token per sequence, the verify 1 + mtp)."""
    blocks = [b["time_s"] for b in timeline.per_layer() if b["moe"]]
    block_s = float(np.mean(blocks)) if blocks else 0.0
    return block_s + float(timeline.lm_head_s.max(initial=0.0))


def mtp_figures(scenario: Scenario, verify: StepTimeline, verify_s: list[float]
                ) -> dict[str, Any]:
    """Multi-token prediction's figures: per decode step, the verify step (1 + mtp tokens per
    sequence, routed as the trace's next tokens) plus `mtp` draft passes, and the expected
    tokens a sequence gains per step (`mtp_tokens_per_step`)."""
    draft_s = scenario.mtp * mtp_draft_pass_s(verify)
    return {
        "draft_tokens": scenario.mtp,
        "acceptance": mtp_rates(scenario.mtp, scenario.mtp_acceptance),
        "tokens_per_step": mtp_tokens_per_step(scenario.mtp, scenario.mtp_acceptance),
        "draft_s": draft_s,
        "verify_s": float(np.mean(verify_s)),
        "step_s": [v + draft_s for v in verify_s],
    }


def _moe_engine(inputs: RunInputs, traffic: Traffic, mtp: dict[str, Any] | None
                ) -> dict[str, Any]:
    """What the MoE engine ran: all-to-all implementation, overlap, expert balancing, MTP."""
    sc = inputs.scenario
    out: dict[str, Any] = {
        "a2a": sc.a2a,
        "dispatch_vector_bytes": traffic.dispatch_vector_size,
        "combine_vector_bytes": traffic.combine_vector_size,
        "overlap": sc.overlap,
        "compute_slowdown_beside_a2a": (compute_slowdown(sc.a2a, inputs.topology)
                                        if inputs.topology is not None and sc.overlap == "tbo"
                                        else 1.0),
        "eplb": sc.eplb,
        "redundant_experts": sc.redundant_experts,
        "mtp": mtp,
    }
    if sc.a2a == "deepep-ll" and inputs.parallelism.moe_ep > 1:
        out["deepep_ll_buffer_bytes"] = a2a_buffer_bytes(inputs)
    if inputs.balance is not None:
        out["rank_load"] = inputs.balance.rank_load(traffic.expert_load, inputs.parallelism,
                                                    traffic.rank_load())
    return out


def _notes(
    inputs: RunInputs,
    prefill: list[StepSource],
    cache: EvaluationCache,
    decode_key: tuple[Any, ...],
    decode_build: Callable[[], StepWorkload],
    with_ttft: bool,
) -> list[str]:
    """What the figures rest on beyond the inputs: trace reuse and tiling, chunked prefill."""
    notes = {f"decode: {n}" for n in cache.step(inputs, decode_key, decode_build)[0].notes}
    if with_ttft or inputs.scenario.phase == "prefill":
        chunks = prefill if with_ttft else prefill[:1]
        notes |= {f"prefill: {n}" for k, b, _ in chunks for n in cache.step(inputs, k, b)[0].notes}
    sc = inputs.scenario
    if sc.rebalance_steps is not None:
        notes.add(f"eplb: rebalance_steps {sc.rebalance_steps} applies to served workloads "
                  "(moesim serve); a single step runs the placement fitted on the window")
    if sc.overlap == "tbo":
        groups = inputs.parallelism.token_groups
        steps = [("decode", cache.step(inputs, decode_key, decode_build)[0])]
        if with_ttft or sc.phase == "prefill":
            steps.append(("prefill", cache.step(inputs, *prefill[0][:2])[0]))
        for phase, step in steps:
            if min(h.num_tokens for h in split_step(step, groups)) == 0:
                notes.add(f"overlap: two-batch overlap not run for the {phase} step: its "
                          f"{step.num_tokens} tokens over {groups} attention groups leave a "
                          "micro-batch empty (it ran as one batch)")
    if with_ttft and (len(prefill) > 1 or prefill[0][2] > 1):
        notes.add(f"prefill: TTFT sums {sum(n for _, _, n in prefill)} chunk steps of at most "
                  f"{inputs.scenario.prefill_chunk_tokens} tokens (prefill_chunk_tokens)")
    return sorted(notes)


def _with_layer_times(figures: dict[str, Any], main: StepTimeline) -> dict[str, Any]:
    """The traffic figures with each MoE layer's block time and slowest-rank phase times."""
    blocks = main.per_layer()
    dense = main.num_dense_blocks
    layers = tuple(
        replace(row, time_s=blocks[dense + row.layer]["time_s"],
                phase_s=blocks[dense + row.layer]["phase_max_s"])
        for row in figures["per_layer"]
    )
    return {**figures, "per_layer": layers}


def try_evaluate(
    scenario: Scenario, *, with_ttft: bool = True, cache: EvaluationCache | None = None
) -> RunResult | Infeasible:
    """`evaluate`, or why the scenario cannot run (with its world, GPU price and memory fit
    where they are known): for compare, sweep and plan, which list infeasible points."""
    cache = cache or EvaluationCache()
    try:
        return evaluate(scenario, with_ttft=with_ttft, cache=cache)
    except DoesNotFit as exc:
        return Infeasible(f"out of memory: {exc.memory.reason}", *_known(scenario, cache),
                          memory=exc.memory)
    except MoesimError as exc:
        return Infeasible(str(exc), *_known(scenario, cache))


def _known(scenario: Scenario, cache: EvaluationCache) -> tuple[int | None, float | None]:
    """The layout's world and the topology's GPU price, where they can be read."""
    world = price = None
    try:
        world = cache.resolver.layout(scenario.placement).world
    except MoesimError:
        pass
    try:
        if scenario.topology:
            price = cache.resolver.topology(scenario.topology).spec.gpu_price_per_hour_usd
    except MoesimError:
        pass
    return world, price
