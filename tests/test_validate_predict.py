"""Predicted times of a live run (validate.predict): the harness's plan, closed forms, the phase
mapping and the compare CLI's errors (no torch, no processes)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from moesim.cli import validate as validate_cli
from moesim.engine.backends import execute
from moesim.engine.plan import PHASES as ENGINE_PHASES
from moesim.errors import ConfigError
from moesim.inputs.topology import build_topology
from moesim.inputs.topology_spec import TopologySpec
from validate.measurement import (
    PHASES,
    build_measurement,
    exchange_layers,
    expected_bytes,
    live_inputs,
    phase_byte_matrices,
    traffic_for_inputs,
)
from validate.predict import (
    ENGINE_GROUPS,
    harness_experts_s,
    harness_step_plan,
    local_only_phases,
    predict_phase_times,
    time_comparison,
)

TRACE = "bundled:mixtral8x7b_humaneval_decode"
P = {name: i for i, name in enumerate(PHASES)}


def _inputs(placement: str) -> dict:
    """A small scaled live run's inputs (hidden 64, expert FFN 224, 2 layers, 40 tokens)."""
    return live_inputs(model="mixtral-8x7b", trace=TRACE, placement=placement, backend="gloo",
                       scale=1 / 64, layers=2, tokens=40)


def _loopback(bandwidth: float = 1e9, latency_s: float = 1e-4, launch_s: float = 0.0,
              kernel_launch_s: float = 0.0) -> object:
    """4 ranks, each with a `bandwidth` port to host memory; a round-number CPU."""
    spec = TopologySpec.model_validate({
        "name": "round-loopback", "gpus_per_node": 4, "collective_launch_s": launch_s,
        "gpu_spec": {"name": "round", "peak_bf16_flops_per_s": 1e11,
                     "memory_bandwidth_bytes_per_s": 1e12, "memory_bytes": 1e9,
                     "compute_efficiency": 1.0, "memory_efficiency": 1.0,
                     "kernel_launch_s": kernel_launch_s},
        "fabric": [{"kind": "loopback", "port_bandwidth_bytes_per_s": bandwidth,
                    "latency_s": latency_s}],
    })
    return build_topology(spec)


def test_harness_plan_has_no_attention_router_or_lm_head() -> None:
    """The plan of a live run costs only what the harness runs: attention, router and LM head
    are zero and the traffic is the measurement's exact bytes."""
    inputs = _inputs("EP4")
    traffic = traffic_for_inputs(inputs)
    plan = harness_step_plan(inputs, traffic, _loopback().gpu_spec)
    for name in ("attention", "router", "lm_head"):
        assert not any(op.time_s.any() for op in plan.find(name))
    assert plan.num_dense_blocks == 0 and not plan.find("shared_experts")
    dispatch = plan.find("dispatch")
    assert len(dispatch) == traffic.num_layers
    for layer, op in enumerate(dispatch):
        np.testing.assert_array_equal(op.bytes_matrix, traffic.dispatch_bytes[layer])
    assert all((op.time_s > 0).all() for op in plan.find("experts"))


def test_expert_time_is_roofline_plus_one_launch_per_busy_expert() -> None:
    """Experts: sum over local experts of max(FLOPs/peak, bytes/bandwidth) with FLOPs
    2*3*hidden*ffn*tokens, plus one kernel launch per expert that got tokens (a Python loop
    in the harness, not a grouped kernel)."""
    inputs = _inputs("EP4")
    traffic = traffic_for_inputs(inputs)
    gpu = _loopback().gpu_spec
    hidden, ffn = inputs["hidden_size"], inputs["expert_ffn_size"]
    tokens = traffic.rank_expert_tokens.astype(float)  # [L, W, E_local]
    flops_s = 2 * 3 * hidden * ffn * tokens / 1e11
    bytes_s = ((tokens > 0) * 3 * hidden * ffn * 2 + tokens * (2 * hidden + 3 * ffn) * 2) / 1e12
    np.testing.assert_allclose(harness_experts_s(inputs, traffic, gpu),
                               np.maximum(flops_s, bytes_s).sum(axis=2), rtol=1e-12)
    launched = gpu.model_copy(update={"kernel_launch_s": 1e-3})
    extra = harness_experts_s(inputs, traffic, launched) - harness_experts_s(inputs, traffic, gpu)
    np.testing.assert_allclose(extra, 1e-3 * (tokens > 0).sum(axis=2), rtol=1e-9)


