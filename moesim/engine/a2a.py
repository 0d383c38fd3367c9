"""All-to-all implementations as MoE engines run them: what each costs beyond its bytes.

The bytes each implementation moves are counted in `moesim.traffic.traffic` (`a2a`): direct
pairwise sends, an all-gather plus reduce-scatter, DeepEP normal (node-deduplicated, fp8
dispatch) and DeepEP low-latency (one message per token and expert). Here is what it costs on
top of moving them over the topology's links (flows in the DES, bottleneck bounds in the
analytic backend):
- `direct`: NCCL send/recv, its protocol's launch and step latency (`moesim.engine.protocols`);
- `allgather`: NCCL all-gather and reduce-scatter, as any collective (planned as Collectives);
- `deepep-normal`, `deepep-ll`: a fixed latency per dispatch and per combine, fitted to
  DeepEP's published measurements (below); their bytes move at the links' rate.

And what it takes from compute when it runs beside it (two-batch overlap): the SMs its kernels
hold (`compute_slowdown`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moesim.engine.network import Routing
from moesim.engine.protocols import alltoall_delay_and_wire, alltoall_delays_and_wires

__all__ = [
    "DeepEpCost",
    "DEEPEP",
    "COMM_SMS",
    "exchange_delay_and_wire",
    "exchange_delays_and_wires",
    "crosses_nodes",
    "crosses_nodes_each",
    "compute_slowdown",
]


@dataclass(frozen=True)
class DeepEpCost:
    """What a DeepEP call costs beyond its bytes at the links' rate: a fixed latency per
    dispatch and per combine, within one node and across nodes, and wire bytes per payload
    byte (1 / the share of the links' rate it reaches)."""

    dispatch_intra_s: float
    combine_intra_s: float
    dispatch_inter_s: float
    combine_inter_s: float
    wire_factor: float = 1.0

    def latency_s(self, kind: str, crosses_nodes: bool) -> float:
        """The fixed latency of a `kind` (dispatch or combine) call."""
        if kind == "combine":
            return self.combine_inter_s if crosses_nodes else self.combine_intra_s
        return self.dispatch_inter_s if crosses_nodes else self.dispatch_intra_s


# Fitted to DeepEP's README tables (moesim.calibrate.deepep holds the rows and reproduces each;
# `python benchmarks/deepep_fit.py` prints the fit and tests/test_moe_engines.py holds the
# error bars):
DEEPEP: dict[str, DeepEpCost] = {
    "deepep-ll": DeepEpCost(
        # Low-latency kernels, 128 tokens: time = latency + the bytes at the links' rate. The
        # latencies are the mean of (published time - link time) over the rows: EP8 (within a
        # node, over NVLink since de8cfca) and EP16..256 (across nodes).
        # Rows implied: dispatch 30 (EP8), 34, 32, 31, 37, 35 us (EP16..256); combine 24 (EP8),
        # 36, 39, 42, 72, 56 us.
        dispatch_intra_s=30.0e-6, combine_intra_s=24.0e-6,
        dispatch_inter_s=34.0e-6, combine_inter_s=49.0e-6,
    ),
    "deepep-normal": DeepEpCost(
        # Normal kernels, 4096 tokens per rank, bandwidth-bound: they reach a share of the
        # links' rate (the wire factor, fitted to the rows); their fixed cost (the notify
        # kernel and the CPU waiting for the receive counts) is not in the rows and is taken
        # as one NCCL Simple launch of dgx-h100 (21 us, an assumption: the same launch path).
        dispatch_intra_s=21.0e-6, combine_intra_s=21.0e-6,
        dispatch_inter_s=21.0e-6, combine_inter_s=21.0e-6,
        # Rows implied shares (dispatch, combine): 0.91, 0.93 (EP8), 0.84, 0.83 (EP16), 0.88,
        # 0.86 (EP32), 0.91, 0.89 (EP64); mean 0.88.
        wire_factor=1.0 / 0.88,
    ),
}

# SMs an implementation's kernels hold while it runs beside compute:
# - deepep-normal: 20, DeepEP's default `Buffer.num_sms` (deep_ep/buffer.py, V1) and the
#   DeepSeek-V3 report's "20 out of the 132 SMs available in the H800 GPU" (arXiv 2412.19437,
#   section 3.5.1);
# - deepep-ll: 0, its hook-based overlap "does not occupy any SM resource" (DeepEP README, V1;
#   DeepSeek profile-data README: decode's all-to-all "does not occupy GPU SMs");
# - direct (NCCL send/recv) and allgather (NCCL collectives): NCCL runs one CTA per channel, but
#   no published figure gives how much a concurrent GEMM loses to it: taken as 0 (optimistic).
COMM_SMS: dict[str, int] = {
    "direct": 0,
    "allgather": 0,
    "deepep-normal": 20,
    "deepep-ll": 0,
}


def crosses_nodes(topo: Routing, matrix: np.ndarray) -> bool:
    """Whether a `[W, W]` bytes matrix sends anything between GPUs of different servers."""
    per_node = getattr(topo, "gpus_per_node", None)
    if not per_node:
        return False
    ranks = np.arange(matrix.shape[0]) // per_node
    return bool(np.any(matrix[ranks[:, None] != ranks[None, :]] > 0))


def crosses_nodes_each(topo: Routing, matrices: np.ndarray) -> np.ndarray:
    """`[K]`: `crosses_nodes` of K `[W, W]` matrices at once."""
    matrices = np.asarray(matrices)
    per_node = getattr(topo, "gpus_per_node", None)
    if not per_node:
        return np.zeros(matrices.shape[0], dtype=bool)
    node = np.arange(matrices.shape[-1]) // per_node
    between = node[:, None] != node[None, :]
    return np.asarray((matrices[:, between] > 0).any(axis=1))


def exchange_delay_and_wire(
    topo: Routing, impl: str, name: str, ranks: Sequence[int], busiest_bytes: float,
    launch_s: float | None = None, across_nodes: bool = False,
) -> tuple[float, float]:
    """(seconds before an exchange's bytes move, wire bytes per payload byte) for an exchange
    run by `impl` (`name`: dispatch or combine picks DeepEP's figure; `across_nodes`: whether
    it sends between servers)."""
    cost = DEEPEP.get(impl)
    if cost is None:
        return alltoall_delay_and_wire(topo, ranks, busiest_bytes, launch_s)
    delay = cost.latency_s(name, across_nodes) if launch_s is None else launch_s
    return delay, cost.wire_factor


def compute_slowdown(impl: str, topo: Routing) -> float:
    """How much longer a kernel takes beside `impl`'s all-to-all: the GPU's SMs over those the
    all-to-all leaves (1 where it holds none or the GPU's SM count is unknown)."""
    gpu = getattr(topo, "gpu_spec", None)
    sms = getattr(gpu, "sm_count", None)
    taken = COMM_SMS.get(impl, 0)
    if not sms or not taken or taken >= sms:
        return 1.0
    return float(sms / (sms - taken))


def exchange_delays_and_wires(
    topo: Routing, runs: Sequence[tuple[str, str]], ranks: Sequence[int],
    busiest_bytes: np.ndarray, launch_s: float | None = None,
    across_nodes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`exchange_delay_and_wire` of K exchanges among the same `ranks` at once: `runs[i]` is
    exchange i's (impl, name), `busiest_bytes[i]` and `across_nodes[i]` its figures; `[K]`
    delays and `[K]` wire factors."""
    busiest = np.asarray(busiest_bytes, dtype=np.float64)
    crossing = np.zeros(busiest.shape, dtype=bool) if across_nodes is None else across_nodes
    delay, wire = alltoall_delays_and_wires(topo, ranks, busiest, launch_s)
    if all(impl == "direct" for impl, _ in runs):
        return delay, wire
    for i, (impl, name) in enumerate(runs):
        cost = DEEPEP.get(impl)
        if cost is not None:
            delay[i] = cost.latency_s(name, bool(crossing[i])) if launch_s is None else launch_s
            wire[i] = cost.wire_factor
    return delay, wire
