"""DES speed work: the table water-filling against the previous solver, and the centred event
window's error bound against the exact mode (module doc of moesim.engine.network)."""

from __future__ import annotations

from typing import cast

import networkx as nx
import numpy as np
import pytest
import simpy

from moesim.engine.backends import execute
from moesim.engine.backends.des import DES_TIME_WINDOW_S, DesBackend
from moesim.engine.network import FlowNetwork, max_min_fair_rates, water_fill
from moesim.engine.plan import PlanBuilder, StepPlan
from moesim.inputs.topology import Topology


def _reference_rates(flows: np.ndarray, links: np.ndarray, num_flows: int,
                     capacity: np.ndarray) -> np.ndarray:
    """The solver before the table layout (ufunc.at scatters), kept as the reference."""
    rates = np.full(num_flows, np.inf)
    cap_left = np.asarray(capacity, dtype=float).copy()
    num_links = cap_left.size
    while flows.size:
        count = np.bincount(links, minlength=num_links)
        share = cap_left / np.maximum(count, 1)
        flow_min = np.full(num_flows, np.inf)
        np.minimum.at(flow_min, flows, share[links])
        link_min = np.full(num_links, np.inf)
        np.minimum.at(link_min, links, flow_min[flows])
        is_bottleneck = share <= link_min * (1.0 + 1e-12)
        fixed = np.zeros(num_flows, dtype=bool)
        fixed[flows[is_bottleneck[links]]] = True
        rates[fixed] = flow_min[fixed]
        leaving = fixed[flows]
        cap_left -= np.bincount(links[leaving], weights=rates[flows[leaving]], minlength=num_links)
        np.maximum(cap_left, 0.0, out=cap_left)
        flows, links = flows[~leaving], links[~leaving]
    return rates


def _progressive_filling(per_flow: list[np.ndarray], capacity: np.ndarray) -> np.ndarray:
    """Textbook progressive filling, one bottleneck link at a time (plain Python)."""
    rates = np.full(len(per_flow), np.inf)
    cap_left = capacity.astype(float).copy()
    active = {f for f, links in enumerate(per_flow) if links.size}
    while active:
        users: dict[int, list[int]] = {}
        for f in active:
            for link in per_flow[f].tolist():
                users.setdefault(link, []).append(f)
        link, flows = min(users.items(), key=lambda item: cap_left[item[0]] / len(item[1]))
        share = cap_left[link] / len(flows)
        for f in flows:
            rates[f] = share
            cap_left[per_flow[f]] -= share
            active.discard(f)
        np.maximum(cap_left, 0.0, out=cap_left)
    return rates


@pytest.mark.parametrize("seed", range(20))
def test_table_solver_matches_previous_solver_and_progressive_filling(seed: int) -> None:
    """Random flows (some on no link, pairs shuffled): the same rates as the previous solver and
    as one-link-at-a-time progressive filling."""
    rng = np.random.default_rng(seed)
    num_links, num_flows = int(rng.integers(2, 40)), int(rng.integers(1, 300))
    capacity = rng.choice([1.0, 2.5, 10.0], num_links) * rng.uniform(0.5, 2.0, num_links)
    per_flow = [rng.choice(num_links, size=rng.integers(0, min(6, num_links) + 1), replace=False)
                for _ in range(num_flows)]
    flows = np.repeat(np.arange(num_flows), [p.size for p in per_flow])
    links = np.concatenate(per_flow).astype(np.int64)
    shuffle = rng.permutation(flows.size)
    rates = max_min_fair_rates(flows[shuffle], links[shuffle], num_flows, capacity)
    np.testing.assert_allclose(rates, _reference_rates(flows, links, num_flows, capacity),
                               rtol=1e-9)
    np.testing.assert_allclose(rates, _progressive_filling(per_flow, capacity), rtol=1e-9)


def test_water_fill_table_padding_is_ignored() -> None:
    """Two flows on one 10 B/s link, one also on a 4 B/s link: 4 and 6; padding rows change
    nothing."""
    capacity = np.array([10.0, 4.0])
    table = np.array([[0, 0], [2, 1], [2, 2]])  # link 2 is the padding
    np.testing.assert_allclose(water_fill(table, capacity), [6.0, 4.0])


