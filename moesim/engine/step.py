"""Step timeline: a StepPlan run on a topology, per block, phase and rank.

Two fidelities behind one function, `simulate_step(plan, topo, fidelity=...)`:
- `des`: every rank is a simpy process; compute is a timeout; pairwise phases (SP exchange,
  dispatch, MoE-TP gather/scatter, combine) start each rank's sends when *that* rank arrives and
  end for a rank when all its sends and receives are done, so a rank waiting on a straggler's
  combine (a hot expert) waits in the combine phase; ring collectives (attention TP) start when
  their whole group has arrived. Flows share links max-min fairly.
- `analytic`: the same order of phases with a barrier at each communication phase; a pairwise
  phase costs the bottleneck-link bound (bytes on the busiest link of a pair's route /
  bandwidth, plus latency), ring collectives their closed form. No simpy, for huge sweeps.
On uncontended, balanced cases the two agree (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from moesim.engine import analytic
from moesim.engine.collective_model import alltoall_protocol, collective_launch_s
from moesim.engine.collectives import allgather, reducescatter
from moesim.engine.network import FlowNetwork, Routing
from moesim.engine.plan import PHASES, StepPlan
from moesim.engine.routes import RouteTable, build_route_table

__all__ = ["StepTimeline", "simulate_step", "FIDELITIES", "DES_TIME_QUANTUM_S"]

FIDELITIES = ("des", "analytic")

# Flows due to end within this window of the next completion end together (at most this early).
# 1 us is below one NVLink hop plus kernel launch (~10 us per collective) and cuts the rate
# updates of an uneven all-to-all ~8x; on an EP8 16k-token Mixtral prefill it moved the step
# time by 0.04% (benchmarks/bench_step.py). Pass 0 for exact max-min event times.
DES_TIME_QUANTUM_S = 1e-6
_P = {name: i for i, name in enumerate(PHASES)}


@dataclass(frozen=True)
class StepTimeline:
    """Seconds each rank spent in each phase of each block, and when it finished each block."""

    phase_s: np.ndarray  # [blocks, W, phases]
    block_end_s: np.ndarray  # [blocks, W]
    lm_head_s: np.ndarray  # [W]
    step_s: float
    fidelity: str
    num_dense_blocks: int
    events: int = 0

    @property
    def critical_rank(self) -> int:
        """The rank that finishes the step last."""
        return int(np.argmax(self.block_end_s[-1] + self.lm_head_s))

    def phase_totals_s(self) -> dict[str, float]:
        """Critical rank's seconds per phase over all blocks (sum: the step less the LM head)."""
        rank = self.critical_rank
        return {name: float(self.phase_s[:, rank, i].sum()) for i, name in enumerate(PHASES)}

    def per_layer(self) -> list[dict[str, Any]]:
        """Per block: the slowest rank's time per phase, and the block's duration."""
        starts = np.concatenate((np.zeros((1, self.block_end_s.shape[1])), self.block_end_s[:-1]))
        rows = []
        for block in range(self.phase_s.shape[0]):
            rows.append(
                {
                    "block": block,
                    "moe": block >= self.num_dense_blocks,
                    "time_s": float((self.block_end_s[block] - starts[block]).max()),
                    "phase_max_s": {
                        name: float(self.phase_s[block, :, i].max())
                        for i, name in enumerate(PHASES)
                    },
                }
            )
        return rows


def simulate_step(
    plan: StepPlan,
    topo: Routing,
    fidelity: str = "des",
    launch_s: float | None = None,
    routes: RouteTable | None = None,
    time_quantum_s: float = DES_TIME_QUANTUM_S,
) -> StepTimeline:
    """Run one step at `fidelity` (`des` or `analytic`); launch latency from the topology."""
    if launch_s is None:
        launch_s = collective_launch_s(topo)
    routes = routes or build_route_table(topo, plan.world)
    if fidelity == "des":
        return _DesStep(plan, topo, routes, launch_s, time_quantum_s).run()
    if fidelity == "analytic":
        return _analytic_step(plan, topo, routes, launch_s)
    raise ValueError(f"fidelity must be one of {FIDELITIES}, got {fidelity!r}")


def _crosses(matrix: np.ndarray) -> bool:
    """Whether a `[W, W]` bytes matrix sends anything between different ranks."""
    return bool(matrix.sum() - np.trace(matrix) > 0)


# ---- discrete-event fidelity ---------------------------------------------------------------


def _succeed_callback(target: simpy.Event) -> Callable[[simpy.Event], None]:
    """A simpy callback that fires `target` (used to chain a flow's end to a phase's event)."""

    def callback(_ev: simpy.Event) -> None:
        target.succeed()

    return callback


