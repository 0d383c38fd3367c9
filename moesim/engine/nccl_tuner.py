"""NCCL's own tuner: which algorithm and protocol NCCL runs a collective on, by size and GPUs.

NCCL picks, per call, the (algorithm, protocol) of least *modelled* time, `lat + bytes / bw`,
over a table it fills at init (`ncclTopoTuneModel` and `ncclTopoGetAlgoTime`,
src/graph/tuning.cc; the argmin is `topoGetAlgoInfo`, src/enqueue.cc). This module is that
model, with NCCL's constants, so moesim runs what NCCL would run. moesim then *times* the
chosen pair with its own calibrated costs (`moesim.engine.protocols`): NCCL's table decides
the crossovers, published measurements decide the seconds.

Source of every constant below: NVIDIA/nccl at commit 5067397c2676d5aed50042fc39e5c8ee96eb0027
(identical to tag v2.30.7-1 for these files), src/graph/tuning.cc lines 138-212 (tables),
243-438 (bandwidth and latency formulas), 620-655 (time), and src/enqueue.cc 859-951 (the
p2p protocol rule). Units as in NCCL: microseconds and GB/s (1e9 bytes/s).

Where moesim approximates NCCL's topology search (which it cannot run without the machine):
the search graph's `nChannels * bwIntra` (NCCL's ring bus bandwidth) is taken as
`NCCL_BW_FRACTION` of the nominal per-direction bandwidth of the slowest ring hop, which
reproduces NCCL's own figures (H100: 18 NVLinks x 20.6 GB/s = 370.8, search result 12 x 30 =
360 vs 0.8 x 450 = 360; A100: 12 x 20 = 240 = 0.8 x 300; B200 18 x 40.1 = 722 = 0.8 x 900;
PCIe Gen4 x16: 24 GB/s, search 1 x 20 = 0.8 x 25); channels are that figure over NCCL's
per-channel speed. Only the crossovers depend on these, never the predicted time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "PROTOCOLS",
    "TUNER_ALGORITHMS",
    "BASE_LATENCY_US",
    "HW_LATENCY_US",
    "NCCL_BW_FRACTION",
    "P2P_LL_THRESHOLD_BYTES",
    "TunerInputs",
    "compcap_index",
    "tuner_table_us",
    "nccl_choice",
    "p2p_protocol",
]

PROTOCOLS: tuple[str, ...] = ("LL", "LL128", "Simple")
TUNER_ALGORITHMS: tuple[str, ...] = ("ring", "tree", "nvls")
_HW = ("nvlink", "pci", "net")

# baseLatencies[algorithm][protocol], us (tuning.cc: "{ 6.8, 14.0, 8.4 }, { 6.6, 14.0, 8.4 },
# // Tree, Ring"; NVLS 0).
BASE_LATENCY_US: dict[str, dict[str, float]] = {
    "tree": {"LL": 6.8, "LL128": 14.0, "Simple": 8.4},
    "ring": {"LL": 6.6, "LL128": 14.0, "Simple": 8.4},
    "nvls": {"LL": 0.0, "LL128": 0.0, "Simple": 0.0},
}
# hwLatencies[hw][algorithm][protocol], us: per ring step / tree level on that kind of hop.
HW_LATENCY_US: dict[str, dict[str, dict[str, float]]] = {
    "nvlink": {"tree": {"LL": 0.6, "LL128": 1.25, "Simple": 4.0},
               "ring": {"LL": 0.6, "LL128": 1.9, "Simple": 3.4},
               "nvls": {"LL": 0.0, "LL128": 0.0, "Simple": 25.0}},
    "pci": {"tree": {"LL": 1.0, "LL128": 1.9, "Simple": 4.0},
            "ring": {"LL": 1.0, "LL128": 2.5, "Simple": 5.7},
            "nvls": {"LL": 0.0, "LL128": 0.0, "Simple": 0.0}},
    "net": {"tree": {"LL": 5.0, "LL128": 8.5, "Simple": 14.0},
            "ring": {"LL": 2.7, "LL128": 4.0, "Simple": 14.0},
            "nvls": {"LL": 0.0, "LL128": 0.0, "Simple": 18.0}},
}
# Per compute-capability index (Volta, Ampere, Hopper, Blackwell) and node count index
# (1 node, 2 nodes, more): llMaxBws, perChMaxRingLL128Bws, perChMaxTreeLL128Bws,
# perChMaxTreeBws (GB/s), nvlsEfficiency.
_LL_MAX_BW = ((39.0, 39.0, 20.4), (87.7, 22.5, 19.0), (141.0, 45.0, 35.0),
              (282.0, 90.0, 70.0))
_RING_LL128_PER_CH = ((20.0, 20.0, 20.0), (20.0, 20.0, 20.0), (36.7, 36.7, 36.7),
                      (40.0, 40.0, 40.0))
_TREE_LL128_PER_CH = ((20.0, 20.0, 20.0), (20.0, 20.0, 20.0), (36.7, 36.7, 29.0),
                      (55.6, 31.67, 20.0))
_TREE_PER_CH = ((26.5, 18.5, 10.0), (24.0, 23.6, 17.8), (38.7, 41.4, 36.0), (70.0, 42.8, 24.0))
_NVLS_EFFICIENCY = (0.0, 0.0, 0.85, 0.74)
# treeCorrectionFactor[protocol][log2(bytes >> 6)] (tuning.cc, ncclTopoGetAlgoTime).
_TREE_CORRECTION = {
    "LL": (1.0, 1.0, 1.0, 1.0, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1.0,
           1.0, 1.0, 1.0, 1.0),
    "LL128": (1.0, 1.0, 1.0, 1.0, 1.0, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9,
              .9, .9, 1.0, 1.0, 1.0),
    "Simple": (.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7,
               .8, .9, .9, .9),
}
# Per-channel speed of NCCL's intra-node search at the top of its ladder (search.cc
# speedArrayIntra / sm90SpeedArrayIntra / sm100SpeedArrayIntra after channel duplication:
# H100 12 x 30, A100 12 x 20, PCIe 1 x 20), used only to count channels for the LL128/tree caps.
_CHANNEL_SPEED_GBPS = (20.0, 20.0, 30.0, 40.0)
# See the module docstring: NCCL's ring bus bandwidth as a fraction of the nominal link.
NCCL_BW_FRACTION = 0.8
# NCCL_P2P_LL_THRESHOLD (enqueue.cc): a send/recv of at most this many bytes per channel runs
# on LL, else Simple; p2p never uses LL128. Small sends use one channel.
P2P_LL_THRESHOLD_BYTES = 16384


@dataclass(frozen=True)
class TunerInputs:
    """What NCCL's tuner knows about a communicator, as moesim derives it from a topology."""

    n_ranks: int
    n_nodes: int
    compute_capability: float
    intra_hw: str  # "nvlink" or "pci": the kind of the intra-node ring hops
    ring_bus_bw_gbps: float  # NCCL's nChannels * bwIntra (or bwInter across nodes)
    nvls: bool = False  # every rank on one NVLS-capable NVSwitch
    ll128: bool | None = None  # None: NCCL's default rule (NVLink intra-node and sm70+)


