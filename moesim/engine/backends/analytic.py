"""Analytic backend: a step plan in closed form, congestion-unaware, without simpy.

Each operation starts on a rank when its dependencies there are done and the rank's stream is
free. A compute takes its seconds. An exchange or collective starts when every rank taking part
is ready (a barrier over its ranks) and ends for rank r:
- exchange: launch + r's slowest send or receive under the bottleneck-link bound (bytes on the
  busiest link of a pair's routes / bandwidth, plus the path latency), on the protocol
  NCCL's send/recv picks for the size (`moesim.engine.protocols`);
- collective: the closed form of its group's algorithm (`moesim.engine.analytic`);
- barrier: when the last rank is ready.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from moesim.engine import analytic
from moesim.engine.a2a import crosses_nodes_each, exchange_delays_and_wires
from moesim.engine.network import Routing
from moesim.engine.plan import (
    COLLECTIVE,
    COMPUTE,
    EXCHANGE,
    Barrier,
    Collective,
    Compute,
    Exchange,
    StepPlan,
)
from moesim.engine.routes import RouteTable
from moesim.engine.timeline import StepTimeline

__all__ = ["AnalyticBackend", "pairwise_bound_s", "pairwise_bounds_s"]

# Exchanges are bounded in batches of at most this many (matrix, route entry) pairs: many
# small matrices at once (per-call overhead dominates), large fabrics one by one.
_BATCH_ENTRIES = 1 << 16  # small enough to stay in cache


def pairwise_bound_s(
    routes: RouteTable, topo: Routing, matrix: np.ndarray, launch_s: float | None = None
) -> np.ndarray:
    """Per rank: launch + its slowest send or receive under the bottleneck-link bound."""
    return pairwise_bounds_s(routes, topo, np.asarray(matrix)[None], launch_s)[0]


def pairwise_bounds_s(
    routes: RouteTable, topo: Routing, matrices: np.ndarray, launch_s: float | None = None,
    runs: Sequence[tuple[str, str]] | None = None,
) -> np.ndarray:
    """`[K, W]`: `pairwise_bound_s` of K `[W, W]` matrices at once, each on the protocol
    NCCL's send/recv picks for its busiest rank's bytes, or run by the implementation `runs[i]`
    gives as (impl, exchange name) (`launch_s`: override the launch)."""
    world = routes.world
    off = np.array(matrices, dtype=np.float64).reshape(-1, world, world)
    off[:, np.arange(world), np.arange(world)] = 0.0
    busiest = off.sum(axis=2).max(axis=1)
    runs = runs or [("direct", "")] * len(busiest)
    if len(runs) != len(busiest):
        raise ValueError(f"{len(runs)} runs for {len(busiest)} matrices")
    across = crosses_nodes_each(topo, off) if any(impl != "direct" for impl, _ in runs) \
        else None
    launch, wire = exchange_delays_and_wires(topo, runs, range(world), busiest, launch_s, across)
    off *= wire[:, None, None]
    drain = routes.link_loads(off) / routes.links.capacity_bytes_per_s
    pair_s = _pair_drain_s(routes, drain) + routes.pair_latency_s
    pair_s = np.where(off.reshape(off.shape[0], -1) > 0, pair_s, 0.0).reshape(off.shape)
    return launch[:, None] + np.maximum(pair_s.max(axis=2), pair_s.max(axis=1))


# Per route table (by identity, the table held with it): each pair's route entries as columns
# (`_entry_columns`). A handful of tables are in use at once.
_COLUMNS: dict[int, tuple[RouteTable, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]] = {}
_COLUMNS_KEPT = 16
_MANY_MATRICES = 8


def _entry_columns(routes: RouteTable) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The pairs that have routes, and per j >= 0 (pairs with more than j entries, the link of
    their j-th entry): the route table's pair segments as columns, so the worst link of every
    pair is a few element-wise maxima instead of a segmented reduction."""
    kept = _COLUMNS.get(id(routes))
    if kept is not None and kept[0] is routes:
        return kept[1], kept[2]
    starts = routes.pair_starts
    lengths = np.diff(np.r_[starts, routes.link_of_entry.size])
    columns = []
    for j in range(int(lengths.max(initial=0))):
        has = np.flatnonzero(lengths > j)
        columns.append((has, routes.link_of_entry[starts[has] + j]))
    if len(_COLUMNS) >= _COLUMNS_KEPT:
        _COLUMNS.clear()
    pairs = routes.pair_of_entry[starts]
    _COLUMNS[id(routes)] = (routes, pairs, columns)
    return pairs, columns


