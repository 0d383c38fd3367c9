"""DeepEP's published measurements, and how moesim's DeepEP costs reproduce them.

Source: deepseek-ai/DeepEP README.md, V1 performance tables (unchanged from commit 3b1045d,
2025-04-22, for normal kernels and de8cfca, 2025-06-05, for low-latency kernels through the last
V1 commit 567632d; moved to docs/legacy.md by EPv2). All on H800 ("~160 GB/s NVLink maximum
bandwidth"), one CX7 400 Gb/s NIC per GPU ("~50 GB/s maximum bandwidth"), hidden 7168, top-8 of
256 experts, fp8 dispatch, bf16 combine; normal kernels 4096 tokens per rank with top-4 groups
(groups = nodes), low-latency kernels 128 tokens per rank.

The README's GB/s are logical bytes over kernel time (DeepEP tests/test_low_latency.py and
test_internode.py / test_intranode.py, V1):
- low-latency: per (token, selected expert) `hidden + hidden / 128 * 4 + 16` bytes dispatched and
  `hidden * 2` combined, local selections included; the time is the kernel's;
- normal intranode: every received token copy (`recv_x.numel()`), fp8 counted as
  `2 * (1 + 4 / 128) / 2` bytes per channel, combine in bf16;
- normal internode: unique (token, destination node) pairs, own node included, times
  `hidden * 2` (times (1 + 4/128) / 2 for fp8 dispatch).

`reproduce(row)` builds the row's setup on moesim's own terms: an H800 topology (the dgx-h100
fabric with NVLink 4 at H800's 400 GB/s, 200 GB/s per direction, and the same calibrated link
efficiency; nodes of 8 GPUs on a 400 Gb/s rail network), random routing as DeepEP's tests draw
it, the traffic of the implementation (`moesim.traffic.traffic`), its time from the analytic
backend's exchange bound with the costs of `moesim.engine.a2a`, and the logical GB/s by the
tests' definitions. `benchmarks/deepep_fit.py` prints every row; tests/test_moe_engines.py
holds the error bars (in sample: the rows fixed the constants).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from moesim.engine.backends.analytic import pairwise_bounds_s
from moesim.engine.routes import build_route_table
from moesim.inputs.models import ModelSpec, get_model
from moesim.inputs.topology import Topology, build_topology, resolve_topology_path
from moesim.inputs.topology_spec import TopologySpec
from moesim.trace.format import RouterTrace
from moesim.traffic.placement import parse_placement
from moesim.traffic.traffic import compute_traffic

__all__ = ["PublishedRow", "NORMAL_ROWS", "LOW_LATENCY_ROWS", "Reproduced", "reproduce",
           "h800_topology", "HIDDEN", "EXPERTS", "TOP_K"]

HIDDEN, EXPERTS, TOP_K = 7168, 256, 8
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class PublishedRow:
    """One README row: kernel kind, EP size, and the published GB/s (and latency for LL)."""

    impl: str  # deepep-normal or deepep-ll
    kind: str  # dispatch or combine
    ep: int
    gb_per_s: float
    latency_s: float | None = None


NORMAL_ROWS: tuple[PublishedRow, ...] = tuple(
    PublishedRow("deepep-normal", kind, ep, bw)
    for ep, dispatch, combine in ((8, 153.0, 158.0), (16, 43.0, 43.0), (32, 58.0, 57.0),
                                  (64, 51.0, 50.0))
    for kind, bw in (("dispatch", dispatch), ("combine", combine))
)
LOW_LATENCY_ROWS: tuple[PublishedRow, ...] = tuple(
    PublishedRow("deepep-ll", kind, ep, bw, us * 1e-6)
    for ep, d_us, d_bw, c_us, c_bw in (
        (8, 77, 98.0, 114, 127.0), (16, 118, 63.0, 195, 74.0), (32, 155, 48.0, 273, 53.0),
        (64, 173, 43.0, 314, 46.0), (128, 192, 39.0, 369, 39.0), (256, 194, 39.0, 360, 40.0))
    for kind, us, bw in (("dispatch", d_us, d_bw), ("combine", c_us, c_bw))
)


@dataclass(frozen=True)
class Reproduced:
    """moesim's figures for a published row."""

    row: PublishedRow
    time_s: float  # the slowest rank's time
    link_time_s: float  # of which the bytes on the links (no fixed latency)
    gb_per_s: float  # logical GB/s by the README's definition

    @property
    def error(self) -> float:
        """(predicted - published) / published GB/s."""
        return self.gb_per_s / self.row.gb_per_s - 1.0


