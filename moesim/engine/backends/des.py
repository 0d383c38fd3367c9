"""Discrete-event backend: a step plan on simpy, flows sharing links max-min fairly.

Every (operation, rank) pair waits for its predecessors on that rank (its dependencies and the
previous operation of its stream) and starts the moment the last one ends:
- compute: a timeout of its seconds;
- exchange: after the launch latency the rank starts its sends (one flow part per route of each
  destination); its part ends when its sends and receives are done, which the network counts
  per rank (`FlowNetwork.open_group`) instead of one simpy event per flow;
- collective: its group's algorithm (`moesim.engine.collectives`) starts when the group's last
  member is ready; barrier: all ranks end when the last is ready.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import simpy

from moesim.engine.a2a import crosses_nodes, exchange_delay_and_wire
from moesim.engine.collectives import CollectiveRun, allgather, allreduce, reducescatter
from moesim.engine.network import FlowNetwork, Routing
from moesim.engine.plan import Barrier, Collective, Compute, Exchange, Operation, StepPlan
from moesim.engine.routes import RouteTable
from moesim.engine.timeline import StepTimeline

__all__ = ["DesBackend", "DES_TIME_QUANTUM_S", "DES_TIME_WINDOW_S"]

# Event batching (FlowNetwork, module doc "Event batching"). The default is a centred window:
# the flows predicted to end within DES_TIME_WINDOW_S of the next completion all end at the
# middle of the first and the last of them, so each flow ends at most DES_TIME_WINDOW_S / 2 =
# 2 us early or late, and a flow that becomes ready within 2 us before the armed timer joins at
# it (starts at most 2 us late). Bound: every start and end event is moved by at most half the
# window from the time the rates in force predict; rates are re-solved at every batch, so no
# error is carried past it except through those moved events. Measured against the exact fluid
# solution (time_quantum_s=0), step time / rate updates (benchmarks/bench_step.py cases):
#   window            0 (exact)           2 us                4 us (default)
#   DeepSeek-V3 EP64  36.347 ms / 23,837  +0.07% / 7,708      +0.15% / 4,185
#   Mixtral EP8 pf16k 78.026 ms / 764     -0.006% / 638       -0.02% / 578
#   Mixtral EP8 dec   13.602 ms / 3,464   +0.06% / 257        +0.08% / 161
# (the old early-only 1 us quantum moved the EP64 step by -0.7%). 8 us gave +0.25% on EP64.
DES_TIME_WINDOW_S = 4e-6
# The old batching, kept for comparison: flows due within this long after the next
# completion end with it (at most this early; biases step times low). DesBackend(q) uses it.
DES_TIME_QUANTUM_S = 1e-6


class DesBackend:
    """Simpy processes per (operation, rank), flows on a max-min fair network (module doc)."""

    name = "des"

    def __init__(self, time_quantum_s: float | None = None, *,
                 time_window_s: float | None = None) -> None:
        """Default: the centred window DES_TIME_WINDOW_S. `time_quantum_s` alone selects the
        early-only quantum (0 with no window: exact max-min event times)."""
        if time_window_s is None:
            time_window_s = DES_TIME_WINDOW_S if time_quantum_s is None else 0.0
        self.time_quantum_s = 0.0 if time_quantum_s is None else time_quantum_s
        self.time_window_s = time_window_s

    def execute(self, plan: StepPlan, topo: Routing, routes: RouteTable,
                launch_s: float | None = None) -> StepTimeline:
        """Run the plan to its end and return every operation's start and end per rank."""
        return _DesRun(plan, topo, routes, launch_s, self.time_quantum_s,
                       self.time_window_s).run()


