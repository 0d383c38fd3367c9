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
    NCCL_LAUNCH_S,
    OPS,
    CollectiveResult,
    check_bytes_matrix,
    check_ranks,
    double_binary_tree_edges,
    nvls_fill_s,
    nvls_flows,
    nvls_port_bytes,
    nvls_switch,
    tree_depth,
)
from moesim.engine.network import Edge, Links, Routing
from moesim.inputs.options import AllreduceAlgorithm

__all__ = [
    "Flow",
    "concurrent_flow_times_s",
    "alltoall",
    "allreduce",
    "allgather",
    "reducescatter",
    "choose_allreduce_algorithm",
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
    launch_s: float = NCCL_LAUNCH_S,
) -> CollectiveResult:
    """Direct all-to-all bound; rank i ends when its slowest send or receive would."""
    ranks = check_ranks(ranks)
    n = len(ranks)
    matrix = check_bytes_matrix(bytes_matrix, n)
    offdiag = matrix * (1 - np.eye(n))
    src_idx, dst_idx = np.nonzero(offdiag)
    flows = [
        (topo.routes(ranks[i], ranks[j]), float(offdiag[i, j]))
        for i, j in zip(src_idx.tolist(), dst_idx.tolist(), strict=True)
    ]
    times = concurrent_flow_times_s(Links.from_graph(topo.graph), flows)
    per_rank = np.zeros(n)
    np.maximum.at(per_rank, src_idx, times)
    np.maximum.at(per_rank, dst_idx, times)
    return CollectiveResult("alltoall", ranks, 0.0, launch_s + per_rank, float(offdiag.sum()))


def allreduce(
    topo: Routing,
    ranks: Sequence[int],
    size_bytes: float,
    *,
    algorithm: AllreduceAlgorithm = "ring",
    launch_s: float = NCCL_LAUNCH_S,
) -> CollectiveResult:
    """All-reduce bound by `ring` (2(n-1) steps of S/n), pipelined `tree`, `nvls` or `auto`."""
    ranks = check_ranks(ranks)
    n = len(ranks)
    if algorithm == "auto":
        algorithm = choose_allreduce_algorithm(topo, ranks, size_bytes, launch_s=launch_s)
    if algorithm == "ring":
        return _ring(topo, "allreduce", ranks, size_bytes / n, 2 * (n - 1), launch_s)
    if algorithm == "tree":
        return _tree_allreduce(topo, ranks, size_bytes, launch_s)
    if algorithm == "nvls":
        return _nvls_allreduce(topo, ranks, size_bytes, launch_s)
    raise ValueError(
        f"allreduce algorithm must be one of {', '.join(ALLREDUCE_ALGORITHMS)}, got {algorithm!r}"
    )


def choose_allreduce_algorithm(
    topo: Routing, ranks: Sequence[int], size_bytes: float, *, launch_s: float = NCCL_LAUNCH_S
) -> AllreduceAlgorithm:
    """What `auto` runs: `nvls` if the ranks share an `nvls` switch and it is faster, else ring."""
    ranks = check_ranks(ranks)
    if len(ranks) < 2 or nvls_switch(topo, ranks) is None:
        return "ring"
    n = len(ranks)
    ring_s = _ring(topo, "allreduce", ranks, size_bytes / n, 2 * (n - 1), launch_s).time_s
    nvls_s = _nvls_allreduce(topo, ranks, size_bytes, launch_s).time_s
    return "nvls" if nvls_s < ring_s else "ring"


def allgather(
    topo: Routing, ranks: Sequence[int], size_bytes: float, *, launch_s: float = NCCL_LAUNCH_S
) -> CollectiveResult:
    """Ring all-gather bound; `size_bytes` is the full gathered buffer."""
    ranks = check_ranks(ranks)
    return _ring(topo, "allgather", ranks, size_bytes / len(ranks), len(ranks) - 1, launch_s)


def reducescatter(
    topo: Routing, ranks: Sequence[int], size_bytes: float, *, launch_s: float = NCCL_LAUNCH_S
) -> CollectiveResult:
    """Ring reduce-scatter bound; `size_bytes` is the full input buffer."""
    ranks = check_ranks(ranks)
    return _ring(topo, "reducescatter", ranks, size_bytes / len(ranks), len(ranks) - 1, launch_s)


def _ring(
    topo: Routing,
    op: str,
    ranks: tuple[int, ...],
    chunk_bytes: float,
    num_steps: int,
    launch_s: float,
) -> CollectiveResult:
    n = len(ranks)
    step_s = 0.0
    if n > 1 and num_steps > 0:
        flows = [(topo.routes(ranks[i], ranks[(i + 1) % n]), chunk_bytes) for i in range(n)]
        step_s = float(concurrent_flow_times_s(Links.from_graph(topo.graph), flows).max())
    end_s = np.full(n, launch_s + num_steps * step_s)
    network_bytes = chunk_bytes * num_steps * n if n > 1 else 0.0
    return CollectiveResult(op, ranks, 0.0, end_s, network_bytes, "ring")


def _tree_allreduce(
    topo: Routing, ranks: tuple[int, ...], size_bytes: float, launch_s: float
) -> CollectiveResult:
    n = len(ranks)
    links = Links.from_graph(topo.graph)
    half = size_bytes / 2
    flows: list[Flow] = []
    for c, q in double_binary_tree_edges(n):
        flows.append((topo.routes(ranks[c], ranks[q]), half))
        flows.append((topo.routes(ranks[q], ranks[c]), half))
    total_s = launch_s
    if flows:
        latency_s, drain_s = _latency_and_drain_s(links, flows)
        total_s += 2 * tree_depth(n) * float(latency_s.max()) + float(drain_s.max())
    return CollectiveResult("allreduce", ranks, 0.0, np.full(n, total_s), half * len(flows), "tree")


def _nvls_allreduce(
    topo: Routing, ranks: tuple[int, ...], size_bytes: float, launch_s: float
) -> CollectiveResult:
    n = len(ranks)
    flows: list[Flow] = [([path], wire) for path, wire in nvls_flows(topo, ranks, size_bytes)]
    total_s = launch_s + nvls_fill_s(topo, ranks)
    if n > 1:
        total_s += float(concurrent_flow_times_s(Links.from_graph(topo.graph), flows).max())
    network_bytes = n * nvls_port_bytes(n, size_bytes)
    return CollectiveResult("allreduce", ranks, 0.0, np.full(n, total_s), network_bytes, "nvls")


def predict(
    topo: Routing,
    op: str,
    ranks: Sequence[int],
    *,
    size_bytes: float | None = None,
    bytes_matrix: np.ndarray | None = None,
    algorithm: AllreduceAlgorithm = "ring",
    launch_s: float = NCCL_LAUNCH_S,
) -> CollectiveResult:
    """Analytic counterpart of `collectives.simulate_collective` (same arguments)."""
    if op == "alltoall":
        if bytes_matrix is None:
            raise ValueError("alltoall needs bytes_matrix")
        return alltoall(topo, ranks, bytes_matrix, launch_s=launch_s)
    if op not in OPS:
        raise ValueError(f"unknown collective {op!r}; choose one of {', '.join(OPS)}")
    if size_bytes is None:
        raise ValueError(f"{op} needs size_bytes")
    if op == "allreduce":
        return allreduce(topo, ranks, size_bytes, algorithm=algorithm, launch_s=launch_s)
    if op == "allgather":
        return allgather(topo, ranks, size_bytes, launch_s=launch_s)
    return reducescatter(topo, ranks, size_bytes, launch_s=launch_s)
