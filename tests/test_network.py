"""Flow-level network: latency + size/bandwidth, max-min fair sharing, re-rating on start/end."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import simpy

from moesim.engine.network import FlowNetwork, max_min_fair_rates
from moesim.errors import TopologyError
from moesim.inputs.topology import Topology

S = 1e9  # bytes
B = 100e9  # bytes/s, every fixture link
LAT = 1e-6  # s, every fixture link


def _graph(links: dict[tuple[str, str], float], latency_s: float = 0.0) -> nx.DiGraph:
    graph = nx.DiGraph()
    for (src, dst), bandwidth in links.items():
        graph.add_edge(src, dst, bandwidth_bytes_per_s=bandwidth, latency_s=latency_s)
    return graph


def _finish_times(graph: nx.DiGraph, flows: list[tuple[list, float, float]]) -> list[float]:
    """Run flows given as (path, size_bytes, start_s); return each one's finish time."""
    env = simpy.Environment()
    net = FlowNetwork(env, graph)
    done: list[simpy.Event | None] = [None] * len(flows)

    def start(k: int, path: list, size: float, at: float):  # type: ignore[no-untyped-def]
        yield env.timeout(at)
        done[k] = net.transfer(path, size)

    for k, (path, size, at) in enumerate(flows):
        env.process(start(k, path, size, at))
    env.run()
    return [float(ev.value) for ev in done if ev is not None]


def test_single_transfer_takes_latency_plus_size_over_bandwidth(two_gpu_link):
    """One flow alone on a 2-GPU link finishes at latency + S / B."""
    env = simpy.Environment()
    net = FlowNetwork(env, two_gpu_link.graph)
    (path,) = two_gpu_link.routes(0, 1)
    done = net.transfer(path, S)
    env.run()
    assert done.value == pytest.approx(LAT + S / B, rel=1e-12)
    assert net.link_bytes == {("gpu0", "gpu1"): S}


def test_two_flows_on_one_link_each_get_half(two_gpu_link):
    """Two equal flows started together on one link both finish at latency + 2S / B."""
    (path,) = two_gpu_link.routes(0, 1)
    times = _finish_times(two_gpu_link.graph, [(path, S, 0.0), (path, S, 0.0)])
    assert times == pytest.approx([LAT + 2 * S / B] * 2, rel=1e-12)


def test_opposite_directions_do_not_share(two_gpu_link):
    """Links are directed: gpu0->gpu1 and gpu1->gpu0 each get the full bandwidth."""
    (fwd,) = two_gpu_link.routes(0, 1)
    (back,) = two_gpu_link.routes(1, 0)
    times = _finish_times(two_gpu_link.graph, [(fwd, S, 0.0), (back, S, 0.0)])
    assert times == pytest.approx([LAT + S / B] * 2, rel=1e-12)


def test_max_min_rates_three_flows_two_links():
    """Links L1=10, L2=30; A crosses both, B only L1, C only L2: L1 binds A=B=5, C gets 30-5=25."""
    flow_of_pair = np.array([0, 0, 1, 2])  # A on L1 and L2, B on L1, C on L2
    link_of_pair = np.array([0, 1, 0, 1])
    rates = max_min_fair_rates(flow_of_pair, link_of_pair, 3, np.array([10.0, 30.0]))
    np.testing.assert_allclose(rates, [5.0, 5.0, 25.0], rtol=1e-12)


def test_max_min_finish_times_three_flows_two_links():
    """A=100 B over L1(10)+L2(30), B=50 on L1, C=100 on L2.

    Rates 5/5/25: C ends at 4 (A and B have 80 and 30 left); L1 still binds, so B ends at
    4 + 30/5 = 10 (A has 50 left); A alone gets L1's 10 and ends at 10 + 50/10 = 15.
    """
    graph = _graph({("x", "y"): 10.0, ("y", "z"): 30.0, ("w", "x"): 1e9, ("q", "y"): 1e9})
    flows = [
        ([("x", "y"), ("y", "z")], 100.0, 0.0),
        ([("x", "y")], 50.0, 0.0),
        ([("y", "z")], 100.0, 0.0),
    ]
    env = simpy.Environment()
    net = FlowNetwork(env, graph)
    events = [net.transfer(path, size) for path, size, _ in flows]
    env.run()
    assert [ev.value for ev in events] == pytest.approx([15.0, 10.0, 4.0], rel=1e-12)
    assert net.link_bytes == pytest.approx({("x", "y"): 150.0, ("y", "z"): 200.0})


