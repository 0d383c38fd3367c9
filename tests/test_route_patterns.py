"""`build_route_table` finds every pair's routes at once; the table is exactly the one a plain
per-source search builds (the reference below is the original builder, kept as it was), on
every preset, on rail fabrics of 2, 4 and 8 servers (with and without spines), on small
hand-built graphs, and where the topology's own routes apply (PCIe without P2P)."""

from __future__ import annotations

import itertools
from typing import Any

import networkx as nx
import numpy as np
import pytest

from moesim.engine.network import Edge, Links, Routing
from moesim.engine.routes import RouteTable, build_route_table
from moesim.errors import TopologyError
from moesim.inputs.config import load_model_file
from moesim.inputs.topology import (
    Topology,
    build_topology,
    list_presets,
    load_topology,
    resolve_topology_path,
)
from moesim.inputs.topology_spec import TopologySpec
from tests.conftest import links_topology

# ---- the reference: one BFS per source, Python lists per path (the builder before) ----------


def _reference_routes_from(graph: nx.DiGraph, src: str,
                           targets: list[str]) -> list[list[list[Edge]]]:
    preds = nx.predecessor(graph, src)
    memo: dict[str, list[tuple[str, ...]]] = {src: [(src,)]}

    def node_paths(node: str) -> list[tuple[str, ...]]:
        if node not in memo:
            memo[node] = [head + (node,) for p in preds[node] for head in node_paths(p)]
        return memo[node]

    return [sorted(list(itertools.pairwise(path)) for path in node_paths(dst)) for dst in targets]


def _as_networkx(graph: Any) -> nx.DiGraph:
    """The graph as networkx's DiGraph (same nodes, links and order), for the reference."""
    if isinstance(graph, nx.DiGraph):
        return graph
    ref = nx.DiGraph(**graph.graph)
    ref.add_nodes_from(graph.nodes(data=True))
    ref.add_edges_from(graph.edges(data=True))
    return ref


def _reference_paths(topo: Routing, world: int) -> dict[tuple[int, int], list[list[Edge]]]:
    gpus = [f"gpu{rank}" for rank in range(world)]
    graph = _as_networkx(topo.graph)
    fast = all(graph.nodes[g].get("p2p", True) for g in gpus) and all(
        graph.nodes[g].get("kind") == "gpu" for g in gpus)
    paths: dict[tuple[int, int], list[list[Edge]]] = {}
    for src in range(world):
        others = [dst for dst in range(world) if dst != src]
        if fast:
            found = _reference_routes_from(graph, gpus[src], [gpus[d] for d in others])
        else:
            found = [topo.routes(src, dst) for dst in others]
        paths.update({(src, dst): routes for dst, routes in zip(others, found, strict=True)})
    return paths


def reference_table(topo: Routing, world: int) -> dict[str, Any]:
    """Every field of the table the original builder made."""
    links = Links.from_graph(topo.graph)
    paths = _reference_paths(topo, world)
    pair_list: list[int] = []
    edge_list: list[Edge] = []
    share_list: list[float] = []
    path_of_entry: list[int] = []
    path_pair: list[int] = []
    for (src, dst), routes in paths.items():
        pair = src * world + dst
        share = 1.0 / len(routes)
        for path in routes:
            path_pair.append(pair)
            pair_list.extend([pair] * len(path))
            share_list.extend([share] * len(path))
            path_of_entry.extend([len(path_pair) - 1] * len(path))
            edge_list.extend(path)
    link_ids = np.fromiter((links.index[e] for e in edge_list), dtype=np.int64,
                           count=len(edge_list))
    path_latency = np.bincount(np.asarray(path_of_entry, dtype=np.int64),
                               weights=links.latency_s[link_ids], minlength=len(path_pair))
    latency = np.zeros(world * world)
    np.maximum.at(latency, np.asarray(path_pair, dtype=np.int64), path_latency)
    bounds = np.cumsum([0] + [len(path) for routes in paths.values() for path in routes])
    path_ids: dict[tuple[int, int], list[np.ndarray]] = {}
    index = 0
    for src_dst, routes in paths.items():
        path_ids[src_dst] = [link_ids[bounds[index + i]: bounds[index + i + 1]]
                             for i in range(len(routes))]
        index += len(routes)
    count = np.zeros(world * world, dtype=np.int64)
    for (src, dst), routes in paths.items():
        count[src * world + dst] = len(routes)
    pairs = np.asarray(pair_list, dtype=np.int64)
    return {
        "world": world,
        "pair_of_entry": pairs,
        "link_of_entry": link_ids,
        "share_of_entry": np.asarray(share_list, dtype=np.float64),
        "pair_latency_s": latency,
        "paths": paths,
        "path_ids": path_ids,
        "path_count": count,
        "first_path": np.concatenate(([0], np.cumsum(count))),
        "path_links": [link_ids[bounds[i]: bounds[i + 1]] for i in range(len(path_pair))],
        "path_latency_s": path_latency,
        "pair_starts": (np.flatnonzero(np.r_[True, np.diff(pairs) != 0]) if pair_list
                        else np.zeros(0, dtype=np.int64)),
    }


