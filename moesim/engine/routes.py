"""RouteTable: every rank pair's equal-cost routes as link-index arrays, built once per topology.

Both fidelities use it: the DES starts flows on these routes, the analytic mode turns a whole
bytes matrix into per-link loads with one `bincount` (no Python loop over pairs per layer).
The shortest routes of all pairs are found together with array operations (256 GPUs on 8
rails: ~0.1 s), and a built topology's table is kept for the next run on it (sweeps, serving).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.engine.network import Edge, Links, Routing
from moesim.errors import TopologyError

__all__ = ["RouteTable", "build_route_table"]


@dataclass(frozen=True)
class RouteTable:
    """Incidence of (src, dst) pairs on links, with the share of the pair's bytes each carries."""

    world: int
    links: Links
    pair_of_entry: np.ndarray  # [N] flat pair index src * world + dst
    link_of_entry: np.ndarray  # [N] link index
    share_of_entry: np.ndarray  # [N] fraction of the pair's bytes on this link (1 / #paths)
    pair_latency_s: np.ndarray  # [world * world] longest path latency of each pair
    # (src, dst) -> the pair's routes as edge lists, every off-diagonal pair (src-major),
    # each made when first read
    paths: Mapping[tuple[int, int], list[list[Edge]]]
    path_ids: Mapping[tuple[int, int], list[np.ndarray]]  # the same routes as link-id arrays
    path_count: np.ndarray  # [world * world] routes of each pair (0 on the diagonal)
    first_path: np.ndarray  # [world * world + 1] index of each pair's first route in path_links
    path_links: list[np.ndarray]  # every route as link ids, pairs in src-major order
    path_latency_s: np.ndarray  # [routes] latency of each route
    pair_starts: np.ndarray  # index of each pair's first entry (entries are grouped by pair)

    def routes_from(self, src: int) -> tuple[np.ndarray, np.ndarray]:
        """`(route indices, their destinations)` of every route from rank `src`, destinations
        ascending, a pair's routes together (routes of one source are contiguous)."""
        first = self.first_path[src * self.world: (src + 1) * self.world + 1]
        index = np.arange(first[0], first[-1])
        return index, np.repeat(np.arange(self.world), np.diff(first))

    def link_loads(self, bytes_matrix: np.ndarray) -> np.ndarray:
        """Bytes each link carries when the off-diagonal `bytes_matrix[..., src, dst]` is sent:
        `[..., links]` (leading axes: several matrices at once)."""
        matrices = np.asarray(bytes_matrix, dtype=np.float64)
        lead = matrices.shape[:-2]
        flat = matrices.reshape(-1, self.world * self.world)
        weights = flat[:, self.pair_of_entry] * self.share_of_entry  # [K, entries]
        num_links = len(self.links.edges)
        if flat.shape[0] == 1:  # one matrix: no (matrix, link) index needed
            loads = np.bincount(self.link_of_entry, weights=weights[0], minlength=num_links)
            return loads.reshape(*lead, num_links)
        index = np.arange(flat.shape[0])[:, None] * num_links + self.link_of_entry
        loads = np.bincount(index.ravel(), weights=weights.ravel(),
                            minlength=flat.shape[0] * num_links)
        return loads.reshape(*lead, num_links)

    def pair_drain_s(self, link_drain_s: np.ndarray) -> np.ndarray:
        """Per pair, the longest drain time of any link on its routes: `[..., world * world]`.

        Entries are stored grouped by pair, so one `maximum.reduceat` over the segments does it.
        """
        drain = np.asarray(link_drain_s)
        worst = np.zeros(drain.shape[:-1] + (self.world * self.world,))
        if self.pair_of_entry.size:
            starts = self.pair_starts
            segment_max = np.maximum.reduceat(drain[..., self.link_of_entry], starts, axis=-1)
            worst[..., self.pair_of_entry[starts]] = segment_max
        return worst


class _PairRoutes(Mapping[tuple[int, int], list[Any]]):
    """`(src, dst) -> that pair's routes`, every off-diagonal pair in src-major order, each value
    made from `path_links` the first time it is read (as link-id arrays, or as edges)."""

    def __init__(self, world: int, first_path: np.ndarray, path_links: list[np.ndarray],
                 edges: list[Edge] | None) -> None:
        self._world = world
        self._first = first_path
        self._path_links = path_links
        self._edges = edges  # None: values are the link-id arrays themselves
        self._made: dict[tuple[int, int], list[Any]] = {}

    def __getitem__(self, pair: tuple[int, int]) -> list[Any]:
        if pair not in self._made:
            try:
                src, dst = pair
                listed = src != dst and 0 <= src < self._world and 0 <= dst < self._world
            except (TypeError, ValueError):
                listed = False
            if not listed:
                raise KeyError(pair)
            flat = src * self._world + dst
            routes = self._path_links[int(self._first[flat]): int(self._first[flat + 1])]
            edges = self._edges
            self._made[pair] = (list(routes) if edges is None
                                else [[edges[i] for i in ids.tolist()] for ids in routes])
        return self._made[pair]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((src, dst) for src in range(self._world) for dst in range(self._world)
                if src != dst)

    def __len__(self) -> int:
        return self._world * (self._world - 1)


