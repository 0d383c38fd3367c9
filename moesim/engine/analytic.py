"""Analytic fidelity: the same collectives as `collectives`, in closed form, without simpy.

For a set of flows that start together, each flow takes its path latency plus the worst
load/bandwidth ratio over the links it crosses (the bottleneck-link bound: every link
carries all its bytes at full capacity). Collectives compose this bound step by step,
exactly as the DES runs them:

- direct all-to-all: one concurrent set; rank i ends at launch + its slowest flow.
- ring all-reduce: launch + 2(n-1) * (step latency + (S/n) / B_bottleneck), which on
  uniform links is `2(n-1)/n * S / B + 2(n-1) * latency`.
- ring all-gather / reduce-scatter: launch + (n-1) steps of S/n.
- double-binary-tree all-reduce: launch + 2 * depth * latency + max link load / bandwidth
  over all tree-edge flows (pipelined steady state).
- NVLS all-reduce: launch + fill (three port latencies) + the slowest port flow, each port
  carrying S(n+1)/n each way; on uniform ports `S(n+1)/n / B + 4 * latency`.
- `auto` all-reduce: NVLS when the ranks share an `nvls` switch and it beats ring, else ring
  (`choose_allreduce_algorithm`).

Functions mirror `collectives` (minus the network argument) and return `CollectiveResult`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
from moesim.engine.network import Edge, Links, Routing
from moesim.engine.protocols import (
    CollectiveCall,
    group_step_kind,
    hop_kind,
    resolve_call,
    tree_protocol_latency_s,
)
from moesim.inputs.options import AllreduceAlgorithm

__all__ = [
    "Flow",
    "concurrent_flow_times_s",
    "alltoall",
    "allreduce",
    "allgather",
    "reducescatter",
    "predict",
]

Flow = tuple[list[list[Edge]], float]  # (equal-cost paths, bytes split evenly over them)


def concurrent_flow_times_s(links: Links, flows: Sequence[Flow]) -> np.ndarray:
    """Per flow: max path latency + max over its links of (bytes on link / bandwidth)."""
    latency_s, drain_s = _latency_and_drain_s(links, flows)
    return latency_s + drain_s


def _latency_and_drain_s(links: Links, flows: Sequence[Flow]) -> tuple[np.ndarray, np.ndarray]:
    """Per flow: its longest path latency, and the longest drain time of any link it uses."""
    pair_flow, pair_link, pair_bytes = [], [], []
    latency_s = np.zeros(len(flows))
    for f, (paths, size_bytes) in enumerate(flows):
        for path in paths:
            ids = links.ids(path)
            pair_flow.append(np.full(ids.size, f))
            pair_link.append(ids)
            pair_bytes.append(np.full(ids.size, size_bytes / len(paths)))
            latency_s[f] = max(latency_s[f], float(links.latency_s[ids].sum()))
    if not pair_flow:
        return latency_s, np.zeros(len(flows))
    flow_idx, link_idx = np.concatenate(pair_flow), np.concatenate(pair_link)
    load = np.bincount(link_idx, weights=np.concatenate(pair_bytes), minlength=len(links.edges))
    drain_s = load / links.capacity_bytes_per_s  # [L] time each link needs for its bytes
    worst = np.zeros(len(flows))
    np.maximum.at(worst, flow_idx, drain_s[link_idx])
    return latency_s, worst


def alltoall(
    topo: Routing,
    ranks: Sequence[int],
    bytes_matrix: np.ndarray,
    *,
    launch_s: float | None = None,
    call: CollectiveCall | None = None,
) -> CollectiveResult:
    """Direct all-to-all bound; rank i ends when its slowest send or receive would."""
    ranks = check_ranks(ranks)
    n = len(ranks)
    matrix = check_bytes_matrix(bytes_matrix, n)
    offdiag = matrix * (1 - np.eye(n))
    call = resolve_call(topo, "alltoall", ranks, float(offdiag.sum(axis=1).max(initial=0.0)),
                        call=call, launch_s=launch_s)
    src_idx, dst_idx = np.nonzero(offdiag)
    flows = [
        (topo.routes(ranks[i], ranks[j]), float(offdiag[i, j]) * call.wire_factor)
        for i, j in zip(src_idx.tolist(), dst_idx.tolist(), strict=True)
    ]
    times = concurrent_flow_times_s(Links.from_graph(topo.graph), flows)
    per_rank = np.zeros(n)
    np.maximum.at(per_rank, src_idx, times)
    np.maximum.at(per_rank, dst_idx, times)
    delay_s = call.launch_s + (call.step_s(group_step_kind(topo, ranks)) if n > 1 else 0.0)
    return CollectiveResult("alltoall", ranks, 0.0, delay_s + per_rank, float(offdiag.sum()),
                            "direct", call.protocol)


def allreduce(
    topo: Routing,
    ranks: Sequence[int],
    size_bytes: float,
    *,
    algorithm: AllreduceAlgorithm = "auto",
    protocol: str = "auto",
    launch_s: float | None = None,
    call: CollectiveCall | None = None,
) -> CollectiveResult:
    """All-reduce bound by `ring` (2(n-1) steps of S/n), pipelined `tree`, `nvls` or `auto`."""
    ranks = check_ranks(ranks)
    n = len(ranks)
    call = resolve_call(topo, "allreduce", ranks, size_bytes, algorithm=algorithm,
                        protocol=protocol, call=call, launch_s=launch_s)
    if call.algorithm == "ring":
        return _ring(topo, "allreduce", ranks, size_bytes / n, 2 * (n - 1), call)
    if call.algorithm == "tree":
        return _tree_allreduce(topo, ranks, size_bytes, call)
    if call.algorithm == "nvls":
        return _nvls_allreduce(topo, ranks, size_bytes, call)
    raise ValueError(
        f"allreduce algorithm must be one of {', '.join(ALLREDUCE_ALGORITHMS)}, got "
        f"{call.algorithm!r}"
    )


def allgather(
    topo: Routing, ranks: Sequence[int], size_bytes: float, *, protocol: str = "auto",
    launch_s: float | None = None, call: CollectiveCall | None = None,
) -> CollectiveResult:
    """Ring all-gather bound; `size_bytes` is the full gathered buffer."""
    ranks = check_ranks(ranks)
    call = resolve_call(topo, "allgather", ranks, size_bytes, algorithm="ring",
                        protocol=protocol, call=call, launch_s=launch_s)
    return _ring(topo, "allgather", ranks, size_bytes / len(ranks), len(ranks) - 1, call)


def reducescatter(
    topo: Routing, ranks: Sequence[int], size_bytes: float, *, protocol: str = "auto",
    launch_s: float | None = None, call: CollectiveCall | None = None,
) -> CollectiveResult:
    """Ring reduce-scatter bound; `size_bytes` is the full input buffer."""
    ranks = check_ranks(ranks)
    call = resolve_call(topo, "reducescatter", ranks, size_bytes, algorithm="ring",
                        protocol=protocol, call=call, launch_s=launch_s)
    return _ring(topo, "reducescatter", ranks, size_bytes / len(ranks), len(ranks) - 1, call)


def _ring(
    topo: Routing,
    op: str,
    ranks: tuple[int, ...],
    chunk_bytes: float,
    num_steps: int,
    call: CollectiveCall,
) -> CollectiveResult:
    n = len(ranks)
    step_s = 0.0
    if n > 1 and num_steps > 0:
        hops = [topo.routes(ranks[i], ranks[(i + 1) % n]) for i in range(n)]
        flows = [(paths, chunk_bytes * call.wire_factor) for paths in hops]
        times = concurrent_flow_times_s(Links.from_graph(topo.graph), flows)
        times = times + np.array([call.step_s(hop_kind(topo, paths[0])) for paths in hops])
        step_s = float(times.max())
    end_s = np.full(n, call.launch_s + num_steps * step_s)
    network_bytes = chunk_bytes * num_steps * n if n > 1 else 0.0
    return CollectiveResult(op, ranks, 0.0, end_s, network_bytes, "ring", call.protocol)


def _tree_allreduce(
    topo: Routing, ranks: tuple[int, ...], size_bytes: float, call: CollectiveCall
) -> CollectiveResult:
    n = len(ranks)
    links = Links.from_graph(topo.graph)
    half = size_bytes / 2
    flows: list[Flow] = []
    for c, q in double_binary_tree_edges(n):
        flows.append((topo.routes(ranks[c], ranks[q]), half * call.wire_factor))
        flows.append((topo.routes(ranks[q], ranks[c]), half * call.wire_factor))
    total_s = call.launch_s
    if flows:
        latency_s, drain_s = _latency_and_drain_s(links, flows)
        total_s += 2 * tree_depth(n) * float(latency_s.max()) + float(drain_s.max())
        total_s += tree_protocol_latency_s(topo, ranks, call)
    return CollectiveResult("allreduce", ranks, 0.0, np.full(n, total_s), half * len(flows),
                            "tree", call.protocol)


def _nvls_allreduce(
    topo: Routing, ranks: tuple[int, ...], size_bytes: float, call: CollectiveCall
) -> CollectiveResult:
    n = len(ranks)
    flows: list[Flow] = [([path], wire) for path, wire in nvls_flows(topo, ranks, size_bytes)]
    total_s = call.launch_s + nvls_fill_s(topo, ranks)
    if n > 1:
        total_s += float(concurrent_flow_times_s(Links.from_graph(topo.graph), flows).max())
    network_bytes = n * nvls_port_bytes(n, size_bytes)
    return CollectiveResult("allreduce", ranks, 0.0, np.full(n, total_s), network_bytes, "nvls",
                            call.protocol)


def predict(
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
    """Analytic counterpart of `collectives.simulate_collective` (same arguments)."""
    if op == "alltoall":
        if bytes_matrix is None:
            raise ValueError("alltoall needs bytes_matrix")
        return alltoall(topo, ranks, bytes_matrix, launch_s=launch_s, call=call)
    if op not in OPS:
        raise ValueError(f"unknown collective {op!r}; choose one of {', '.join(OPS)}")
    if size_bytes is None:
        raise ValueError(f"{op} needs size_bytes")
    if op == "allreduce":
        return allreduce(topo, ranks, size_bytes, algorithm=algorithm, protocol=protocol,
                         launch_s=launch_s, call=call)
    if op == "allgather":
        return allgather(topo, ranks, size_bytes, protocol=protocol, launch_s=launch_s,
                         call=call)
    return reducescatter(topo, ranks, size_bytes, protocol=protocol, launch_s=launch_s,
                         call=call)
