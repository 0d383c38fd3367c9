"""`moesim.inputs.graph` against networkx, which built the topologies before: the same graph
(nodes, links, attributes, neighbours, in the same order), the same shortest paths in the same
order, the same `moesim run` reports; and the package never imports networkx."""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from moesim.cli import main
from moesim.inputs import graph as digraph
from moesim.inputs.config import load_model_file
from moesim.inputs.topology import (
    Topology,
    build_topology,
    list_presets,
    load_topology,
    resolve_topology_path,
)
from moesim.inputs.topology_spec import TopologySpec

ROOT = Path(__file__).resolve().parents[1]


class _NxDiGraph(nx.DiGraph):  # type: ignore[type-arg]
    """networkx's DiGraph with the one method moesim's adds: freeze."""

    def freeze(self) -> _NxDiGraph:
        return nx.freeze(self)  # type: ignore[no-any-return]


def _use_networkx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Topologies built as before: networkx's graph and searches."""
    monkeypatch.setattr(digraph, "DiGraph", _NxDiGraph)
    monkeypatch.setattr(digraph, "NoPathError", nx.NetworkXNoPath)
    monkeypatch.setattr(digraph, "all_shortest_paths",
                        lambda g, s, t: [list(p) for p in nx.all_shortest_paths(g, s, t)])
    monkeypatch.setattr(digraph, "shortest_path_lengths", nx.single_source_shortest_path_length)
    monkeypatch.setattr(digraph, "descendants", nx.descendants)
    monkeypatch.setattr(digraph, "ancestors", nx.ancestors)


def _multinode(nodes: int) -> Topology:
    """benchmarks/bench_step.py's `multinode`: h100-2node-ib widened to `nodes` servers."""
    spec = load_model_file(TopologySpec, resolve_topology_path("h100-2node-ib"), "topology")
    return build_topology(spec.model_copy(update={"nodes": nodes}), source=f"{nodes}x DGX H100")


CASES = [*list_presets(), "multinode2", "multinode4"]


def _build(case: str) -> Topology:
    return _multinode(int(case[-1])) if case.startswith("multinode") else load_topology(case)


def _as_networkx(graph: digraph.DiGraph) -> nx.DiGraph:  # type: ignore[type-arg]
    ref = nx.DiGraph(**graph.graph)
    ref.add_nodes_from(graph.nodes(data=True))
    ref.add_edges_from(graph.edges(data=True))
    return ref


