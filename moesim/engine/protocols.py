"""NCCL's cost structure as moesim times it: per protocol a launch, a per-step latency and a
bandwidth share; per call the algorithm and protocol NCCL's tuner would pick.

A collective on a GPU topology costs

    launch[p] + sum over its sequential steps of step_latency[p][hop] + flows(payload x wire[p])

- `launch[p]` (s): the fixed cost of one call on protocol p (NCCL's `baseLat`);
- `step_latency[p][hop]` (s): what each ring step (or tree level) adds on a hop of kind
  `nvlink`, `pci` or `net` (NCCL's `hwLat`), on top of the links' own `latency_s`; a ring
  all-reduce has 2(n-1) steps, all-gather / reduce-scatter n-1, a direct all-to-all one;
- `wire[p]` = 1 / bandwidth share: LL sends a 4-byte flag with every 4 bytes of data and
  NCCL models its ring bandwidth as half of Simple's (`busBw * .5`); LL128 as 0.92
  (`busBw * 0.92 /*120.0/128.0*/`); Simple 1 (src/graph/tuning.cc, see `nccl_tuner`);
- a process driving g GPUs (nccl-tests `-g g`, one thread) launches g kernels one after the
  other: `multi_gpu_launch_s` x (g - 1) more.

Every term defaults to NCCL's own figure and is overridden per topology by a `protocols`
block that `moesim calibrate nccl-tests` fits to published logs. The algorithm and protocol
come from NCCL's tuner (`moesim.engine.nccl_tuner`) unless forced. Topologies whose GPU has
no `compute_capability` (CPU processes on gloo) have no protocols: one launch per call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from moesim.engine.nccl_tuner import (
    BASE_LATENCY_US,
    HW_LATENCY_US,
    NCCL_BW_FRACTION,
    P2P_LL_THRESHOLD_BYTES,
    PROTOCOLS,
    TunerInputs,
    nccl_choice,
    p2p_protocol,
)
from moesim.engine.network import Edge, Routing
from moesim.errors import TopologyError

__all__ = [
    "NCCL_LAUNCH_S",
    "DEFAULT_BANDWIDTH_FRACTION",
    "HOP_KINDS",
    "ProtocolCost",
    "CollectiveCall",
    "protocol_costs",
    "hop_kind",
    "plan_call",
    "bare_call",
    "uses_nccl",
    "tuner_inputs",
    "resolve_call",
    "with_launch",
    "group_step_kind",
    "tree_protocol_latency_s",
    "alltoall_delay_and_wire",
    "alltoall_delays_and_wires",
    "nvls_switch",
]

# Fixed cost of one collective where the topology names no protocols (gloo, CPU processes):
# NCCL's Ring/Simple base latency, 8.4 us (src/graph/tuning.cc baseLatencies).
NCCL_LAUNCH_S = BASE_LATENCY_US["ring"]["Simple"] * 1e-6

# Payload share of the link bandwidth per protocol, NCCL's ring model (module docstring).
DEFAULT_BANDWIDTH_FRACTION = {"LL": 0.5, "LL128": 0.92, "Simple": 1.0}

HOP_KINDS: tuple[str, ...] = ("nvlink", "pci", "net")

_T = TypeVar("_T")


@dataclass
class _TopologyFacts:
    """What protocol resolution derives from one topology and keeps: its protocol costs, and
    per rank group the tuner's inputs and the slowest step's hop kind. Valid while the
    topology holds the same spec and graph (a built Topology's are immutable: a frozen spec and
    a frozen graph)."""

    spec: Any
    graph: Any
    gpus_per_node: Any
    values: dict[Hashable, Any] = field(default_factory=dict)


# Per topology (weakly held: facts go with the topology).
_FACTS: weakref.WeakKeyDictionary[Any, _TopologyFacts] = weakref.WeakKeyDictionary()


def _facts(topo: Routing) -> _TopologyFacts | None:
    """The topology's kept facts, or None where they cannot be kept (a graph that may still
    change, or a topology object that cannot be weakly referenced)."""
    graph = getattr(topo, "graph", None)
    if not getattr(graph, "frozen", False):
        return None
    try:
        facts = _FACTS.get(topo)
    except TypeError:
        return None
    spec, per_node = _spec(topo), getattr(topo, "gpus_per_node", None)
    if facts is None or facts.spec is not spec or facts.graph is not graph \
            or facts.gpus_per_node != per_node:
        facts = _TopologyFacts(spec, graph, per_node)
        _FACTS[topo] = facts
    return facts


def _kept(topo: Routing, key: Hashable, compute: Callable[[], _T]) -> _T:
    """`compute()`, once per topology and `key` where the topology's facts can be kept."""
    facts = _facts(topo)
    if facts is None:
        return compute()
    if key not in facts.values:
        facts.values[key] = compute()
    return facts.values[key]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ProtocolCost:
    """One protocol's terms: launch, per-step latency by hop kind, wire bytes per payload byte."""

    launch_s: float
    step_latency_s: dict[str, float]
    wire_factor: float