@dataclass(frozen=True)
class _Routes:
    """Every route of every pair: pairs ascending (src-major), a pair's routes in their order."""

    pair: np.ndarray  # [routes] flat pair index src * world + dst of each route
    length: np.ndarray  # [routes] links on each route
    link_ids: np.ndarray  # [entries] the routes' link ids, one route after another


# Route tables of frozen graphs (shortest-path routing depends on the graph alone) and of other
# topologies (routes of their own), by world size; a table holds no reference to either.
_TABLES_OF_FROZEN: weakref.WeakKeyDictionary[Any, dict[int, RouteTable]] = (
    weakref.WeakKeyDictionary())
_TABLES_OF_TOPOLOGY: weakref.WeakKeyDictionary[Any, dict[int, RouteTable]] = (
    weakref.WeakKeyDictionary())


def build_route_table(topo: Routing, world: int) -> RouteTable:
    """Route every ordered pair of the first `world` GPUs once (per topology and world: the
    table of a built, frozen topology is kept while the topology lives, its arrays read-only).

    Where every GPU has P2P, a pair's routes are all its shortest (hop count) paths, sorted
    (the same all-equal-cost-shortest-paths rule as `Topology.routes`), found for all pairs at
    once; elsewhere they are the topology's own routes (`topo.routes`)."""
    graph = topo.graph
    gpus = [f"gpu{rank}" for rank in range(world)]
    shortest = all(graph.nodes[g].get("p2p", True) for g in gpus) and all(
        graph.nodes[g].get("kind") == "gpu" for g in gpus
    )
    cache = _cache_for(topo, shortest)
    if cache is not None and world in cache:
        return cache[world]
    links = Links.from_graph(graph)
    routes = (_shortest_routes(graph, links, gpus) if shortest
              else _topology_routes(topo, links, world))
    table = _table(world, links, routes)
    if cache is not None:
        cache[world] = table
    return table


def _cache_for(topo: Routing, shortest: bool) -> dict[int, RouteTable] | None:
    """The tables kept for this topology, or None where nothing may be kept (a graph that can
    still change, or a routing object that cannot be weakly referenced)."""
    if not getattr(topo.graph, "frozen", False):
        return None
    tables, key = (_TABLES_OF_FROZEN, topo.graph) if shortest else (_TABLES_OF_TOPOLOGY, topo)
    try:
        return tables.setdefault(key, {})
    except TypeError:
        return None


def _table(world: int, links: Links, routes: _Routes) -> RouteTable:
    """The flat arrays of `routes` (entries grouped by pair, pairs in src-major order)."""
    num_routes = routes.pair.size
    count = np.bincount(routes.pair, minlength=world * world).astype(np.int64)
    first_path = np.concatenate(([0], np.cumsum(count))).astype(np.int64)
    bounds = np.concatenate(([0], np.cumsum(routes.length))).astype(np.int64)
    link_ids = routes.link_ids
    path_links = [link_ids[bounds[i]: bounds[i + 1]] for i in range(num_routes)]
    path_of_entry = np.repeat(np.arange(num_routes, dtype=np.int64), routes.length)
    pair_of_entry = np.repeat(routes.pair, routes.length)
    share_of_entry = np.repeat(1.0 / np.maximum(count[routes.pair], 1), routes.length)
    path_latency = np.bincount(path_of_entry, weights=links.latency_s[link_ids],
                               minlength=num_routes)
    pair_latency = np.zeros(world * world)
    np.maximum.at(pair_latency, routes.pair, path_latency)
    if pair_of_entry.size:
        pair_starts = np.flatnonzero(np.r_[True, np.diff(pair_of_entry) != 0])
    else:
        pair_starts = np.zeros(0, dtype=np.int64)
    arrays = (pair_of_entry, link_ids, share_of_entry, pair_latency, count, first_path,
              path_latency, pair_starts)
    for array in arrays:
        array.flags.writeable = False  # a table may be shared by every run on its topology
    return RouteTable(
        world=world,
        links=links,
        pair_of_entry=pair_of_entry,
        link_of_entry=link_ids,
        share_of_entry=share_of_entry,
        pair_latency_s=pair_latency,
        paths=_PairRoutes(world, first_path, path_links, links.edges),
        path_ids=_PairRoutes(world, first_path, path_links, None),
        path_count=count,
        first_path=first_path,
        path_links=path_links,
        path_latency_s=path_latency,
        pair_starts=pair_starts,
    )


