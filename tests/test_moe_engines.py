"""What MoE engines run: all-to-all implementations and their bytes, DeepEP's published figures,
two-batch overlap, expert load balancing with replicas, multi-token prediction."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.calibrate.deepep import LOW_LATENCY_ROWS, NORMAL_ROWS, reproduce
from moesim.engine.a2a import compute_slowdown
from moesim.engine.backends import execute
from moesim.engine.cost import OpCost, StepCosts
from moesim.engine.plan import Collective, MicroBatch, build_step_plan
from moesim.errors import PlacementError
from moesim.inputs.config import ExpertPlacementSpec, Scenario, ServeSpec
from moesim.inputs.topology import Topology, load_topology
from moesim.planning.evaluate import evaluate
from moesim.planning.resolve import resolve_inputs
from moesim.planning.serving import serve
from moesim.traffic.balance import balanced_placement, ep_rank_load, expert_load, moved_weight_bytes
from moesim.traffic.experts import contiguous_placement, placement_from_spec
from moesim.traffic.placement import parse_placement
from moesim.traffic.traffic import compute_traffic, deepep_ll_buffer_bytes, vector_bytes
from moesim.traffic.workload import build_step, mtp_tokens_per_step, split_step
from tests.helpers import tiny_model, trace_from

A2AS = ("direct", "allgather", "deepep-normal", "deepep-ll")


# --- all-to-all implementations: bytes -------------------------------------------------------

def test_vector_sizes_follow_deepeps_formats() -> None:
    """DeepSeek-V3's hidden 7168: fp8 dispatch 7168 + 56 fp32 scales = 7392 B, DeepEP
    low-latency adds its 16-byte header (7408 B, tests/test_low_latency.py's
    `hidden + hidden / 128 * 4 + 16`), bf16 combine 14336 B."""
    assert vector_bytes(7168, "fp8") == 7392
    assert vector_bytes(7168, "fp8", "deepep-ll") == 7408
    assert vector_bytes(7168, "bf16", "deepep-ll", combine=True) == 14336
    assert vector_bytes(4096, "bf16") == 8192


def test_deepep_low_latency_buffer_matches_the_published_layout() -> None:
    """get_low_latency_rdma_size_hint(128 tokens, hidden 7168, 256 experts): 14352-byte dispatch
    and 14560-byte combine messages, send and receive buffers of 256 * 128 * 14560 B, each
    doubled, signalling 2 * 1024 B, rounded past the next 128: 1,908,410,496 B."""
    assert deepep_ll_buffer_bytes(128, 7168, 256) == 1_908_410_496
    # closed form for hidden > 512: 4 E T (2H + H/32) + 2 align128(4E), then + 128
    assert deepep_ll_buffer_bytes(64, 4096, 64) == 4 * 64 * 64 * (2 * 4096 + 128) + 2 * 256 + 128


def _one_token_each() -> tuple[object, object]:
    """EP2, 2 tokens: token 0 (rank 0) picks experts 2, 3 (rank 1), token 1 (rank 1) picks 0, 2."""
    trace = trace_from([[[2, 3], [0, 2]]])
    return trace, tiny_model(num_layers=1, hidden_size=256)


@pytest.mark.parametrize("a2a", A2AS)
def test_dispatch_and_combine_carry_the_same_vectors(a2a: str) -> None:
    """Every implementation: combine returns what dispatch sent (vectors), each way in its own
    vector size; DeepEP dispatches fp8 with scales, combines bf16."""
    trace, model = _one_token_each()
    traffic = compute_traffic(trace, model, parse_placement("EP2"), a2a=a2a)  # type: ignore
    dv, cv = traffic.dispatch_vector_size, traffic.combine_vector_size
    np.testing.assert_array_equal(traffic.dispatch_bytes // dv,
                                  (traffic.combine_bytes // cv).transpose(0, 2, 1))
    assert cv == 256 * 2
    assert dv == {"direct": 512, "allgather": 512, "deepep-normal": 256 + 8,
                  "deepep-ll": 256 + 8 + 16}[a2a]


def test_exact_bytes_per_implementation_on_a_hand_case() -> None:
    """Token 0 on rank 0 -> experts 2, 3 (both rank 1); token 1 on rank 1 -> experts 0 (rank 0)
    and 2 (local). Cross-rank vectors, dispatch: direct and LL 2 (rank 0 -> 1) + 1; DeepEP
    normal dedups by node (one node: by GPU) 1 + 1; all-gather sends each token to the other
    rank: 1 + 1."""
    trace, model = _one_token_each()
    par = parse_placement("EP2")
    cross = {a2a: compute_traffic(trace, model, par, a2a=a2a)  # type: ignore[arg-type]
             for a2a in A2AS}
    assert int(cross["direct"].dispatch_cross_bytes()[0]) == 3 * 512
    assert int(cross["deepep-ll"].dispatch_cross_bytes()[0]) == 3 * 280
    assert int(cross["deepep-ll"].combine_cross_bytes()[0]) == 3 * 512
    assert int(cross["deepep-normal"].dispatch_cross_bytes()[0]) == 2 * 264
    assert int(cross["allgather"].dispatch_cross_bytes()[0]) == 2 * 512
    assert int(cross["deepep-ll"].a2a_bytes_per_layer()[0]) == 3 * 280 + 3 * 512


def test_allgather_is_planned_as_collectives_and_tp_has_no_all_to_all() -> None:
    """`allgather` dispatch is an all-gather, its combine a reduce-scatter, one per MoE group;
    TP (every expert local) plans no dispatch at all."""
    trace, model = _one_token_each()
    costs = _costs(2, 1, attention_s=1e-6, experts_s=1e-6)
    traffic = compute_traffic(trace, model, parse_placement("EP2"), a2a="allgather")
    plan = build_step_plan(traffic, costs, 0)
    ops = {op.name: op for op in plan.ops}
    assert isinstance(ops["dispatch"], Collective) and ops["dispatch"].op == "allgather"
    assert isinstance(ops["combine"], Collective) and ops["combine"].op == "reducescatter"
    assert ops["dispatch"].size_bytes == (2 * 512,)
    tp = compute_traffic(trace, model, parse_placement("TP2"), a2a="deepep-ll")
    assert not build_step_plan(tp, costs, 0).find("dispatch")


def test_deepep_normal_takes_sms_from_overlapped_compute() -> None:
    """DeepEP normal holds 20 of H100's 132 SMs: compute beside it takes 132/112 as long;
    the low-latency kernels' hook holds none."""
    topo = load_topology("dgx-h100")
    assert compute_slowdown("deepep-normal", topo) == pytest.approx(132 / 112)
    assert compute_slowdown("deepep-ll", topo) == 1.0


