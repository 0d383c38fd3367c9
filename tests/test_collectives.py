"""Collectives as flows: closed forms on canonical topologies, DES vs analytic, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import simpy

from moesim.cli import main
from moesim.cli.collective import parse_bytes
from moesim.engine import analytic
from moesim.engine.collective_model import (
    OPS,
    busbw_factor,
    double_binary_tree_edges,
    nccl_tests_alltoall_matrix,
)
from moesim.engine.collectives import allreduce, alltoall, predict_collective, simulate_collective
from moesim.engine.network import FlowNetwork
from moesim.errors import TopologyError
from moesim.inputs.topology import build_topology
from moesim.inputs.topology_spec import TopologySpec
from tests.conftest import ROUND_GPU

S = 1e9  # bytes
B = 100e9  # bytes/s per direction, every fixture link
LAT = 1e-6  # s per fixture link
SWITCH_LAT = 2 * LAT  # gpu -> switch -> gpu


def _both(topo, op, n, **kwargs):
    """DES and analytic results of one collective among the first n GPUs, no launch cost."""
    des = predict_collective(topo, op, range(n), launch_s=0.0, fidelity="des", **kwargs)
    closed = predict_collective(topo, op, range(n), launch_s=0.0, fidelity="analytic", **kwargs)
    return des, closed


def test_ring_allreduce_on_four_gpu_ring(four_gpu_ring):
    """Ring all-reduce, n=4, one hop per step: 2(n-1)(lat + S/(nB)) = 2(n-1)/n*S/B + 6 lat."""
    n = 4
    expected = 2 * (n - 1) / n * S / B + 2 * (n - 1) * LAT
    for result in _both(four_gpu_ring, "allreduce", n, size_bytes=S):
        assert result.time_s == pytest.approx(expected, rel=1e-9)
        assert result.network_bytes == pytest.approx(2 * (n - 1) * S)


def test_ring_allreduce_on_eight_gpu_switch(eight_gpu_switch):
    """Ring all-reduce through a switch: each step pays two hops, 2(n-1)/n*S/B + 2(n-1)*2 lat."""
    n = 8
    expected = 2 * (n - 1) / n * S / B + 2 * (n - 1) * SWITCH_LAT
    for result in _both(eight_gpu_switch, "allreduce", n, size_bytes=S):
        assert result.time_s == pytest.approx(expected, rel=1e-9)
        np.testing.assert_allclose(result.rank_times_s, expected, rtol=1e-9)


@pytest.mark.parametrize("op", ["allgather", "reducescatter"])
def test_ring_allgather_reducescatter_on_switch(eight_gpu_switch, op):
    """n-1 ring steps of S/n (S the full gathered buffer): (n-1)/n*S/B + (n-1)*2 lat."""
    n = 8
    expected = (n - 1) / n * S / B + (n - 1) * SWITCH_LAT
    for result in _both(eight_gpu_switch, op, n, size_bytes=S):
        assert result.time_s == pytest.approx(expected, rel=1e-9)
        assert result.network_bytes == pytest.approx((n - 1) * S)


def test_direct_alltoall_on_switch(eight_gpu_switch):
    """nccl-tests all-to-all (S per rank, S/n to each peer): every rank at 2 lat + (n-1)/n*S/B."""
    n = 8
    matrix = nccl_tests_alltoall_matrix(n, S)
    for result in _both(eight_gpu_switch, "alltoall", n, bytes_matrix=matrix):
        np.testing.assert_allclose(result.rank_times_s, SWITCH_LAT + (n - 1) / n * S / B,
                                   rtol=1e-9)
        assert result.network_bytes == pytest.approx((n - 1) * S)  # the diagonal stays local


def test_tree_allreduce_on_switch(eight_gpu_switch):
    """Double binary tree, n=8: the busiest port (interior in one tree with 2 children and a
    parent, a leaf in the other) carries 3 + 1 halves = 2S, so 2S/B + 2*depth(3) * 2 lat."""
    expected = 2 * S / B + 2 * 3 * SWITCH_LAT
    for result in _both(eight_gpu_switch, "allreduce", 8, size_bytes=S, algorithm="tree"):
        assert result.time_s == pytest.approx(expected, rel=1e-9)
        assert result.algorithm == "tree"


def test_double_binary_trees_are_complementary():
    """For even n each rank is interior (has children) in at most one of the two trees."""
    for n in (2, 4, 8, 16):
        edges = double_binary_tree_edges(n)
        first, second = edges[: n - 1], edges[n - 1:]
        interior_first = {parent for _, parent in first}
        interior_second = {parent for _, parent in second}
        assert not interior_first & interior_second
        assert len(first) == len(second) == n - 1  # each is a spanning tree


def test_hot_destination_alltoall_is_slower(eight_gpu_switch):
    """Same total bytes: 7 ranks each sending X to rank 0 needs 7X/B on its port; uniform needs
    7X/(8B). Rank 0 sends nothing yet ends last, waiting for its receives."""
    n, x = 8, 1e8
    hot = np.zeros((n, n))
    hot[1:, 0] = x
    uniform = np.full((n, n), 7 * x / (n * (n - 1)))
    np.fill_diagonal(uniform, 0.0)
    assert hot.sum() == pytest.approx(uniform.sum())
    for fidelity in ("des", "analytic"):
        hot_r = predict_collective(eight_gpu_switch, "alltoall", range(n), bytes_matrix=hot,
                                   launch_s=0.0, fidelity=fidelity)
        uni_r = predict_collective(eight_gpu_switch, "alltoall", range(n), bytes_matrix=uniform,
                                   launch_s=0.0, fidelity=fidelity)
        assert hot_r.time_s == pytest.approx(SWITCH_LAT + 7 * x / B, rel=1e-9)
        assert uni_r.time_s == pytest.approx(SWITCH_LAT + 7 * x / (n * B), rel=1e-9)
        assert hot_r.rank_times_s[0] == pytest.approx(hot_r.time_s)


def test_rank_completion_waits_for_receives(eight_gpu_switch):
    """Only 2->1 (big) and 3->4 (small): rank 1 sends nothing but ends with the big flow;
    ranks without traffic end at launch."""
    n, launch_s = 8, 5e-6
    matrix = np.zeros((n, n))
    matrix[2, 1], matrix[3, 4] = 4e8, 1e8
    for fidelity in ("des", "analytic"):
        result = predict_collective(eight_gpu_switch, "alltoall", range(n), bytes_matrix=matrix,
                                    launch_s=launch_s, fidelity=fidelity)
        big, small = launch_s + SWITCH_LAT + 4e8 / B, launch_s + SWITCH_LAT + 1e8 / B
        np.testing.assert_allclose(result.rank_times_s,
                                   [launch_s, big, big, small, small, launch_s, launch_s, launch_s],
                                   rtol=1e-9)


def test_two_concurrent_alltoalls_share_the_ports(eight_gpu_switch):
    """Two identical all-to-alls started together on one network each take twice as long."""
    n = 8
    env = simpy.Environment()
    net = FlowNetwork(env, eight_gpu_switch.graph)
    matrix = nccl_tests_alltoall_matrix(n, S)
    runs = [alltoall(net, eight_gpu_switch, range(n), matrix, launch_s=0.0) for _ in range(2)]
    env.run()
    for run in runs:
        assert run.result().time_s == pytest.approx(SWITCH_LAT + 2 * (n - 1) / n * S / B)
    assert net.link_bytes[("gpu0", "sw0")] == pytest.approx(2 * (n - 1) / n * S)


@pytest.mark.parametrize("fixture", ["two_gpu_link", "four_gpu_ring", "eight_gpu_switch",
                                     "two_node"])
@pytest.mark.parametrize("op,algorithm", [(op, "ring") for op in OPS] + [("allreduce", "tree")])
def test_des_matches_analytic_without_contention(request, fixture, op, algorithm):
    """On an idle network the flow simulation and the bottleneck bound agree within 1%."""
    topo = request.getfixturevalue(fixture)
    n = topo.num_gpus
    kwargs = ({"bytes_matrix": nccl_tests_alltoall_matrix(n, S)} if op == "alltoall"
              else {"size_bytes": S})
    des = simulate_collective(topo, op, range(n), algorithm=algorithm, **kwargs)
    closed = analytic.predict(topo, op, range(n), algorithm=algorithm, **kwargs)
    assert des.time_s == pytest.approx(closed.time_s, rel=0.01)
    assert des.network_bytes == pytest.approx(closed.network_bytes)


def test_launch_latency_is_added_once(two_gpu_link):
    """A collective with launch_s L ends exactly L later than the same one with no launch cost."""
    base = simulate_collective(two_gpu_link, "allreduce", [0, 1], size_bytes=S, launch_s=0.0)
    late = simulate_collective(two_gpu_link, "allreduce", [0, 1], size_bytes=S, launch_s=7e-6)
    assert late.time_s - base.time_s == pytest.approx(7e-6, rel=1e-9)


def test_busbw_approaches_port_bandwidth(eight_gpu_switch):
    """nccl-tests' busbw reflects the hardware bottleneck: for large S it tends to the port B."""
    n, size = 8, 1e12
    for op in OPS:
        kwargs = ({"bytes_matrix": nccl_tests_alltoall_matrix(n, size)} if op == "alltoall"
                  else {"size_bytes": size})
        result = simulate_collective(eight_gpu_switch, op, range(n), **kwargs)
        busbw = size / result.time_s * busbw_factor(op, n)
        assert busbw == pytest.approx(B, rel=1e-3)