class _ExchangeRun:
    """One exchange in flight: ranks start their sends as they arrive (after the launch)."""

    def __init__(self, run: _DesRun, index: int, op: Exchange) -> None:
        self.run, self.index = run, index
        world = run.plan.world
        off = np.array(op.bytes_matrix, dtype=np.float64)
        np.fill_diagonal(off, 0.0)
        self.launch_s, factor = exchange_delay_and_wire(
            run.topo, op.impl, op.name, range(world), float(off.sum(axis=1).max()), run.launch_s,
            op.impl != "direct" and crosses_nodes(run.topo, off))
        self.off = off * factor
        paths = run.routes.path_count.reshape(world, world)
        parts = np.where(self.off > 0, paths, 0)
        self.group = run.net.open_group(parts.sum(axis=1) + parts.sum(axis=0), self._ranks_done)
        self.launched = np.zeros(world, dtype=bool)

    def arrive(self, rank: int) -> None:
        """`rank` is ready: after the launch latency its sends start (one timeout of launch
        plus path latency); a rank with nothing to send waits out the launch."""
        row = self.off[rank]
        if not row.any():
            self.run.env.timeout(self.launch_s).callbacks.append(partial(self._launched, rank))
            return
        # Counted as launched now: its own sends keep it from being done before they start.
        self.launched[rank] = True
        dsts, count, numbers, latency_s = self.run.sends_from(rank)
        sizes = row[dsts]
        sending = sizes > 0
        if not sending.all():
            keep = np.flatnonzero(sending)
            dsts, count, latency_s = dsts[keep], count[keep], latency_s[keep]
            sizes, numbers = sizes[keep], numbers[keep]
        self.run.net.start_group_numbered(self.group, rank, numbers, sizes / count, dsts,
                                          latency_s + self.launch_s)

    def _launched(self, rank: int, _event: simpy.Event) -> None:
        """A rank without sends has paid the launch: done unless it still receives."""
        self.launched[rank] = True
        if self.group.left[rank] == 0:
            self.run.finish(self.index, rank)

    def _ranks_done(self, ranks: np.ndarray) -> None:
        """The network says these ranks' last send or receive ended."""
        for rank in ranks.tolist():
            if self.launched[rank]:
                self.run.finish(self.index, rank)


class _CollectiveRun:
    """One collective in flight: each group starts when its last member is ready."""

    def __init__(self, run: _DesRun, index: int, op: Collective) -> None:
        self.run, self.index, self.op = run, index, op
        self.group_of = {r: g for g, ranks in enumerate(op.groups) for r in ranks}
        self.arrived = [0] * len(op.groups)

    def arrive(self, rank: int) -> None:
        """Count `rank` in; the group's last arrival starts the group's collective."""
        group = self.group_of[rank]
        self.arrived[group] += 1
        ranks, size = self.op.groups[group], self.op.size_bytes[group]
        if self.arrived[group] < len(ranks):
            return
        run = self.run
        algorithm: CollectiveRun
        if self.op.op == "allreduce":
            algorithm = allreduce(run.net, run.topo, ranks, size, algorithm=self.op.algorithm,
                                  launch_s=run.launch_s)
        elif self.op.op == "allgather":
            algorithm = allgather(run.net, run.topo, ranks, size, launch_s=run.launch_s)
        else:
            algorithm = reducescatter(run.net, run.topo, ranks, size, launch_s=run.launch_s)
        for member, event in zip(ranks, algorithm.rank_done, strict=True):
            event.callbacks.append(partial(self._member_done, member))

    def _member_done(self, rank: int, _event: simpy.Event) -> None:
        self.run.finish(self.index, rank)


class _BarrierRun:
    """Every rank of the barrier ends when the last arrives."""

    def __init__(self, run: _DesRun, index: int, op: Barrier) -> None:
        self.run, self.index, self.ranks, self.arrived = run, index, op.ranks, 0

    def arrive(self, rank: int) -> None:
        """Count `rank` in; the last arrival ends the barrier for all."""
        self.arrived += 1
        if self.arrived == len(self.ranks):
            for member in self.ranks:
                self.run.finish(self.index, member)


