"""Topology: a cluster as a directed graph of devices and links, with GPU-to-GPU routes.

`build_topology(spec)` expands a `TopologySpec` (see `moesim.inputs.topology_spec`) into a
directed graph (`moesim.inputs.graph.DiGraph`, networkx's `DiGraph` API in small): nodes are
devices with a `kind` attribute (gpu, nvswitch, pcie_switch, cpu, hostmem, nic, net_switch);
edges are directed links carrying `bandwidth_bytes_per_s` (per direction), `latency_s`,
`medium` and `origin` (the spec field that made them).
An edge's `bandwidth_bytes_per_s` is its `nominal_bandwidth_bytes_per_s` (the spec's figure)
times `link_efficiency[medium]` (1 if absent), the fraction collectives reach, as
`moesim calibrate` fits it.
GPUs are `gpu0..gpu{N-1}` in rank order; rank r lives on server `r // gpus_per_node`.

Routing: traffic between two GPUs follows every shortest path by hop count (ties kept,
so the engine can spread a flow over them). GPUs may forward traffic (NVLink rings,
NCCL's PXN over NVSwitch), so a path may pass through a third GPU. If either endpoint
has `p2p` false, the transfer is staged through host memory: from the source GPU to its
nearest `hostmem` node (ties broken by name), then from there to the destination, so the
host-memory links carry it both ways.

Presets live in `moesim/presets/topologies/<name>.yaml` (package data, so an installed
moesim has them); `load_topology("dgx-h100")` finds them by name.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moesim.errors import TopologyError
from moesim.inputs import graph as digraph
from moesim.inputs.config import load_model_file
from moesim.inputs.topology_spec import (
    GpuSpec,
    LinkSpec,
    LoopbackFabric,
    NetworkFabric,
    NvSwitchFabric,
    PcieTreeFabric,
    TopologySpec,
)

__all__ = [
    "PRESET_DIR",
    "Edge",
    "Route",
    "Topology",
    "build_topology",
    "list_presets",
    "load_topology",
    "resolve_topology_path",
]

PRESET_DIR = Path(__file__).parent.parent / "presets" / "topologies"

Edge = tuple[str, str]
Route = list[Edge]  # a route: directed edges from source GPU to destination GPU


class Topology:
    """A built cluster: frozen graph, GPU spec and cached GPU-to-GPU routes.

    Usually made by `build_topology`; constructing one directly freezes `graph` in place
    (copy it with `graph.copy()` to derive a modified one, e.g. when calibrating).
    """

    def __init__(self, spec: TopologySpec, graph: digraph.DiGraph) -> None:
        self.spec = spec
        self.graph = graph.freeze()  # routes are cached, so the graph must not change
        self.gpu_spec: GpuSpec = spec.gpu_spec
        self.gpus_per_node = spec.gpus_per_node
        self.num_gpus = spec.nodes * spec.gpus_per_node
        self.gpu_nodes = [f"gpu{rank}" for rank in range(self.num_gpus)]
        self.collective_launch_s: float | None = spec.collective_launch_s
        self._cached_routes = functools.lru_cache(maxsize=None)(self._compute_routes)

    def __repr__(self) -> str:
        return (
            f"Topology({self.name!r}, {self.num_gpus} GPUs, "
            f"{self.graph.number_of_nodes()} nodes, {self.graph.number_of_edges()} links)"
        )

    @property
    def name(self) -> str:
        """The topology's name from its spec."""
        return self.spec.name

    def node_of(self, rank: int) -> int:
        """Server index of GPU `rank`."""
        self._check_rank(rank)
        return rank // self.gpus_per_node

    def p2p(self, rank: int) -> bool:
        """Whether GPU `rank` can send to peers directly (else it stages via host memory)."""
        self._check_rank(rank)
        return bool(self.graph.nodes[self.gpu_nodes[rank]].get("p2p", True))

    def staging_node(self, rank: int) -> str:
        """The host-memory node nearest GPU `rank` (fewest hops, then name)."""
        self._check_rank(rank)
        return _nearest_hostmem(self.graph, self.gpu_nodes[rank], self.name)

    def routes(self, src_rank: int, dst_rank: int) -> list[Route]:
        """All equal-cost shortest routes between two GPUs; `[[]]` when they are one GPU."""
        self._check_rank(src_rank)
        self._check_rank(dst_rank)
        return [list(path) for path in self._cached_routes(src_rank, dst_rank)]

    def path_latency_s(self, path: Sequence[Edge]) -> float:
        """Sum of the link latencies along `path` (0 for an empty path)."""
        return float(sum(self.graph.edges[edge]["latency_s"] for edge in path))

    def path_bottleneck_bytes_per_s(self, path: Sequence[Edge]) -> float:
        """Smallest link bandwidth along `path` (infinite for an empty path)."""
        return min((self.graph.edges[e]["bandwidth_bytes_per_s"] for e in path), default=math.inf)

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.num_gpus:
            raise TopologyError(
                f"rank {rank} is out of range: topology '{self.name}' has {self.num_gpus} "
                f"GPUs (ranks 0..{self.num_gpus - 1}); use fewer GPUs or a larger topology"
            )

    def _compute_routes(self, src_rank: int, dst_rank: int) -> tuple[tuple[Edge, ...], ...]:
        if src_rank == dst_rank:
            return ((),)
        src, dst = self.gpu_nodes[src_rank], self.gpu_nodes[dst_rank]
        node_paths: list[list[str]] = []
        if self.p2p(src_rank) and self.p2p(dst_rank):
            node_paths = _shortest_paths(self.graph, src, dst)
            if _path_level(self.graph, node_paths[0]) > _P2P_LEVELS[
                    self.graph.nodes[src].get("p2p_level", "SYS")]:
                node_paths = []  # NCCL would not use P2P this far: SHM through host memory
        if not node_paths:
            staging = self.staging_node(src_rank)
            node_paths = [
                head + tail[1:]
                for head in _shortest_paths(self.graph, src, staging)
                for tail in _shortest_paths(self.graph, staging, dst)
            ]
        return tuple(sorted(tuple(itertools.pairwise(path)) for path in node_paths))