@dataclass(frozen=True)
class CollectiveCall:
    """How one collective runs: algorithm, protocol, and the costs the engine charges."""

    algorithm: str  # ring, tree, nvls, direct
    protocol: str  # LL, LL128, Simple
    launch_s: float
    step_latency_s: dict[str, float]  # by hop kind (nvlink, pci, net)
    wire_factor: float

    def step_s(self, kind: str) -> float:
        """Protocol latency one step pays on a hop of this kind."""
        return self.step_latency_s.get(kind, 0.0)


def bare_call(algorithm: str, protocol: str = "Simple") -> CollectiveCall:
    """A call with no launch, no step latency and wire factor 1: only the links' own times."""
    return CollectiveCall(algorithm, protocol, 0.0, {}, 1.0)


def _spec(topo: Routing) -> Any:
    return getattr(topo, "spec", None)


def uses_nccl(topo: Routing) -> bool:
    """Whether collectives on this topology follow NCCL's protocols (a GPU with a compute
    capability), else one launch per call (gloo)."""
    spec = _spec(topo)
    return bool(spec is not None and spec.gpu_spec.compute_capability)


def protocol_costs(topo: Routing) -> dict[str, ProtocolCost]:
    """Each protocol's costs on this topology: its `protocols` block over NCCL's defaults;
    for a topology without NCCL only `Simple`, with the topology's `collective_launch_s`."""
    spec = _spec(topo)
    legacy_launch = getattr(spec, "collective_launch_s", None)
    if not uses_nccl(topo):
        launch = NCCL_LAUNCH_S if legacy_launch is None else float(legacy_launch)
        return {"Simple": ProtocolCost(launch, {}, 1.0)}
    costs: dict[str, ProtocolCost] = {}
    for protocol in PROTOCOLS:
        given = spec.protocols.get(protocol)
        launch = BASE_LATENCY_US["ring"][protocol] * 1e-6
        if legacy_launch is not None:
            launch = float(legacy_launch)
        if given is not None and given.launch_s is not None:
            launch = given.launch_s
        steps = {kind: HW_LATENCY_US[kind]["ring"][protocol] * 1e-6 for kind in HOP_KINDS}
        fraction = DEFAULT_BANDWIDTH_FRACTION[protocol]
        if given is not None:
            for kind in HOP_KINDS:
                value = getattr(given, f"{kind}_step_latency_s")
                if value is not None:
                    steps[kind] = value
            if given.bandwidth_fraction is not None:
                fraction = given.bandwidth_fraction
        costs[protocol] = ProtocolCost(launch, steps, 1.0 / fraction)
    return costs


def hop_kind(topo: Routing, path: Sequence[Edge]) -> str:
    """`net` if the route crosses a network link, `nvlink` if it is NVLink only, else `pci`."""
    media = {topo.graph.edges[edge].get("medium") for edge in path}
    if "network" in media:
        return "net"
    if media and media <= {"nvlink"}:
        return "nvlink"
    return "pci"


def _ring_hops(topo: Routing, ranks: Sequence[int]) -> list[list[Edge]]:
    n = len(ranks)
    return [topo.routes(ranks[i], ranks[(i + 1) % n])[0] for i in range(n)]


def nvls_switch(topo: Routing, ranks: Sequence[int]) -> str | None:
    """The one `nvls` switch every rank's GPU (`gpu{rank}`) has a port to, else None."""
    graph = topo.graph
    found: set[str] = set()
    for rank in ranks:
        gpu = f"gpu{rank}"
        if gpu not in graph:
            return None
        ports = [
            node
            for node in graph.successors(gpu)
            if graph.nodes[node].get("kind") == "nvswitch" and graph.nodes[node].get("nvls")
        ]
        if not ports:
            return None
        found.update(ports)
    return found.pop() if len(found) == 1 else None


