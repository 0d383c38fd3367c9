"""RouteTable: every rank pair's equal-cost routes as link-index arrays, built once per topology.

Both fidelities use it: the DES starts flows on these routes, the analytic mode turns a whole
bytes matrix into per-link loads with one `bincount` (no Python loop over pairs per layer).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import networkx as nx
import numpy as np

from moesim.engine.network import Edge, Links, Routing

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
    paths: dict[tuple[int, int], list[list[Edge]]]
    path_ids: dict[tuple[int, int], list[np.ndarray]]  # the same routes as link-id arrays
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


def _routes_from(graph: nx.DiGraph, src: str, targets: list[str]) -> list[list[list[Edge]]]:
    """All shortest (hop count) routes from `src` to each target, sorted, from one BFS."""
    preds = nx.predecessor(graph, src)
    memo: dict[str, list[tuple[str, ...]]] = {src: [(src,)]}

    def node_paths(node: str) -> list[tuple[str, ...]]:
        if node not in memo:
            memo[node] = [head + (node,) for p in preds[node] for head in node_paths(p)]
        return memo[node]

    return [sorted(list(itertools.pairwise(path)) for path in node_paths(dst)) for dst in targets]


def _all_routes(topo: Routing, world: int) -> dict[tuple[int, int], list[list[Edge]]]:
    """Routes of every ordered pair: one BFS per source where every GPU has P2P (the same
    all-equal-cost-shortest-paths rule as `Topology.routes`), else the topology's own routes."""
    gpus = [f"gpu{rank}" for rank in range(world)]
    graph = topo.graph
    fast = all(graph.nodes[g].get("p2p", True) for g in gpus) and all(
        graph.nodes[g].get("kind") == "gpu" for g in gpus
    )
    paths: dict[tuple[int, int], list[list[Edge]]] = {}
    for src in range(world):
        others = [dst for dst in range(world) if dst != src]
        if fast:
            found = _routes_from(graph, gpus[src], [gpus[d] for d in others])
        else:
            found = [topo.routes(src, dst) for dst in others]
        paths.update({(src, dst): routes for dst, routes in zip(others, found, strict=True)})
    return paths


def build_route_table(topo: Routing, world: int) -> RouteTable:
    """Route every ordered pair of the first `world` GPUs once."""
    links = Links.from_graph(topo.graph)
    paths = _all_routes(topo, world)  # pairs in src-major order: entries stay grouped by pair
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
    link_ids = np.fromiter(
        (links.index[e] for e in edge_list), dtype=np.int64, count=len(edge_list)
    )
    path_latency = np.bincount(
        np.asarray(path_of_entry, dtype=np.int64),
        weights=links.latency_s[link_ids],
        minlength=len(path_pair),
    )
    latency = np.zeros(world * world)
    np.maximum.at(latency, np.asarray(path_pair, dtype=np.int64), path_latency)
    bounds = np.cumsum([0] + [len(path) for routes in paths.values() for path in routes])
    path_ids: dict[tuple[int, int], list[np.ndarray]] = {}
    index = 0
    for src_dst, routes in paths.items():
        path_ids[src_dst] = [
            link_ids[bounds[index + i] : bounds[index + i + 1]] for i in range(len(routes))
        ]
        index += len(routes)
    count = np.zeros(world * world, dtype=np.int64)
    for (src, dst), routes in paths.items():
        count[src * world + dst] = len(routes)
    path_links = [link_ids[bounds[i]: bounds[i + 1]] for i in range(len(path_pair))]
    return RouteTable(
        world=world,
        links=links,
        pair_of_entry=np.asarray(pair_list, dtype=np.int64),
        link_of_entry=link_ids,
        share_of_entry=np.asarray(share_list, dtype=np.float64),
        pair_latency_s=latency,
        paths=paths,
        path_ids=path_ids,
        path_count=count,
        first_path=np.concatenate(([0], np.cumsum(count))),
        path_links=path_links,
        path_latency_s=path_latency,
        pair_starts=np.flatnonzero(np.r_[True, np.diff(np.asarray(pair_list, dtype=np.int64))
                                         != 0]) if pair_list else np.zeros(0, dtype=np.int64),
    )