# NCCL's path types between two GPUs over PCIe, nearest first (src/include/graph.h): PIX one
# switch, PXB several switches, PHB through a CPU's host bridge, SYS across the socket link.
_P2P_LEVELS = {"PIX": 0, "PXB": 1, "PHB": 2, "SYS": 3}


def _path_level(graph: digraph.DiGraph, path: list[str]) -> int:
    """NCCL's path type of a GPU-to-GPU node path: SYS if it crosses two CPUs, PHB one, PXB
    several PCIe switches, else PIX (NVLink and network paths count as PIX: P2P allowed)."""
    kinds = [graph.nodes[node].get("kind") for node in path[1:-1]]
    cpus = kinds.count("cpu")
    if cpus >= 2:
        return _P2P_LEVELS["SYS"]
    if cpus == 1:
        return _P2P_LEVELS["PHB"]
    return _P2P_LEVELS["PXB"] if kinds.count("pcie_switch") > 1 else _P2P_LEVELS["PIX"]


def _default_p2p_level(block: PcieTreeFabric, gpus_per_node: int) -> str:
    """NCCL's default P2P level (src/graph/paths.cc ncclTopoCheckP2p): "By default don't use
    P2P across CPU Host Bridges and further apart" (PXB), except "Allow P2P between pairs of
    GPU devices on AMD systems" (SYS with at most 2 GPUs); no vendor given: SYS."""
    if block.p2p_level is not None:
        return block.p2p_level
    if block.cpu_vendor is None or (block.cpu_vendor == "amd" and gpus_per_node <= 2):
        return "SYS"
    return "PXB"


def _shortest_paths(graph: digraph.DiGraph, src: str, dst: str) -> list[list[str]]:
    try:
        return digraph.all_shortest_paths(graph, src, dst)
    except digraph.NoPathError:
        raise TopologyError(f"no directed path from {src} to {dst}") from None


def _nearest_hostmem(graph: digraph.DiGraph, start: str, topology: str) -> str:
    distances = digraph.shortest_path_lengths(graph, start)
    kinds = graph.nodes(data="kind")
    found = [(hops, node) for node, hops in distances.items() if kinds[node] == "hostmem"]
    if not found:
        raise TopologyError(
            f"topology '{topology}': {start} has p2p false but reaches no hostmem node to "
            f"stage through; add a pcie_tree fabric block or a hostmem device with links"
        )
    return min(found)[1]