# --- DeepEP's published figures --------------------------------------------------------------

def _fast(rows: tuple[object, ...]) -> list[object]:
    return [pytest.param(r, id=f"{r.impl}-{r.kind}-ep{r.ep}",  # type: ignore[attr-defined]
                         marks=[pytest.mark.slow] if r.ep > 64 else [])  # type: ignore
            for r in rows]


@pytest.mark.parametrize("row", _fast(LOW_LATENCY_ROWS + NORMAL_ROWS))
def test_deepep_published_rows_within_ten_percent(row: object) -> None:
    """Each README row (H800, DeepSeek-V3 shapes, DeepEP's test routing) reproduced by the
    topology's links plus moesim.engine.a2a's fitted latencies and share: logical GB/s within
    10% (the fit's largest error is 8.8%, LL combine EP128)."""
    got = reproduce(row)  # type: ignore[arg-type]
    assert abs(got.error) < 0.10, f"{got.gb_per_s:.1f} vs {got.row.gb_per_s} GB/s"


# --- two-batch overlap -----------------------------------------------------------------------

def _cost(value: float | np.ndarray, world: int) -> OpCost:
    time_s = np.broadcast_to(np.asarray(value, dtype=float), np.shape(value) or (world,))
    return OpCost(flops=np.zeros_like(time_s), bytes_moved=np.zeros_like(time_s),
                  time_s=np.array(time_s))


def _costs(world: int, layers: int, *, attention_s: float, experts_s: float,
           shared_s: float = 0.0, lm_head_s: float = 0.0) -> StepCosts:
    zero = _cost(0.0, world)
    return StepCosts(attention=_cost(attention_s, world), dense_ffn=zero, router=zero,
                     experts=_cost(np.full((layers, world), experts_s), world),
                     shared_experts=_cost(shared_s, world), lm_head=_cost(lm_head_s, world))


