"""Traffic: every byte of a hand-worked 2-layer, 4-token, 4-expert trace, and invariants.

The trace (experts per token, top-2), hidden 4 in bf16 so one vector is 8 bytes:
    layer 0: t0 [0,1]  t1 [1,2]  t2 [2,3]  t3 [0,3]
    layer 1: t0 [3,2]  t1 [0,1]  t2 [1,0]  t3 [2,1]
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import ConfigError, PlacementError, TraceError
from moesim.inputs.config import Scenario, parse_model
from moesim.traffic.placement import Parallelism, parse_placement
from moesim.traffic.traffic import compute_traffic
from tests.helpers import tiny_model, trace_from

VEC = 8  # hidden 4 x 2 bytes
EXPERTS = [
    [[0, 1], [1, 2], [2, 3], [0, 3]],
    [[3, 2], [0, 1], [1, 0], [2, 1]],
]


def _traffic(placement: str, **kwargs):  # type: ignore[no-untyped-def]
    return compute_traffic(trace_from(EXPERTS), tiny_model(), parse_placement(placement), **kwargs)


def test_ep2_dispatch_every_byte() -> None:
    """EP2: rank 0 owns t0,t1 and experts 0,1; rank 1 owns t2,t3 and experts 2,3."""
    traffic = _traffic("EP2")
    # layer 0: t0 -> r0,r0; t1 -> r0,r1; t2 -> r1,r1; t3 -> r0,r1
    # layer 1: t0 -> r1,r1; t1 -> r0,r0; t2 -> r0,r0; t3 -> r1,r0
    expected = np.array([[[3, 1], [1, 3]], [[2, 2], [3, 1]]]) * VEC
    np.testing.assert_array_equal(traffic.dispatch_bytes, expected)
    np.testing.assert_array_equal(traffic.combine_bytes, expected.transpose(0, 2, 1))
    assert traffic.a2a_bytes_per_layer().tolist() == [2 * 2 * VEC, 2 * 5 * VEC]
    assert traffic.local_bytes_per_layer().tolist() == [2 * 6 * VEC, 2 * 3 * VEC]


def test_ep2_gpu_dedup_sends_one_copy_per_rank() -> None:
    """With dedup gpu, layer 1's t0 (both experts on r1) and t1, t2 (both on r0) send once."""
    traffic = _traffic("EP2", dedup="gpu")
    expected_l1 = np.array([[1, 1], [2, 1]]) * VEC
    np.testing.assert_array_equal(traffic.dispatch_bytes[1], expected_l1)
    # layer 0 has no token with both experts on one rank except t0 (r0) and t2 (r1)
    np.testing.assert_array_equal(traffic.dispatch_bytes[0], np.array([[2, 1], [1, 2]]) * VEC)


def test_tp2_has_no_all_to_all() -> None:
    """TP2: rank 0 dispatches t0,t1 and rank 1 t2,t3, each to itself; MoE-TP gathers 2 tokens."""
    traffic = _traffic("TP2")
    expected = np.array([[[4, 0], [0, 4]]] * 2) * VEC
    np.testing.assert_array_equal(traffic.dispatch_bytes, expected)
    assert traffic.a2a_bytes_per_layer().tolist() == [0, 0]
    np.testing.assert_array_equal(traffic.moe_tp_gather_bytes[0], [[0, 2 * VEC], [2 * VEC, 0]])
    # attention reduce-scatter of a 4-token buffer over 2 ranks: each sends the other half
    np.testing.assert_array_equal(traffic.attn_tp_bytes, [[0, 4 * VEC], [4 * VEC, 0]])


def test_ep2xdp2_dispatch_every_byte() -> None:
    """EP2xDP2: one token per rank; ranks 0,1 hold experts {0,1},{2,3} for tokens of ranks 0,1;
    ranks 2,3 hold the same experts for tokens of ranks 2,3."""
    traffic = _traffic("EP2xDP2")
    layer0 = np.zeros((4, 4), dtype=np.int64)
    layer0[0, 0], layer0[1, 0], layer0[1, 1], layer0[2, 3], layer0[3, 2], layer0[3, 3] = (
        2,
        1,
        1,
        2,
        1,
        1,
    )
    layer1 = np.zeros((4, 4), dtype=np.int64)
    layer1[0, 1], layer1[1, 0], layer1[2, 2], layer1[3, 3], layer1[3, 2] = 2, 2, 2, 1, 1
    np.testing.assert_array_equal(traffic.dispatch_bytes, np.stack([layer0, layer1]) * VEC)
    # replica 0 in layer 1 saw t0 (e3,e2) and t1 (e0,e1): rank 0 holds e0,e1 -> [1, 1]
    assert traffic.rank_expert_tokens[1, 0].tolist() == [1, 1]
    assert traffic.rank_expert_tokens[1, 2].tolist() == [1, 2]  # t2 e1,e0 and t3 e1