def _pair_drain_s(routes: RouteTable, link_drain_s: np.ndarray) -> np.ndarray:
    """`RouteTable.pair_drain_s`: per pair, the longest drain of any link on its routes
    (`[K, world * world]` from `[K, links]`); for many matrices at once as element-wise maxima
    over the pairs' entries (a segmented reduction per matrix costs more from ~8 on)."""
    if link_drain_s.ndim < 2 or link_drain_s.shape[0] < _MANY_MATRICES:
        return routes.pair_drain_s(link_drain_s)
    pairs, columns = _entry_columns(routes)
    worst = np.zeros(link_drain_s.shape[:-1] + (routes.world * routes.world,))
    if not columns:
        return worst
    segment_max = link_drain_s[..., columns[0][1]]  # every pair with routes has a first entry
    for has, links in columns[1:]:
        if has.size == segment_max.shape[-1]:
            np.maximum(segment_max, link_drain_s[..., links], out=segment_max)
        else:
            segment_max[..., has] = np.maximum(segment_max[..., has], link_drain_s[..., links])
    worst[..., pairs] = segment_max
    return worst


def _collective_s(topo: Routing, op: Collective, world: int, launch_s: float | None
                  ) -> np.ndarray:
    """Per rank: the closed-form time of its group's collective (0 outside every group)."""
    out = np.zeros(world)
    for ranks, size in zip(op.groups, op.size_bytes, strict=True):
        if op.op == "allreduce":
            result = analytic.allreduce(topo, ranks, size, algorithm=op.algorithm,
                                        launch_s=launch_s)
        elif op.op == "allgather":
            result = analytic.allgather(topo, ranks, size, launch_s=launch_s)
        else:
            result = analytic.reducescatter(topo, ranks, size, launch_s=launch_s)
        out[list(ranks)] = result.time_s
    return out


class AnalyticBackend:
    """Closed forms with a barrier at every communication operation (module doc)."""

    name = "analytic"

    def execute(self, plan: StepPlan, topo: Routing, routes: RouteTable,
                launch_s: float | None = None) -> StepTimeline:
        """Every operation's start and end on every rank, in plan order."""
        layout = plan.layout
        if (layout.kind < 0).any():
            op = plan.ops[int(np.flatnonzero(layout.kind < 0)[0])]
            raise TypeError(f"unknown operation {type(op).__name__}")
        comm_s = _comm_durations(plan, topo, routes, launch_s)
        if layout.chain:
            start, end = _chain_times(plan, comm_s)
        else:
            start, end = _graph_times(plan, comm_s)
        return StepTimeline(plan, start, end, self.name)


def _comm_durations(plan: StepPlan, topo: Routing, routes: RouteTable,
                    launch_s: float | None) -> np.ndarray:
    """`[ops, W]`: per communication operation, each rank's seconds after the barrier (0 for
    computes): every exchange's bound in one batch, identical collectives once."""
    out = np.zeros((len(plan.ops), plan.world))
    layout = plan.layout
    exchanges = layout.of_kind(EXCHANGE)
    ops = [plan.ops[i] for i in exchanges.tolist()]
    stack: list[np.ndarray] = [x.bytes_matrix for x in ops]  # type: ignore[attr-defined]
    runs: list[tuple[str, str]] = [
        (x.impl, x.name if x.impl != "direct" else "") for x in ops]  # type: ignore[attr-defined]
    rows: list[int] | slice = slice(None)
    if len({id(m) for m in stack}) < len(stack):  # one matrix in many: bound it once
        row: dict[tuple[int, str, str], int] = {}  # (matrix identity, impl, name) -> batch row
        unique: list[np.ndarray] = []
        unique_runs: list[tuple[str, str]] = []
        for matrix, run in zip(stack, runs, strict=True):
            key = (id(matrix), run[0], run[1])
            if key not in row:
                row[key] = len(unique)
                unique.append(matrix)
                unique_runs.append(run)
        rows = [row[(id(matrix), run[0], run[1])] for matrix, run in zip(stack, runs,
                                                                          strict=True)]
        stack, runs = unique, unique_runs
    if stack:
        # in batches of at most _BATCH_ENTRIES (matrix, route entry) pairs
        chunk = max(1, _BATCH_ENTRIES // max(routes.link_of_entry.size, 1))
        bounds = np.concatenate([
            pairwise_bounds_s(routes, topo, stack[i][None] if chunk == 1 else
                              np.array(stack[i: i + chunk], dtype=np.float64), launch_s,
                              runs[i: i + chunk])
            for i in range(0, len(stack), chunk)])
        out[exchanges] = bounds[rows]
    for i in layout.of_kind(COLLECTIVE):
        op = plan.ops[i]
        assert isinstance(op, Collective)
        out[i] = _kept_collective_s(topo, op, plan.world, launch_s)
    return out


# Collectives' per-rank seconds per topology (weakly held) and call: steps of a sweep or a
# serving run repeat the same calls (attention TP's buffer depends only on the tokens). Only a
# topology whose graph is frozen (a built Topology) keeps them.
_COLLECTIVES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], np.ndarray]] = (
    weakref.WeakKeyDictionary())