def h800_topology(nodes: int) -> Topology:
    """`nodes` H800 servers: the h100-2node-ib fabric with NVLink at 200 GB/s per direction."""
    data = yaml.safe_load(Path(resolve_topology_path("h100-2node-ib")).read_text())
    data["name"] = f"h800-{nodes}node"
    data["nodes"] = nodes
    data["fabric"][0]["port_bandwidth_bytes_per_s"] = 200e9  # H800 NVLink: 400 GB/s bidir
    if nodes == 1:
        data["fabric"] = data["fabric"][:1]
    return build_topology(TopologySpec.model_validate(data), "h800")


def _model() -> ModelSpec:
    """DeepSeek-V3 (hidden 7168, 256 experts, top-8) cut to one MoE layer."""
    model = get_model("DeepSeek-V3")
    return model.model_copy(update={"num_layers": model.first_dense_layers + 1})


def _routing(ep: int, tokens_per_rank: int, groups: int, rng: np.random.Generator
             ) -> np.ndarray:
    """`[1, T, k]` experts as DeepEP's tests draw them: random scores, the top `groups` node
    groups (all nodes when groups >= nodes), then the top-k experts within them."""
    tokens = tokens_per_rank * ep
    nodes = max(ep // GPUS_PER_NODE, 1)
    scores = rng.random((tokens, EXPERTS))
    if groups < nodes:
        by_node = scores.reshape(tokens, nodes, -1).max(axis=2)
        keep = np.argsort(-by_node, axis=1)[:, :groups]
        mask = np.zeros((tokens, nodes), dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        scores = np.where(np.repeat(mask, EXPERTS // nodes, axis=1), scores, -1.0)
    chosen = np.argsort(-scores, axis=1)[:, :TOP_K]
    return chosen[None].astype(np.int16)


def _logical_bytes(row: PublishedRow, experts: np.ndarray, ep: int) -> float:
    """The busiest rank's logical bytes by the README's tests' definitions."""
    nodes = max(ep // GPUS_PER_NODE, 1)
    per_rank_tokens = experts.shape[1] // ep
    src = np.arange(experts.shape[1]) // per_rank_tokens
    if row.impl == "deepep-ll":
        size = (HIDDEN + HIDDEN / 128 * 4 + 16) if row.kind == "dispatch" else HIDDEN * 2
        return float(per_rank_tokens * TOP_K * size)
    fp8 = (1 + 4 / 128) / 2 if row.kind == "dispatch" else 1.0
    if nodes == 1:  # token copies each rank receives
        dst_rank = experts[0] // (EXPERTS // ep)
        copies = np.zeros((experts.shape[1], ep), dtype=bool)
        np.put_along_axis(copies, dst_rank.astype(np.int64), True, axis=1)
        return float(copies.sum(axis=0).max() * HIDDEN * 2 * fp8)
    node = experts[0] // (EXPERTS // nodes)
    pairs = np.zeros((experts.shape[1], nodes), dtype=bool)
    np.put_along_axis(pairs, node.astype(np.int64), True, axis=1)
    sent = np.bincount(src, weights=pairs.sum(axis=1), minlength=ep)
    return float(sent.max() * HIDDEN * 2 * fp8)


def reproduce(row: PublishedRow, seed: int = 0) -> Reproduced:
    """moesim's time and logical GB/s for a published row (module doc)."""
    rng = np.random.default_rng(seed)
    nodes = max(row.ep // GPUS_PER_NODE, 1)
    tokens_per_rank = 128 if row.impl == "deepep-ll" else 4096
    groups = min(nodes, 4) if row.impl == "deepep-normal" else nodes
    experts = _routing(row.ep, tokens_per_rank, groups, rng)
    tokens = experts.shape[1]
    trace = RouterTrace(experts=experts, seq_id=np.arange(tokens), pos=np.zeros(tokens, int),
                        metadata={})
    par = parse_placement(f"EP{row.ep}")
    traffic = compute_traffic(trace, _model(), par, a2a=row.impl,  # type: ignore[arg-type]
                              gpus_per_node=min(GPUS_PER_NODE, row.ep), phase="decode")
    matrix = traffic.dispatch_bytes[0] if row.kind == "dispatch" else traffic.combine_bytes[0]
    topo = h800_topology(nodes)
    routes = build_route_table(topo, row.ep)
    times = pairwise_bounds_s(routes, topo, matrix[None], runs=[(row.impl, row.kind)])[0]
    bare = pairwise_bounds_s(routes, topo, matrix[None], launch_s=0.0,
                             runs=[(row.impl, row.kind)])[0]
    slowest = float(times.max())
    logical = _logical_bytes(row, experts, row.ep)
    return Reproduced(row, slowest, float(bare.max()), logical / slowest / 1e9)