def test_sp2_dispatch_and_kv_ring() -> None:
    """SP2 owns tokens like EP2 and adds a K/V exchange: 2 tokens x 8 bytes each way per layer.

    KV bytes per token per layer = 2 (K and V) x 1 kv head x head_dim 2 x 2 bytes = 8.
    """
    traffic = _traffic("SP2")
    np.testing.assert_array_equal(traffic.dispatch_bytes, _traffic("EP2").dispatch_bytes)
    np.testing.assert_array_equal(traffic.sp_bytes, [[0, 16], [16, 0]])


def test_sp3_ring_and_allgather_on_uneven_blocks() -> None:
    """SP3 over 4 tokens: blocks 1, 1, 2 tokens = 8, 8, 16 bytes of K/V.

    Ring: rank i sends its successor every block but the successor's own; all-gather: each
    rank sends its block to both peers.
    """
    model = tiny_model(num_experts=3, top_k=1)
    trace = trace_from([[[0], [1], [2], [0]], [[1], [1], [2], [0]]])
    par = Parallelism(attn_sp=3, moe_ep=3)
    ring = compute_traffic(trace, model, par, sp_variant="ring").sp_bytes
    np.testing.assert_array_equal(ring, [[0, 24, 0], [0, 0, 16], [24, 0, 0]])
    gather = compute_traffic(trace, model, par, sp_variant="allgather").sp_bytes
    np.testing.assert_array_equal(gather, [[0, 8, 8], [8, 0, 8], [16, 16, 0]])


def test_node_dedup_relays_one_copy_per_node() -> None:
    """EP4 on 2 nodes x 2 GPUs, 4 experts, top-2: token t0 on rank 0 picks experts 2 and 3,
    both on node 1: one copy crosses to the relay rank 2 (same local index) which forwards to
    rank 3. With dedup gpu two copies would cross."""
    model = tiny_model(num_layers=1)
    trace = trace_from([[[2, 3], [0, 1], [0, 1], [0, 1]]])
    par = parse_placement("EP4")
    node = compute_traffic(trace, model, par, dedup="node", gpus_per_node=2).dispatch_bytes[0]
    assert node[0, 2] == VEC and node[2, 3] == VEC and node[0, 3] == 0
    gpu = compute_traffic(trace, model, par, dedup="gpu", gpus_per_node=2).dispatch_bytes[0]
    assert gpu[0, 2] == VEC and gpu[0, 3] == VEC and gpu[2, 3] == 0


def test_imbalance_of_layer_one() -> None:
    """Layer 1 loads experts 2,3,2,1: max/mean 1.5, CV sqrt(0.5)/2; EP2 ranks 5 vs 3: 1.25."""
    traffic = _traffic("EP2")
    assert traffic.expert_load.tolist() == [[2, 2, 2, 2], [2, 3, 2, 1]]
    from moesim.output.result import layer_imbalance

    imb = layer_imbalance(traffic)
    assert imb.expert_max_over_mean.tolist() == [1.0, 1.5]
    assert imb.expert_cv[1] == pytest.approx(np.sqrt(0.5) / 2)
    assert imb.rank_max_over_mean.tolist() == [1.0, 1.25]


def test_trace_must_fit_model() -> None:
    """Expert ids beyond the model, wrong layer count and wrong k are rejected clearly."""
    with pytest.raises(TraceError, match="expert id 4"):
        compute_traffic(trace_from([[[0, 4]], [[0, 1]]]), tiny_model(), parse_placement("EP2"))
    with pytest.raises(TraceError, match="MoE layers"):
        compute_traffic(trace_from([[[0, 1]]]), tiny_model(), parse_placement("EP2"))
    with pytest.raises(TraceError, match="top-k"):
        compute_traffic(trace_from([[[0]], [[1]]]), tiny_model(), parse_placement("EP2"))


def test_bad_options_are_named() -> None:
    """Options are checked once, at the edge: an unknown dtype or dedup is refused by the
    Scenario naming the field; partial nodes raise PlacementError naming gpus_per_node."""
    for field, value in (("act_dtype", "int3"), ("dedup", "rack"), ("phase", "train")):
        with pytest.raises(ConfigError, match=f"field '{field}'"):
            parse_model(Scenario, {field: value}, "scenario")
    with pytest.raises(PlacementError, match="gpus_per_node"):
        _traffic("EP2", gpus_per_node=3)