_COLLECTIVES_KEPT = 4096  # calls per topology


def _kept_collective_s(topo: Routing, op: Collective, world: int, launch_s: float | None
                       ) -> np.ndarray:
    """`_collective_s`, worked out once per topology and call."""
    kept: dict[tuple[Any, ...], np.ndarray] | None = None
    if getattr(topo.graph, "frozen", False):
        try:
            kept = _COLLECTIVES.setdefault(topo, {})
        except TypeError:  # a routing object that cannot be weakly referenced
            kept = None
    if kept is None:
        return _collective_s(topo, op, world, launch_s)
    key = (op.op, op.algorithm, op.groups, op.size_bytes, world, launch_s)
    found = kept.get(key)
    if found is None:
        if len(kept) >= _COLLECTIVES_KEPT:
            kept.clear()
        found = kept[key] = _collective_s(topo, op, world, launch_s)
    return found


def _chain_times(plan: StepPlan, comm_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of a chain: a compute adds its seconds to each rank's clock; a
    communication starts at the latest clock (the barrier) and adds each rank's seconds.

    Vectorised over the chain's segments (a communication and the computes after it): within
    a segment the clock is the barrier plus the running sum of the segment's seconds, and each
    barrier is the one before plus the most any rank's segment took."""
    count, world = len(plan.ops), plan.world
    if count == 0:
        return np.empty((0, world)), np.empty((0, world))
    layout = plan.layout
    computes = layout.of_kind(COMPUTE)
    seconds = comm_s.copy()  # what each operation adds to a rank's clock after its barrier
    if computes.size:
        seconds[computes] = [plan.ops[i].time_s for i in computes]  # type: ignore[attr-defined]
    segment, position, last = layout.segments
    # each segment's running sums, one row per segment: the clock after each of its operations,
    # less the segment's barrier
    running = np.zeros((segment[-1] + 1, position.max() + 1, world))
    running[segment, position] = seconds
    running = np.cumsum(running, axis=1)
    within = running[segment, position]
    # each barrier: the one before plus the most any rank's segment took (an empty lead: 0)
    took = np.zeros(segment[-1] + 1)
    took[segment[last]] = within[last].max(axis=1)
    barrier_s = np.r_[0.0, np.cumsum(took[:-1])]
    end = barrier_s[segment][:, None] + within
    start = np.empty_like(end)
    start[0] = 0.0
    start[1:] = end[:-1]
    return start, end


def _graph_times(plan: StepPlan, comm_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of any plan: an operation starts on a rank when its dependencies there
    are done and the rank's stream is free; a communication waits for all its ranks."""
    count, world = len(plan.ops), plan.world
    start = np.full((count, world), np.nan)
    end = np.full((count, world), np.nan)
    free = {"compute": np.zeros(world), "comm": np.zeros(world)}
    for index, op in enumerate(plan.ops):
        ranks = np.asarray(op.ranks, dtype=np.int64)
        ready = free[op.stream][ranks]
        for dep in op.deps:
            ready = np.fmax(ready, end[dep, ranks])  # NaN: the dep is not on that rank
        start[index, ranks] = ready
        if isinstance(op, Compute):
            end[index, ranks] = ready + op.time_s[ranks]
        elif isinstance(op, (Exchange, Collective, Barrier)):
            end[index, ranks] = ready.max() + comm_s[index][ranks]
        else:
            raise TypeError(f"unknown operation {type(op).__name__}")
        free[op.stream][ranks] = end[index, ranks]
    return start, end
