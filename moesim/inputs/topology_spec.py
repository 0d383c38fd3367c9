"""Topology input files: the pydantic schema a user writes a cluster preset in.

A topology file names one GPU model (`gpu_spec`), how many servers (`nodes`) with how many
GPUs each (`gpus_per_node`), and the fabric joining them as a list of building blocks,
each a `kind:`-tagged mapping expanded into directed links by `moesim.inputs.topology`:

- `nvswitch`: every GPU of a server has one port to that server's switch node.
- `pcie_tree`: GPUs under PCIe switches under CPU root complexes, sockets joined by a
  socket link (UPI / xGMI), each socket with its host memory.
- `network`: one NIC per GPU (or per group of GPUs) to a network switch, rail-optimised
  (one switch per local NIC index) or a single switch, optionally under spine switches.
- `loopback`: processes on one host talking through host memory (gloo on CPUs).

Extra devices (`extra_devices`) and explicit directed `links` describe any other graph.
Bandwidths are bytes/s per direction, latencies seconds per traversed link.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moesim.inputs.kernel_profile import GpuKernels

__all__ = [
    "DeviceKind",
    "GpuSpec",
    "LinkSpec",
    "Protocol",
    "ProtocolSpec",
    "NvSwitchFabric",
    "PcieTreeFabric",
    "NetworkFabric",
    "LoopbackFabric",
    "FabricBlock",
    "TopologySpec",
    "GPU_CATALOG",
    "list_gpus",
    "load_gpu",
    "MIN_BANDWIDTH",
    "MAX_BANDWIDTH",
    "MAX_LATENCY_S",
    "MAX_TOPOLOGY_GPUS",
]

GPU_CATALOG = Path(__file__).parent.parent / "presets" / "gpus.yaml"

DeviceKind = Literal["nvswitch", "pcie_switch", "cpu", "hostmem", "nic", "net_switch"]

# Every number of a topology is finite and inside a range no real machine leaves by orders of
# magnitude: a figure beyond it is a unit mistake (bits for bytes, us for s), and at the far
# ends it breaks the engine (an infinite latency never ends a flow, an infinite bandwidth gives
# 0 x inf = NaN, 1e-300 B/s makes times overflow to Infinity). The bounds:
# - a link moves 1 kB/s .. 1 PB/s per direction (NVLink 5: 0.9 TB/s; a serial line: 1 kB/s);
MIN_BANDWIDTH = 1e3
MAX_BANDWIDTH = 1e15
# - a GPU's memory streams at most 1 EB/s (HBM3e: 8 TB/s; tests model a compute-bound GPU with
#   1e18, so this bound is looser than the links');
MAX_MEMORY_BANDWIDTH = 1e18
# - a latency or fixed cost is 0 .. 1 s (a network hop: ~1 us; a kernel launch: ~5 us);
MAX_LATENCY_S = 1.0
# - a fraction of a peak (efficiency, payload share) is 1e-6 .. 1;
MIN_FRACTION = 1e-6
# - a GPU peaks at 1 MFLOP/s .. 1 EFLOP/s dense (B200 FP4: 9e15), holds 1 MB .. 1 PB;
MIN_FLOPS, MAX_FLOPS = 1e6, 1e18
MIN_MEMORY_BYTES, MAX_MEMORY_BYTES = 1e6, 1e15
# - a topology has at most 65536 GPUs: building its graph takes ~5 s (every GPU, NIC and
#   switch a node) and MoE serving deployments span a few hundred GPUs.
MAX_TOPOLOGY_GPUS = 1 << 16

Bandwidth = Annotated[float, Field(ge=MIN_BANDWIDTH, le=MAX_BANDWIDTH, allow_inf_nan=False,
                                   description="bytes/s per direction")]
Latency = Annotated[float, Field(ge=0, le=MAX_LATENCY_S, allow_inf_nan=False,
                                 description="seconds per traversed link")]
Fraction = Annotated[float, Field(ge=MIN_FRACTION, le=1, allow_inf_nan=False)]
Flops = Annotated[float, Field(ge=MIN_FLOPS, le=MAX_FLOPS, allow_inf_nan=False)]
MemoryBandwidth = Annotated[float, Field(ge=MIN_BANDWIDTH, le=MAX_MEMORY_BANDWIDTH,
                                         allow_inf_nan=False, description="bytes/s")]


class _Frozen(BaseModel):
    """Base of every topology input model: immutable, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuSpec(_Frozen):
    """One accelerator's compute and memory: datasheet peaks plus reachable fractions."""

    name: str
    peak_bf16_flops_per_s: Flops = Field(description="dense, no sparsity")
    peak_fp8_flops_per_s: Flops | None = Field(
        default=None, description="dense, no sparsity; None where FP8 is unsupported"
    )
    peak_fp4_flops_per_s: Flops | None = Field(
        default=None, description="dense, no sparsity; None where FP4 is unsupported"
    )
    memory_bandwidth_bytes_per_s: MemoryBandwidth
    memory_bytes: float = Field(ge=MIN_MEMORY_BYTES, le=MAX_MEMORY_BYTES, allow_inf_nan=False)
    compute_efficiency: Fraction = Field(description="fraction of peak large GEMMs reach "
                                         "(the roofline, where no kernel profile covers the GPU)")
    memory_efficiency: Fraction = Field(description="fraction of peak streaming reaches "
                                        "(the roofline)")
    kernel_launch_s: Latency = Field(description="fixed overhead per operation (the roofline)")
    sm_count: int | None = Field(default=None, ge=1, le=1_000_000,
                                 description="streaming multiprocessors: "
                                 "one wave of GEMM tiles (None: no wave quantization)")
    l2_bytes: float | None = Field(default=None, ge=1, le=MAX_MEMORY_BYTES, allow_inf_nan=False,
                                   description="L2 cache size")
    l2_bandwidth_bytes_per_s: MemoryBandwidth | None = Field(
        default=None, description="L2 read bandwidth: weights that stay in L2 between "
        "repeats of a kernel (microbenchmarks) are read at it")
    kernel_key: str | None = Field(
        default=None, description="this GPU's entry in kernel profiles (h100-sxm, h200, "
        "a100-sxm, l40s, b200, ...); None: the roofline above")
    compute_capability: float | None = Field(
        default=None, gt=0, le=100, allow_inf_nan=False,
        description="CUDA compute capability (9.0 Hopper, 8.0 Ampere, "

        "10.0 Blackwell): collectives follow NCCL's protocols and tuner for it; None (a CPU "
        "process, gloo): one fixed launch cost per collective, no protocols")
    kernels: GpuKernels | None = Field(
        default=None, description="kernel curves measured on this very device (`moesim "
        "calibrate live` fits them to its expert GEMM microbenchmarks); a run's `kernels: "
        "auto` uses them before any shipped profile")

    @property
    def formats(self) -> tuple[str, ...]:
        """Tensor-core formats this GPU has a peak for."""
        peaks = {"bf16": self.peak_bf16_flops_per_s, "fp8": self.peak_fp8_flops_per_s,
                 "fp4": self.peak_fp4_flops_per_s}
        return tuple(name for name, peak in peaks.items() if peak)

    def peak_flops_per_s(self, fmt: str) -> float:
        """Dense tensor-core peak of format `fmt` (bf16, fp8, fp4); bf16 where it has none."""
        peak = {"fp8": self.peak_fp8_flops_per_s, "fp4": self.peak_fp4_flops_per_s}.get(fmt)
        return peak or self.peak_bf16_flops_per_s