@pytest.mark.parametrize("case", CASES)
def test_same_graph_and_routes_as_networkx(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    topo = _build(case)
    with monkeypatch.context() as patch:
        _use_networkx(patch)
        ref = _build(case)
    graph, before = topo.graph, ref.graph
    assert isinstance(graph, digraph.DiGraph) and isinstance(before, nx.DiGraph)
    assert graph.frozen and nx.is_frozen(before)
    assert graph.graph == before.graph
    assert list(graph.nodes(data=True)) == list(before.nodes(data=True))
    assert list(graph.edges(data=True)) == list(before.edges(data=True))
    assert list(graph.edges(data="medium")) == list(before.edges(data="medium"))
    assert list(graph.nodes) == list(before) and list(graph) == list(before)
    assert list(graph.edges) == list(before.edges)
    assert len(graph.nodes) == len(before.nodes) == graph.number_of_nodes()
    assert len(graph.edges) == before.number_of_edges() == graph.number_of_edges()
    kinds, kinds_before = graph.nodes(data="kind"), before.nodes(data="kind")
    for node in before:
        assert node in graph and node in graph.nodes
        assert kinds[node] == kinds_before[node]
        assert list(graph.successors(node)) == list(before.successors(node))
        assert list(graph.predecessors(node)) == list(before.predecessors(node))
        assert digraph.shortest_path_lengths(graph, node) == (
            nx.single_source_shortest_path_length(before, node))
        assert digraph.descendants(graph, node) == nx.descendants(before, node)
        assert digraph.ancestors(graph, node) == nx.ancestors(before, node)
    for edge in before.edges:
        assert edge in graph.edges and graph.has_edge(*edge)
        assert graph.edges[edge] == before.edges[edge]
    assert ("gpu0", "no-such-node") not in graph.edges and not graph.has_edge("gpu0", "x")
    gpus, hostmem = topo.gpu_nodes, [n for n, k in before.nodes(data="kind") if k == "hostmem"]
    ends = [(a, b) for a, b in itertools.permutations(gpus, 2)]
    ends += [(g, h) for g in gpus for h in hostmem] + [(h, g) for g in gpus for h in hostmem]
    for src, dst in ends:
        assert digraph.all_shortest_paths(graph, src, dst) == [
            list(p) for p in nx.all_shortest_paths(before, src, dst)], (src, dst)
    for src, dst in itertools.product(range(topo.num_gpus), repeat=2):
        assert topo.routes(src, dst) == ref.routes(src, dst)
    if hostmem:
        for rank in range(topo.num_gpus):
            assert topo.staging_node(rank) == ref.staging_node(rank)


def _graph_of(links: list[tuple[str, str]]) -> tuple[digraph.DiGraph, nx.DiGraph]:  # type: ignore[type-arg]
    ours, ref = digraph.DiGraph(name="t"), nx.DiGraph(name="t")
    for u, v in links:
        ours.add_edge(u, v, w=len(u))
        ref.add_edge(u, v, w=len(u))
    return ours, ref


def test_paths_order_on_a_tangle() -> None:
    """Many equal paths, links added out of name order: networkx's order, not sorted."""
    links = [("s", "b"), ("s", "a"), ("s", "c"), ("a", "y"), ("b", "x"), ("c", "x"), ("a", "x"),
             ("b", "y"), ("x", "t"), ("y", "t"), ("t", "s"), ("x", "y"), ("c", "t")]
    ours, ref = _graph_of(links)
    for src, dst in itertools.permutations(list(ref), 2):
        assert digraph.all_shortest_paths(ours, src, dst) == [
            list(p) for p in nx.all_shortest_paths(ref, src, dst)]
    assert digraph.all_shortest_paths(ours, "s", "s") == [["s"]]
    ours.add_node("lone")
    with pytest.raises(digraph.NoPathError):
        digraph.all_shortest_paths(ours, "s", "lone")


def test_graph_api() -> None:
    graph = digraph.DiGraph(name="g")
    graph.add_node("a", kind="gpu", rank=0)
    graph.add_node("a", p2p=False)  # merges
    graph.add_edge("a", "b", latency_s=1.0)
    graph.add_edge("a", "b", medium="pcie")  # merges
    graph.add_edge("c", "a")
    assert list(graph.nodes) == ["a", "b", "c"]
    assert graph.nodes["a"] == {"kind": "gpu", "rank": 0, "p2p": False}
    assert graph.nodes.get("zz") is None and graph.nodes.get("b") == {}
    assert list(graph.nodes(data="kind")) == [("a", "gpu"), ("b", None), ("c", None)]
    assert graph.nodes(data="kind", default="?")["b"] == "?"
    assert graph.edges["a", "b"] == {"latency_s": 1.0, "medium": "pcie"}
    assert list(graph.edges(data="medium")) == [("a", "b", "pcie"), ("c", "a", None)]
    assert list(graph.predecessors("a")) == ["c"] and list(graph.successors("a")) == ["b"]
    assert ("a", "b") in graph.edges and ("b", "a") not in graph.edges and "a" in graph
    copy = graph.copy()
    copy.edges["a", "b"]["latency_s"] = 2.0
    copy.add_edge("b", "c")
    assert graph.edges["a", "b"]["latency_s"] == 1.0 and not graph.has_edge("b", "c")
    assert copy.graph == {"name": "g"} and copy.graph is not graph.graph
    assert graph.freeze() is graph and graph.frozen and not copy.frozen
    with pytest.raises(digraph.FrozenGraphError):
        graph.add_edge("b", "c")
    with pytest.raises(digraph.FrozenGraphError):
        graph.add_node("d")
    assert not graph.copy().frozen


SCENARIO = "scenarios/mixtral-8x7b-ep8.yaml"
RUNS = [
    ["scenarios/mixtral-8x7b-tp2xep4.yaml"],
    ["scenarios/mixtral-8x7b-ep4xdp2.yaml", "--fidelity", "analytic"],
    [SCENARIO, "--topology", "h100-2node-ib", "--placement", "EP8xDP2"],
    [SCENARIO, "--topology", "rtx4090-8x-pcie"],
    [SCENARIO, "--topology", "l40s-8x-pcie", "--fidelity", "analytic"],
]


@pytest.mark.parametrize("argv", RUNS, ids=lambda argv: "-".join(a.rsplit("/", 1)[-1]
                                                                   for a in argv))
def test_run_reports_as_with_networkx(argv: list[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    ours, before = tmp_path / "ours.json", tmp_path / "before.json"
    assert main(["run", *argv, "--quiet", "--json", str(ours)]) == 0
    with monkeypatch.context() as patch:
        _use_networkx(patch)
        assert main(["run", *argv, "--quiet", "--json", str(before)]) == 0
    assert ours.read_bytes() == before.read_bytes()
    assert json.loads(ours.read_text())  # a report, not an empty file


def test_package_never_imports_networkx() -> None:
    for folder in ("moesim", "validate"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n.split(".")[0] == "networkx" for n in names), path


def test_run_loads_no_networkx() -> None:
    code = ("import sys\nfrom moesim.cli import main\n"
            f"main(['run', {SCENARIO!r}, '--fidelity', 'analytic', '--layers', '2', '--quiet'])\n"
            "print('networkx' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert done.stdout.splitlines()[-1] == "False"