# --- building the graph -------------------------------------------------------------


@dataclass
class _Builder:
    """Adds devices and links to a graph, naming the spec field in every error."""

    graph: digraph.DiGraph
    source: str
    efficiency: dict[str, float] = field(default_factory=dict)  # per medium, 1 if absent

    def error(self, field: str, message: str) -> TopologyError:
        return TopologyError(f"{self.source}: field '{field}': {message}")

    def device(self, name: str, kind: str, field: str) -> str:
        existing = self.graph.nodes.get(name)
        if existing is not None and existing["kind"] != kind:
            raise self.error(field, f"device '{name}' is a {existing['kind']}, not a {kind}")
        self.graph.add_node(name, kind=kind)
        return name

    def link(
        self, src: str, dst: str, bandwidth: float, latency: float, medium: str, field: str
    ) -> None:
        if src == dst:
            raise self.error(field, f"link from {src} to itself")
        if self.graph.has_edge(src, dst):
            origin = self.graph.edges[src, dst]["origin"]
            raise self.error(field, f"link {src}->{dst} is already defined by '{origin}'")
        effective = float(bandwidth) * self.efficiency.get(medium, 1.0)
        if not (math.isfinite(effective) and effective > 0):
            raise self.error(field, f"link {src}->{dst}: bandwidth {bandwidth!r} B/s x "
                             f"link_efficiency {self.efficiency.get(medium, 1.0)!r} is not a "
                             "finite positive number; give a bandwidth > 0 in bytes/s")
        if not (math.isfinite(float(latency)) and latency >= 0):
            raise self.error(field, f"link {src}->{dst}: latency {latency!r} s is not a finite "
                             "number >= 0; give the per-hop latency in seconds")
        self.graph.add_edge(
            src,
            dst,
            bandwidth_bytes_per_s=effective,
            nominal_bandwidth_bytes_per_s=float(bandwidth),
            latency_s=float(latency),
            medium=medium,
            origin=field,
        )

    def connect(
        self, a: str, b: str, bandwidth: float, latency: float, medium: str, field: str
    ) -> None:
        self.link(a, b, bandwidth, latency, medium, field)
        self.link(b, a, bandwidth, latency, medium, field)


def _split(total: int, parts: int, what: str, b: _Builder, field: str) -> int:
    """`total / parts` when it divides evenly, else a TopologyError naming `field`."""
    if total % parts:
        raise b.error(field, f"{total} {what} do not split evenly into {parts}")
    return total // parts


def _gpu(spec: TopologySpec, server: int, local: int) -> str:
    return f"gpu{server * spec.gpus_per_node + local}"


def _build_nvswitch(b: _Builder, spec: TopologySpec, block: NvSwitchFabric, field: str) -> None:
    for server in range(spec.nodes):
        switch = b.device(f"nvswitch{server}", "nvswitch", field)
        b.graph.nodes[switch]["nvls"] = block.nvls  # read by the NVLS all-reduce
        b.graph.nodes[switch]["nvls_efficiency"] = block.nvls_efficiency
        b.graph.nodes[switch]["nvls_latency_s"] = block.nvls_latency_s
        for local in range(spec.gpus_per_node):
            b.connect(
                _gpu(spec, server, local),
                switch,
                block.port_bandwidth_bytes_per_s,
                block.latency_s,
                "nvlink",
                field,
            )


def _build_loopback(b: _Builder, spec: TopologySpec, block: LoopbackFabric, field: str) -> None:
    for server in range(spec.nodes):
        memory = b.device(f"hostmem{server}", "hostmem", field)
        for local in range(spec.gpus_per_node):
            b.connect(
                _gpu(spec, server, local),
                memory,
                block.port_bandwidth_bytes_per_s,
                block.latency_s,
                "loopback",
                field,
            )


def _p2p_flags(b: _Builder, spec: TopologySpec, block: PcieTreeFabric, field: str) -> list[bool]:
    if isinstance(block.p2p, bool):
        return [block.p2p] * spec.gpus_per_node
    if len(block.p2p) != spec.gpus_per_node:
        raise b.error(
            f"{field}.p2p",
            f"has {len(block.p2p)} flags but gpus_per_node is "
            f"{spec.gpus_per_node}; give one flag per GPU of a server or a single bool",
        )
    return list(block.p2p)