class _Pairwise:
    """A direct exchange of `matrix[src, dst]` bytes in which each rank starts on arrival."""

    def __init__(self, step: _DesStep, matrix: np.ndarray) -> None:
        env = step.env
        self.step = step
        off = np.array(matrix, dtype=np.float64)
        np.fill_diagonal(off, 0.0)
        self.launch_s, factor = alltoall_protocol(
            step.topo, range(step.plan.world), float(off.sum(axis=1).max()), step.launch_s
        )
        off *= factor
        world = step.plan.world
        self.sends: list[list[tuple[int, float, simpy.Event]]] = [[] for _ in range(world)]
        self.touching: list[list[simpy.Event]] = [[] for _ in range(world)]
        src, dst = np.nonzero(off)
        for s, d, size in zip(src.tolist(), dst.tolist(), off[src, dst].tolist(), strict=True):
            done = env.event()
            self.sends[s].append((d, size, done))
            self.touching[s].append(done)
            self.touching[d].append(done)

    def arrive(self, rank: int) -> simpy.Event:
        """Start `rank`'s sends after the launch latency; fires when its sends and receives end."""
        env, net, path_ids = self.step.env, self.step.net, self.step.routes.path_ids

        def start(_ev: simpy.Event) -> None:
            sends = self.sends[rank]
            flows = [(path_ids[(rank, dst)], size) for dst, size, _ in sends]
            net.start_flows(flows, [done for _, _, done in sends])

        launch = env.timeout(self.launch_s)
        launch.callbacks.append(start)
        return env.all_of([launch, *self.touching[rank]])


class _GroupRing:
    """A ring collective that starts when every member of its group has arrived."""

    def __init__(self, step: _DesStep, op: str, ranks: tuple[int, ...], size_bytes: int) -> None:
        self.step, self.op, self.ranks, self.size_bytes = step, op, ranks, size_bytes
        self.done = {r: step.env.event() for r in ranks}
        self.arrived = 0

    def arrive(self, rank: int) -> simpy.Event:
        """Count `rank` in; the last arrival launches the ring; fires when `rank`'s part ends."""
        self.arrived += 1
        if self.arrived == len(self.ranks):
            fn = reducescatter if self.op == "reducescatter" else allgather
            run = fn(
                self.step.net,
                self.step.topo,
                self.ranks,
                self.size_bytes,
                launch_s=self.step.launch_s,
            )
            for r, ev in zip(self.ranks, run.rank_done, strict=True):
                ev.callbacks.append(_succeed_callback(self.done[r]))
        return self.done[rank]


class _DesStep:
    """One step as simpy processes, one per rank."""

    def __init__(
        self,
        plan: StepPlan,
        topo: Routing,
        routes: RouteTable,
        launch_s: float,
        time_quantum_s: float,
    ) -> None:
        self.plan, self.topo, self.routes, self.launch_s = plan, topo, routes, launch_s
        self.env = simpy.Environment()
        self.net = FlowNetwork(self.env, topo.graph, time_quantum_s=time_quantum_s)
        blocks, world = plan.num_blocks, plan.world
        self.phase_s = np.zeros((blocks, world, len(PHASES)))
        self.block_end_s = np.zeros((blocks, world))
        self.phases: dict[tuple[str, int], Any] = {}
        self.group_of = {r: g for g, (ranks, _) in enumerate(plan.attn_tp_groups) for r in ranks}

    def _pairwise(self, kind: str, block: int, matrix: np.ndarray) -> _Pairwise:
        key = (kind, block)
        if key not in self.phases:
            self.phases[key] = _Pairwise(self, matrix)
        return self.phases[key]

    def _ring(self, op: str, block: int, rank: int) -> _GroupRing:
        group = self.group_of[rank]
        key = (f"{op}{group}", block)
        if key not in self.phases:
            ranks, size = self.plan.attn_tp_groups[group]
            self.phases[key] = _GroupRing(self, op, ranks, size)
        return self.phases[key]

    def _rank(self, rank: int):  # type: ignore[no-untyped-def]
        plan, env = self.plan, self.env
        sp, tp = _crosses(plan.sp_bytes), rank in self.group_of
        for block in range(plan.num_blocks):
            layer = block - plan.num_dense_blocks
            steps: list[tuple[str, Any]] = []
            if sp:
                steps.append(("attn_comm", self._pairwise("sp", block, plan.sp_bytes)))
            steps.append(("attention", plan.attention_s[rank]))
            if tp:
                steps.append(("attn_comm", self._ring("reducescatter", block, rank)))
            if layer < 0:
                steps.append(("experts", plan.dense_ffn_s[rank]))
            else:
                gather, dispatch = plan.moe_tp_gather_bytes[layer], plan.dispatch_bytes[layer]
                a2a = _crosses(dispatch)  # no kernel runs where every copy is local (TP, DP)
                steps.append(("router", plan.router_s[rank]))
                if a2a:
                    steps.append(("dispatch", self._pairwise("dispatch", block, dispatch)))
                if gather.any():
                    steps.append(("moe_comm", self._pairwise("gather", block, gather)))
                steps.append(("experts", plan.experts_s[layer, rank]))
                if gather.any():
                    steps.append(("moe_comm", self._pairwise("scatter", block, gather.T)))
                if a2a:
                    steps.append(("combine", self._pairwise("combine", block, dispatch.T)))
            if tp:
                steps.append(("moe_comm", self._ring("allgather", block, rank)))
            for phase, what in steps:
                begin = env.now
                yield (
                    env.timeout(float(what))
                    if isinstance(what, (float, np.floating))
                    else what.arrive(rank)
                )
                self.phase_s[block, rank, _P[phase]] += env.now - begin
            self.block_end_s[block, rank] = env.now
        yield env.timeout(float(plan.lm_head_s[rank]))

    def run(self) -> StepTimeline:
        for rank in range(self.plan.world):
            self.env.process(self._rank(rank))
        self.env.run()
        end = self.block_end_s[-1] + self.plan.lm_head_s
        return StepTimeline(
            self.phase_s,
            self.block_end_s,
            self.plan.lm_head_s.copy(),
            float(end.max()),
            "des",
            self.plan.num_dense_blocks,
            events=self.net.num_flows_started,
        )