def _balanced_ep2(tokens: int, layers: int, hidden: int) -> tuple[object, object]:
    """EP2, `tokens` per rank, each choosing the two experts of the other rank."""
    own = [[2, 3]] * tokens + [[0, 1]] * tokens
    trace = trace_from([own] * layers)
    return trace, tiny_model(num_layers=layers, hidden_size=hidden)


@pytest.mark.parametrize("fidelity", ["des", "analytic"])
def test_two_batch_overlap_of_a_communication_bound_block(two_gpu_link: Topology,
                                                           fidelity: str) -> None:
    """Two micro-batches, each block: attention a, experts e, dispatch and combine d each, with
    a, e < d (communication-bound). The comm stream never waits after micro-batch 0's first
    attention, so the step takes a + (4 d per block) + the last LM head: max(compute, comm)
    plus the split overhead (what cannot overlap); without overlap it is the sum. DES and
    analytic agree (no contention: one link each way)."""
    layers, tokens, hidden = 3, 64, 65536  # 2 vectors of 128 KiB per token: 16 MiB a way
    trace, model = _balanced_ep2(2 * tokens, layers, hidden)
    par = parse_placement("EP2")
    whole = compute_traffic(trace, model, par)
    step = build_step(trace, "decode")
    halves = [compute_traffic(h.trace, model, par, token_group=h.token_group)
              for h in split_step(step, par.token_groups)]
    a, e, head = 20e-6, 30e-6, 7e-6
    half_costs = _costs(2, layers, attention_s=a, experts_s=e, lm_head_s=head)
    micro = tuple(MicroBatch(t, half_costs) for t in halves)
    launch = 5e-6
    d = launch + 1e-6 + float(halves[0].dispatch_bytes[0, 0, 1]) / 100e9
    assert d > max(a, e)
    tbo = execute(build_step_plan(whole, half_costs, 0, overlap="tbo", micro_batches=micro),
                  two_gpu_link, fidelity, launch_s=launch)
    assert tbo.step_s == pytest.approx(a + 4 * d * layers + head, rel=1e-9)
    compute = layers * 2 * (a + e) + 2 * head
    assert tbo.step_s >= max(compute, 4 * d * layers)
    plain = execute(build_step_plan(whole, _costs(2, layers, attention_s=a, experts_s=e,
                                                  lm_head_s=head), 0),
                    two_gpu_link, fidelity, launch_s=launch)
    d_whole = launch + 1e-6 + float(whole.dispatch_bytes[0, 0, 1]) / 100e9
    assert plain.step_s == pytest.approx(layers * (a + 2 * d_whole + e) + head, rel=1e-9)


@pytest.mark.parametrize("fidelity", ["des", "analytic"])
@pytest.mark.parametrize("shared_s", [50e-6, 400e-6])
def test_shared_experts_run_beside_the_dispatch(two_gpu_link: Topology, fidelity: str,
                                                 shared_s: float) -> None:
    """With `--overlap shared` the shared experts wait only for the router: a block takes
    a + max(d, s) + e + c instead of a + d + e + s + c (shorter and longer than the dispatch)."""
    trace, model = _balanced_ep2(64, 1, 65536)
    traffic = compute_traffic(trace, model, parse_placement("EP2"))
    a, e = 10e-6, 10e-6
    costs = _costs(2, 1, attention_s=a, experts_s=e, shared_s=shared_s)
    launch = 5e-6
    d = launch + 1e-6 + float(traffic.dispatch_bytes[0, 0, 1]) / 100e9
    assert 50e-6 < d < 400e-6
    plain = execute(build_step_plan(traffic, costs, 0), two_gpu_link, fidelity, launch_s=launch)
    assert plain.step_s == pytest.approx(a + 2 * d + e + shared_s, rel=1e-9)
    beside = build_step_plan(traffic, costs, 0, overlap="shared")
    got = execute(beside, two_gpu_link, fidelity, launch_s=launch)
    assert got.step_s == pytest.approx(a + max(d, shared_s) + e + d, rel=1e-9)
    shared = next(i for i, op in enumerate(beside.ops) if op.name == "shared_experts")
    router = next(i for i, op in enumerate(beside.ops) if op.name == "router")
    assert beside.ops[shared].deps == (router,)


