"""Serve: a Scenario with a served workload (`scenario.serve`) to a ServeResult.

The engines are the scenario's layout on its topology (or, with `disagg`, the prefill and
decode pools). Each attention-DP rank of an engine runs its own scheduler
(`moesim.serve.scheduler`) with a paged KV cache of what the memory fit leaves
(`moesim.traffic.memory.kv_cache_capacity_tokens`, or `kv_cache_tokens`); every iteration is
one step evaluated by `moesim.planning.evaluate`'s step-level part, routing exactly the tokens
in flight (`moesim.serve.iteration`). `moesim.serve.simulator` runs the requests
(`moesim.serve.requests`) to the end and `moesim.serve.metrics` summarises them.

`run`'s `ttft_s` and `tpot_s` are one-batch figures (the chunked prefill of `batch` prompts,
a decode step of `batch` sequences); `serve`'s are per request under load, as serving
benchmark clients measure them, queueing included.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from moesim.engine.backends.analytic import pairwise_bound_s
from moesim.errors import ConfigError, PlacementError
from moesim.inputs.config import Scenario, ServeSpec
from moesim.output.serve_result import ServeResult
from moesim.planning.evaluate import (
    DoesNotFit,
    EvaluationCache,
    mtp_draft_pass_s,
    step_traffic,
    time_step,
)
from moesim.planning.resolve import RunInputs
from moesim.serve.disagg import KvTransfer, parse_disagg
from moesim.serve.iteration import iteration_workload
from moesim.serve.kv_cache import KvCache
from moesim.serve.metrics import request_stats
from moesim.serve.requests import (
    DEFAULT_REQUESTS,
    Request,
    TraceSequences,
    closed_loop_first,
    open_loop_requests,
    read_requests_file,
)
from moesim.serve.scheduler import Batch, Scheduler
from moesim.serve.simulator import Engine, Role, simulate
from moesim.traffic.balance import balanced_placement, keep_in_place, moved_weight_bytes
from moesim.traffic.memory import kv_cache_capacity_tokens, memory_fit
from moesim.traffic.workload import mtp_rates, mtp_tokens_per_step

__all__ = ["serve", "serve_spec"]


def serve_spec(scenario: Scenario) -> ServeSpec:
    """The scenario's served workload, with an arrival process."""
    spec = scenario.serve
    if spec is None or not spec.arrival:
        raise ConfigError("serve needs an arrival process: give --rate R, --concurrency C or "
                          "--requests-file F (or a 'serve' block in the scenario)")
    return spec