Protocol = Literal["LL", "LL128", "Simple"]


class ProtocolSpec(_Frozen):
    """One NCCL protocol's costs; None keeps NCCL's default (moesim.engine.protocols)."""

    launch_s: Latency | None = Field(default=None, description="fixed cost per call")
    nvlink_step_latency_s: Latency | None = Field(
        default=None, description="added per ring step / tree level on an NVLink hop")
    pci_step_latency_s: Latency | None = Field(
        default=None, description="added per step on a PCIe (or host-staged) hop")
    net_step_latency_s: Latency | None = Field(
        default=None, description="added per step on a hop across the network")
    bandwidth_fraction: Fraction | None = Field(
        default=None, description="payload share of the link bandwidth (LL 0.5, LL128 0.92, "
        "Simple 1 by default)")


class LinkSpec(_Frozen):
    """One explicit link; `bidirectional` adds the reverse edge with the same figures."""

    src: str
    dst: str
    bandwidth_bytes_per_s: Bandwidth
    latency_s: Latency
    bidirectional: bool = True
    medium: str = "link"


class NvSwitchFabric(_Frozen):
    """Per server: each GPU has one port of `port_bandwidth_bytes_per_s` to `nvswitch{n}`.

    `nvls` says the switch reduces in-network (NVLink SHARP, NVSwitch gen 3+ with H100/H200),
    so all-reduce within the server may run NCCL's NVLS algorithm; `nvls_efficiency` is the
    fraction of the nominal port bandwidth NVLS traffic reaches (None: as other traffic) and
    `nvls_latency_s` a fixed cost an NVLS all-reduce pays on top of the collective launch.
    """

    kind: Literal["nvswitch"]
    port_bandwidth_bytes_per_s: Bandwidth
    latency_s: Latency
    nvls: bool = False
    nvls_efficiency: Fraction | None = None
    nvls_latency_s: Latency = 0.0