def test_dispatch_is_busiest_port_over_bandwidth_plus_path_latency() -> None:
    """Analytic fidelity, no launch: the slowest rank's dispatch takes the busiest port's
    bytes / bandwidth plus the two-hop path latency (rank -> host memory -> rank)."""
    inputs = _inputs("EP4")
    traffic = traffic_for_inputs(inputs)
    topo = _loopback(bandwidth=1e9, latency_s=1e-4)
    times = predict_phase_times(inputs, traffic, topo, fidelity="analytic")
    for layer in range(traffic.num_layers):
        off = traffic.dispatch_bytes[layer] - np.diag(np.diag(traffic.dispatch_bytes[layer]))
        busiest = max(off.sum(axis=0).max(), off.sum(axis=1).max())
        assert times[layer, :, P["dispatch"]].max() == pytest.approx(busiest / 1e9 + 2e-4,
                                                                     rel=1e-9)


def test_shared_engine_phases_split_back_without_losing_time() -> None:
    """TP4: the engine books MoE-TP gather/scatter and the attention all-gather as `moe_comm`;
    the per-harness-phase split sums back to the engine's seconds on every rank and layer."""
    inputs = _inputs("TP4")
    traffic = traffic_for_inputs(inputs)
    topo = _loopback()
    times = predict_phase_times(inputs, traffic, topo)
    timeline = execute(harness_step_plan(inputs, traffic, topo.gpu_spec), topo)
    for engine_phase in ("moe_comm", "attn_comm", "experts"):
        members = [P[p] for p in ENGINE_GROUPS[engine_phase]]
        np.testing.assert_allclose(times[:, :, members].sum(axis=2),
                                   timeline.phase_s[:, :, ENGINE_PHASES.index(engine_phase)],
                                   rtol=1e-9, atol=1e-15)
    assert (times[:, :, P["moe_tp_gather"]] > 0).all() and (times[:, :, P["attn_all_gather"]]
                                                             > 0).all()


def test_all_local_phase_is_a_local_copy_with_no_time_error() -> None:
    """TP4's dispatch and combine move no cross-rank bytes: the harness only copies the rank's
    own rows (no collective) and the engine books nothing, so they are predicted 0 s, listed as
    local-only and left out of the phase, all-to-all and overall errors."""
    inputs = _inputs("TP4")
    traffic = traffic_for_inputs(inputs)
    assert phase_byte_matrices(traffic)["dispatch"].any()
    assert not exchange_layers(traffic)[:, [P["dispatch"], P["combine"]]].any()
    assert exchange_layers(traffic)[:, P["moe_tp_gather"]].all()
    assert local_only_phases(traffic) == ["dispatch", "combine"]
    times = predict_phase_times(inputs, traffic, _loopback(latency_s=1e-4, launch_s=5e-5))
    assert (times[:, :, [P["dispatch"], P["combine"]]] == 0).all()
    assert (times[:, :, P["moe_tp_gather"]] > 0).all()
    measurement = _measurement("TP4", 2e-3)
    predicted = np.full(times.shape, 2e-3)
    predicted[:, :, [P["dispatch"], P["combine"]]] = 0.0
    prediction = {"time_s": predicted.tolist(),
                  "active_phases": ["dispatch", "moe_tp_gather", "combine"],
                  "local_only_phases": ["dispatch", "combine"]}
    result = time_comparison(measurement, prediction)
    assert result["a2a_mape"] is None and result["overall_mape"] == pytest.approx(0)
    assert result["phase_mape"] == {"dispatch": None, "moe_tp_gather": 0, "combine": None}