class _DesRun:
    """The state of one plan's execution."""

    def __init__(self, plan: StepPlan, topo: Routing, routes: RouteTable,
                 launch_s: float | None, time_quantum_s: float, time_window_s: float) -> None:
        self.plan, self.topo, self.routes, self.launch_s = plan, topo, routes, launch_s
        self.env = simpy.Environment()
        self.net = FlowNetwork(self.env, topo.graph, time_quantum_s=time_quantum_s,
                               time_window_s=time_window_s)
        count, world = len(plan.ops), plan.world
        self.start_s = np.full((count, world), np.nan)
        self.end_s = np.full((count, world), np.nan)
        self.pending, self.successors = _dependency_graph(plan)
        self.active: dict[int, _ExchangeRun | _CollectiveRun | _BarrierRun] = {}
        self._sends: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def sends_from(self, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every route from `rank`: destination, routes of that pair, the network's number of
        the route (`FlowNetwork.path_numbers`), latency (once per rank)."""
        cached = self._sends.get(rank)
        if cached is None:
            routes = self.routes
            index, dsts = routes.routes_from(rank)
            count = routes.path_count[rank * routes.world + dsts]
            numbers = self.net.path_numbers([routes.path_links[i] for i in index.tolist()])
            cached = (dsts, count, numbers, routes.path_latency_s[index])
            self._sends[rank] = cached
        return cached

    def run(self) -> StepTimeline:
        world = self.plan.world
        for key in [k for k, left in enumerate(self.pending) if left == 0]:
            self._begin(*divmod(key, world))
        self.env.run()
        for index, op in enumerate(self.plan.ops):
            if np.isnan(self.end_s[index, list(op.ranks)]).any():
                raise RuntimeError(f"operation {op.name} of block {op.block} never ended: the "
                                   "plan's dependencies wait in a cycle")
        return StepTimeline(self.plan, self.start_s, self.end_s, "des",
                            events=self.net.num_flows_started)

    def _begin(self, index: int, rank: int) -> None:
        """Start rank's part of operation `index` now."""
        self.start_s[index, rank] = self.env.now
        op = self.plan.ops[index]
        if isinstance(op, Compute):
            self._compute_chain(index, rank, op)
            return
        if index not in self.active:
            self.active[index] = _runner(self, index, op)
        self.active[index].arrive(rank)

    def _compute_chain(self, index: int, rank: int, op: Compute) -> None:
        """Run a compute and, with no simpy event between them, the computes that wait only for
        it (its sole successor, a compute waiting for nothing else), one after the other."""
        world = self.plan.world
        ops, pending, successors = self.plan.ops, self.pending, self.successors
        end_s = self.env.now + float(op.time_s[rank])
        while True:
            after = successors[index * world + rank]
            if len(after) != 1 or pending[after[0]] != 1:
                break
            following = after[0] // world  # the same rank: a compute's successor on its stream
            next_op = ops[following]
            if not isinstance(next_op, Compute):
                break
            pending[after[0]] = 0
            self.end_s[index, rank] = self.start_s[following, rank] = end_s
            index, end_s = following, end_s + float(next_op.time_s[rank])
        self.env.timeout(end_s - self.env.now).callbacks.append(
            partial(self._compute_done, index, rank))

    def _compute_done(self, index: int, rank: int, _event: simpy.Event) -> None:
        self.finish(index, rank)

    def finish(self, index: int, rank: int) -> None:
        """Rank's part of operation `index` ended now: start what waited only for it."""
        self.end_s[index, rank] = self.env.now
        world = self.plan.world
        for key in self.successors[index * world + rank]:
            self.pending[key] -= 1
            if self.pending[key] == 0:
                self._begin(*divmod(key, world))


def _runner(run: _DesRun, index: int, op: Operation) -> _ExchangeRun | _CollectiveRun | _BarrierRun:
    if isinstance(op, Exchange):
        return _ExchangeRun(run, index, op)
    if isinstance(op, Collective):
        return _CollectiveRun(run, index, op)
    if isinstance(op, Barrier):
        return _BarrierRun(run, index, op)
    raise TypeError(f"unknown operation {type(op).__name__}")


def _dependency_graph(plan: StepPlan) -> tuple[list[int], list[list[int]]]:
    """Per (operation, rank) key `op * W + rank`: how many predecessors it waits for, and the
    keys waiting for it. Predecessors: its dependencies on that rank and the previous
    operation of its stream on that rank."""
    world = plan.world
    size = len(plan.ops) * world
    pending = [0] * size
    successors: list[list[int]] = [[] for _ in range(size)]
    last = {"compute": [-1] * world, "comm": [-1] * world}
    members = [frozenset(op.ranks) for op in plan.ops]
    for index, op in enumerate(plan.ops):
        stream = last[op.stream]
        for rank in op.ranks:
            key = index * world + rank
            preds = {dep * world + rank for dep in op.deps if rank in members[dep]}
            if stream[rank] >= 0:
                preds.add(stream[rank])
            pending[key] = len(preds)
            for pred in preds:
                successors[pred].append(key)
            stream[rank] = key
    return pending, successors