class PcieTreeFabric(_Frozen):
    """Per server: GPUs under PCIe switches under CPU sockets joined by a socket link.

    Local GPU i sits under socket `i // (gpus_per_node / sockets)`; with
    `switches_per_socket: 0` GPUs hang directly off the CPU root complex.
    `p2p` (one flag, or one per local GPU) says whether a GPU may DMA to a peer; pairs
    without it are staged through host memory.
    """

    kind: Literal["pcie_tree"]
    sockets: int = Field(default=1, ge=1, le=MAX_TOPOLOGY_GPUS)
    switches_per_socket: int = Field(default=0, ge=0, le=MAX_TOPOLOGY_GPUS)
    gpu_link_bandwidth_bytes_per_s: Bandwidth
    switch_uplink_bandwidth_bytes_per_s: Bandwidth | None = None
    pcie_latency_s: Latency
    socket_link_bandwidth_bytes_per_s: Bandwidth | None = None
    socket_link_latency_s: Latency = 0.0
    hostmem_bandwidth_bytes_per_s: Bandwidth
    hostmem_latency_s: Latency = 0.0
    p2p: bool | tuple[bool, ...] = True
    cpu_vendor: Literal["intel", "amd", "arm"] | None = Field(
        default=None, description="sets NCCL's default P2P level: intel/arm PXB (no P2P "
        "through the CPU), amd SYS with at most 2 GPUs per server else PXB; None: P2P "
        "wherever `p2p` allows")
    p2p_level: Literal["PIX", "PXB", "PHB", "SYS"] | None = Field(
        default=None, description="farthest path GPUs use P2P over (NCCL_P2P_LEVEL): PIX one "
        "switch, PXB switches only, PHB through one CPU, SYS across sockets; farther pairs "
        "stage through host memory (NCCL's SHM transport); None: from cpu_vendor")


class NetworkFabric(_Frozen):
    """Across servers: NICs to network switches (one per rail, or one in all), opt. spines."""

    kind: Literal["network"]
    gpus_per_nic: int = Field(default=1, ge=1, le=MAX_TOPOLOGY_GPUS)
    gpu_nic_bandwidth_bytes_per_s: Bandwidth
    gpu_nic_latency_s: Latency
    nic_bandwidth_bytes_per_s: Bandwidth
    nic_latency_s: Latency
    rail_optimized: bool = True
    spines: int = Field(default=0, ge=0, le=MAX_TOPOLOGY_GPUS)
    spine_bandwidth_bytes_per_s: Bandwidth | None = None
    spine_latency_s: Latency = 0.0


class LoopbackFabric(_Frozen):
    """Per server: each process has one port to that host's memory `hostmem{n}` (gloo)."""

    kind: Literal["loopback"]
    port_bandwidth_bytes_per_s: Bandwidth
    latency_s: Latency


FabricBlock = Annotated[
    Union[NvSwitchFabric, PcieTreeFabric, NetworkFabric, LoopbackFabric],  # noqa: UP007
    Field(discriminator="kind"),
]