def _build_pcie_tree(b: _Builder, spec: TopologySpec, block: PcieTreeFabric, field: str) -> None:
    per_socket = _split(spec.gpus_per_node, block.sockets, "GPUs per node", b, f"{field}.sockets")
    per_switch = per_socket
    if block.switches_per_socket:
        per_switch = _split(
            per_socket,
            block.switches_per_socket,
            "GPUs per socket",
            b,
            f"{field}.switches_per_socket",
        )
        if block.switch_uplink_bandwidth_bytes_per_s is None:
            raise b.error(
                f"{field}.switch_uplink_bandwidth_bytes_per_s",
                "required when switches_per_socket > 0",
            )
    if block.sockets > 1 and block.socket_link_bandwidth_bytes_per_s is None:
        raise b.error(f"{field}.socket_link_bandwidth_bytes_per_s", "required when sockets > 1")
    p2p = _p2p_flags(b, spec, block, field)
    for server in range(spec.nodes):
        parents = _pcie_sockets(b, spec, block, field, server)
        for local in range(spec.gpus_per_node):
            gpu = _gpu(spec, server, local)
            b.connect(
                gpu,
                parents[local // per_switch],
                block.gpu_link_bandwidth_bytes_per_s,
                block.pcie_latency_s,
                "pcie",
                field,
            )
            b.graph.nodes[gpu]["p2p"] = p2p[local]
            b.graph.nodes[gpu]["p2p_level"] = _default_p2p_level(block, spec.gpus_per_node)


def _pcie_sockets(
    b: _Builder, spec: TopologySpec, block: PcieTreeFabric, field: str, server: int
) -> list[str]:
    """One server's CPUs, host memories and PCIe switches; returns the GPUs' parents."""
    cpus: list[str] = []
    parents: list[str] = []
    for socket in range(block.sockets):
        index = server * block.sockets + socket
        cpu = b.device(f"cpu{index}", "cpu", field)
        b.connect(
            cpu,
            b.device(f"hostmem{index}", "hostmem", field),
            block.hostmem_bandwidth_bytes_per_s,
            block.hostmem_latency_s,
            "memory",
            field,
        )
        for other in cpus:
            b.connect(
                other,
                cpu,
                block.socket_link_bandwidth_bytes_per_s or 0.0,
                block.socket_link_latency_s,
                "socket_link",
                field,
            )
        cpus.append(cpu)
        if not block.switches_per_socket:
            parents.append(cpu)
        for k in range(block.switches_per_socket):
            name = f"pcie_sw{server}_{socket * block.switches_per_socket + k}"
            switch = b.device(name, "pcie_switch", field)
            b.connect(
                switch,
                cpu,
                block.switch_uplink_bandwidth_bytes_per_s or 0.0,
                block.pcie_latency_s,
                "pcie",
                field,
            )
            parents.append(switch)
    return parents


def _build_network(b: _Builder, spec: TopologySpec, block: NetworkFabric, field: str) -> None:
    nics = _split(
        spec.gpus_per_node, block.gpus_per_nic, "GPUs per node", b, f"{field}.gpus_per_nic"
    )
    if block.spines and block.spine_bandwidth_bytes_per_s is None:
        raise b.error(f"{field}.spine_bandwidth_bytes_per_s", "required when spines > 0")
    names = [f"rail{k}" for k in range(nics)] if block.rail_optimized else ["netsw0"]
    switches = [b.device(name, "net_switch", field) for name in names]
    for server in range(spec.nodes):
        for k in range(nics):
            nic = b.device(f"nic{server * nics + k}", "nic", field)
            b.connect(
                nic,
                switches[k % len(switches)],
                block.nic_bandwidth_bytes_per_s,
                block.nic_latency_s,
                "network",
                field,
            )
            for local in range(k * block.gpus_per_nic, (k + 1) * block.gpus_per_nic):
                b.connect(
                    _gpu(spec, server, local),
                    nic,
                    block.gpu_nic_bandwidth_bytes_per_s,
                    block.gpu_nic_latency_s,
                    "pcie",
                    field,
                )
    for s in range(block.spines):
        spine = b.device(f"spine{s}", "net_switch", field)
        for switch in switches:
            b.connect(
                switch,
                spine,
                block.spine_bandwidth_bytes_per_s or 0.0,
                block.spine_latency_s,
                "network",
                field,
            )


_BUILDERS: dict[str, Callable[[_Builder, TopologySpec, Any, str], None]] = {
    "nvswitch": _build_nvswitch,
    "pcie_tree": _build_pcie_tree,
    "network": _build_network,
    "loopback": _build_loopback,
}


def _add_explicit_link(b: _Builder, link: LinkSpec, field: str) -> None:
    for end in ("src", "dst"):
        name = getattr(link, end)
        if name not in b.graph:
            raise b.error(
                f"{field}.{end}",
                f"unknown device '{name}'; declare it under "
                f"extra_devices or use a GPU (gpu0..) or a fabric-made device",
            )
    add = b.connect if link.bidirectional else b.link
    add(link.src, link.dst, link.bandwidth_bytes_per_s, link.latency_s, link.medium, field)


def _check_connected(b: _Builder, gpus: list[str]) -> None:
    """Every GPU reaches gpu0 and back (GPUs forward, so then every pair is joined)."""
    if len(gpus) < 2:
        return
    first = gpus[0]
    reachable, reaching = digraph.descendants(b.graph, first), digraph.ancestors(b.graph, first)
    for gpu in gpus[1:]:
        for ok, a, z in ((gpu in reachable, first, gpu), (gpu in reaching, gpu, first)):
            if not ok:
                raise b.error(
                    "fabric/links",
                    f"{a} cannot reach {z} (no directed path); "
                    "add a fabric block (e.g. network) or links joining them",
                )


def _check_efficiency_media(b: _Builder) -> None:
    """Every `link_efficiency` key names a medium some link has (catches typos)."""
    media = sorted({medium for _, _, medium in b.graph.edges(data="medium")})
    for medium in b.efficiency:
        if medium not in media:
            raise b.error(
                f"link_efficiency.{medium}",
                f"no link has medium '{medium}'; this topology's media: {', '.join(media)}",
            )


def build_topology(spec: TopologySpec, source: str = "topology") -> Topology:
    """Expand a spec into a validated `Topology`; errors name `source` and the field."""
    b = _Builder(digraph.DiGraph(name=spec.name), source, dict(spec.link_efficiency))
    gpus = [f"gpu{rank}" for rank in range(spec.nodes * spec.gpus_per_node)]
    for rank, gpu in enumerate(gpus):
        b.graph.add_node(gpu, kind="gpu", rank=rank, p2p=True)
    for name, kind in spec.extra_devices.items():
        b.device(name, kind, f"extra_devices.{name}")
    for index, block in enumerate(spec.fabric):
        _BUILDERS[block.kind](b, spec, block, f"fabric[{index}]")
    for index, link in enumerate(spec.links):
        _add_explicit_link(b, link, f"links[{index}]")
    _check_connected(b, gpus)
    _check_efficiency_media(b)
    for gpu in gpus:
        if not b.graph.nodes[gpu]["p2p"]:
            try:
                _nearest_hostmem(b.graph, gpu, spec.name)
            except TopologyError as exc:
                raise b.error("fabric", str(exc)) from None
    return Topology(spec, b.graph)


# --- files and presets --------------------------------------------------------------


def list_presets() -> list[str]:
    """Names of the shipped topology presets."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def resolve_topology_path(path_or_name: str | Path) -> Path:
    """A topology file path, or the preset file of that name."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{path_or_name}.yaml"
    if isinstance(path_or_name, str) and "/" not in path_or_name and preset.is_file():
        return preset
    raise TopologyError(
        f"topology '{path_or_name}' is neither a file nor a preset name; "
        f"presets: {', '.join(list_presets())}"
    )


def load_topology(path_or_name: str | Path) -> Topology:
    """Load and build a topology from a YAML/JSON file or a preset name like 'dgx-h100'."""
    path = resolve_topology_path(path_or_name)
    spec = load_model_file(TopologySpec, path, "topology")
    return build_topology(spec, source=f"topology file {path}")