def test_finished_flow_frees_bandwidth():
    """Link of 10 B/s, flows of 10 and 30 B: both at 5 until t=2, then the big one at 10, t=4."""
    graph = _graph({("a", "b"): 10.0})
    times = _finish_times(graph, [([("a", "b")], 10.0, 0.0), ([("a", "b")], 30.0, 0.0)])
    assert times == pytest.approx([2.0, 4.0], rel=1e-12)


def test_late_flow_slows_running_flow():
    """Link of 10 B/s: 100 B at t=0, 25 B at t=5; 5 each from then: late ends at 10, first 12.5."""
    graph = _graph({("a", "b"): 10.0})
    times = _finish_times(graph, [([("a", "b")], 100.0, 0.0), ([("a", "b")], 25.0, 5.0)])
    assert times == pytest.approx([12.5, 10.0], rel=1e-12)


def test_multipath_splits_bytes_evenly(four_gpu_ring):
    """gpu0->gpu2 on a 4-ring has two 2-hop routes: S/2 on each, done at 2*lat + (S/2)/B."""
    env = simpy.Environment()
    net = FlowNetwork(env, four_gpu_ring.graph)
    paths = four_gpu_ring.routes(0, 2)
    assert len(paths) == 2
    done = net.transfer_multipath(paths, S)
    env.run()
    assert env.now == pytest.approx(2 * LAT + S / 2 / B, rel=1e-12)
    assert done.triggered
    assert sorted(net.link_bytes.values()) == pytest.approx([S / 2] * 4)


def test_zero_bytes_and_empty_path_cost_only_latency(two_gpu_link):
    """A 0-byte flow ends after its path latency; an empty path (local copy) ends at once."""
    env = simpy.Environment()
    net = FlowNetwork(env, two_gpu_link.graph)
    (path,) = two_gpu_link.routes(0, 1)
    zero = net.transfer(path, 0.0)
    local = net.transfer([], S)
    env.run()
    assert zero.value == pytest.approx(LAT) and local.value == 0.0
    assert net.link_bytes == {}


@pytest.mark.parametrize("seed", range(5))
def test_water_filling_is_max_min_fair(seed):
    """Random flows: no link over capacity, and every flow has a saturated link where it is fastest.

    That pair of conditions characterises the max-min fair allocation (Bertsekas & Gallager,
    Data Networks, sec. 6.5.2), so it checks the vectorised filling without pinned numbers.
    """
    rng = np.random.default_rng(seed)
    num_links, num_flows = 12, 60
    capacity = rng.uniform(1.0, 10.0, num_links)
    per_flow = [
        rng.choice(num_links, size=rng.integers(1, 4), replace=False) for _ in range(num_flows)
    ]
    flow_of_pair = np.repeat(np.arange(num_flows), [p.size for p in per_flow])
    link_of_pair = np.concatenate(per_flow)
    rates = max_min_fair_rates(flow_of_pair, link_of_pair, num_flows, capacity)
    load = np.bincount(link_of_pair, weights=rates[flow_of_pair], minlength=num_links)
    assert np.all(load <= capacity * (1 + 1e-9))
    saturated = load >= capacity * (1 - 1e-9)
    link_max_rate = np.zeros(num_links)
    np.maximum.at(link_max_rate, link_of_pair, rates[flow_of_pair])
    for flow, links in enumerate(per_flow):
        is_bottleneck = saturated[links] & (rates[flow] >= link_max_rate[links] * (1 - 1e-9))
        assert is_bottleneck.any(), f"flow {flow} has no bottleneck link"


