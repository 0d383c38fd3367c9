"""A small directed graph: the part of networkx's `DiGraph` moesim uses, without networkx.

Nodes and edges keep insertion order and carry attribute dicts, as in networkx: `graph.nodes`
and `graph.edges` are views one can iterate, index (`graph.nodes[n]`, `graph.edges[u, v]`),
size and test (`in`), and call with `data=True` or `data="name"`; edges come node by node,
each node's in the order its out-links were added. `freeze()` makes every later structural
change raise `FrozenGraphError` (attribute dicts stay as networkx leaves them: editable).

`all_shortest_paths`, `shortest_path_lengths`, `descendants` and `ancestors` are the
breadth-first searches topology building needs, in networkx's order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["DiGraph", "FrozenGraphError", "NoPathError", "all_shortest_paths", "ancestors",
           "descendants", "shortest_path_lengths"]

Node = Any  # any hashable; moesim's are device names


class FrozenGraphError(RuntimeError):
    """A frozen graph was asked to change."""


class NoPathError(LookupError):
    """No directed path joins the two nodes."""


class _NodeView:
    def __init__(self, graph: DiGraph) -> None:
        self._nodes = graph._node

    def __call__(self, data: bool | str = False, default: Any = None) -> Any:
        if data is False:
            return self
        if data is True:
            return _DataView(self._nodes, lambda d: d)
        return _DataView(self._nodes, lambda d: d.get(data, default))

    def __getitem__(self, node: Node) -> dict[str, Any]:
        return self._nodes[node]

    def get(self, node: Node, default: Any = None) -> Any:
        return self._nodes.get(node, default)

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes


class _DataView:
    """`(node, data)` pairs; `view[node]` is that node's data."""

    def __init__(self, nodes: dict[Node, dict[str, Any]], pick: Any) -> None:
        self._nodes, self._pick = nodes, pick

    def __getitem__(self, node: Node) -> Any:
        return self._pick(self._nodes[node])

    def __iter__(self) -> Iterator[tuple[Node, Any]]:
        return ((n, self._pick(d)) for n, d in self._nodes.items())

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes


class _EdgeView:
    def __init__(self, graph: DiGraph) -> None:
        self._succ = graph._succ

    def __call__(self, data: bool | str = False, default: Any = None) -> Iterator[tuple[Any, ...]]:
        if data is False:
            return iter(self)
        if data is True:
            return ((u, v, d) for u, out in self._succ.items() for v, d in out.items())
        return ((u, v, d.get(data, default)) for u, out in self._succ.items()
                for v, d in out.items())

    def __getitem__(self, edge: tuple[Node, Node]) -> dict[str, Any]:
        u, v = edge
        return self._succ[u][v]

    def __iter__(self) -> Iterator[tuple[Node, Node]]:
        return ((u, v) for u, out in self._succ.items() for v in out)

    def __len__(self) -> int:
        return sum(len(out) for out in self._succ.values())

    def __contains__(self, edge: object) -> bool:
        if not isinstance(edge, tuple) or len(edge) != 2:
            return False
        out = self._succ.get(edge[0])
        return out is not None and edge[1] in out


