"""Step timeline: closed forms without contention, stragglers, imbalance becoming latency."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from moesim.engine.network import FlowNetwork
from moesim.engine.plan import PHASES, StepPlan
from moesim.engine.step import simulate_step
from moesim.inputs.config import Scenario
from moesim.inputs.topology import Topology, load_topology
from moesim.planning.evaluate import step_traffic, time_step
from moesim.planning.resolve import resolve_inputs
from moesim.traffic.workload import build_step

LAUNCH_S = 5e-6
EXPERTS = PHASES.index("experts")
COMBINE = PHASES.index("combine")


def _plan(world: int, dispatch: np.ndarray, experts_s: np.ndarray | None = None) -> StepPlan:
    """A plan with no compute except `experts_s` `[L, W]`, and the given dispatch `[L, W, W]`."""
    layers = dispatch.shape[0]
    zeros = np.zeros(world)
    return StepPlan(
        world=world,
        num_dense_blocks=0,
        attention_s=zeros,
        dense_ffn_s=zeros,
        router_s=zeros,
        experts_s=np.zeros((layers, world)) if experts_s is None else experts_s,
        lm_head_s=zeros,
        sp_bytes=np.zeros((world, world)),
        dispatch_bytes=dispatch,
        moe_tp_gather_bytes=np.zeros_like(dispatch),
        attn_tp_groups=(),
    )


@pytest.mark.parametrize("fidelity", ["des", "analytic"])
def test_two_gpu_exchange_matches_closed_form(two_gpu_link: Topology, fidelity: str) -> None:
    """EP2 on one 100 GB/s link each way: dispatch and combine each take launch + 1 us + S/B."""
    size = 50e6
    dispatch = np.array([[[0.0, size], [size, 0.0]]])
    timeline = simulate_step(_plan(2, dispatch), two_gpu_link, fidelity, launch_s=LAUNCH_S)
    one_way = LAUNCH_S + 1e-6 + size / 100e9
    assert timeline.step_s == pytest.approx(2 * one_way, rel=1e-9)
    assert timeline.phase_totals_s()["dispatch"] == pytest.approx(one_way, rel=1e-9)


@pytest.mark.parametrize("fidelity", ["des", "analytic"])
def test_balanced_all_to_all_on_switch(eight_gpu_switch: Topology, fidelity: str) -> None:
    """8 ranks each sending S to every peer through 100 GB/s ports: 7S/B + 2 us per phase."""
    size = 10e6
    dispatch = np.full((1, 8, 8), size)
    timeline = simulate_step(_plan(8, dispatch), eight_gpu_switch, fidelity, launch_s=LAUNCH_S)
    one_way = LAUNCH_S + 2e-6 + 7 * size / 100e9
    assert timeline.step_s == pytest.approx(2 * one_way, rel=1e-6)


def test_hot_expert_delays_every_ranks_combine(eight_gpu_switch: Topology) -> None:
    """Rank 3's experts take 10x longer: every rank that waits for its outputs finishes after it."""
    experts_s = np.full((1, 8), 1e-4)
    experts_s[0, 3] = 1e-3
    dispatch = np.full((1, 8, 8), 1e6)
    timeline = simulate_step(_plan(8, dispatch, experts_s), eight_gpu_switch, "des", LAUNCH_S)
    hot_expert_end = timeline.block_end_s[0, 3] - timeline.phase_s[0, 3, COMBINE]
    assert np.all(timeline.block_end_s[0] > hot_expert_end)
    cold = [r for r in range(8) if r != 3]
    # the cold ranks wait in their combine for the hot rank's outputs: ~0.9 ms longer
    assert np.all(timeline.phase_s[0, cold, COMBINE] > 0.85e-3)
    assert timeline.phase_s[0, 3, COMBINE] < 0.2e-3


def test_des_and_analytic_agree_on_balanced_step(eight_gpu_switch: Topology) -> None:
    """Balanced compute and uniform traffic (no stragglers, no contention beyond the ports)."""
    dispatch = np.full((4, 8, 8), 3e6)
    experts_s = np.full((4, 8), 2e-4)
    plan = _plan(8, dispatch, experts_s)
    des = simulate_step(plan, eight_gpu_switch, "des").step_s
    analytic = simulate_step(plan, eight_gpu_switch, "analytic").step_s
    assert des == pytest.approx(analytic, rel=0.01)


def test_no_p2p_stages_through_host_memory() -> None:
    """On the 4x RTX 4090 box (no P2P) S bytes gpu0 -> gpu1 cross the host-memory link twice
    (written in, read out): 2S of host traffic where P2P would need none."""
    topo = load_topology("rtx4090-4x-pcie")
    env = simpy.Environment()
    net = FlowNetwork(env, topo.graph)
    size = 1e8
    env.run(net.transfer_multipath(topo.routes(0, 1), size))
    host = sum(b for (u, v), b in net.link_bytes.items() if "hostmem" in u or "hostmem" in v)
    assert host == pytest.approx(2 * size)


def test_real_trace_imbalance_lengthens_the_hot_ranks_experts() -> None:
    """EP8 prefill of the bundled real trace on dgx-h100: in every layer the rank whose experts
    received most tokens has the longest expert phase (compute-bound at 4096 tokens)."""
    scenario = Scenario(placement="EP8", topology="dgx-h100", batch=8, context=512)
    inputs = resolve_inputs(scenario)
    step = build_step(inputs.trace, "prefill", 8, 512)
    traffic = step_traffic(inputs, step)
    timeline = time_step(inputs, step, traffic)
    load = traffic.rank_load()
    expert_s = timeline.phase_s[:, :, EXPERTS]
    assert np.array_equal(expert_s.argmax(axis=1), load.argmax(axis=1))
    # and the slowest rank's expert time exceeds the mean by the load's max/mean
    ratio = expert_s.max(axis=1) / expert_s.mean(axis=1)
    imbalance = load.max(axis=1) / load.mean(axis=1)
    assert np.all(ratio > 1 + 0.5 * (imbalance - 1))


def test_ttft_sums_the_prefill_chunk_steps() -> None:
    """32 prompts of 2048 tokens in 8192-token chunks: TTFT is 8 times one 4-prompt step."""
    from moesim.planning.evaluate import prefill_steps, run_scenario

    scenario = Scenario(
        placement="EP8", topology="dgx-h100", batch=32, context=2048, fidelity="analytic"
    )
    inputs = resolve_inputs(scenario)
    ((chunk, repeats),) = prefill_steps(inputs)
    assert (chunk.num_sequences, chunk.num_tokens, repeats) == (4, 8192, 8)
    chunk_s = time_step(inputs, chunk, step_traffic(inputs, chunk)).step_s
    result = run_scenario(scenario)
    assert result["ttft_s"] == pytest.approx(8 * chunk_s)
    assert result["prefill_tokens_per_s"] == pytest.approx(32 * 2048 / result["ttft_s"])
