"""Collectives as flows: all-to-all, all-reduce, all-gather and reduce-scatter on a FlowNetwork.

Each collective starts at the current simulation time, pays one launch latency `launch_s`,
then runs as flows between GPU ranks (split over equal-cost routes). A rank's part ends when
all its sends and receives are done. Algorithms (alpha-beta, as NCCL documents them):

- all-to-all: direct, one flow per ordered pair with nonzero bytes, all at once; the
  diagonal is a local copy and costs no network time (HBM copies are not modelled).
- ring all-reduce: reduce-scatter then all-gather, 2(n-1) steps of S/n to the next rank
  in ring order; a rank starts step s+1 when its step-s send and receive are both done,
  so every step pays the path latency once.
- ring all-gather / reduce-scatter: n-1 steps of S/n, S the full gathered buffer.
- tree all-reduce: NCCL's double binary tree, modelled in its pipelined steady state:
  two complementary heap-ordered binary trees (the second over the reversed ring order),
  each reducing up and broadcasting down half the buffer; all tree-edge flows stream at
  once (pipelining) and the pipeline fill costs 2*depth path latencies in total.
- NVLS all-reduce (NVLink SHARP, NCCL's default on H100/H200 NVSwitch): the switch reduces.
  Each GPU owns 1/n of the buffer: `multimem.ld_reduce` makes the switch pull that slice
  from all n GPUs and return the sum ("it would pull data from all 4 GPUs and give us the
  final result", sjeaugey, NVIDIA/nccl issue #828), then `multimem.st` sends the sum up once
  and the switch multicasts it to all n. Per GPU port that is S + S/n up and S/n + S down
  (for reduce-scatter / all-gather alone: "size in one direction and 1/N*size in the
  other", NVIDIA/nccl issue #1506), so `nvls_port_bytes = S(n+1)/n` each way, all streaming
  at once; the first chunk crosses a port four times, so the fill adds three port latencies,
  plus the switch's `nvls_latency_s` (a fitted fixed cost; NCCL's tuner likewise gives NVLS
  its own latency, `hwLat[NVLINK][NVLS][SIMPLE]`, src/graph/tuning.cc).
  NVLS traffic may reach a different fraction of the port than other traffic
  (`nvls_efficiency` on the nvswitch fabric block): its flows carry `nvls_port_bytes`
  scaled by (link bandwidth / (nominal bandwidth x nvls_efficiency)), so alone on a port
  they stream at nominal x nvls_efficiency.
- `algorithm="auto"`: what NCCL's own tuner picks (`moesim.engine.nccl_tuner`), with the
  protocol (LL, LL128, Simple) whose launch, per-step latency and bandwidth share
  `moesim.engine.protocols` charges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moesim.engine.network import Edge, Routing
from moesim.engine.protocols import NCCL_LAUNCH_S, nvls_switch
from moesim.errors import TopologyError
from moesim.inputs.options import AllreduceAlgorithm, CollectiveOp, choices

__all__ = [
    "NCCL_LAUNCH_S",
    "collective_launch_s",
    "OPS",
    "ALLREDUCE_ALGORITHMS",
    "NVLS_FILL_PORT_CROSSINGS",
    "CollectiveResult",
    "tree_depth",
    "double_binary_tree_edges",
    "nvls_switch",
    "nvls_port_bytes",
    "nvls_flows",
    "nvls_fill_s",
    "check_bytes_matrix",
    "check_ranks",
    "busbw_factor",
    "nccl_tests_alltoall_matrix",
]



def collective_launch_s(topo: object) -> float:
    """The launch latency of a Simple-protocol call on this topology (NCCL's 8.4 us unless
    the topology's `protocols` / `collective_launch_s` say otherwise)."""
    from moesim.engine.protocols import protocol_costs

    return protocol_costs(topo)["Simple"].launch_s  # type: ignore[arg-type]


OPS: tuple[str, ...] = choices(CollectiveOp)

ALLREDUCE_ALGORITHMS: tuple[str, ...] = choices(AllreduceAlgorithm)


# Port crossings of the first NVLS chunk (up, reduced down, up, multicast down) beyond the
# one every streaming flow already pays: the pipeline fill.
NVLS_FILL_PORT_CROSSINGS = 3


@dataclass(frozen=True)
class CollectiveResult:
    """Outcome of one collective: per-rank end times and bytes that crossed the network."""

    op: str
    ranks: tuple[int, ...]
    start_s: float
    end_times_s: np.ndarray  # [n] absolute end time of each rank's part, seconds
    network_bytes: float  # bytes sent GPU-to-GPU (each byte once, however many hops)
    algorithm: str = "direct"
    protocol: str = "Simple"  # NCCL protocol it ran on (LL, LL128, Simple)

    @property
    def time_s(self) -> float:
        """Collective time: from start until the last rank is done."""
        return float(self.end_times_s.max() - self.start_s)

    @property
    def rank_times_s(self) -> np.ndarray:
        """Per-rank duration from the collective's start, seconds."""
        return self.end_times_s - self.start_s


def tree_depth(n: int) -> int:
    """Depth (edges from root to deepest leaf) of a heap-ordered binary tree of n nodes."""
    return max(n, 1).bit_length() - 1


def double_binary_tree_edges(n: int) -> list[tuple[int, int]]:
    """(child, parent) positions of both trees: heap order, then heap order over n-1-position."""
    first = [(p, (p - 1) // 2) for p in range(1, n)]
    second = [(n - 1 - c, n - 1 - q) for c, q in first]
    return first + second


def nvls_port_bytes(n: int, size_bytes: float) -> float:
    """Payload bytes an NVLS all-reduce moves each way on every GPU port: S(n+1)/n."""
    return size_bytes * (n + 1) / n if n > 1 else 0.0


def nvls_flows(
    topo: Routing, ranks: Sequence[int], size_bytes: float
) -> list[tuple[list[Edge], float]]:
    """Each rank's port flows, up then down, as (one-edge path, wire bytes)."""
    switch = nvls_switch(topo, ranks)
    if switch is None:
        raise TopologyError(
            f"allreduce algorithm 'nvls' needs every rank ({list(ranks)}) on one NVSwitch "
            "with `nvls: true` in its fabric block; use --algorithm ring or auto"
        )
    payload = nvls_port_bytes(len(ranks), size_bytes)
    efficiency = topo.graph.nodes[switch].get("nvls_efficiency")
    flows: list[tuple[list[Edge], float]] = []
    for rank in ranks:
        for edge in ((f"gpu{rank}", switch), (switch, f"gpu{rank}")):
            flows.append(([edge], payload * _nvls_wire_factor(topo, edge, efficiency)))
    return flows


def _nvls_wire_factor(topo: Routing, edge: Edge, efficiency: float | None) -> float:
    """Wire bytes per payload byte, so that NVLS alone streams at nominal x efficiency."""
    if efficiency is None:
        return 1.0
    attrs = topo.graph.edges[edge]
    nominal = attrs.get("nominal_bandwidth_bytes_per_s", attrs["bandwidth_bytes_per_s"])
    return float(attrs["bandwidth_bytes_per_s"]) / (float(nominal) * efficiency)


def nvls_fill_s(topo: Routing, ranks: Sequence[int]) -> float:
    """Fixed part of an NVLS all-reduce: three more slowest-port crossings + `nvls_latency_s`."""
    flows = nvls_flows(topo, ranks, 0.0)
    if len(ranks) < 2:
        return 0.0
    switch = flows[0][0][0][1]
    worst = max(float(topo.graph.edges[path[0]]["latency_s"]) for path, _ in flows)
    extra_s = float(topo.graph.nodes[switch].get("nvls_latency_s") or 0.0)
    return NVLS_FILL_PORT_CROSSINGS * worst + extra_s


def check_bytes_matrix(bytes_matrix: np.ndarray, n: int) -> np.ndarray:
    """The matrix as floats; ValueError unless it is a finite non-negative [n, n] array."""
    matrix = np.asarray(bytes_matrix, dtype=float)
    if matrix.shape != (n, n) or np.any(matrix < 0) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"bytes_matrix must be a finite non-negative [{n}, {n}] array")
    return matrix


def check_ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    """The group as a tuple of ints; TopologyError if empty or a rank repeats."""
    ranks = tuple(int(r) for r in ranks)
    if not ranks or len(set(ranks)) != len(ranks):
        raise TopologyError(f"a collective needs distinct ranks, got {list(ranks)}")
    return ranks


def busbw_factor(op: str, n: int) -> float:
    """nccl-tests bus-bandwidth factor (doc/PERFORMANCE.md): busbw = algbw * factor."""
    if op == "allreduce":
        return 2 * (n - 1) / n
    if op in ("alltoall", "allgather", "reducescatter"):
        return (n - 1) / n
    raise ValueError(f"unknown collective {op!r}; choose one of {', '.join(OPS)}")


def nccl_tests_alltoall_matrix(n: int, size_bytes: float) -> np.ndarray:
    """alltoall_perf's traffic: each rank's `size_bytes` send buffer split evenly, self included."""
    return np.full((n, n), size_bytes / n)