class DiGraph:
    """Directed graph with node and edge attribute dicts (a subset of networkx's DiGraph)."""

    def __init__(self, **graph_attrs: Any) -> None:
        self.graph: dict[str, Any] = dict(graph_attrs)
        self._node: dict[Node, dict[str, Any]] = {}
        self._succ: dict[Node, dict[Node, dict[str, Any]]] = {}
        self._pred: dict[Node, dict[Node, dict[str, Any]]] = {}
        self.frozen = False
        self.nodes = _NodeView(self)
        self.edges = _EdgeView(self)

    def __repr__(self) -> str:
        return (f"DiGraph({self.graph.get('name', '')!r}, {len(self._node)} nodes, "
                f"{len(self.edges)} edges)")

    def __iter__(self) -> Iterator[Node]:
        return iter(self._node)

    def __len__(self) -> int:
        return len(self._node)

    def __contains__(self, node: object) -> bool:
        try:
            return node in self._node
        except TypeError:
            return False

    def _check_thawed(self) -> None:
        if self.frozen:
            raise FrozenGraphError("Frozen graph can't be modified")

    def add_node(self, node: Node, **attrs: Any) -> None:
        """Add `node` (if new) and merge `attrs` into its attributes."""
        self._check_thawed()
        if node not in self._node:
            self._node[node], self._succ[node], self._pred[node] = {}, {}, {}
        self._node[node].update(attrs)

    def add_edge(self, u: Node, v: Node, **attrs: Any) -> None:
        """Add the link u -> v (and either node if new); merge `attrs` into its attributes."""
        self._check_thawed()
        for node in (u, v):
            if node not in self._node:
                self._node[node], self._succ[node], self._pred[node] = {}, {}, {}
        data = self._succ[u].get(v)
        if data is None:
            data = self._succ[u][v] = self._pred[v][u] = {}
        data.update(attrs)

    def has_edge(self, u: Node, v: Node) -> bool:
        return u in self._succ and v in self._succ[u]

    def successors(self, node: Node) -> Iterator[Node]:
        return iter(self._succ[node])

    def predecessors(self, node: Node) -> Iterator[Node]:
        return iter(self._pred[node])

    def number_of_nodes(self) -> int:
        return len(self._node)

    def number_of_edges(self) -> int:
        return len(self.edges)

    def copy(self) -> DiGraph:
        """An unfrozen copy: new graph, node and edge attribute dicts (values shared)."""
        new = DiGraph(**self.graph)
        for node, attrs in self._node.items():
            new.add_node(node, **attrs)
        for u, out in self._succ.items():
            for v, attrs in out.items():
                new.add_edge(u, v, **attrs)
        return new

    def freeze(self) -> DiGraph:
        """Refuse structural changes from now on; returns the graph itself."""
        self.frozen = True
        return self


# --- breadth-first searches -------------------------------------------------------------


def _predecessors(graph: DiGraph, source: Node) -> dict[Node, list[Node]]:
    """Each node reachable from `source`: its neighbours one hop nearer the source, in the
    order the search met them (networkx's `predecessor`)."""
    succ = graph._succ
    seen = {source: 0}
    pred: dict[Node, list[Node]] = {source: []}
    level, frontier = 0, [source]
    while frontier:
        level += 1
        following: list[Node] = []
        for v in frontier:
            for w in succ[v]:
                if w not in seen:
                    pred[w] = [v]
                    seen[w] = level
                    following.append(w)
                elif seen[w] == level:
                    pred[w].append(v)
        frontier = following
    return pred


def all_shortest_paths(graph: DiGraph, source: Node, target: Node) -> list[list[Node]]:
    """Every fewest-hop directed path from `source` to `target`, as node lists, in the order
    `networkx.all_shortest_paths` gives them (depth first back from the target over each
    node's predecessors in search order); NoPathError if the target is unreachable."""
    pred = _predecessors(graph, source)
    if target not in pred:
        raise NoPathError(f"no directed path from {source} to {target}")
    paths: list[list[Node]] = []
    stack: list[list[Any]] = [[target, 0]]
    while stack:
        node, i = stack[-1]
        if node == source:
            paths.append([n for n, _ in reversed(stack)])
        if i < len(pred[node]):
            stack[-1][1] = i + 1
            stack.append([pred[node][i], 0])
        else:
            stack.pop()
    return paths


def shortest_path_lengths(graph: DiGraph, source: Node) -> dict[Node, int]:
    """Hop count from `source` to every node it reaches (itself 0), in search order."""
    succ = graph._succ
    seen = {source: 0}
    frontier, level = [source], 0
    while frontier:
        level += 1
        following = []
        for v in frontier:
            for w in succ[v]:
                if w not in seen:
                    seen[w] = level
                    following.append(w)
        frontier = following
    return seen


def _reach(links: dict[Node, dict[Node, Any]], source: Node) -> set[Node]:
    seen, stack = {source}, [source]
    while stack:
        for w in links[stack.pop()]:
            if w not in seen:
                seen.add(w)
                stack.append(w)
    seen.discard(source)
    return seen


def descendants(graph: DiGraph, source: Node) -> set[Node]:
    """Nodes reachable from `source` (not itself)."""
    return _reach(graph._succ, source)


def ancestors(graph: DiGraph, source: Node) -> set[Node]:
    """Nodes that reach `source` (not itself)."""
    return _reach(graph._pred, source)