def _same_array(got: np.ndarray, want: np.ndarray, name: str) -> None:
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.array_equal(got, want), f"{name} differs"


def assert_same_table(table: RouteTable, want: dict[str, Any]) -> None:
    """Equal field by field: arrays bit for bit (dtype included), routes in the same order."""
    assert table.world == want["world"]
    for name in ("pair_of_entry", "link_of_entry", "share_of_entry", "pair_latency_s",
                 "path_count", "first_path", "path_latency_s", "pair_starts"):
        _same_array(getattr(table, name), want[name], name)
    assert len(table.path_links) == len(want["path_links"])
    for i, (got, ref) in enumerate(zip(table.path_links, want["path_links"], strict=True)):
        _same_array(got, ref, f"path_links[{i}]")
    assert list(table.paths) == list(want["paths"])  # the same pairs, src-major
    assert dict(table.paths.items()) == want["paths"]
    assert list(table.path_ids) == list(want["path_ids"])
    for pair, routes in want["path_ids"].items():
        got = table.path_ids[pair]
        assert len(got) == len(routes)
        for a, b in zip(got, routes, strict=True):
            _same_array(a, b, f"path_ids[{pair}]")


# ---- topologies ------------------------------------------------------------------------------


def rail_fabric(nodes: int, spines: int = 0) -> Topology:
    """The h100-2node-ib preset widened to `nodes` DGX H100 servers on 8 rails (as
    benchmarks/bench_step.py builds it), optionally with a spine layer."""
    spec = load_model_file(TopologySpec, resolve_topology_path("h100-2node-ib"), "topology")
    update: dict[str, Any] = {"nodes": nodes}
    if spines:
        update["fabric"] = tuple(
            f.model_copy(update={"spines": spines, "spine_bandwidth_bytes_per_s": 100e9,
                            "spine_latency_s": 1e-6}) if f.kind == "network" else f
            for f in spec.fabric)
    return build_topology(spec.model_copy(update=update), source=f"{nodes}x DGX H100")


def _fresh(topo: Topology) -> Topology:
    """The same topology built again (a new graph: nothing cached from earlier tables)."""
    return build_topology(topo.spec, source="again")


PRESETS = list_presets()


def test_the_presets_are_all_here() -> None:
    """The parametrisation below covers the bundled presets, PCIe without P2P among them."""
    assert {"dgx-h100", "gb200-nvl72", "h100-4node-ib", "rtx4090-8x-pcie", "l40s-8x-pcie",
            "cpu-loopback"} <= set(PRESETS)
    no_p2p = load_topology("rtx4090-8x-pcie")
    assert not all(no_p2p.p2p(r) for r in range(no_p2p.num_gpus))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_gives_the_reference_table(name: str) -> None:
    topo = load_topology(name)
    for world in sorted({1, 2, min(3, topo.num_gpus), topo.num_gpus}):
        assert_same_table(build_route_table(_fresh(topo), world), reference_table(topo, world))


@pytest.mark.parametrize(("nodes", "spines"), [(2, 0), (4, 0), (8, 0), (4, 2)])
def test_rail_fabrics_give_the_reference_table(nodes: int, spines: int) -> None:
    topo = rail_fabric(nodes, spines)
    want = reference_table(topo, topo.num_gpus)
    table = build_route_table(topo, topo.num_gpus)
    assert_same_table(table, want)
    # the fabric really has pairs with several routes through other GPUs and rails
    assert table.path_count.max() >= 2 and table.path_links[0].size >= 1
    assert_same_table(build_route_table(_fresh(topo), 12), reference_table(topo, 12))