def _topology_routes(topo: Routing, links: Links, world: int) -> _Routes:
    """Every pair's routes as the topology gives them (`topo.routes`)."""
    pairs: list[int] = []
    lengths: list[int] = []
    edges: list[Edge] = []
    for src in range(world):
        for dst in range(world):
            if dst == src:
                continue
            for path in topo.routes(src, dst):
                pairs.append(src * world + dst)
                lengths.append(len(path))
                edges.extend(path)
    link_ids = np.fromiter((links.index[e] for e in edges), dtype=np.int64, count=len(edges))
    return _Routes(np.asarray(pairs, dtype=np.int64), np.asarray(lengths, dtype=np.int64),
                   link_ids)


# --- all shortest paths of all pairs at once ------------------------------------------------


class _Leaving:
    """The links leaving each node (link ids grouped by their source node)."""

    def __init__(self, edge_src: np.ndarray, num_nodes: int) -> None:
        self._grouped = np.argsort(edge_src, kind="stable")
        self._first = np.concatenate(([0], np.cumsum(np.bincount(edge_src,
                                                                 minlength=num_nodes))))

    def links(self, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(i, link)` for every link leaving node `ends[i]`, for every i."""
        degree = self._first[ends + 1] - self._first[ends]
        parent = np.repeat(np.arange(ends.size), degree)
        offset = np.arange(parent.size) - np.repeat(np.cumsum(degree) - degree, degree)
        return parent, self._grouped[self._first[ends][parent] + offset]


# Sources routed together: bounds the partial paths held at once (256 sources of 32 DGX H100
# servers on 8 rails hold ~1M).
_SOURCES_PER_BATCH = 256


@dataclass(frozen=True)
class _Fabric:
    """A graph as arrays: node i is `names[i]`, link l runs `link_src[l] -> link_dst[l]`."""

    names: list[Any]
    link_src: np.ndarray
    link_dst: np.ndarray
    leaving: _Leaving
    gpu_nodes: np.ndarray  # node of each routed GPU, by rank
    rank_of_node: np.ndarray  # the rank of each node that is a routed GPU, else -1
    name_rank: np.ndarray  # position of each node's name among the sorted names

    @classmethod
    def of(cls, graph: Any, links: Links, gpus: list[str]) -> _Fabric:
        names = list(graph.nodes)
        index = {node: i for i, node in enumerate(names)}
        link_src = np.array([index[u] for u, _ in links.edges], dtype=np.int64)
        link_dst = np.array([index[v] for _, v in links.edges], dtype=np.int64)
        gpu_nodes = np.array([index[g] for g in gpus], dtype=np.int64)
        rank_of_node = np.full(len(names), -1, dtype=np.int64)
        rank_of_node[gpu_nodes] = np.arange(len(gpus))
        name_rank = np.empty(len(names), dtype=np.int64)
        name_rank[sorted(range(len(names)), key=lambda i: names[i])] = np.arange(len(names))
        return cls(names, link_src, link_dst, _Leaving(link_src, len(names)), gpu_nodes,
                   rank_of_node, name_rank)


def _shortest_routes(graph: Any, links: Links, gpus: list[str]) -> _Routes:
    """All shortest (hop count) paths between every ordered pair of `gpus`, each pair's sorted
    as lists of edges sort (by the names of the nodes they pass), pairs in src-major order."""
    fabric = _Fabric.of(graph, links, gpus)
    world = len(gpus)
    return _joined([_routes_from(fabric, np.arange(first, min(first + _SOURCES_PER_BATCH, world)))
                    for first in range(0, world, _SOURCES_PER_BATCH)])


def _routes_from(fabric: _Fabric, sources: np.ndarray) -> _Routes:
    """The routes from GPUs `sources` (ranks) to every other GPU.

    One breadth-first search per source (all together, level by level) gives each node's hop
    distance from it; then the paths from each source grow level by level over links to nodes
    one hop further, a path to a node shared by every longer path through it (a path is its
    last link and the path it extends); the paths ending at a GPU are that pair's routes."""
    hops = _hops_from(fabric.gpu_nodes[sources], fabric)  # [sources, nodes]
    to_gpus = hops[:, fabric.gpu_nodes]
    if (to_gpus < 0).any():
        row, dst = np.argwhere(to_gpus < 0)[0]
        raise TopologyError(f"no directed path from {fabric.names[fabric.gpu_nodes[sources[row]]]}"
                            f" to {fabric.names[fabric.gpu_nodes[dst]]}")
    world = fabric.gpu_nodes.size
    # level d: every shortest path of d links from a source, as its source row, end node, last
    # link and the index of the path of d - 1 links it extends
    row, end = np.arange(sources.size, dtype=np.int64), fabric.gpu_nodes[sources]
    levels: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (end, link, parent) by d
    done: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (pair, nodes, links) by d
    for hop in range(1, int(to_gpus.max(initial=0)) + 1):
        parent, link = fabric.leaving.links(end)
        after = fabric.link_dst[link]
        further = hops[row[parent], after] == hop
        parent, link, end = parent[further], link[further], after[further]
        row = row[parent]
        levels.append((end, link, parent))
        arrived = np.flatnonzero(fabric.rank_of_node[end] >= 0)
        if arrived.size:
            pair = sources[row[arrived]] * world + fabric.rank_of_node[end[arrived]]
            done.append(_paths_back(levels, arrived, pair,
                                    fabric.gpu_nodes[sources[row[arrived]]]))
    return _sorted_routes(done, fabric.name_rank)


def _paths_back(levels: list[tuple[np.ndarray, np.ndarray, np.ndarray]], last: np.ndarray,
                pair: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pair, nodes, links) of the paths `last` of the deepest level, source first: their
    links and nodes read back through the levels they extend."""
    length = len(levels)
    nodes = np.empty((last.size, length + 1), dtype=np.int64)
    links = np.empty((last.size, length), dtype=np.int64)
    nodes[:, 0] = source
    index = last
    for hop in range(length, 0, -1):
        end, link, parent = levels[hop - 1]
        nodes[:, hop], links[:, hop - 1] = end[index], link[index]
        index = parent[index]
    return pair, nodes, links


def _hops_from(sources: np.ndarray, fabric: _Fabric) -> np.ndarray:
    """`[sources, nodes]` hop distance from each source node over the directed links, -1 where
    a node cannot be reached."""
    hops = np.full((sources.size, len(fabric.names)), -1, dtype=np.int32)
    row, node = np.arange(sources.size, dtype=np.int64), sources
    hops[row, node] = 0
    level = 0
    while row.size:
        level += 1
        parent, link = fabric.leaving.links(node)
        row, node = row[parent], fabric.link_dst[link]
        new = hops[row, node] < 0
        hops[row[new], node[new]] = level
        row, node = np.nonzero(hops == level)  # each newly reached (source, node) once
    return hops


def _sorted_routes(done: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   name_rank: np.ndarray) -> _Routes:
    """Routes of every pair in src-major order, each pair's sorted by the names of the nodes
    they pass (all of a pair's routes have one length, so this is the order of their edge
    lists); `done` holds the routes of each length, (pair, nodes, links) source first."""
    pairs, lengths, link_rows = [], [], []
    for pair, nodes, links in done:
        inner = name_rank[nodes[:, 1:-1]]  # the endpoints are the pair's own
        order = np.lexsort(tuple(inner[:, i] for i in range(inner.shape[1] - 1, -1, -1))
                           + (pair,))
        pairs.append(pair[order])
        lengths.append(np.full(pair.size, links.shape[1], dtype=np.int64))
        link_rows.append(links[order])
    if not pairs:
        empty = np.zeros(0, dtype=np.int64)
        return _Routes(empty, empty, empty)
    pair = np.concatenate(pairs)
    length = np.concatenate(lengths)
    flat = np.concatenate([rows.ravel() for rows in link_rows])
    order = np.argsort(pair, kind="stable")  # each pair's routes have one length: one group
    start = np.concatenate(([0], np.cumsum(length)))[:-1]
    take = (np.repeat(start[order], length[order])
            + np.arange(flat.size) - np.repeat(np.cumsum(length[order]) - length[order],
                                               length[order]))
    return _Routes(pair[order], length[order], flat[take])


def _joined(parts: list[_Routes]) -> _Routes:
    """Routes of consecutive sources, one after another."""
    if len(parts) <= 1:
        return parts[0] if parts else _sorted_routes([], np.zeros(0, dtype=np.int64))
    return _Routes(np.concatenate([p.pair for p in parts]),
                   np.concatenate([p.length for p in parts]),
                   np.concatenate([p.link_ids for p in parts]))