def test_sm_share_slows_only_blocks_with_an_all_to_all() -> None:
    """DeepEP normal's SMs slow compute beside its all-to-all: TP8 (no all-to-all) under
    two-batch overlap takes the same time with deepep-normal as with direct."""
    base = Scenario(placement="TP8", topology="dgx-h100", phase="decode", batch=16,
                    context=256, layers=2, fidelity="analytic", overlap="tbo")
    times = {a2a: evaluate(base.model_copy(update={"a2a": a2a})).tpot_s
             for a2a in ("direct", "deepep-normal")}
    assert times["direct"] == pytest.approx(times["deepep-normal"], rel=1e-12)


def test_two_batch_overlap_refuses_sequence_parallel_attention() -> None:
    """Halving each SP rank's slice would run tokens before the K/V they attend to."""
    sc = Scenario(placement="SP8", topology="dgx-h100", phase="prefill", batch=2, context=256,
                  layers=2, fidelity="analytic", overlap="tbo")
    with pytest.raises(PlacementError, match="sequence-parallel"):
        evaluate(sc)


def test_dedup_is_the_implementations_own() -> None:
    """DeepEP dedups by node itself: asking for another dedup with it is refused, by name."""
    with pytest.raises(ValueError, match="dedup gpu applies to a2a direct"):
        Scenario(a2a="deepep-ll", dedup="gpu")


