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

from collections.abc import Sequence

import numpy as np

from moesim.engine import analytic
from moesim.engine.a2a import crosses_nodes, exchange_delay_and_wire
from moesim.engine.network import Routing
from moesim.engine.plan import Barrier, Collective, Compute, Exchange, StepPlan
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
    protocol = [exchange_delay_and_wire(topo, impl, name, range(world), float(b), launch_s,
                                        impl != "direct" and crosses_nodes(topo, matrix))
                for b, (impl, name), matrix in zip(busiest, runs, off, strict=True)]
    launch = np.array([p[0] for p in protocol])
    off *= np.array([p[1] for p in protocol])[:, None, None]
    drain = routes.link_loads(off) / routes.links.capacity_bytes_per_s
    pair_s = routes.pair_drain_s(drain) + routes.pair_latency_s
    pair_s = np.where(off.reshape(off.shape[0], -1) > 0, pair_s, 0.0).reshape(off.shape)
    return launch[:, None] + np.maximum(pair_s.max(axis=2), pair_s.max(axis=1))


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
        comm_s = _comm_durations(plan, topo, routes, launch_s)
        if _is_chain(plan):
            start, end = _chain_times(plan, comm_s)
        else:
            start, end = _graph_times(plan, comm_s)
        return StepTimeline(plan, start, end, self.name)


def _comm_durations(plan: StepPlan, topo: Routing, routes: RouteTable,
                    launch_s: float | None) -> dict[int, np.ndarray]:
    """Per communication operation, each rank's seconds after the barrier (`[W]`): every
    exchange's bound in one batch, identical collectives once."""
    out: dict[int, np.ndarray] = {}
    exchanges = {i: op for i, op in enumerate(plan.ops) if isinstance(op, Exchange)}
    row: dict[tuple[int, str, str], int] = {}  # (matrix identity, impl, name) -> batch row
    stack: list[np.ndarray] = []
    runs: list[tuple[str, str]] = []

    def run_key(x: Exchange) -> tuple[int, str, str]:
        return id(x.bytes_matrix), x.impl, x.name if x.impl != "direct" else ""

    for exchange in exchanges.values():
        if run_key(exchange) not in row:
            row[run_key(exchange)] = len(stack)
            stack.append(exchange.bytes_matrix)
            runs.append(run_key(exchange)[1:])
    if stack:
        # in batches of at most _BATCH_ENTRIES (matrix, route entry) pairs
        chunk = max(1, _BATCH_ENTRIES // max(routes.link_of_entry.size, 1))
        bounds = np.concatenate([
            pairwise_bounds_s(routes, topo, stack[i][None] if chunk == 1 else
                              np.stack(stack[i: i + chunk]), launch_s, runs[i: i + chunk])
            for i in range(0, len(stack), chunk)])
        out.update({i: bounds[row[run_key(x)]] for i, x in exchanges.items()})
    seen: dict[tuple[object, ...], np.ndarray] = {}
    for i, op in enumerate(plan.ops):
        if isinstance(op, Collective):
            key = (op.op, op.algorithm, op.groups, op.size_bytes)
            if key not in seen:
                seen[key] = _collective_s(topo, op, plan.world, launch_s)
            out[i] = seen[key]
        elif isinstance(op, Barrier):
            out[i] = np.zeros(plan.world)
    return out


def _is_chain(plan: StepPlan) -> bool:
    """Whether every operation runs on every rank right after the one before it."""
    everyone = tuple(range(plan.world))
    return all(op.ranks == everyone and op.deps == ((i - 1,) if i else ())
               for i, op in enumerate(plan.ops))


def _chain_times(plan: StepPlan, comm_s: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of a chain: a compute adds its seconds to each rank's clock; a
    communication starts at the latest clock (the barrier) and adds each rank's seconds."""
    count, world = len(plan.ops), plan.world
    start = np.empty((count, world))
    end = np.empty((count, world))
    now = np.zeros(world)
    for index, op in enumerate(plan.ops):
        start[index] = now
        if isinstance(op, Compute):
            now = now + op.time_s
        else:
            now = now.max() + comm_s[index]
        end[index] = now
    return start, end


def _graph_times(plan: StepPlan, comm_s: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
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