def _run(graph: nx.DiGraph, flows: list[tuple[list, float, float]], window_s: float
         ) -> tuple[list[float], FlowNetwork]:
    env = simpy.Environment()
    net = FlowNetwork(env, graph, time_window_s=window_s)
    done: list[simpy.Event] = []

    def start(path: list, size: float, at: float):  # type: ignore[no-untyped-def]
        yield env.timeout(at)
        done.append(net.transfer(path, size))

    for path, size, at in flows:
        env.process(start(path, size, at))
    env.run()
    return [float(cast(float, ev.value)) for ev in done], net


def _graph(links: dict[tuple[str, str], float]) -> nx.DiGraph:
    graph = nx.DiGraph()
    for edge, bandwidth in links.items():
        graph.add_edge(*edge, bandwidth_bytes_per_s=bandwidth, latency_s=0.0)
    return graph


def test_centred_window_ends_within_half_the_window_of_exact() -> None:
    """One 20 B/s link, flows of 10 and 10.5 B: exact ends 1.0 (then the other alone at 20 B/s)
    and 1.025. A 0.1 s window predicts 1.0 and 1.05 and ends both at the middle, 1.025: the
    first 0.025 late, within half the window; one rate update fewer; bytes exact."""
    graph = _graph({("a", "b"): 20.0})
    flows = [([("a", "b")], 10.0, 0.0), ([("a", "b")], 10.5, 0.0)]
    exact, exact_net = _run(graph, flows, 0.0)
    assert exact == pytest.approx([1.0, 1.025], rel=1e-12)
    window, net = _run(graph, flows, 0.1)
    assert window == pytest.approx([1.025, 1.025], rel=1e-12)
    assert max(abs(w - e) for w, e in zip(window, exact, strict=True)) <= 0.05 + 1e-12
    assert net.num_rate_updates == exact_net.num_rate_updates - 1
    assert net.link_bytes == exact_net.link_bytes == {("a", "b"): 20.5}


def test_start_within_half_the_window_joins_the_armed_timer() -> None:
    """A 10 B flow on a 10 B/s link ends at 1.0. A 1 B flow on another link ready at 0.97 (within
    0.05 of the timer) starts with it at 1.0 (0.03 late: ends 1.1); ready at 0.9, it starts on
    time (ends 1.0, as exact)."""
    graph = _graph({("a", "b"): 10.0, ("c", "d"): 10.0})
    for ready, expected in ((0.97, 1.1), (0.9, 1.0)):
        flows = [([("a", "b")], 10.0, 0.0), ([("c", "d")], 1.0, ready)]
        exact, _ = _run(graph, flows, 0.0)
        window, _ = _run(graph, flows, 0.1)
        assert exact[1] == pytest.approx(ready + 0.1, rel=1e-12)
        assert window[1] == pytest.approx(expected, rel=1e-12)
        assert window[1] - exact[1] <= 0.05 + 1e-12


def test_uneven_all_to_all_window_stays_within_bound_and_keeps_bytes() -> None:
    """8 GPUs on a switch, random sizes started at once: with a window, every flow ends within
    half the window times the number of batches it lived through of exact (here far less: each
    end within a few windows), the last end within half a window, and the same bytes per link."""
    rng = np.random.default_rng(3)
    graph = nx.DiGraph()
    for i in range(8):
        graph.add_edge(f"g{i}", "sw", bandwidth_bytes_per_s=100.0, latency_s=0.0)
        graph.add_edge("sw", f"g{i}", bandwidth_bytes_per_s=100.0, latency_s=0.0)
    flows = [([(f"g{i}", "sw"), ("sw", f"g{j}")], float(rng.uniform(1.0, 20.0)), 0.0)
             for i in range(8) for j in range(8) if i != j]
    exact, exact_net = _run(graph, flows, 0.0)
    window_s = 0.01
    window, net = _run(graph, flows, window_s)
    assert abs(max(window) - max(exact)) <= window_s / 2 + 1e-12
    assert np.max(np.abs(np.array(window) - np.array(exact))) <= 4 * window_s
    assert net.num_rate_updates < exact_net.num_rate_updates
    assert net.link_bytes == exact_net.link_bytes


def _uneven_plan(world: int, seed: int) -> StepPlan:
    """Per layer: uneven experts, then uneven dispatch and combine (test_step's layout)."""
    rng = np.random.default_rng(seed)
    b = PlanBuilder(world)
    zeros = np.zeros(world)
    for layer in range(3):
        dispatch = rng.uniform(0.0, 4e6, (world, world))
        b.exchange("dispatch", "dispatch", layer, dispatch)
        b.compute("experts", "experts", layer, "grouped_moe", rng.uniform(5e-6, 20e-6, world),
                  zeros, zeros)
        b.exchange("combine", "combine", layer, dispatch.T)
    return b.plan(3, 0)


