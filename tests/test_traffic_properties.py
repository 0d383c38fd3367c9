"""Traffic invariants on random traces and layouts (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.trace.format import RouterTrace
from moesim.traffic.placement import Parallelism
from moesim.traffic.traffic import compute_traffic
from tests.helpers import tiny_model

NUM_EXPERTS = 8


@st.composite
def layouts(draw: st.DrawFn) -> Parallelism:
    """A valid product-form layout of 1..8 ranks whose EP divides 8 experts."""
    moe_tp = draw(st.sampled_from([1, 2]))
    moe_ep = draw(st.sampled_from([1, 2, 4, 8]))
    moe_dp = draw(st.sampled_from([1, 2]))
    world = moe_tp * moe_ep * moe_dp
    divisors = [d for d in range(1, world + 1) if world % d == 0]
    attn_tp = draw(st.sampled_from(divisors))
    rest = world // attn_tp
    attn_sp = draw(st.sampled_from([d for d in divisors if rest % d == 0]))
    return Parallelism(
        attn_tp=attn_tp,
        attn_sp=attn_sp,
        attn_dp=rest // attn_sp,
        moe_tp=moe_tp,
        moe_ep=moe_ep,
        moe_dp=moe_dp,
    )


@st.composite
def traces(draw: st.DrawFn) -> RouterTrace:
    """Random top-2 traces over 8 experts with distinct choices per token."""
    layers = draw(st.integers(1, 3))
    tokens = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scores = rng.random((layers, tokens, NUM_EXPERTS))
    experts = np.argsort(scores, axis=2)[:, :, :2]
    return RouterTrace(
        experts=experts, seq_id=np.zeros(tokens, dtype=np.int32), pos=np.arange(tokens)
    )


def _model(trace: RouterTrace):  # type: ignore[no-untyped-def]
    return tiny_model(num_layers=trace.num_layers, num_experts=NUM_EXPERTS, top_k=2)


@settings(max_examples=60, deadline=None)
@given(trace=traces(), par=layouts(), dedup=st.sampled_from(["none", "gpu", "node"]))
def test_tokens_conserved_and_dispatch_equals_combine(
    trace: RouterTrace, par: Parallelism, dedup: str
) -> None:
    """Every token-expert pair is processed once per layer; combine volume equals dispatch."""
    gpn = 2 if par.world % 2 == 0 else 1
    traffic = compute_traffic(trace, _model(trace), par, dedup=dedup, gpus_per_node=gpn)
    # each MoE-TP shard processes the whole group's tokens, so divide its copies out
    processed = traffic.rank_expert_tokens.sum(axis=(1, 2)) // par.moe_tp
    assert processed.tolist() == [trace.num_tokens * 2] * trace.num_layers
    assert traffic.expert_load.sum(axis=1).tolist() == [trace.num_tokens * 2] * trace.num_layers
    assert traffic.tokens_per_rank.sum() == trace.num_tokens
    assert traffic.combine_bytes.sum() == traffic.dispatch_bytes.sum()
    np.testing.assert_array_equal(traffic.combine_bytes[0], traffic.dispatch_bytes[0].T)


@settings(max_examples=60, deadline=None)
@given(trace=traces(), par=layouts())
def test_local_plus_cross_is_two_k_hidden_per_token(trace: RouterTrace, par: Parallelism) -> None:
    """With dedup none, local + cross-rank bytes = 2 * k * hidden * act_bytes * tokens per layer."""
    traffic = compute_traffic(trace, _model(trace), par, dedup="none")
    total = traffic.a2a_bytes_per_layer() + traffic.local_bytes_per_layer()
    assert total.tolist() == [2 * 2 * 4 * 2 * trace.num_tokens] * trace.num_layers


@settings(max_examples=40, deadline=None)
@given(trace=traces(), tp=st.sampled_from([1, 2, 4, 8]))
def test_pure_tp_and_ep1_have_no_all_to_all(trace: RouterTrace, tp: int) -> None:
    """TP{n} and any layout with moe_ep = 1 send no all-to-all bytes."""
    model = _model(trace)
    tp_traffic = compute_traffic(trace, model, Parallelism(attn_tp=tp, moe_tp=tp))
    assert tp_traffic.a2a_bytes_per_layer().sum() == 0
    dp_traffic = compute_traffic(trace, model, Parallelism(attn_dp=tp, moe_dp=tp))
    assert dp_traffic.a2a_bytes_per_layer().sum() == 0


@settings(max_examples=40, deadline=None)
@given(trace=traces(), par=layouts())
def test_dedup_never_adds_cross_node_bytes(trace: RouterTrace, par: Parallelism) -> None:
    """gpu dedup sends at most what none sends; node dedup at most gpu's bytes across nodes."""
    gpn = 2 if par.world % 2 == 0 else 1
    model = _model(trace)
    by_mode = {
        mode: compute_traffic(trace, model, par, dedup=mode, gpus_per_node=gpn).dispatch_bytes
        for mode in ("none", "gpu", "node")
    }
    assert by_mode["gpu"].sum() <= by_mode["none"].sum()
    node = np.arange(par.world) // gpn
    cross = node[:, None] != node[None, :]
    assert (by_mode["node"] * cross).sum() <= (by_mode["gpu"] * cross).sum()