# ---- analytic fidelity ---------------------------------------------------------------------


def _pairwise_bound_s(
    routes: RouteTable, topo: Routing, matrix: np.ndarray, launch_s: float
) -> np.ndarray:
    """Per rank: launch + its slowest send or receive under the bottleneck-link bound."""
    off = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(off, 0.0)
    world = routes.world
    launch_s, factor = alltoall_protocol(topo, range(world), float(off.sum(axis=1).max()), launch_s)
    off *= factor
    if not off.any():
        return np.full(world, launch_s)
    drain = routes.link_loads(off) / routes.links.capacity_bytes_per_s
    pair_s = routes.pair_drain_s(drain) + routes.pair_latency_s
    pair_s = np.where(off.reshape(-1) > 0, pair_s, 0.0).reshape(world, world)
    return launch_s + np.maximum(pair_s.max(axis=1), pair_s.max(axis=0))


def _ring_bound_s(plan: StepPlan, topo: Routing, op: str, launch_s: float) -> np.ndarray:
    """Per rank: the closed-form ring time of its attention-TP group (0 outside any group)."""
    out = np.zeros(plan.world)
    fn = analytic.reducescatter if op == "reducescatter" else analytic.allgather
    for ranks, size in plan.attn_tp_groups:
        out[list(ranks)] = fn(topo, ranks, size, launch_s=launch_s).time_s
    return out


def _analytic_step(
    plan: StepPlan, topo: Routing, routes: RouteTable, launch_s: float
) -> StepTimeline:
    """Phase by phase with a barrier before each communication phase."""
    blocks, world = plan.num_blocks, plan.world
    phase_s = np.zeros((blocks, world, len(PHASES)))
    block_end = np.zeros((blocks, world))
    sp_s = (
        _pairwise_bound_s(routes, topo, plan.sp_bytes, launch_s)
        if _crosses(plan.sp_bytes)
        else None
    )
    tp = bool(plan.attn_tp_groups)
    rs_s = _ring_bound_s(plan, topo, "reducescatter", launch_s) if tp else None
    ag_s = _ring_bound_s(plan, topo, "allgather", launch_s) if tp else None
    now = np.zeros(world)

    def compute(block: int, phase: str, seconds: np.ndarray) -> None:
        nonlocal now
        phase_s[block, :, _P[phase]] += seconds
        now = now + seconds

    def comm(block: int, phase: str, seconds: np.ndarray) -> None:
        nonlocal now
        end = now.max() + seconds  # barrier: every rank waits for the last to arrive
        phase_s[block, :, _P[phase]] += end - now
        now = end

    for block in range(blocks):
        layer = block - plan.num_dense_blocks
        if sp_s is not None:
            comm(block, "attn_comm", sp_s)
        compute(block, "attention", plan.attention_s)
        if rs_s is not None:
            comm(block, "attn_comm", rs_s)
        if layer < 0:
            compute(block, "experts", plan.dense_ffn_s)
        else:
            gather, dispatch = plan.moe_tp_gather_bytes[layer], plan.dispatch_bytes[layer]
            compute(block, "router", plan.router_s)
            if _crosses(dispatch):
                comm(block, "dispatch", _pairwise_bound_s(routes, topo, dispatch, launch_s))
            if gather.any():
                comm(block, "moe_comm", _pairwise_bound_s(routes, topo, gather, launch_s))
            compute(block, "experts", plan.experts_s[layer])
            if gather.any():
                comm(block, "moe_comm", _pairwise_bound_s(routes, topo, gather.T, launch_s))
            if _crosses(dispatch):
                comm(block, "combine", _pairwise_bound_s(routes, topo, dispatch.T, launch_s))
        if ag_s is not None:
            comm(block, "moe_comm", ag_s)
        block_end[block] = now
    end = now + plan.lm_head_s
    return StepTimeline(
        phase_s,
        block_end,
        plan.lm_head_s.copy(),
        float(end.max()),
        "analytic",
        plan.num_dense_blocks,
    )
