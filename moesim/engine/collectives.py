"""Collectives as flows on a FlowNetwork (the discrete-event fidelity of `collective_model`).

Each collective starts at the current simulation time, pays one launch latency `launch_s`,
then runs as flows between GPU ranks (split over equal-cost routes); a rank's part ends when
all its sends and receives are done. The algorithms and their geometry are documented in
`moesim.engine.collective_model`; `moesim.engine.analytic` gives their closed forms, and
`predict_collective` runs one collective at either fidelity.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import simpy

from moesim.engine import analytic
from moesim.engine.collective_model import (
    ALLREDUCE_ALGORITHMS,
    OPS,
    CollectiveResult,
    check_bytes_matrix,
    check_ranks,
    double_binary_tree_edges,
    nvls_fill_s,
    nvls_flows,
    nvls_port_bytes,
    tree_depth,
)
from moesim.engine.network import FlowNetwork, Routing
from moesim.engine.protocols import (
    CollectiveCall,
    group_step_kind,
    hop_kind,
    resolve_call,
    tree_protocol_latency_s,
)
from moesim.inputs.options import AllreduceAlgorithm

__all__ = [
    "CollectiveRun",
    "alltoall",
    "allreduce",
    "allgather",
    "reducescatter",
    "simulate_collective",
    "predict_collective",
]


@dataclass
class CollectiveRun:
    """A collective in flight: per-rank completion events (value: end time) and its bytes."""

    op: str
    ranks: tuple[int, ...]
    start_s: float
    rank_done: list[simpy.Event]
    done: simpy.Event
    network_bytes: float
    algorithm: str
    protocol: str = "Simple"

    def result(self) -> CollectiveResult:
        """The result once `done` has fired."""
        if not all(ev.triggered for ev in self.rank_done):
            raise RuntimeError("collective has not finished; run the environment until run.done")
        ends = np.array([ev.value for ev in self.rank_done], dtype=float)
        return CollectiveResult(
            self.op, self.ranks, self.start_s, ends, self.network_bytes, self.algorithm,
            self.protocol,
        )


# ---- all-to-all ---------------------------------------------------------------------------


def alltoall(
    net: FlowNetwork,
    topo: Routing,
    ranks: Sequence[int],
    bytes_matrix: np.ndarray,
    *,
    launch_s: float | None = None,
    call: CollectiveCall | None = None,
) -> CollectiveRun:
    """Direct all-to-all: `bytes_matrix[i, j]` bytes from `ranks[i]` to `ranks[j]`, all at once.

    The call (default: `plan_call` for the busiest rank's bytes) sets the launch, one step
    latency and the wire bytes per payload byte; `launch_s` overrides its launch."""
    ranks = check_ranks(ranks)
    n = len(ranks)
    matrix = check_bytes_matrix(bytes_matrix, n)
    offdiag = matrix * (1 - np.eye(n))
    call = resolve_call(topo, "alltoall", ranks, float(offdiag.sum(axis=1).max(initial=0.0)),
                        call=call, launch_s=launch_s)
    wire = offdiag * call.wire_factor
    env = net.env
    rank_done = [env.event() for _ in range(n)]
    src_idx, dst_idx = np.nonzero(wire)

    def start(_ev: simpy.Event) -> None:
        per_rank: list[list[simpy.Event]] = [[] for _ in range(n)]
        for i, j in zip(src_idx.tolist(), dst_idx.tolist(), strict=True):
            flow = net.transfer_multipath(topo.routes(ranks[i], ranks[j]), wire[i, j])
            per_rank[i].append(flow)
            per_rank[j].append(flow)
        for k in range(n):
            _succeed_when_all(env, per_rank[k], rank_done[k])

    delay_s = call.launch_s + (call.step_s(group_step_kind(topo, ranks)) if n > 1 else 0.0)
    env.timeout(delay_s).callbacks.append(start)
    return _run("alltoall", ranks, env, rank_done, float(offdiag.sum()), "direct", call.protocol)


# ---- ring algorithms -----------------------------------------------------------------------


def allreduce(
    net: FlowNetwork,
    topo: Routing,
    ranks: Sequence[int],
    size_bytes: float,
    *,
    algorithm: AllreduceAlgorithm = "auto",
    protocol: str = "auto",
    launch_s: float | None = None,
    call: CollectiveCall | None = None,
) -> CollectiveRun:
    """All-reduce of a `size_bytes` buffer on every rank: `ring`, `tree`, `nvls`, or `auto`
    (NCCL's tuner), on `protocol` (LL, LL128, Simple, auto)."""
    ranks = check_ranks(ranks)
    n = len(ranks)
    call = resolve_call(topo, "allreduce", ranks, size_bytes, algorithm=algorithm,
                        protocol=protocol, call=call, launch_s=launch_s)
    if call.algorithm == "ring":
        return _ring(net, topo, "allreduce", ranks, size_bytes / n, 2 * (n - 1), call)
    if call.algorithm == "tree":
        return _tree_allreduce(net, topo, ranks, size_bytes, call)
    if call.algorithm == "nvls":
        return _nvls_allreduce(net, topo, ranks, size_bytes, call)
    raise ValueError(
        f"allreduce algorithm must be one of {', '.join(ALLREDUCE_ALGORITHMS)}, got "
        f"{call.algorithm!r}"
    )


def allgather(
    net: FlowNetwork,
    topo: Routing,
    ranks: Sequence[int],
    size_bytes: float,
    *,
    protocol: str = "auto",
    launch_s: float | None = None,
    call: CollectiveCall | None = None,
) -> CollectiveRun:
    """Ring all-gather; `size_bytes` is the full gathered buffer (each rank contributes 1/n)."""
    ranks = check_ranks(ranks)
    n = len(ranks)
    call = resolve_call(topo, "allgather", ranks, size_bytes, algorithm="ring",
                        protocol=protocol, call=call, launch_s=launch_s)
    return _ring(net, topo, "allgather", ranks, size_bytes / n, n - 1, call)


def reducescatter(
    net: FlowNetwork,
    topo: Routing,
    ranks: Sequence[int],
    size_bytes: float,
    *,
    protocol: str = "auto",
    launch_s: float | None = None,
    call: CollectiveCall | None = None,
) -> CollectiveRun:
    """Ring reduce-scatter; `size_bytes` is the full input buffer (each rank keeps 1/n)."""
    ranks = check_ranks(ranks)
    n = len(ranks)
    call = resolve_call(topo, "reducescatter", ranks, size_bytes, algorithm="ring",
                        protocol=protocol, call=call, launch_s=launch_s)
    return _ring(net, topo, "reducescatter", ranks, size_bytes / n, n - 1, call)


def _ring(
    net: FlowNetwork,
    topo: Routing,
    op: str,
    ranks: tuple[int, ...],
    chunk_bytes: float,
    num_steps: int,
    call: CollectiveCall,
) -> CollectiveRun:
    """`num_steps` ring steps of `chunk_bytes` from ranks[i] to ranks[i+1], step-synchronised:
    a rank starts step s+1 when its send and its receive of step s are done. Each step is one
    flow group (`FlowNetwork.open_group`) counting a rank's send and receive parts, so the
    network reports ranks ready for their next step without a simpy event per flow. Each step
    pays its path latency plus the protocol's step latency for the hop's kind, and moves the
    chunk times the protocol's wire factor."""
    launch_s = call.launch_s
    env = net.env
    n = len(ranks)
    rank_done = [env.event() for _ in range(n)]
    network_bytes = chunk_bytes * num_steps * n if n > 1 else 0.0
    if n == 1 or num_steps == 0:
        def finish_all(_ev: simpy.Event) -> None:
            for event in rank_done:
                event.succeed(env.now)

        env.timeout(launch_s).callbacks.append(finish_all)
        return _run(op, ranks, env, rank_done, network_bytes, "ring", call.protocol)
    links = net.links
    paths = [[links.ids(path) for path in topo.routes(ranks[i], ranks[(i + 1) % n])]
             for i in range(n)]
    routes = [topo.routes(ranks[i], ranks[(i + 1) % n]) for i in range(n)]
    latency_s = [np.array([float(links.latency_s[ids].sum()) + call.step_s(hop_kind(topo, path))
                           for ids, path in zip(rank_paths, routes[i], strict=True)])
                 for i, rank_paths in enumerate(paths)]
    parts = np.zeros(max(ranks) + 1, dtype=np.int64)
    for i, rank_paths in enumerate(paths):
        parts[ranks[i]] += len(rank_paths)
        parts[ranks[(i + 1) % n]] += len(rank_paths)
    position = {rank: i for i, rank in enumerate(ranks)}

    flat_paths = [ids for rank_paths in paths for ids in rank_paths]
    part_of = np.repeat(np.arange(n), [len(rank_paths) for rank_paths in paths])
    wire_bytes = chunk_bytes * call.wire_factor
    part_sizes = np.concatenate([np.full(len(rank_paths), wire_bytes / len(rank_paths))
                                 for rank_paths in paths])
    part_src = np.asarray(ranks, dtype=np.int64)[part_of]
    part_dst = np.asarray([ranks[(i + 1) % n] for i in range(n)], dtype=np.int64)[part_of]
    part_latency = np.concatenate(latency_s)

    part_numbers = net.path_numbers(flat_paths)

    def send(step: int, senders: list[int]) -> None:
        """Start the step's sends of ring positions `senders`, in one batch."""
        if len(senders) == n:
            net.start_group_numbered(groups[step], part_src, part_numbers, part_sizes, part_dst,
                                     part_latency)
            return
        pick = np.flatnonzero(np.isin(part_of, senders))
        net.start_group_numbered(groups[step], part_src[pick], part_numbers[pick],
                                 part_sizes[pick], part_dst[pick], part_latency[pick])

    def step_done(step: int, done: np.ndarray) -> None:
        senders = [position[rank] for rank in done.tolist()]
        if step + 1 < num_steps:
            send(step + 1, senders)
        else:
            for i in senders:
                rank_done[i].succeed(env.now)

    groups = [net.open_group(parts, partial(step_done, step)) for step in range(num_steps)]

    def start(_ev: simpy.Event) -> None:
        send(0, list(range(n)))

    env.timeout(launch_s).callbacks.append(start)
    return _run(op, ranks, env, rank_done, network_bytes, "ring", call.protocol)


# ---- double binary tree ------------------------------------------------------------------


def _tree_allreduce(
    net: FlowNetwork, topo: Routing, ranks: tuple[int, ...], size_bytes: float,
    call: CollectiveCall
) -> CollectiveRun:
    env = net.env
    n = len(ranks)
    half = size_bytes / 2
    wire = half * call.wire_factor
    edges = double_binary_tree_edges(n)
    rank_done = [env.event() for _ in range(n)]
    path_lat = [
        max(net.path_latency_s(p) for p in topo.routes(ranks[c], ranks[q])) for c, q in edges
    ]
    fill_s = (2 * tree_depth(n) - 1) * max(path_lat) if edges else 0.0
    fill_s += tree_protocol_latency_s(topo, ranks, call)

    def start(_ev: simpy.Event) -> None:
        flows = []
        for c, q in edges:  # reduce up and broadcast down stream concurrently (pipelined)
            flows.append(net.transfer_multipath(topo.routes(ranks[c], ranks[q]), wire))
            flows.append(net.transfer_multipath(topo.routes(ranks[q], ranks[c]), wire))
        env.process(finish(flows))

    def finish(flows: list[simpy.Event]) -> Generator[simpy.Event, object, None]:
        yield env.all_of(flows)
        yield env.timeout(fill_s)
        for ev in rank_done:
            ev.succeed(env.now)

    env.timeout(call.launch_s).callbacks.append(start)
    return _run("allreduce", ranks, env, rank_done, 2 * half * len(edges), "tree", call.protocol)


# ---- NVLS (NVLink SHARP) -----------------------------------------------------------------


def _nvls_allreduce(
    net: FlowNetwork, topo: Routing, ranks: tuple[int, ...], size_bytes: float,
    call: CollectiveCall
) -> CollectiveRun:
    env = net.env
    n = len(ranks)
    flows = nvls_flows(topo, ranks, size_bytes)
    fill_s = nvls_fill_s(topo, ranks)
    rank_done = [env.event() for _ in range(n)]

    def start(_ev: simpy.Event) -> None:
        env.process(finish([net.transfer(path, wire) for path, wire in flows]))

    def finish(events: list[simpy.Event]) -> Generator[simpy.Event, object, None]:
        yield env.all_of(events)  # every rank's result needs every rank's slice: one end
        yield env.timeout(fill_s)
        for ev in rank_done:
            ev.succeed(env.now)

    env.timeout(call.launch_s).callbacks.append(start)
    network_bytes = n * nvls_port_bytes(n, size_bytes)  # payload into the switch
    return _run("allreduce", ranks, env, rank_done, network_bytes, "nvls", call.protocol)


# ---- helpers ------------------------------------------------------------------------------


def _succeed_when_all(
    env: simpy.Environment, events: list[simpy.Event], target: simpy.Event
) -> None:
    """Fire `target` with the time at which every event in `events` has fired (now if none)."""

    def fire(_ev: simpy.Event | None = None) -> None:
        target.succeed(env.now)

    if events:
        env.all_of(events).callbacks.append(fire)
    else:
        fire()


def _run(
    op: str,
    ranks: tuple[int, ...],
    env: simpy.Environment,
    rank_done: list[simpy.Event],
    network_bytes: float,
    algorithm: str,
    protocol: str = "Simple",
) -> CollectiveRun:
    done = env.all_of(rank_done)
    return CollectiveRun(op, ranks, env.now, rank_done, done, network_bytes, algorithm,
                         protocol)


# ---- nccl-tests conventions and one-shot runs -------------------------------------------


def simulate_collective(
    topo: Routing,
    op: str,
    ranks: Sequence[int],
    *,
    size_bytes: float | None = None,
    bytes_matrix: np.ndarray | None = None,
    algorithm: AllreduceAlgorithm = "auto",
    protocol: str = "auto",
    launch_s: float | None = None,
    call: CollectiveCall | None = None,
) -> CollectiveResult:
    """Run one collective alone on an idle network in a fresh simpy environment."""
    env = simpy.Environment()
    net = FlowNetwork(env, topo.graph)
    if op == "alltoall":
        if bytes_matrix is None:
            raise ValueError("alltoall needs bytes_matrix")
        run = alltoall(net, topo, ranks, bytes_matrix, launch_s=launch_s, call=call)
    elif size_bytes is None:
        raise ValueError(f"{op} needs size_bytes")
    elif op == "allreduce":
        run = allreduce(net, topo, ranks, size_bytes, algorithm=algorithm, protocol=protocol,
                        launch_s=launch_s, call=call)
    elif op == "allgather":
        run = allgather(net, topo, ranks, size_bytes, protocol=protocol, launch_s=launch_s,
                        call=call)
    elif op == "reducescatter":
        run = reducescatter(net, topo, ranks, size_bytes, protocol=protocol, launch_s=launch_s,
                            call=call)
    else:
        raise ValueError(f"unknown collective {op!r}; choose one of {', '.join(OPS)}")
    env.run(until=run.done)
    return run.result()


def predict_collective(
    topo: Routing,
    op: str,
    ranks: Sequence[int],
    *,
    size_bytes: float | None = None,
    bytes_matrix: np.ndarray | None = None,
    algorithm: AllreduceAlgorithm = "auto",
    protocol: str = "auto",
    launch_s: float | None = None,
    call: CollectiveCall | None = None,
    fidelity: str = "des",
) -> CollectiveResult:
    """One collective at the chosen fidelity: `des` (flows, max-min) or `analytic` (closed
    form), on the algorithm and protocol NCCL's tuner picks unless forced (or `call` given)."""
    args = {"size_bytes": size_bytes, "bytes_matrix": bytes_matrix, "algorithm": algorithm,
            "protocol": protocol, "launch_s": launch_s, "call": call}
    if fidelity == "des":
        return simulate_collective(topo, op, ranks, **args)  # type: ignore[arg-type]
    if fidelity == "analytic":
        return analytic.predict(topo, op, ranks, **args)  # type: ignore[arg-type]
    raise ValueError(f"fidelity must be 'des' or 'analytic', got {fidelity!r}")
