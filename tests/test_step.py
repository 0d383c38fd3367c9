"""Step plans on both backends: closed forms without contention, stragglers, imbalance becoming
latency, and two streams per rank (an exchange beside independent compute costs the max)."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from moesim.engine.backends import execute
from moesim.engine.network import FlowNetwork
from moesim.engine.plan import PHASES, Barrier, Collective, PlanBuilder, StepPlan
from moesim.inputs.config import Scenario
from moesim.inputs.topology import Topology, load_topology
from moesim.planning.evaluate import decode_step, evaluate, prefill_steps, step_traffic, time_step
from moesim.planning.resolve import resolve_inputs
from moesim.traffic.workload import build_step

LAUNCH_S = 5e-6
EXPERTS = PHASES.index("experts")
COMBINE = PHASES.index("combine")
BACKENDS = ["des", "analytic"]


def _zeros(world: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(world), np.zeros(world), np.zeros(world)


def _plan(world: int, dispatch: np.ndarray, experts_s: np.ndarray | None = None) -> StepPlan:
    """Per layer: dispatch, experts (`experts_s[L, W]`, default 0), combine; nothing else."""
    b = PlanBuilder(world)
    for layer in range(dispatch.shape[0]):
        b.exchange("dispatch", "dispatch", layer, dispatch[layer])
        seconds = np.zeros(world) if experts_s is None else experts_s[layer]
        b.compute("experts", "experts", layer, "grouped_moe", seconds, *_zeros(world)[1:])
        b.exchange("combine", "combine", layer, dispatch[layer].T)
    return b.plan(dispatch.shape[0], 0)


@pytest.mark.parametrize("fidelity", BACKENDS)
def test_two_gpu_exchange_matches_closed_form(two_gpu_link: Topology, fidelity: str) -> None:
    """EP2 on one 100 GB/s link each way: dispatch and combine each take launch + 1 us + S/B."""
    size = 50e6
    dispatch = np.array([[[0.0, size], [size, 0.0]]])
    timeline = execute(_plan(2, dispatch), two_gpu_link, fidelity, launch_s=LAUNCH_S)
    one_way = LAUNCH_S + 1e-6 + size / 100e9
    assert timeline.step_s == pytest.approx(2 * one_way, rel=1e-9)
    assert timeline.phase_totals_s()["dispatch"] == pytest.approx(one_way, rel=1e-9)


@pytest.mark.parametrize("fidelity", BACKENDS)
def test_balanced_all_to_all_on_switch(eight_gpu_switch: Topology, fidelity: str) -> None:
    """8 ranks each sending S to every peer through 100 GB/s ports: 7S/B + 2 us per phase."""
    size = 10e6
    dispatch = np.full((1, 8, 8), size)
    timeline = execute(_plan(8, dispatch), eight_gpu_switch, fidelity, launch_s=LAUNCH_S)
    one_way = LAUNCH_S + 2e-6 + 7 * size / 100e9
    assert timeline.step_s == pytest.approx(2 * one_way, rel=1e-6)


def test_hot_expert_delays_every_ranks_combine(eight_gpu_switch: Topology) -> None:
    """Rank 3's experts take 10x longer: every rank that waits for its outputs finishes after it."""
    experts_s = np.full((1, 8), 1e-4)
    experts_s[0, 3] = 1e-3
    dispatch = np.full((1, 8, 8), 1e6)
    timeline = execute(_plan(8, dispatch, experts_s), eight_gpu_switch, "des", launch_s=LAUNCH_S)
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
    des = execute(plan, eight_gpu_switch, "des").step_s
    analytic = execute(plan, eight_gpu_switch, "analytic").step_s
    assert des == pytest.approx(analytic, rel=0.01)


def _overlap_plan(exchange_bytes: float, compute_s: float, overlap: bool) -> StepPlan:
    """One block on 8 ranks: a uniform all-to-all and an independent compute; with `overlap`
    the compute waits for nothing, so it runs on the compute stream beside the exchange."""
    b = PlanBuilder(8)
    b.exchange("dispatch", "dispatch", 0, np.full((8, 8), exchange_bytes))
    seconds = np.full(8, compute_s)
    b.compute("shared_experts", "experts", 0, "dense_ffn", seconds, *_zeros(8)[1:],
              after=() if overlap else None)
    return b.plan(1, 0)


@pytest.mark.parametrize("fidelity", BACKENDS)
@pytest.mark.parametrize("compute_s", [50e-6, 400e-6])
def test_exchange_beside_independent_compute_costs_the_max(
    eight_gpu_switch: Topology, fidelity: str, compute_s: float
) -> None:
    """An all-to-all (launch + 2 us + 7S/B = 137 us) beside a compute that does not wait for it
    takes max(compute, exchange) on each rank; chained, it takes the sum."""
    size = 1.8e6
    exchange_s = LAUNCH_S + 2e-6 + 7 * size / 100e9
    together = execute(_overlap_plan(size, compute_s, True), eight_gpu_switch, fidelity,
                       launch_s=LAUNCH_S)
    chained = execute(_overlap_plan(size, compute_s, False), eight_gpu_switch, fidelity,
                      launch_s=LAUNCH_S)
    assert together.step_s == pytest.approx(max(compute_s, exchange_s), rel=1e-6)
    assert chained.step_s == pytest.approx(compute_s + exchange_s, rel=1e-6)
    # both operations start at 0 and each keeps its own duration: the phases overlap in time
    assert np.all(together.start_s == 0.0)
    assert together.phase_s[0, :, EXPERTS] == pytest.approx(np.full(8, compute_s))