class _StepTimer:
    """Times an engine's iterations with the scenario's step evaluation: with MTP, decode
    iterations add the draft passes; with `rebalance_steps` N, every N iterations EPLB runs
    again on the expert load of the last N (its ranks relabelled to keep experts in place:
    `keep_in_place`) and the weights it moves delay that iteration."""

    def __init__(self, inputs: RunInputs, cache: EvaluationCache) -> None:
        self.inputs, self.cache = inputs, cache
        self.sequences = TraceSequences(inputs.trace.seq_id)
        self.iterations = 0
        self.load = np.zeros((inputs.trace.num_layers, inputs.model.num_experts), np.int64)
        self.rebalances: list[dict[str, float]] = []

    def __call__(self, batches: Sequence[Batch]) -> float:
        step = iteration_workload(batches, self.inputs.trace, self.sequences)
        traffic = step_traffic(self.inputs, step)
        timeline = time_step(self.inputs, step, traffic, resolver=self.cache.resolver)
        seconds = timeline.step_s
        sc = self.inputs.scenario
        if sc.mtp and any(r.decoding and n > 1 for batch in batches for r, n in batch):
            seconds += sc.mtp * mtp_draft_pass_s(timeline)
        if sc.rebalance_steps:
            self.iterations += 1
            self.load += traffic.expert_load
            if self.iterations % sc.rebalance_steps == 0:
                seconds += self._rebalance()
        return seconds

    def _rebalance(self) -> float:
        """Place the experts anew from the load since the last rebalance; the seconds the
        weights take to move over the topology (every rank at once, a blocking exchange)."""
        inputs, sc = self.inputs, self.inputs.scenario
        assert inputs.balance is not None and inputs.topology is not None
        placement = keep_in_place(
            inputs.experts,
            balanced_placement(self.load, inputs.model, inputs.parallelism, policy=sc.eplb,
                               redundant=sc.redundant_experts,
                               gpus_per_node=inputs.gpus_per_node),
            max(inputs.gpus_per_node // inputs.parallelism.moe_tp, 1))
        expert_bytes = inputs.model.params_per_expert * sc.precision.expert_weight_bytes
        moved = moved_weight_bytes(inputs.experts, placement, inputs.parallelism, expert_bytes,
                                   inputs.gpus_per_node)
        routes = self.cache.resolver.routes(inputs.topology, inputs.parallelism.world)
        seconds = float(pairwise_bound_s(routes, inputs.topology, moved).max()) \
            if moved.any() else 0.0
        balance = replace(inputs.balance, placement=placement,
                          window_tokens=int(self.load[0].sum() // max(inputs.model.top_k, 1)))
        self.inputs = replace(inputs, experts=placement, balance=balance)
        self.load[:] = 0
        self.rebalances.append({"moved_bytes": float(moved.sum()), "seconds": seconds})
        return seconds


def _kv_tokens(inputs: RunInputs, spec: ServeSpec) -> int:
    """KV-cache tokens per attention group: given, or what the memory fit leaves."""
    if spec.kv_cache_tokens is not None:
        return spec.kv_cache_tokens
    sc, topo = inputs.scenario, inputs.topology
    assert topo is not None
    prec = sc.precision
    dtypes: dict[str, Any] = {
        "weight_bytes": prec.weight_bytes, "expert_weight_bytes": prec.expert_weight_bytes,
        "act_bytes": prec.act_bytes, "kv_bytes": prec.kv_bytes}
    tokens = kv_cache_capacity_tokens(
        inputs.model, inputs.parallelism, topo.gpu_spec.memory_bytes,
        max_num_seqs=spec.max_num_seqs, max_num_batched_tokens=spec.max_num_batched_tokens,
        experts=inputs.experts, **dtypes)
    if tokens < spec.block_size:
        fit = memory_fit(inputs.model, inputs.parallelism, topo.gpu_spec.memory_bytes,
                         batch=spec.max_num_seqs, context=spec.isl + spec.osl, **dtypes,
                         prefill_chunk_tokens=spec.max_num_batched_tokens,
                         experts=inputs.experts)
        raise DoesNotFit(f"placement {inputs.parallelism.label} leaves no room for a KV cache on "
                         f"{sc.topology}: {fit.reason or 'weights and buffers fill the GPU'}",
                         fit)
    return tokens


def _engine(name: str, role: Role, inputs: RunInputs, spec: ServeSpec,
            cache: EvaluationCache, first_gpu: int = 0) -> Engine:
    """One replica of `inputs`' layout: a scheduler per attention-DP rank."""
    par = inputs.parallelism
    if par.attn_sp > 1:
        raise PlacementError(f"placement {par.label}: serve runs attention TP and DP; sequence "
                             "parallel attention (SP) is not modelled for serving")
    blocks = _kv_tokens(inputs, spec) // spec.block_size
    sc = inputs.scenario
    accept = _acceptance(sc, spec.seed) if sc.mtp and role != "prefill" else None
    schedulers = [Scheduler(KvCache(blocks, spec.block_size), spec.max_num_seqs,
                            spec.max_num_batched_tokens, prefill_only=role == "prefill",
                            draft_tokens=sc.mtp, accept=accept)
                  for _ in range(par.attn_dp)]
    return Engine(name, role, schedulers, _StepTimer(inputs, cache), spec.dp_balance, first_gpu,
                  world=par.world)


def _acceptance(scenario: Scenario, seed: int) -> Any:
    """Draws how many of n draft tokens are accepted: the leading ones, draft i accepted with
    its position's rate (`mtp_acceptance`), from a generator seeded by the serve seed."""
    rates = np.asarray(mtp_rates(scenario.mtp, scenario.mtp_acceptance))
    rng = np.random.default_rng([seed, 1])

    def accept(drafts: int) -> int:
        passed = rng.random(drafts) < rates[:drafts]
        return int(np.argmin(passed)) if not passed.all() else drafts

    return accept


def _requests(spec: ServeSpec, rng: np.random.Generator) -> tuple[list[Request], Any]:
    """The first arrivals, and in a closed loop what sends the next request."""
    if spec.arrival == "rate":
        return open_loop_requests(spec, rng), None
    if spec.arrival == "replay":
        assert spec.requests_file is not None
        requests = read_requests_file(spec.requests_file, spec.field_map)
        if spec.requests is not None:
            requests = requests[: spec.requests]
        return requests, None
    first, rest = closed_loop_first(spec, rng)
    return first, rest


def serve(scenario: Scenario, cache: EvaluationCache | None = None) -> ServeResult:
    """Simulate the scenario's served workload (module doc)."""
    spec = serve_spec(scenario)
    cache = cache or EvaluationCache()
    if scenario.topology is None:
        raise ConfigError("serve needs a topology: give --topology or set it in the scenario")
    rng = np.random.default_rng(spec.seed)
    arrivals, rest = _requests(spec, rng)
    expected = len(arrivals) + (len(rest) if rest is not None else 0)
    notes: list[str] = []
    if spec.disagg:
        engines, decode, transfer, gpus, inputs = _disaggregated(scenario, spec, cache)
        notes = _placement_notes(engines + decode, inputs)
    else:
        inputs = cache.resolver.inputs(scenario)
        engines, decode, transfer = [_engine("engine", "both", inputs, spec, cache)], [], None
        gpus = inputs.parallelism.world
    sequences = TraceSequences(inputs.trace.seq_id)
    for request in arrivals:
        sequences.assign(request, expected)
    next_request = _closed_loop(rest, len(arrivals), sequences, expected)
    run = simulate(engines, arrivals, next_request=next_request, decode_engines=decode,
                   transfer_s=transfer)
    measured = [r for r in run.requests if r.id >= spec.warmup_requests]
    if not measured:
        raise ConfigError(f"--warmup-requests {spec.warmup_requests} leaves none of the "
                          f"{len(run.requests)} requests to measure; lower it or send more "
                          "--requests")
    stats = request_stats(
        measured,
        slo_ttft_s=None if spec.slo_ttft_ms is None else spec.slo_ttft_ms / 1e3,
        slo_tpot_s=None if spec.slo_tpot_ms is None else spec.slo_tpot_ms / 1e3)
    assert inputs.topology is not None
    described = _describe(scenario, spec, inputs, gpus, sequences, run.requests, notes)
    described["moe_engine"] = _moe_engine(scenario, engines + decode, inputs)
    return ServeResult(
        inputs=described,
        gpus=gpus, stats=stats, preemptions=run.preemptions,
        kv_cache_peak_fraction=run.kv_peak_fraction,
        gpu_price_per_hour_usd=inputs.topology.spec.gpu_price_per_hour_usd,
        requests=tuple(sorted(run.requests, key=lambda r: r.id)),
        iterations=tuple(run.iterations), warmup_requests=spec.warmup_requests)


def _moe_engine(scenario: Scenario, engines: list[Engine], inputs: RunInputs
                ) -> dict[str, Any]:
    """What the MoE engines ran, and what rebalancing moved and cost."""
    timers = [e.step_s for e in engines if isinstance(e.step_s, _StepTimer)]
    moves = [r for timer in timers for r in timer.rebalances]
    out: dict[str, Any] = {
        "a2a": scenario.a2a, "overlap": scenario.overlap, "eplb": scenario.eplb,
        "redundant_experts": scenario.redundant_experts,
        "rebalance_steps": scenario.rebalance_steps,
        "rebalances": len(moves),
        "rebalance_moved_bytes": float(sum(m["moved_bytes"] for m in moves)),
        "rebalance_s": float(sum(m["seconds"] for m in moves)),
        "mtp": scenario.mtp,
    }
    if scenario.mtp:
        out["mtp_acceptance"] = mtp_rates(scenario.mtp, scenario.mtp_acceptance)
        out["mtp_expected_tokens_per_step"] = mtp_tokens_per_step(scenario.mtp,
                                                                  scenario.mtp_acceptance)
    if inputs.balance is not None:
        out["eplb_window_tokens"] = inputs.balance.window_tokens
    return out


def _closed_loop(rest: deque[tuple[int, int]] | None, first_id: int, sequences: TraceSequences,
                 expected: int) -> Any:
    """A closed loop's next request: the finished request's client sends one at once."""
    if rest is None:
        return None
    counter = [first_id]

    def next_request(done: Request, now_s: float) -> Request | None:
        if not rest:
            return None
        prompt, output = rest.popleft()
        request = Request(counter[0], now_s, prompt, output, client=done.client)
        counter[0] += 1
        sequences.assign(request, expected)
        return request

    return next_request


def _disaggregated(scenario: Scenario, spec: ServeSpec, cache: EvaluationCache
                   ) -> tuple[list[Engine], list[Engine], Any, int, RunInputs]:
    """The prefill and decode pools on consecutive GPUs, and the KV transfer between them."""
    assert spec.disagg is not None
    pools = parse_disagg(spec.disagg)
    prefill = cache.resolver.inputs(scenario.model_copy(update={
        "placement": pools.prefill_layout}))
    decode = cache.resolver.inputs(scenario.model_copy(update={
        "placement": pools.decode_layout}))
    wp, wd = prefill.parallelism.world, decode.parallelism.world
    gpus = pools.prefill_engines * wp + pools.decode_engines * wd
    assert prefill.topology is not None
    if gpus > prefill.topology.num_gpus:
        raise PlacementError(f"--disagg {spec.disagg} needs {pools.prefill_engines} x {wp} + "
                             f"{pools.decode_engines} x {wd} = {gpus} GPUs but "
                             f"{scenario.topology} has {prefill.topology.num_gpus}")
    front = [_engine(f"prefill{i}", "prefill", prefill, spec, cache, i * wp)
             for i in range(pools.prefill_engines)]
    back = [_engine(f"decode{i}", "decode", decode, spec, cache,
                    pools.prefill_engines * wp + i * wd)
            for i in range(pools.decode_engines)]
    kv = KvTransfer(prefill.topology, decode.model, prefill.parallelism, decode.parallelism,
                    scenario.precision.kv_bytes)

    def transfer_s(request: Request, src: Engine, dst: Engine, group: int) -> float:
        return kv.seconds(request.prompt_tokens, src.first_gpu, request.group, dst.first_gpu,
                          group)

    return front, back, transfer_s, gpus, decode


def _placement_notes(engines: list[Engine], inputs: RunInputs) -> list[str]:
    """Every engine's iterations are timed on the topology's first GPUs of its size; say so
    where an engine's own GPUs are linked differently (a pool on another socket)."""
    topo = inputs.topology
    assert topo is not None
    notes = []
    for engine in engines:
        world = engine.world
        if engine.first_gpu and _links_of(topo, range(engine.first_gpu, engine.first_gpu + world)
                                          ) != _links_of(topo, range(world)):
            notes.append(f"engine {engine.name} sits on GPUs {engine.first_gpu}.."
                         f"{engine.first_gpu + world - 1}, linked differently from GPUs "
                         f"0..{world - 1}, on which its iterations are timed (per-engine GPU "
                         "placement is not modelled for step times; KV transfers use its GPUs)")
    return notes


def _links_of(topo: Any, gpus: range) -> list[tuple[float, float]]:
    """Per ordered GPU pair (in order): latency and bottleneck bandwidth of its first route."""
    pairs = []
    for src in gpus:
        for dst in gpus:
            if src != dst:
                route = topo.routes(src, dst)[0]
                pairs.append((round(topo.path_latency_s(route), 12),
                              topo.path_bottleneck_bytes_per_s(route)))
    return pairs


def _describe(scenario: Scenario, spec: ServeSpec, inputs: RunInputs, gpus: int,
              sequences: TraceSequences, requests: list[Request], notes: list[str]
              ) -> dict[str, Any]:
    """The `inputs` block of a serving result: what was served, where, and what to know."""
    notes = list(notes)
    if len(requests) > sequences.count:
        notes.append(f"{len(requests)} requests replay the trace's {sequences.count} sequences "
                     "(reused, later reuses starting further along); capture or synthesise "
                     "more sequences (`moesim trace synth`) for independent routing")
    longest = max((r.prompt_tokens + r.output_tokens for r in requests), default=0)
    if longest > int(sequences.lengths.max()):
        notes.append(f"requests of up to {longest} tokens replay trace sequences of at most "
                     f"{int(sequences.lengths.max())} tokens, tiled (routing repeats)")
    return {
        "scenario": scenario.name,
        "model": inputs.model.name,
        "trace": inputs.trace_source,
        "placement": scenario.placement if not spec.disagg else None,
        "disagg": spec.disagg,
        "topology": scenario.topology,
        "gpus": gpus,
        "fidelity": scenario.fidelity,
        "act_dtype": scenario.act_dtype,
        "weight_dtype": scenario.weight_dtype,
        "serve": spec.model_dump(),
        "default_requests": DEFAULT_REQUESTS,
        "notes": notes,
    }