def _measurement(placement: str, seconds: float) -> dict:
    """A measurement with the simulator's exact bytes and `seconds` on every rank and phase."""
    inputs = _inputs(placement)
    counts = expected_bytes(traffic_for_inputs(inputs))
    layers, world = counts.shape[:2]
    times = np.full((1, layers, world, len(PHASES)), seconds)
    return build_measurement(inputs, times, counts, np.full((1, world), 1.0), 1.0)


def test_mape_is_hand_worked() -> None:
    """Measured 2 ms per phase; predicted dispatch 1 ms, experts 2 ms, combine 3 ms: phase
    errors 50/0/50 %, a2a (4 ms vs 4 ms) 0 %, layer (6 vs 6 ms) 0 %, overall 100/3 %."""
    measurement = _measurement("EP4", 2e-3)
    world = 4
    predicted = np.zeros((2, world, len(PHASES)))
    predicted[:, :, [P["dispatch"], P["experts"], P["combine"]]] = [1e-3, 2e-3, 3e-3]
    prediction = {"time_s": predicted.tolist(),
                  "active_phases": ["dispatch", "experts", "combine"]}
    result = time_comparison(measurement, prediction)
    assert result["phase_mape"] == pytest.approx({"dispatch": 50, "experts": 0, "combine": 50})
    assert result["a2a_mape"] == pytest.approx(0) and result["layer_mape"] == pytest.approx(0)
    assert result["overall_mape"] == pytest.approx(100 / 3)
    assert result["per_layer"][1]["layer_predicted_s"] == pytest.approx(6e-3)


def test_statistics_compare_against_mean_median_or_fastest_repeat() -> None:
    """Repeats of 1, 2 and 6 ms: mean 3 ms (the default), median 2 ms, min 1 ms; a 1 ms
    prediction is 66.7 % off the mean, 50 % off the median and exact against the min. A
    measurement without per-phase means (older files) is refused for the mean, by name."""
    inputs = _inputs("EP4")
    counts = expected_bytes(traffic_for_inputs(inputs))
    layers, world = counts.shape[:2]
    times = np.stack([np.full((layers, world, len(PHASES)), t) for t in (1e-3, 2e-3, 6e-3)])
    measurement = build_measurement(inputs, times, counts, np.full((3, world), 1.0), 1.0)
    predicted = np.full((layers, world, len(PHASES)), 1e-3)
    prediction = {"time_s": predicted.tolist(), "active_phases": ["dispatch", "combine"]}
    assert time_comparison(measurement, prediction)["a2a_mape"] == pytest.approx(200 / 3)
    assert time_comparison(measurement, prediction, "median")["a2a_mape"] == pytest.approx(50)
    assert time_comparison(measurement, prediction, "min")["a2a_mape"] == pytest.approx(0)
    for layer in measurement["per_layer"]:
        for rank in layer["ranks"]:
            for record in rank["phases"].values():
                del record["time_s_mean"]
    with pytest.raises(ConfigError, match="time_s_mean.*--statistic median"):
        time_comparison(measurement, prediction)
    assert time_comparison(measurement, prediction, "median")["a2a_mape"] == pytest.approx(50)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moesim")
    validate_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_compare_cli_writes_errors_and_plots(tmp_path: Path) -> None:
    """`validate compare --json --plot` writes bytes_match, a2a_mape, layer_mape (finite) and
    the per-layer table, draws both plots, and exits 1 once a byte count differs."""
    measurement = _measurement("EP2xDP2", 1e-3)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(measurement))
    args = _parser().parse_args(["validate", "compare", str(good), "--json",
                                 str(tmp_path / "c.json"), "--plot", str(tmp_path / "plots")])
    assert args.handler(args) == 0
    summary = json.loads((tmp_path / "c.json").read_text())
    assert summary["bytes_match"] is True
    assert np.isfinite([summary["a2a_mape"], summary["layer_mape"]]).all()
    assert set(summary["per_layer"][0]["predicted_s"]) == {"dispatch", "experts", "combine"}
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["per_layer.png",
                                                                      "pred_vs_measured.png"]
    measurement["per_layer"][1]["ranks"][0]["phases"]["combine"]["recv_bytes"] += 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(measurement))
    args = _parser().parse_args(["validate", "compare", str(bad), "--json", "-"])
    assert args.handler(args) == 1