class TopologySpec(_Frozen):
    """A whole cluster: GPU model, server count and shape, fabric blocks, explicit links."""

    name: str
    description: str = ""
    sources: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _gpu_by_key(cls, data: Any) -> Any:
        """`gpu_spec: h100-sxm` names an entry of the GPU catalog (moesim/presets/gpus.yaml)."""
        if isinstance(data, dict) and isinstance(data.get("gpu_spec"), str):
            catalog = _catalog()
            key = data["gpu_spec"]
            if key not in catalog:
                raise ValueError(f"gpu_spec '{key}' is not in the GPU catalog; give one of "
                                 f"{', '.join(catalog)} or a mapping of GpuSpec fields")
            data = {**data, "gpu_spec": catalog[key]}
        return data

    gpu_price_per_hour_usd: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)
    gpu_spec: GpuSpec
    nodes: int = Field(default=1, ge=1, le=MAX_TOPOLOGY_GPUS)
    gpus_per_node: int = Field(ge=1, le=MAX_TOPOLOGY_GPUS)
    fabric: tuple[FabricBlock, ...] = ()
    extra_devices: dict[str, DeviceKind] = Field(default_factory=dict)
    links: tuple[LinkSpec, ...] = ()
    link_efficiency: dict[str, Fraction] = Field(
        default_factory=dict,
        description="per link medium (nvlink, pcie, network, ...): fraction of the nominal "
        "bandwidth collectives reach; 1 where absent (fitted by `moesim calibrate`)",
    )
    collective_launch_s: Latency | None = Field(
        default=None,
        description="fixed cost of one collective before bytes move; None: NCCL's default",
    )
    straggler_wait_fraction: float = Field(
        default=0.0, ge=0.0, le=10.0, allow_inf_nan=False,
        description="expected extra wait of a collective that follows compute on every rank, "
        "per second of that compute and per unit of E[max of g standard normals] for its g "
        "ranks (0.56 for 2, 1.03 for 4, 1.42 for 8): ranks that share CPU cores drift apart "
        "while they compute, and the collective waits for the last (`moesim calibrate live` "
        "fits it from all-to-alls timed right after expert GEMMs; 0 by default, near 0 with a "
        "core or a GPU per rank). Live-harness predictions (`moesim validate compare`) add it; "
        "deployment steps do not")
    precompute_wait_fraction: float = Field(
        default=0.0, ge=0.0, le=10.0, allow_inf_nan=False,
        description="expected extra wait of a collective that compute follows on every rank, "
        "per second of that compute: the ranks that leave it first start computing and hold "
        "the CPU cores the others still need to finish it (`moesim calibrate live` fits it from "
        "all-to-alls timed right before expert GEMMs; 0 by default, near 0 with a core or a "
        "GPU per rank). Live-harness predictions (`moesim validate compare`) add it to the last "
        "collective before the experts; deployment steps do not")
    straggler_wait_cap_s: float | None = Field(
        default=None, gt=0.0, le=60.0, allow_inf_nan=False,
        description="the most the straggler wait reaches: the wait is cap x (1 - exp(-fraction "
        "x E[max] x compute / cap)), the linear fraction x E[max] x compute while that is "
        "small against the cap; None: no cap (fitted with the fraction)")
    precompute_wait_cap_s: float | None = Field(
        default=None, gt=0.0, le=60.0, allow_inf_nan=False,
        description="the most the wait before compute reaches (a rank waits for a core about "
        "one scheduler time slice at most): cap x (1 - exp(-fraction x compute / cap)); None: "
        "no cap (fitted with the fraction)")
    protocols: dict[Protocol, ProtocolSpec] = Field(
        default_factory=dict,
        description="NCCL protocol costs (LL, LL128, Simple) over NCCL's defaults "
        "(moesim.engine.protocols); fitted by `moesim calibrate nccl-tests`",
    )
    multi_gpu_launch_s: Latency | None = Field(
        default=None,
        description="extra launch per further GPU one process drives (nccl-tests -g N); "
        "None: 0",
    )

    @model_validator(mode="after")
    def _gpu_count(self) -> TopologySpec:
        gpus = self.nodes * self.gpus_per_node
        if gpus > MAX_TOPOLOGY_GPUS:
            raise ValueError(f"nodes {self.nodes} x gpus_per_node {self.gpus_per_node} = {gpus:,} "
                             f"GPUs, above the {MAX_TOPOLOGY_GPUS:,} a topology may have; "
                             "describe the GPUs one deployment (replica) spans")
        for wait in ("straggler_wait", "precompute_wait"):
            if getattr(self, f"{wait}_cap_s") is not None and getattr(
                    self, f"{wait}_fraction") <= 0:
                raise ValueError(f"{wait}_cap_s is set but {wait}_fraction is 0: a cap bounds "
                                 f"a wait; set {wait}_fraction or drop the cap")
        return self

    @model_validator(mode="before")
    @classmethod
    def _legacy_ll_launch(cls, data: Any) -> Any:

        """`ll_launch_s: X` (before protocols existed) means `protocols: {LL: {launch_s: X}}`."""
        if isinstance(data, dict) and "ll_launch_s" in data:
            data = dict(data)
            value = data.pop("ll_launch_s")
            protocols = dict(data.get("protocols") or {})
            if value is not None and "LL" not in protocols:
                protocols["LL"] = {"launch_s": value}
            data["protocols"] = protocols
        return data


def _catalog() -> dict[str, dict[str, Any]]:
    """The GPU catalog's raw entries by key."""
    from moesim.inputs.config import read_mapping

    return read_mapping(GPU_CATALOG, "GPU catalog")


def list_gpus() -> list[str]:
    """Keys of the GPU catalog."""
    return list(_catalog())


def load_gpu(key: str) -> GpuSpec:
    """The catalog's GpuSpec called `key` (h100-sxm, h200, a100-sxm, l40s, b200, ...)."""
    from moesim.errors import ConfigError

    catalog = _catalog()
    if key not in catalog:
        raise ConfigError(f"unknown GPU '{key}'; the catalog has {', '.join(catalog)} "
                          "(or give --topology)")
    return GpuSpec(**catalog[key])
