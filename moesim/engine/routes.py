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

    def link_loads(self, bytes_matrix: np.ndarray) -> np.ndarray:
        """Bytes each link carries when the off-diagonal `bytes_matrix[src, dst]` is sent."""
        flat = np.asarray(bytes_matrix, dtype=np.float64).reshape(-1)
        weights = flat[self.pair_of_entry] * self.share_of_entry
        return np.bincount(self.link_of_entry, weights=weights, minlength=len(self.links.edges))

    def pair_drain_s(self, link_drain_s: np.ndarray) -> np.ndarray:
        """Per pair, the longest drain time of any link on its routes: `[world * world]`.

        Entries are stored grouped by pair, so one `maximum.reduceat` over the segments does it.
        """
        worst = np.zeros(self.world * self.world)
        if self.pair_of_entry.size:
            starts = np.flatnonzero(np.r_[True, np.diff(self.pair_of_entry) != 0])
            segment_max = np.maximum.reduceat(link_drain_s[self.link_of_entry], starts)
            worst[self.pair_of_entry[starts]] = segment_max
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
    pairs, link_ids, shares = [], [], []
    latency = np.zeros(world * world)
    paths = _all_routes(topo, world)  # pairs in src-major order: entries stay grouped by pair
    for src in range(world):
        for dst in range(world):
            if src == dst:
                continue
            routes = paths[(src, dst)]
            pair = src * world + dst
            for path in routes:
                ids = links.ids(path)
                pairs.append(np.full(ids.size, pair))
                link_ids.append(ids)
                shares.append(np.full(ids.size, 1.0 / len(routes)))
                latency[pair] = max(latency[pair], float(links.latency_s[ids].sum()))
    empty = np.zeros(0, dtype=np.int64)
    return RouteTable(
        world=world,
        links=links,
        pair_of_entry=np.concatenate(pairs) if pairs else empty,
        link_of_entry=np.concatenate(link_ids) if link_ids else empty,
        share_of_entry=np.concatenate(shares) if shares else np.zeros(0),
        pair_latency_s=latency,
        paths=paths,
    )