def test_busbw_factors_follow_nccl_tests():
    """doc/PERFORMANCE.md of nccl-tests: allreduce 2(n-1)/n; the other three (n-1)/n."""
    assert busbw_factor("allreduce", 8) == pytest.approx(1.75)
    for op in ("alltoall", "allgather", "reducescatter"):
        assert busbw_factor(op, 8) == pytest.approx(0.875)


def test_parse_bytes_follows_nccl_tests_suffixes():
    """K/M/G are binary as nccl-tests' -b parses them; KiB.. binary; KB.. decimal."""
    assert parse_bytes("4096") == 4096
    assert parse_bytes("1M") == 2**20
    assert parse_bytes("256MiB") == 256 * 2**20
    assert parse_bytes("2g") == 2 * 2**30
    assert parse_bytes("1GB") == 1e9
    assert parse_bytes("1e9") == 1e9


def test_cli_json_reports_nccl_tests_figures(capsys):
    """`moesim collective --json`: time and bandwidths, algbw = B/t and busbw = algbw * factor."""
    code = main(["collective", "--topology", "dgx-h100", "--op", "allreduce", "--gpus", "4",
                 "--bytes", "64M", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    keys = {"time_s", "algbw_bytes_per_s", "busbw_bytes_per_s", "op", "gpus", "bytes"}
    assert keys <= set(report)
    assert report["bytes"] == 64 * 2**20 and report["gpus"] == 4 and report["op"] == "allreduce"
    assert report["algbw_bytes_per_s"] == pytest.approx(report["bytes"] / report["time_s"])
    assert report["busbw_bytes_per_s"] == pytest.approx(report["algbw_bytes_per_s"] * 1.5)


def test_cli_rejects_bad_size_and_too_many_gpus(capsys):
    """A malformed --bytes or --gpus beyond the topology is one error line and exit code 2."""
    assert main(["collective", "--topology", "dgx-h100", "--op", "alltoall",
                 "--bytes", "12 parsecs"]) == 2
    assert "--bytes" in capsys.readouterr().err
    assert main(["collective", "--topology", "dgx-h100", "--op", "alltoall", "--gpus", "64",
                 "--bytes", "1M"]) == 2
    assert "--gpus 64" in capsys.readouterr().err


# ---- NVLS (NVLink SHARP) all-reduce --------------------------------------------------------


def _nvls_switch(n=8, *, nvls=True, nvls_efficiency=None, nvls_latency_s=0.0,
                 link_efficiency=None, compute_capability=None):
    """n GPUs on one nvswitch fabric block (B per port direction, LAT per port); with a
    compute capability, collectives follow NCCL's protocols and tuner."""
    block = {"kind": "nvswitch", "port_bandwidth_bytes_per_s": B, "latency_s": LAT,
             "nvls": nvls, "nvls_efficiency": nvls_efficiency, "nvls_latency_s": nvls_latency_s}
    spec = TopologySpec.model_validate({
        "name": "nvls_switch", "gpu_spec": {**ROUND_GPU, "compute_capability": compute_capability},
        "gpus_per_node": n, "fabric": [block],
        "link_efficiency": link_efficiency or {},
    })
    return build_topology(spec, source="fixture nvls_switch")


def test_nvls_allreduce_closed_form():
    """NVLS: every port carries S(n+1)/n each way at once; the first chunk crosses a port four
    times, so t = S(n+1)/n / B + 4 lat, and S(n+1) bytes go into the switch."""
    n = 8
    expected = S * (n + 1) / n / B + 4 * LAT
    for result in _both(_nvls_switch(n), "allreduce", n, size_bytes=S, algorithm="nvls"):
        assert result.algorithm == "nvls"
        assert result.time_s == pytest.approx(expected, rel=1e-9)
        np.testing.assert_allclose(result.rank_times_s, expected, rtol=1e-9)
        assert result.network_bytes == pytest.approx((n + 1) * S)


def test_nvls_busbw_tends_to_2_n_minus_1_over_n_plus_1_of_port():
    """nccl-tests busbw of NVLS = algbw * 2(n-1)/n -> B * 2(n-1)/(n+1): 14/9 B at n=8, the
    '~480 GB/s on 8 GPUs' of NVIDIA/nccl-tests issue 212 from a ~309 GB/s effective port."""
    n, size = 8, 1e13
    result = simulate_collective(_nvls_switch(n), "allreduce", range(n), size_bytes=size,
                                 algorithm="nvls")
    busbw = size / result.time_s * busbw_factor("allreduce", n)
    assert busbw == pytest.approx(B * 2 * (n - 1) / (n + 1), rel=1e-4)


def test_nvls_efficiency_and_latency_are_nominal_relative_and_additive():
    """nvls_efficiency scales the NOMINAL port (whatever link_efficiency says for other
    traffic); nvls_latency_s is added once: t = S(n+1)/n / (0.8 B) + 4 lat + 5 us."""
    n = 4
    topo = _nvls_switch(n, nvls_efficiency=0.8, nvls_latency_s=5e-6,
                        link_efficiency={"nvlink": 0.5})
    expected = S * (n + 1) / n / (0.8 * B) + 4 * LAT + 5e-6
    for result in _both(topo, "allreduce", n, size_bytes=S, algorithm="nvls"):
        assert result.time_s == pytest.approx(expected, rel=1e-9)
        assert result.network_bytes == pytest.approx((n + 1) * S)  # payload, not wire bytes


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("efficiency", [None, 0.7])
def test_nvls_des_matches_analytic(n, efficiency):
    """NVLS on an idle switch: DES and closed form agree within 1% (here exactly)."""
    topo = _nvls_switch(8, nvls_efficiency=efficiency, nvls_latency_s=3e-6)
    des = simulate_collective(topo, "allreduce", range(n), size_bytes=S, algorithm="nvls")
    closed = analytic.predict(topo, "allreduce", range(n), size_bytes=S, algorithm="nvls")
    assert des.time_s == pytest.approx(closed.time_s, rel=0.01)
    assert des.network_bytes == pytest.approx(closed.network_bytes)


def test_two_concurrent_nvls_allreduces_share_the_ports():
    """Two NVLS all-reduces on the same GPUs at once take twice as long to stream."""
    n = 8
    topo = _nvls_switch(n)
    env = simpy.Environment()
    net = FlowNetwork(env, topo.graph)
    runs = [allreduce(net, topo, range(n), S, algorithm="nvls", launch_s=0.0) for _ in range(2)]
    env.run(until=env.all_of([run.done for run in runs]))
    expected = 2 * S * (n + 1) / n / B + 4 * LAT
    for run in runs:
        assert run.result().time_s == pytest.approx(expected, rel=1e-9)


def test_auto_picks_nvls_only_where_it_wins():
    """auto on a Hopper GPU follows NCCL's tuner: for 1 GB, ring at n=2 (NVLS moves 1.5 S per
    port, ring S) and wherever the switch has no NVLS; NVLS at n=8 (9/8 S vs ring's 14/8 S per
    port); DES and analytic agree on it. Without a compute capability (gloo) it is ring."""
    with_nvls = _nvls_switch(8, compute_capability=9.0)
    without = _nvls_switch(8, nvls=False, compute_capability=9.0)
    assert predict_collective(_nvls_switch(8), "allreduce", range(8), size_bytes=S,
                              algorithm="auto").algorithm == "ring"
    def algo(topo, n, fidelity):
        return predict_collective(topo, "allreduce", range(n), size_bytes=S,
                                  algorithm="auto", fidelity=fidelity).algorithm

    for fidelity in ("des", "analytic"):
        assert algo(with_nvls, 2, fidelity) == "ring"
        assert algo(with_nvls, 8, fidelity) == "nvls"
        assert algo(without, 8, fidelity) == "ring"


def test_nvls_needs_an_nvls_switch():
    """Explicit `nvls` on a fabric without NVLS (or ranks on no common switch) is a
    TopologyError naming the fix, not a wrong answer."""
    with pytest.raises(TopologyError, match="nvls: true"):
        simulate_collective(_nvls_switch(8, nvls=False), "allreduce", range(8), size_bytes=S,
                            algorithm="nvls")


def test_cli_runs_nvls_by_default_on_dgx_h100(capsys):
    """`moesim collective` defaults to --algorithm auto: NVLS for 1 GiB on 8 GPUs of dgx-h100
    (nvls: true), ring on hgx-a100 (A100's NVSwitch has no NVLink SHARP)."""
    for topology, expected in (("dgx-h100", "nvls"), ("hgx-a100", "ring")):
        assert main(["collective", "--topology", topology, "--op", "allreduce",
                     "--bytes", "1G", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["algorithm"] == expected
    assert main(["collective", "--topology", "hgx-a100", "--op", "allreduce",
                 "--bytes", "1G", "--algorithm", "nvls"]) == 2
    assert "nvls: true" in capsys.readouterr().err