def tuner_inputs(topo: Routing, ranks: Sequence[int]) -> TunerInputs:
    """What NCCL's tuner would see for this group on this topology (see `nccl_tuner`)."""
    spec = _spec(topo)
    per_node = int(getattr(topo, "gpus_per_node", len(ranks)) or len(ranks))
    nodes = len({rank // per_node for rank in ranks})
    hops = _ring_hops(topo, ranks)
    graph = topo.graph
    nominal = min(
        min(float(graph.edges[e].get("nominal_bandwidth_bytes_per_s",
                                     graph.edges[e]["bandwidth_bytes_per_s"])) for e in hop)
        for hop in hops if hop
    )
    intra = [hop_kind(topo, hop) for hop in hops if hop_kind(topo, hop) != "net"]
    intra_hw = "nvlink" if intra and all(kind == "nvlink" for kind in intra) else "pci"
    return TunerInputs(
        n_ranks=len(ranks),
        n_nodes=nodes,
        compute_capability=float(spec.gpu_spec.compute_capability),
        intra_hw=intra_hw,
        ring_bus_bw_gbps=NCCL_BW_FRACTION * nominal / 1e9,
        nvls=nvls_switch(topo, ranks) is not None,
    )


def plan_call(
    topo: Routing,
    op: str,
    ranks: Sequence[int],
    size_bytes: float,
    *,
    algorithm: str = "auto",
    protocol: str = "auto",
    gpus_per_process: int = 1,
) -> CollectiveCall:
    """The algorithm and protocol this call runs on (NCCL's tuner unless forced) and its costs.

    `size_bytes` is nccl-tests' size (for all-to-all the busiest rank's send buffer without its
    own share, i.e. the bytes it sends to peers)."""
    costs = protocol_costs(topo)
    n = len(ranks)
    if op == "alltoall":
        chosen_algorithm = "direct"
        chosen = protocol
        if chosen == "auto":
            chosen = p2p_protocol(size_bytes / max(n - 1, 1)) if uses_nccl(topo) else "Simple"
        if chosen == "LL128":
            raise ValueError("all-to-all runs on NCCL's send/recv, which uses LL or Simple, "
                             "never LL128; use --protocol LL, Simple or auto")
    elif not uses_nccl(topo) or n < 2:
        chosen_algorithm = "ring" if algorithm == "auto" else algorithm
        chosen = "Simple" if protocol == "auto" else protocol
    else:
        if algorithm not in ("auto", "ring", "tree", "nvls"):
            raise ValueError(f"unknown algorithm {algorithm!r} for {op}")
        if op != "allreduce" and algorithm in ("tree", "nvls"):
            raise ValueError(f"{op} runs on ring (NCCL's tree and NVLS here are all-reduce "
                             "algorithms); use --algorithm ring or auto")
        group = tuple(int(r) for r in ranks)
        inputs = _kept(topo, ("tuner_inputs", group), lambda: tuner_inputs(topo, group))
        if algorithm == "nvls" and not inputs.nvls:
            raise TopologyError(
                f"allreduce algorithm 'nvls' needs every rank ({list(ranks)}) on one NVSwitch "
                "with `nvls: true` in its fabric block; use --algorithm ring or auto")
        try:
            chosen_algorithm, chosen = nccl_choice(op, size_bytes, inputs, algorithm, protocol)
        except ValueError as exc:
            raise TopologyError(str(exc)) from None
    if chosen not in costs:
        raise ValueError(f"protocol {chosen} is not modelled on this topology (its GPU has no "
                         "compute_capability, so collectives pay one launch, no protocols)")
    cost = costs[chosen]
    launch_s = cost.launch_s + _multi_gpu_launch_s(topo) * max(gpus_per_process - 1, 0)
    return CollectiveCall(chosen_algorithm, chosen, launch_s, dict(cost.step_latency_s),
                          cost.wire_factor)


def _multi_gpu_launch_s(topo: Routing) -> float:
    spec = _spec(topo)
    value = getattr(spec, "multi_gpu_launch_s", None)
    return 0.0 if value is None else float(value)


def with_launch(call: CollectiveCall, launch_s: float) -> CollectiveCall:
    """The call with another launch latency (calibration and legacy callers)."""
    return replace(call, launch_s=launch_s)


def resolve_call(
    topo: Routing,
    op: str,
    ranks: Sequence[int],
    size_bytes: float,
    *,
    algorithm: str = "auto",
    protocol: str = "auto",
    call: CollectiveCall | None = None,
    launch_s: float | None = None,
) -> CollectiveCall:
    """`call` if given, else `plan_call`; `launch_s`, if given, replaces its launch."""
    if call is None:
        call = plan_call(topo, op, ranks, size_bytes, algorithm=algorithm, protocol=protocol)
    return call if launch_s is None else with_launch(call, launch_s)


def group_step_kind(topo: Routing, ranks: Sequence[int]) -> str:
    """The hop kind of a group's slowest step: `net` if it spans servers, else the kind of the
    route from its first rank to its second."""
    if len(ranks) < 2:
        return "nvlink"
    group = tuple(int(r) for r in ranks)
    return _kept(topo, ("step_kind", group), lambda: _group_step_kind(topo, group))


def _group_step_kind(topo: Routing, ranks: tuple[int, ...]) -> str:
    per_node = getattr(topo, "gpus_per_node", None)
    if per_node and len({r // int(per_node) for r in ranks}) > 1:
        return "net"
    return hop_kind(topo, topo.routes(ranks[0], ranks[1])[0])


def tree_protocol_latency_s(topo: Routing, ranks: Sequence[int], call: CollectiveCall) -> float:
    """NCCL's tree latency beyond the launch: 2((ppn - 1) intra + log2(nodes) net) steps."""
    n = len(ranks)
    per_node = int(getattr(topo, "gpus_per_node", None) or n)
    nodes = len({int(r) // per_node for r in ranks})
    ppn = n // nodes
    intra = group_step_kind(topo, ranks[:ppn]) if ppn > 1 else "nvlink"
    return 2 * ((ppn - 1) * call.step_s(intra) + int(np.log2(nodes)) * call.step_s("net"))


def alltoall_delay_and_wire(
    topo: Routing, ranks: Sequence[int], busiest_bytes: float, launch_s: float | None = None
) -> tuple[float, float]:
    """(seconds before an all-to-all's bytes move: launch plus one step latency, wire bytes per
    payload byte) for an exchange whose busiest rank sends `busiest_bytes` to peers."""
    call = resolve_call(topo, "alltoall", ranks, busiest_bytes, launch_s=launch_s)
    step_s = call.step_s(group_step_kind(topo, ranks)) if len(ranks) > 1 else 0.0
    return call.launch_s + step_s, call.wire_factor


@dataclass(frozen=True)
class _AlltoallTerms:
    """An all-to-all group's terms on each protocol send/recv runs on (LL, Simple): launch,
    the step latency of the group's slowest hop, the wire factor; and whether NCCL picks."""

    peers: int  # max(n - 1, 1): the peers a rank's bytes are spread over
    nccl: bool
    launch_s: dict[str, float]
    step_s: dict[str, float]
    wire_factor: dict[str, float]


def _alltoall_terms(topo: Routing, ranks: tuple[int, ...]) -> _AlltoallTerms:
    protocols = ("LL", "Simple") if uses_nccl(topo) else ("Simple",)
    launch, step, wire = {}, {}, {}
    for protocol in protocols:
        call = plan_call(topo, "alltoall", ranks, 0.0, protocol=protocol)
        launch[protocol] = call.launch_s
        step[protocol] = call.step_s(group_step_kind(topo, ranks)) if len(ranks) > 1 else 0.0
        wire[protocol] = call.wire_factor
    return _AlltoallTerms(max(len(ranks) - 1, 1), uses_nccl(topo), launch, step, wire)


def alltoall_delays_and_wires(
    topo: Routing, ranks: Sequence[int], busiest_bytes: np.ndarray, launch_s: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`alltoall_delay_and_wire` of K exchanges among the same `ranks` at once (`busiest_bytes`
    `[K]`): `[K]` delays and `[K]` wire factors. The group's terms per protocol are resolved
    once per topology; each exchange only picks LL or Simple by its size."""
    group = tuple(int(r) for r in ranks)
    terms: _AlltoallTerms = _kept(topo, ("alltoall", group), lambda: _alltoall_terms(topo, group))
    busiest = np.asarray(busiest_bytes, dtype=np.float64)
    if terms.nccl:  # p2p_protocol, vectorised
        small = busiest / terms.peers <= P2P_LL_THRESHOLD_BYTES
    else:
        small = np.zeros(busiest.shape, dtype=bool)

    def pick(values: dict[str, float]) -> np.ndarray:
        return np.where(small, values.get("LL", 0.0), values["Simple"])

    launch = pick(terms.launch_s) if launch_s is None else np.full(busiest.shape, launch_s)
    return launch + pick(terms.step_s), pick(terms.wire_factor)