def test_split_step_conserves_tokens_and_traffic() -> None:
    """The two micro-batches hold every token once, each attention group's split in half, and
    their dispatch bytes add up to the whole step's (no dedup)."""
    sc = Scenario(placement="EP4xDP2", phase="decode", batch=33, context=128, layers=4)
    inputs = resolve_inputs(sc)
    step = build_step(inputs.trace, "decode", 33, 128)
    par = inputs.parallelism
    first, second = split_step(step, par.token_groups)
    assert first.num_tokens + second.num_tokens == 33
    sizes = step.group_sizes(par.token_groups)
    np.testing.assert_array_equal(first.group_sizes(par.token_groups), (sizes + 1) // 2)
    parts = [compute_traffic(h.trace, inputs.model, par, token_group=h.token_group)
             for h in (first, second)]
    whole = compute_traffic(step.trace, inputs.model, par, token_group=step.token_group)
    np.testing.assert_array_equal(parts[0].dispatch_bytes + parts[1].dispatch_bytes,
                                  whole.dispatch_bytes)


def test_overlap_in_a_run_reports_it_and_keeps_the_bytes() -> None:
    """`--overlap tbo` keeps the step's traffic and runs every operation once per micro-batch."""
    base = Scenario(placement="EP8", topology="dgx-h100", phase="prefill", batch=4,
                    context=512, layers=2, fidelity="analytic")
    plain, tbo = (evaluate(base.model_copy(update={"overlap": o})) for o in ("none", "tbo"))
    assert tbo.a2a_bytes == plain.a2a_bytes
    assert tbo.moe_engine is not None and tbo.moe_engine["overlap"] == "tbo"
    assert tbo.detail is not None and plain.detail is not None
    tbo_ops = tbo.detail.timeline.plan.ops  # type: ignore[union-attr]
    plain_ops = plain.detail.timeline.plan.ops  # type: ignore[union-attr]
    for name in ("attention", "dispatch", "experts", "combine", "lm_head"):
        count = sum(op.name == name for op in plain_ops)
        assert sum(op.name == name for op in tbo_ops) == 2 * count, name


# --- expert load balancing -------------------------------------------------------------------

def test_one_hot_expert_copied_to_two_ranks_halves_its_load_and_moves_its_weights() -> None:
    """EP2, 4 experts, 8 tokens each choosing expert 0 (and 1, 2 or 3). Contiguous: rank 0
    holds 0 and 1. Copying expert 0 onto rank 1 (round robin over the copies): rank 0's expert 0
    load halves from 8 to 4, and the change moves exactly one expert's weights, rank 0 -> 1."""
    trace = trace_from([[[0, 1], [0, 2], [0, 3], [0, 1], [0, 2], [0, 3], [0, 2], [0, 3]]])
    model = tiny_model(num_layers=1)
    par = parse_placement("EP2")
    old = contiguous_placement(4, 2, 1)
    new = placement_from_spec(ExpertPlacementSpec(ep_ranks=[[0, 1], [2, 3, 0]]),
                              num_experts=4, moe_ep=2, num_layers=1, source="test")
    before = compute_traffic(trace, model, par, experts=old).rank_expert_tokens[0]
    after = compute_traffic(trace, model, par, experts=new).rank_expert_tokens[0]
    assert before[0, 0] == 8 and after[0, 0] == 4 and after[1, 2] == 4
    assert before.sum() == after.sum() == 16  # every assignment processed once
    expert_bytes = model.params_per_expert * 2.0
    moved = moved_weight_bytes(old, new, par, expert_bytes, gpus_per_node=2)
    expected = np.zeros((2, 2))
    expected[0, 1] = expert_bytes
    np.testing.assert_array_equal(moved, expected)


def test_eplb_lowers_the_rank_imbalance_of_the_real_trace() -> None:
    """Mixtral-8x7B's real HumanEval trace on EP4 with 4 redundant slots: both policies lower
    the mean over layers of the rank max/mean against the contiguous placement."""
    sc = Scenario(placement="EP4", phase="decode", layers=8)
    inputs = resolve_inputs(sc)
    load = expert_load(inputs.trace.experts, 8)
    contiguous = load.reshape(8, 4, 2).sum(axis=2)
    before = float(np.mean(contiguous.max(axis=1) / contiguous.mean(axis=1)))
    for policy in ("greedy", "deepseek"):
        placement = balanced_placement(load, inputs.model, inputs.parallelism, policy=policy,
                                       redundant=4, gpus_per_node=8)
        traffic = compute_traffic(inputs.trace, inputs.model, inputs.parallelism,
                                  experts=placement)
        per_rank = ep_rank_load(inputs.parallelism, traffic.rank_load())
        after = float(np.mean(per_rank.max(axis=1) / per_rank.mean(axis=1)))
        assert after < before - 0.05, (policy, before, after)


def test_a_stale_placement_costs_after_the_trace_drifts() -> None:
    """A trace whose hot experts change half way (Zipf 1.2 over one random expert ranking, then
    another): EPLB fitted on the first half balances the first half but not the second, where a
    placement fitted on the second half does; the stale one's imbalance is the cost (seeded
    Zipf draws: the figures in the comments are this seed's, the margins far wider than a
    seed changes them)."""
    from moesim.trace.synth import generate_trace, zipf_params

    halves = [generate_trace(zipf_params(64, 2, 4, 1.2, np.random.default_rng(seed)), 4096, 16,
                             np.random.default_rng(seed)) for seed in (1, 2)]
    model = tiny_model(num_layers=4, num_experts=64)
    par = parse_placement("EP8")

    def imbalance(placement: object, tokens_of: object) -> float:
        traffic = compute_traffic(tokens_of, model, par, experts=placement)  # type: ignore
        load = ep_rank_load(par, traffic.rank_load())
        return float(np.mean(load.max(axis=1) / load.mean(axis=1)))

    def fitted(part: object) -> object:
        return balanced_placement(expert_load(part.experts, 64), model, par,  # type: ignore
                                  policy="deepseek", redundant=8, gpus_per_node=8)

    first, second = halves
    stale, fresh = fitted(first), fitted(second)
    assert imbalance(stale, first) < 1.2  # balanced where it was fitted (1.17)
    assert imbalance(fresh, second) < 1.2  # (1.06)
    # fitted to the old hot experts, the stale copies sit where the load no longer is: 2.70,
    # as bad as no balancing (contiguous: 2.45 here, 2.46-2.80 over other seeds)
    assert imbalance(stale, second) > imbalance(fresh, second) + 1.0


def test_relabelled_placement_keeps_experts_in_place() -> None:
    """A new placement that only permutes the old one's ranks within nodes moves nothing once
    relabelled (it moved every rank's experts before); the per-rank expert sets stay the
    same, so the balance does."""
    from moesim.traffic.balance import keep_in_place
    from moesim.traffic.experts import ExpertPlacement

    par = parse_placement("EP8")
    rng = np.random.default_rng(0)
    table = np.stack([rng.permutation(16).reshape(8, 2) for _ in range(3)])  # [L, 8, 2]
    old = ExpertPlacement(table, 16)
    perm = np.r_[rng.permutation(4), 4 + rng.permutation(4)]  # within each 4-rank node
    new = ExpertPlacement(table[:, perm], 16)
    assert moved_weight_bytes(old, new, par, 1.0, gpus_per_node=4).sum() > 0
    kept = keep_in_place(old, new, ranks_per_node=4)
    assert moved_weight_bytes(old, kept, par, 1.0, gpus_per_node=4).sum() == 0
    assert sorted(map(tuple, np.sort(kept.slot_expert, axis=2).reshape(-1, 2).tolist())) == \
        sorted(map(tuple, np.sort(new.slot_expert, axis=2).reshape(-1, 2).tolist()))


def test_redundant_experts_that_do_not_split_evenly_name_the_fix() -> None:
    """8 experts + 3 copies do not split over 4 EP ranks: the error names --redundant-experts
    and a value that works."""
    sc = Scenario(placement="EP4", eplb="deepseek", redundant_experts=3)
    with pytest.raises(PlacementError, match="--redundant-experts 4"):
        resolve_inputs(sc)


def test_eplb_in_a_run_reports_load_before_and_after() -> None:
    """`run --eplb deepseek --redundant-experts 4` on EP4: rank_load before/after per layer
    and EP rank; the tokens are the same, the imbalance lower."""
    sc = Scenario(placement="EP4", phase="prefill", layers=4, eplb="deepseek",
                  redundant_experts=4)
    result = evaluate(sc)
    assert result.moe_engine is not None
    load = result.moe_engine["rank_load"]
    assert np.sum(load["before_tokens"]) == np.sum(load["after_tokens"])
    assert load["after_max_over_mean"]["mean"] < load["before_max_over_mean"]["mean"]
    assert any("eplb: deepseek placement" in n for n in result.inputs["notes"])


def test_serve_rebalances_every_n_iterations_and_charges_the_move() -> None:
    """`--rebalance-steps 20` on a stale placement (fitted on the trace's first 40 tokens):
    the engine rebalances every 20 iterations, moving weights that take time."""
    sc = Scenario(placement="EP4", topology="dgx-h100", layers=2, fidelity="analytic",
                  eplb="greedy", redundant_experts=4, eplb_window=40, rebalance_steps=20,
                  serve=ServeSpec(concurrency=8, requests=16, isl=64, osl=16))
    result = serve(sc)
    moe = result.inputs["moe_engine"]
    iterations = len(result.iterations)
    assert moe["rebalances"] == iterations // 20 >= 1
    assert moe["rebalance_moved_bytes"] > 0 and moe["rebalance_s"] > 0


def test_a_rebalanced_placement_times_the_next_iterations() -> None:
    """After a rebalance the step timer's iterations run on the new placement: the next
    iteration takes exactly what the step takes on it, the load window restarts, and the
    rebalancing iteration itself took the weight move on top."""
    from moesim.planning.evaluate import EvaluationCache, step_traffic, time_step
    from moesim.planning.serving import _StepTimer
    from moesim.serve.iteration import iteration_workload
    from moesim.serve.requests import Request, TraceSequences

    sc = Scenario(placement="EP4", topology="dgx-h100", layers=2, fidelity="analytic",
                  eplb="greedy", redundant_experts=4, eplb_window=8, rebalance_steps=2)
    inputs = resolve_inputs(sc)
    timer = _StepTimer(inputs, EvaluationCache())
    sequences = TraceSequences(inputs.trace.seq_id)
    requests = [Request(i, 0.0, 64, 8) for i in range(4)]
    for request in requests:
        sequences.assign(request, 4)
    batches = [[(r, 64)] for r in requests]  # one prompt per attention-DP group

    def plain_s(run_inputs: object) -> float:
        step = iteration_workload(batches, inputs.trace, sequences)
        traffic = step_traffic(run_inputs, step)  # type: ignore[arg-type]
        return time_step(run_inputs, step, traffic).step_s  # type: ignore[arg-type]

    first = timer(batches)
    assert first == pytest.approx(plain_s(inputs))
    second = timer(batches)  # the second iteration rebalances
    assert len(timer.rebalances) == 1 and timer.inputs.experts is not inputs.experts
    assert second == pytest.approx(plain_s(inputs) + timer.rebalances[0]["seconds"])
    assert not timer.load.any()
    third = timer(batches)
    assert third == pytest.approx(plain_s(timer.inputs))
    np.testing.assert_array_equal(
        step_traffic(timer.inputs, iteration_workload(batches, inputs.trace, sequences)
                     ).experts.slot_expert, timer.inputs.experts.slot_expert)


# --- multi-token prediction ------------------------------------------------------------------

def test_expected_tokens_per_step() -> None:
    """1 + a1 + a1 a2 + ...: 2 drafts at 0.8 gain 2.44 tokens; per position 0.9, 0.5: 2.35."""
    assert mtp_tokens_per_step(2, [0.8]) == pytest.approx(2.44)
    assert mtp_tokens_per_step(2, [0.9, 0.5]) == pytest.approx(2.35)
    assert mtp_tokens_per_step(0, [0.8]) == 1.0


def test_verify_step_runs_the_next_tokens_of_each_sequence() -> None:
    """A decode step with 3 tokens per sequence runs positions C..C+2 of each, routed as the
    trace's consecutive tokens."""
    inputs = resolve_inputs(Scenario(layers=2))
    one = build_step(inputs.trace, "decode", 2, 100, decode_step=0)
    three = build_step(inputs.trace, "decode", 2, 100, decode_step=0, tokens_per_sequence=3)
    assert three.num_tokens == 6
    np.testing.assert_array_equal(three.trace.pos, [100, 101, 102] * 2)
    np.testing.assert_array_equal(three.trace.experts[:, ::3], one.trace.experts)
    later = build_step(inputs.trace, "decode", 2, 100, decode_step=1)
    np.testing.assert_array_equal(three.trace.experts[:, 1::3], later.trace.experts)


def test_mtp_acceptance_one_and_zero_bound_the_result() -> None:
    """Acceptance 1: each step yields 1 + N tokens (TPOT = step / (1 + N)); acceptance 0: one
    token for the verify and draft work (TPOT = step, above plain decoding); in between, in
    between."""
    base = Scenario(placement="EP8", topology="dgx-h100", phase="decode", batch=16,
                    context=256, layers=2, fidelity="analytic")
    plain = evaluate(base)
    got = {a: evaluate(base.model_copy(update={"mtp": 2, "mtp_acceptance": [a]}))
           for a in (0.0, 0.7, 1.0)}
    step_s = got[1.0].moe_engine["mtp"]["step_s"][0]  # type: ignore[index]
    assert got[1.0].tpot_s == pytest.approx(step_s / 3)
    assert got[0.0].tpot_s == pytest.approx(step_s)
    assert got[1.0].tpot_s < got[0.7].tpot_s < got[0.0].tpot_s  # type: ignore[operator]
    assert got[0.0].tpot_s > plain.tpot_s  # type: ignore[operator]


def test_served_mtp_with_full_acceptance_halves_the_decode_iterations() -> None:
    """One request of 9 output tokens: the prefill makes the first, then plain decoding takes 8
    iterations; one draft token always accepted takes 4."""
    counts = {}
    for mtp in (0, 1):
        sc = Scenario(placement="EP2", topology="dgx-h100", layers=2, fidelity="analytic",
                      mtp=mtp, mtp_acceptance=[1.0],
                      serve=ServeSpec(concurrency=1, requests=1, isl=32, osl=9))
        result = serve(sc)
        counts[mtp] = len(result.iterations)
        assert result.requests[0].emitted == 9
    assert counts == {0: 9, 1: 5}


def test_served_mtp_streams_accepted_tokens_as_one_chunk() -> None:
    """Tokens accepted together arrive together: ITL counts one gap per chunk (no zero gaps),
    while TPOT still divides by every output token."""
    sc = Scenario(placement="EP2", topology="dgx-h100", layers=2, fidelity="analytic", mtp=1,
                  mtp_acceptance=[1.0], serve=ServeSpec(concurrency=1, requests=1, isl=32, osl=9))
    result = serve(sc)
    assert result.stats.itl_s.p50 > 0
    request = result.requests[0]
    times = request.token_times_s
    assert result.stats.tpot_s.mean == pytest.approx((times[-1] - times[0]) / 8)