@pytest.mark.parametrize("fidelity", BACKENDS)
def test_same_stream_runs_one_operation_at_a_time(eight_gpu_switch: Topology, fidelity: str
                                                  ) -> None:
    """Two computes with no dependencies still share the compute stream: they run back to back
    in plan order, so the step is their sum."""
    b = PlanBuilder(8)
    b.compute("a", "attention", 0, "attention", np.full(8, 1e-4), *_zeros(8)[1:], after=())
    b.compute("b", "router", 0, "router", np.full(8, 2e-4), *_zeros(8)[1:], after=())
    timeline = execute(b.plan(1, 0), eight_gpu_switch, fidelity, launch_s=LAUNCH_S)
    assert timeline.step_s == pytest.approx(3e-4)
    assert timeline.start_s[1] == pytest.approx(np.full(8, 1e-4))


@pytest.mark.parametrize("fidelity", BACKENDS)
def test_barrier_and_group_collective_wait_for_their_last_rank(
    eight_gpu_switch: Topology, fidelity: str
) -> None:
    """Rank 5 computes 1 ms longer: a barrier over all ranks ends for everyone when it arrives;
    a ring all-gather of group (4..7) starts when rank 5 arrives; in the DES group (0..3) does
    not wait for it."""
    slow = np.full(8, 1e-4)
    slow[5] = 1.1e-3
    b = PlanBuilder(8)
    b.compute("work", "attention", 0, "attention", slow, *_zeros(8)[1:])
    b.add(Collective(name="ring", phase="moe_comm", block=0, ranks=tuple(range(8)),
                     op="allgather", groups=((0, 1, 2, 3), (4, 5, 6, 7)),
                     size_bytes=(4e6, 4e6)))
    b.add(Barrier(name="barrier", phase="moe_comm", block=0, ranks=tuple(range(8))))
    timeline = execute(b.plan(1, 0), eight_gpu_switch, fidelity, launch_s=LAUNCH_S)
    ring_s = LAUNCH_S + 3 * (1e-6 * 2 + 1e6 / 100e9)  # 3 steps of S/4 over two 1 us hops
    ring_end = timeline.end_s[1]
    assert ring_end[4:] == pytest.approx(np.full(4, 1.1e-3 + ring_s), rel=1e-6)
    if fidelity == "des":
        assert ring_end[:4] == pytest.approx(np.full(4, 1e-4 + ring_s), rel=1e-6)
    assert np.all(timeline.end_s[2] == ring_end.max())


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
    received most tokens has the longest expert phase (compute-bound at 4096 tokens; with the
    kernel profile's 128-row tiles another rank may tie it: same tiles, and its efficiency read
    at a slightly different size moves it by well under 1%)."""
    scenario = Scenario(placement="EP8", topology="dgx-h100", batch=8, context=512)
    inputs = resolve_inputs(scenario)
    step = build_step(inputs.trace, "prefill", 8, 512)
    traffic = step_traffic(inputs, step)
    timeline = time_step(inputs, step, traffic)
    load = traffic.rank_load()
    expert_s = timeline.phase_s[:, :, EXPERTS]
    hot = expert_s[np.arange(len(load)), load.argmax(axis=1)]
    assert np.all(hot >= expert_s.max(axis=1) * 0.995)
    # and the slowest rank's expert time exceeds the mean by the load's max/mean
    ratio = expert_s.max(axis=1) / expert_s.mean(axis=1)
    imbalance = load.max(axis=1) / load.mean(axis=1)
    assert np.all(ratio > 1 + 0.5 * (imbalance - 1))


def test_ttft_sums_the_prefill_chunk_steps() -> None:
    """32 prompts of 2048 tokens in 8192-token chunks: TTFT is 8 times one 4-prompt step."""
    scenario = Scenario(
        placement="EP8", topology="dgx-h100", batch=32, context=2048, fidelity="analytic"
    )
    inputs = resolve_inputs(scenario)
    ((_, build, repeats),) = prefill_steps(inputs)
    chunk = build()
    assert (chunk.num_sequences, chunk.num_tokens, repeats) == (4, 8192, 8)
    chunk_s = time_step(inputs, chunk, step_traffic(inputs, chunk)).step_s
    result = evaluate(scenario)
    assert result.ttft_s == pytest.approx(8 * chunk_s)
    assert result.prefill_tokens_per_s == pytest.approx(32 * 2048 / result.ttft_s)


def test_phase_plots_show_the_step_the_result_reports() -> None:
    """The plot data of a chunked prefill is the first chunk the result times (8 of the 16
    prompts of 1024 tokens in an 8192-token chunk), not the whole unchunked batch: its Gantt
    ends at the result's step time and its expert load counts 8192 tokens x top-2."""
    scenario = Scenario(placement="EP8", topology="dgx-h100", phase="prefill", batch=16,
                        context=1024, fidelity="analytic")
    result = evaluate(scenario)
    data = result.plot_data()
    assert data["gantt"]["step_s"] == result.latency.step_s  # type: ignore[union-attr]
    assert np.array(data["expert_load"]).sum(axis=1).tolist() == [8192 * 2] * 32
    assert result.inputs["tokens"] == 8192


def test_decode_steps_walk_the_trace() -> None:
    """TPOT averages decode steps 0..N-1, each a different slice of the real sequences."""
    scenario = Scenario(placement="EP8", topology="dgx-h100", phase="decode", batch=8,
                        context=256, decode_steps=3, fidelity="analytic")
    inputs = resolve_inputs(scenario)
    steps = [decode_step(inputs, i).trace.experts for i in range(3)]
    assert not np.array_equal(steps[0], steps[1])
    result = evaluate(scenario)
    assert result.tpot_s == pytest.approx(sum(result.tpot_steps_s) / 3)