def compcap_index(compute_capability: float) -> int:
    """NCCL's table row: 0 Volta, 1 Ampere (8.x, Ada too), 2 Hopper (9.x), 3 Blackwell (10+)."""
    cc = compute_capability
    return 3 if cc >= 10 else 2 if cc >= 9 else 1 if cc >= 8 else 0


def _steps(op: str, n: int) -> int:
    return 2 * (n - 1) if op == "allreduce" else n - 1


def tuner_table_us(op: str, size_bytes: float, inputs: TunerInputs
                   ) -> dict[tuple[str, str], float]:
    """NCCL's modelled time (us) of every enabled (algorithm, protocol) for this call."""
    n, nodes = inputs.n_ranks, inputs.n_nodes
    if n < 2:
        return {("ring", "Simple"): 0.0}
    cc = compcap_index(inputs.compute_capability)
    node_index = min(nodes, 3) - 1
    ppn = n / nodes
    nsteps = _steps(op, n)
    hw = inputs.intra_hw if nodes == 1 else "net"
    ll128 = inputs.ll128
    if ll128 is None:  # "Enable LL128 ... pEnable &= (graphs[a]->typeIntra <= PATH_NVB)"
        ll128 = inputs.intra_hw == "nvlink" and inputs.compute_capability >= 7.0
    channels = max(1, round(inputs.ring_bus_bw_gbps / _CHANNEL_SPEED_GBPS[cc]))
    bw = inputs.ring_bus_bw_gbps / channels
    algorithms = ["ring"]
    if op == "allreduce":
        algorithms.append("tree")
        if inputs.nvls and nodes == 1 and cc >= 2:
            algorithms.append("nvls")
    table: dict[tuple[str, str], float] = {}
    for algorithm in algorithms:
        for protocol in PROTOCOLS:
            if protocol == "LL128" and not ll128:
                continue
            if algorithm == "nvls" and protocol != "Simple":
                continue
            alg_bw = _alg_bw_gbps(algorithm, protocol, op, n, nodes, ppn, nsteps, channels, bw,
                                  cc, node_index)
            latency = _latency_us(algorithm, protocol, op, n, nodes, nsteps, hw,
                                  inputs.intra_hw)
            if algorithm == "tree":
                log_size = int(math.log2(max(int(size_bytes) >> 6, 1)))
                if 0 <= log_size < 23 and int(size_bytes) >> 6 > 0:
                    alg_bw *= _TREE_CORRECTION[protocol][log_size]
            if (algorithm == "ring" and protocol == "Simple" and nodes > 1 and op == "allreduce"
                    and size_bytes / (channels * n) >= 64):
                latency *= 1.9 if inputs.compute_capability < 8 else 1.4  # ring plateau
            table[(algorithm, protocol)] = latency + size_bytes / (1000.0 * alg_bw)
    return table