def test_sources_routed_in_batches_give_the_same_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources are routed a batch at a time (to bound memory); batch edges change nothing."""
    topo = rail_fabric(2)
    monkeypatch.setattr("moesim.engine.routes._SOURCES_PER_BATCH", 3)
    assert_same_table(build_route_table(topo, 16), reference_table(topo, 16))


def test_no_gpus_and_one_gpu_have_no_routes() -> None:
    topo = load_topology("dgx-h100")
    for world in (0, 1):
        table = build_route_table(_fresh(topo), world)
        assert_same_table(table, reference_table(topo, world))
        assert table.path_links == [] and len(table.paths) == 0


def test_small_graphs_give_the_reference_table(four_gpu_ring: Topology,
                                               two_node: Topology) -> None:
    """A ring (two equal routes between opposite GPUs), two nodes over NICs, and a graph whose
    names sort differently from their numbers (gpu10 < gpu2) and whose shortest routes pass a
    third GPU."""
    ring12 = links_topology("ring12", 12, [{"src": f"gpu{i}", "dst": f"gpu{(i + 1) % 12}",
                                            "bandwidth_bytes_per_s": 1e11, "latency_s": 1e-6}
                                           for i in range(12)])
    for topo in (four_gpu_ring, two_node, ring12):
        assert_same_table(build_route_table(_fresh(topo), topo.num_gpus),
                          reference_table(topo, topo.num_gpus))
    table = build_route_table(ring12, 12)
    assert table.path_count[0 * 12 + 6] == 2  # both ways round
    assert table.paths[(0, 6)][0][0] == ("gpu0", "gpu1")  # "gpu1" sorts before "gpu11"


def test_one_way_links_route_the_long_way_round() -> None:
    """Directed links: gpu1 reaches gpu0 only round the ring, and the table says so."""
    ring = links_topology("one-way", 3, [{"src": f"gpu{i}", "dst": f"gpu{(i + 1) % 3}",
                                          "bandwidth_bytes_per_s": 1e11, "latency_s": 1e-6,
                                          "bidirectional": False} for i in range(3)])
    table = build_route_table(ring, 3)
    assert_same_table(table, reference_table(ring, 3))
    assert table.paths[(1, 0)] == [[("gpu1", "gpu2"), ("gpu2", "gpu0")]]


class _OpenGraph:
    """A routing object on a graph that is not frozen (and may be cut: no Topology checks)."""

    def __init__(self, edges: list[Edge]) -> None:
        self.graph = nx.DiGraph()
        for gpu in ("gpu0", "gpu1", "gpu2"):
            self.graph.add_node(gpu, kind="gpu")
        for u, v in edges:
            self.graph.add_edge(u, v, bandwidth_bytes_per_s=1e11, latency_s=1e-6)

    def routes(self, src: int, dst: int) -> list[list[Edge]]:
        raise AssertionError("every GPU has P2P: routes come from the graph")


def test_an_unreachable_gpu_is_a_topology_error() -> None:
    with pytest.raises(TopologyError, match="no directed path from gpu0 to gpu2"):
        build_route_table(_OpenGraph([("gpu0", "gpu1"), ("gpu2", "gpu0")]), 3)


# ---- one table per topology and world --------------------------------------------------------


def test_a_topology_builds_its_table_once_and_the_table_is_read_only() -> None:
    topo = rail_fabric(2)
    first = build_route_table(topo, 16)
    assert build_route_table(topo, 16) is first
    assert build_route_table(topo, 8) is not first and build_route_table(topo, 8).world == 8
    assert build_route_table(_fresh(topo), 16) is not first  # another graph: built again
    with pytest.raises(ValueError, match="read-only"):
        first.pair_latency_s[0] = 1.0
    pcie = load_topology("rtx4090-8x-pcie")  # the topology's own routes: kept per topology
    assert build_route_table(pcie, 8) is build_route_table(pcie, 8)


def test_a_graph_that_can_change_is_routed_anew() -> None:
    """An unfrozen graph may gain links between calls: nothing is kept for it."""
    topo = _OpenGraph([("gpu0", "gpu1"), ("gpu1", "gpu2"), ("gpu2", "gpu0")])
    assert build_route_table(topo, 3).paths[(1, 0)] == [[("gpu1", "gpu2"), ("gpu2", "gpu0")]]
    topo.graph.add_edge("gpu1", "gpu0", bandwidth_bytes_per_s=1e11, latency_s=1e-6)
    assert build_route_table(topo, 3).paths[(1, 0)] == [[("gpu1", "gpu0")]]


def test_paths_read_like_a_dict() -> None:
    table = build_route_table(load_topology("dgx-h100"), 4)
    assert len(table.paths) == 12 and (0, 0) not in table.paths and (0, 3) in table.paths
    assert table.paths.get((1, 1)) is None and table.paths[(0, 3)] is table.paths[(0, 3)]
    with pytest.raises(KeyError):
        table.paths[(0, 4)]