def test_des_default_window_close_to_exact(eight_gpu_switch: Topology) -> None:
    """An uneven 3-block plan on 8 GPUs: the default window's step time within 0.5% of the exact
    mode's, every operation's end within a few windows of exact."""
    plan = _uneven_plan(8, 0)
    exact = DesBackend(0.0).execute(plan, eight_gpu_switch, _routes(eight_gpu_switch))
    default = execute(plan, eight_gpu_switch, "des")
    assert default.step_s == pytest.approx(exact.step_s, rel=5e-3)
    assert np.nanmax(np.abs(default.end_s - exact.end_s)) <= 10 * DES_TIME_WINDOW_S


def _routes(topo: Topology):  # type: ignore[no-untyped-def]
    from moesim.engine.routes import build_route_table

    return build_route_table(topo, 8)


def _group_run(numbered: bool) -> tuple[list[tuple[float, list[int]]], dict]:
    """Two senders on a 4-GPU switch, parts of one group with two path latencies."""
    graph = nx.DiGraph()
    for i in range(4):
        graph.add_edge(f"g{i}", "sw", bandwidth_bytes_per_s=10.0, latency_s=0.5 * i)
        graph.add_edge("sw", f"g{i}", bandwidth_bytes_per_s=10.0, latency_s=0.0)
    env = simpy.Environment()
    net = FlowNetwork(env, graph)
    done: list[tuple[float, list[int]]] = []
    group = net.open_group(np.array([3, 2, 1, 2]),  # sends + receives per rank
                           lambda ranks: done.append((env.now, ranks.tolist())))
    for src, dsts in ((0, [1, 2]), (3, [0, 1])):
        paths = [net.links.ids([(f"g{src}", "sw"), ("sw", f"g{d}")]) for d in dsts]
        latency = np.array([net.links.latency_s[p].sum() for p in paths])
        sizes, dst = np.array([5.0, 10.0]), np.array(dsts)
        if numbered:
            numbers = net.path_numbers(paths)
            assert numbers.tolist() == net.path_numbers(paths).tolist()  # stable numbers
            net.start_group_numbered(group, src, numbers, sizes, dst, latency)
        else:
            net.start_group_parts(group, src, paths, sizes, dst, latency)
    env.run()
    return done, net.link_bytes


def test_numbered_group_parts_match_group_parts() -> None:
    """`start_group_numbered` with `path_numbers` runs exactly as `start_group_parts`."""
    plain, plain_bytes = _group_run(False)
    numbered, numbered_bytes = _group_run(True)
    assert numbered == plain
    assert numbered_bytes == plain_bytes
    assert sorted(rank for _, ranks in plain for rank in ranks) == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", range(12))
def test_reduced_solve_matches_full_table(seed: int) -> None:
    """The network's reduced solve (narrowest links first, flows merged by link set, links left
    out checked and added back when overloaded) gives the rates of the full-table water-fill,
    also when the wide links bind."""
    rng = np.random.default_rng(seed)
    graph = nx.DiGraph()
    narrow = [(f"n{i}", f"m{i}") for i in range(6)]
    wide = [(f"w{i}", f"v{i}") for i in range(4)]
    for edge in narrow:
        graph.add_edge(*edge, bandwidth_bytes_per_s=1.0, latency_s=0.0)
    for edge in wide:
        graph.add_edge(*edge, bandwidth_bytes_per_s=float(rng.uniform(1.0, 6.0)), latency_s=0.0)
    net = FlowNetwork(simpy.Environment(), graph)
    paths = []
    for _ in range(int(rng.integers(5, 80))):
        chosen = [narrow[i] for i in rng.choice(6, int(rng.integers(0, 3)), replace=False)]
        chosen += [wide[i] for i in rng.choice(4, int(rng.integers(0 if chosen else 1, 3)),
                                                replace=False)]
        paths.append(net.links.ids(chosen))
    numbers = net.path_numbers(paths)
    slots = np.arange(numbers.size)
    net._path_of = numbers
    net._slot_links = net._path_table[numbers].T
    full = water_fill(net._path_table[numbers].T, net.links.capacity_bytes_per_s)
    np.testing.assert_allclose(net._solve(slots), full, rtol=1e-12)
