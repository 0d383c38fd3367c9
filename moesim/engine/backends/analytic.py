"""Analytic backend: a step plan in closed form, congestion-unaware, without simpy.

Each operation starts on a rank when its dependencies there are done and the rank's stream is
free. A compute takes its seconds. An exchange or collective starts when every rank taking part
is ready (a barrier over its ranks) and ends for rank r:
- exchange: launch + r's slowest send or receive under the bottleneck-link bound (bytes on the
  busiest link of a pair's routes / bandwidth, plus the path latency), on the protocol
  `alltoall_protocol` picks for the size;
- collective: the closed form of its group's algorithm (`moesim.engine.analytic`);
- barrier: when the last rank is ready.
"""

from __future__ import annotations

import numpy as np

from moesim.engine import analytic
from moesim.engine.collective_model import alltoall_protocol
from moesim.engine.network import Routing
from moesim.engine.plan import Barrier, Collective, Compute, Exchange, Operation, StepPlan
from moesim.engine.routes import RouteTable
from moesim.engine.timeline import StepTimeline

__all__ = ["AnalyticBackend", "pairwise_bound_s"]


def pairwise_bound_s(
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


def _collective_s(topo: Routing, op: Collective, world: int, launch_s: float) -> np.ndarray:
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

    def execute(self, plan: StepPlan, topo: Routing, routes: RouteTable, launch_s: float
                ) -> StepTimeline:
        """Every operation's start and end on every rank, in plan order."""
        count, world = len(plan.ops), plan.world
        start = np.full((count, world), np.nan)
        end = np.full((count, world), np.nan)
        free = {"compute": np.zeros(world), "comm": np.zeros(world)}
        cache: dict[tuple[int, ...], np.ndarray] = {}  # durations of identical comm ops
        for index, op in enumerate(plan.ops):
            ranks = np.asarray(op.ranks, dtype=np.int64)
            ready = free[op.stream][ranks]
            for dep in op.deps:
                ready = np.fmax(ready, end[dep, ranks])  # NaN: the dep is not on that rank
            start[index, ranks] = ready
            end[index, ranks] = self._end(op, ready, ranks, topo, routes, launch_s, cache)
            free[op.stream][ranks] = end[index, ranks]
        return StepTimeline(plan, start, end, self.name)

    @staticmethod
    def _end(op: Operation, ready: np.ndarray, ranks: np.ndarray, topo: Routing,
             routes: RouteTable, launch_s: float, cache: dict[tuple[int, ...], np.ndarray]
             ) -> np.ndarray:
        """When each rank's part of `op` ends, the ranks being ready at `ready`."""
        if isinstance(op, Compute):
            return ready + op.time_s[ranks]
        if isinstance(op, Barrier):
            return np.full(ranks.size, ready.max())
        if isinstance(op, Exchange):
            key = (id(op.bytes_matrix),)
            if key not in cache:
                cache[key] = pairwise_bound_s(routes, topo, op.bytes_matrix, launch_s)
            return ready.max() + cache[key][ranks]
        if isinstance(op, Collective):
            key = (hash((op.op, op.algorithm, op.groups, op.size_bytes)),)
            if key not in cache:
                cache[key] = _collective_s(topo, op, routes.world, launch_s)
            return ready.max() + cache[key][ranks]
        raise TypeError(f"unknown operation {type(op).__name__}")