def test_thousand_flow_all_to_all_matches_closed_form():
    """40 GPUs on a switch, 1,560 equal flows, 39 per port: all end at 2*lat + 39*size/B."""
    n, size = 40, 1e6
    graph = nx.DiGraph()
    for i in range(n):
        graph.add_edge(f"g{i}", "sw", bandwidth_bytes_per_s=B, latency_s=LAT)
        graph.add_edge("sw", f"g{i}", bandwidth_bytes_per_s=B, latency_s=LAT)
    env = simpy.Environment()
    net = FlowNetwork(env, graph)
    events = [
        net.transfer([(f"g{i}", "sw"), ("sw", f"g{j}")], size)
        for i in range(n)
        for j in range(n)
        if i != j
    ]
    env.run()
    assert len(events) == 1560
    np.testing.assert_allclose([ev.value for ev in events], 2 * LAT + (n - 1) * size / B, rtol=1e-9)
    assert net.num_active_flows == 0


@pytest.mark.parametrize("quantum_s,expected", [(0.0, [1.0, 1.05]), (0.1, [1.0, 1.0])])
def test_time_quantum_merges_close_completions(quantum_s, expected):
    """Two 10 B/s links, flows of 10 and 10.5 B: exact ends 1.0 and 1.05; a 0.1 s quantum ends both
    at 1.0 with one rate update fewer."""
    graph = _graph({("a", "b"): 10.0, ("c", "d"): 10.0})
    env = simpy.Environment()
    net = FlowNetwork(env, graph, time_quantum_s=quantum_s)
    events = [net.transfer([("a", "b")], 10.0), net.transfer([("c", "d")], 10.5)]
    env.run()
    assert [ev.value for ev in events] == pytest.approx(expected, rel=1e-12)
    assert net.num_rate_updates == len(set(expected)) + 1  # one admit, one per distinct end
    assert net.link_bytes == pytest.approx({("a", "b"): 10.0, ("c", "d"): 10.5})


def test_link_without_bandwidth_is_a_topology_error():
    """A graph edge missing bandwidth_bytes_per_s raises TopologyError naming the attribute."""
    graph = nx.DiGraph()
    graph.add_edge("a", "b", latency_s=0.0)
    with pytest.raises(TopologyError, match="bandwidth_bytes_per_s"):
        FlowNetwork(simpy.Environment(), graph)


def test_path_over_missing_link_is_a_topology_error(two_gpu_link):
    """A path naming a link that is not in the graph raises TopologyError."""
    net = FlowNetwork(simpy.Environment(), two_gpu_link.graph)
    with pytest.raises(TopologyError, match="not in the graph"):
        net.transfer([("gpu0", "gpu7")], S)


def test_start_flows_matches_transfer_multipath(four_gpu_ring: Topology) -> None:
    """Starting flows in one batch (one timeout per latency) gives the same finish times as
    starting each with transfer_multipath, multipath split included (gpu0 -> gpu2 has 2 routes)."""
    pairs = [(0, 2, 3e6), (1, 2, 1e6), (3, 2, 2e6), (0, 1, 5e5)]

    def finish_times(batched: bool) -> list[float]:
        env = simpy.Environment()
        net = FlowNetwork(env, four_gpu_ring.graph)
        if batched:
            done = [env.event() for _ in pairs]
            flows = [
                ([net.links.ids(p) for p in four_gpu_ring.routes(s, d)], size)
                for s, d, size in pairs
            ]
            net.start_flows(flows, done)
        else:
            done = [
                net.transfer_multipath(four_gpu_ring.routes(s, d), size) for s, d, size in pairs
            ]
        ends: list[float] = []
        for ev in done:
            ev.callbacks.append(lambda _e: ends.append(env.now))
        env.run()
        return sorted(ends)

    assert finish_times(True) == pytest.approx(finish_times(False), rel=1e-12)