def _alg_bw_gbps(algorithm: str, protocol: str, op: str, n: int, nodes: int, ppn: float,
                 nsteps: int, channels: int, bw: float, cc: int, node_index: int) -> float:
    """`comm->bandwidths[coll][a][p]` (tuning.cc ncclTopoTuneModel), GB/s of algorithm bw."""
    if algorithm == "nvls":
        nvls_channels = min(32, int(ppn))
        bw_intra = channels * bw / (nvls_channels + 1)  # the head GPU's port counts twice
        intra = bw_intra * _NVLS_EFFICIENCY[cc] * (nvls_channels - 1) / nvls_channels
        intra *= 2.0 if op == "allreduce" else (ppn - 1) / ppn
        bus = nvls_channels * min(intra, 1.5 * bw_intra)  # bwInter raised to 1.5x bwIntra
        return bus * n / nsteps
    bus = channels * bw
    if algorithm == "ring" and protocol == "LL":
        bus = min(_LL_MAX_BW[cc][node_index], bus * 0.5)
    if algorithm == "ring" and protocol == "LL128":
        bus = min(bus * 0.92, channels * _RING_LL128_PER_CH[cc][node_index])
    if algorithm == "tree":
        bus = min(bus * 0.92, channels * _TREE_PER_CH[cc][node_index])
        if protocol == "LL":
            bus = min(bus / 3.8, _LL_MAX_BW[cc][node_index])
        if protocol == "LL128":
            bus = min(bus * (7.0 / 9.0 if nodes == 1 else 120.0 / 128.0),
                      channels * _TREE_LL128_PER_CH[cc][node_index])
        return bus * 0.5
    return bus * n / nsteps


def _latency_us(algorithm: str, protocol: str, op: str, n: int, nodes: int, nsteps: int,
                hw: str, intra_hw: str) -> float:
    """`comm->latencies[coll][a][p]` for a single- or multi-node communicator, us."""
    intra = HW_LATENCY_US[intra_hw][algorithm][protocol]
    inter = HW_LATENCY_US["net"][algorithm][protocol]
    if algorithm == "nvls":
        return intra
    base = BASE_LATENCY_US[algorithm][protocol]
    if algorithm == "tree":
        return base + 2 * ((n // nodes - 1) * intra + int(math.log2(nodes)) * inter)
    inter_steps = 0 if nodes == 1 else (2 * (nodes - 1) if op == "allreduce" else nodes - 1)
    del hw
    return base + (nsteps - inter_steps) * intra + inter_steps * inter


def nccl_choice(op: str, size_bytes: float, inputs: TunerInputs,
                algorithm: str = "auto", protocol: str = "auto") -> tuple[str, str]:
    """NCCL's argmin (algorithm, protocol), restricted to a forced algorithm and/or protocol
    (as NCCL_ALGO / NCCL_PROTO restrict it); ValueError if nothing enabled is left."""
    table = tuner_table_us(op, size_bytes, inputs)
    options = {key: t for key, t in table.items()
               if algorithm in ("auto", key[0]) and protocol in ("auto", key[1])}
    if not options:
        enabled = ", ".join(f"{a}/{p}" for a, p in table)
        raise ValueError(f"NCCL would not run {op} as {algorithm}/{protocol} here; "
                         f"enabled: {enabled}")
    return min(options, key=lambda key: options[key])


def p2p_protocol(bytes_per_peer: float) -> str:
    """The protocol of one send/recv (all-to-all is n of them): LL up to 16 KiB, else Simple."""
    return "LL" if bytes_per_peer <= P2P_LL_THRESHOLD_BYTES else "Simple"
