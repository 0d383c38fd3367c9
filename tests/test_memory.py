"""Memory fit: per-rank weights, KV cache, activations and buffers against hand-worked bytes."""

from __future__ import annotations

import pytest

from moesim.inputs.models import PRESETS, get_model
from moesim.traffic.memory import (
    memory_fit,
    weight_bytes_per_rank,
)
from moesim.traffic.placement import Parallelism, parse_placement

MIXTRAL = get_model("mixtral-8x7b")
DEEPSEEK = get_model("deepseek-v3")
H100_BYTES = 80e9  # H100 SXM5 80GB datasheet

# Mixtral-8x7B parameters by hand (config.json: hidden 4096, 32 layers, vocab 32000, 32 heads,
# 8 KV heads of 128, 8 experts of FFN 14336):
EXPERT = 3 * 4096 * 14336  # 176,160,768 per expert
ATTENTION = 2 * 4096 * 32 * 128 + 2 * 4096 * 8 * 128  # q,o + k,v = 41,943,040 per block
EMBEDDINGS = 2 * 32000 * 4096  # input embedding + LM head = 262,144,000
ROUTER_NORMS = 32 * 4096 * 8 + 32 * 2 * 4096 + 4096  # routers, block norms, final norm


def test_mixtral_bf16_on_one_80gb_gpu_is_infeasible_because_of_weights() -> None:
    """Mixtral-8x7B bf16 (46.7B params = 93.4 GB) cannot sit on one 80 GB GPU; the reason names
    the weights, the GPUs needed (93.4 / 72 usable -> 2) and fp8 (46.7 GB) as fixes."""
    fit = memory_fit(MIXTRAL, parse_placement("TP1"), H100_BYTES, batch=1, context=2048)
    total_params = 32 * (8 * EXPERT + ATTENTION) + EMBEDDINGS + ROUTER_NORMS
    assert total_params == 46_702_792_704
    assert fit.weights_bytes == 2 * total_params == 93_405_585_408
    assert not fit.fits
    assert fit.headroom_bytes < 0
    assert fit.reason.startswith("weights 93.4 GB exceed the 72.0 GB usable of 80.0 GB per GPU")
    assert "Mixtral-8x7B bf16 needs >= 2 GPUs or fp8" in fit.reason


def test_mixtral_ep8_on_h100_fits_with_hand_computed_headroom() -> None:
    """EP8, decode batch 32 at context 2048, bf16, on 80 GB: every part worked by hand."""
    fit = memory_fit(MIXTRAL, parse_placement("EP8"), H100_BYTES, batch=32, context=2048)
    # weights: one expert per layer, full attention, embeddings, routers and norms
    weights = 2 * (32 * EXPERT + 32 * ATTENTION + EMBEDDINGS + ROUTER_NORMS)
    assert fit.weights_bytes == weights == 14_485_561_344
    # KV: 32 / 8 = 4 sequences x 2048 tokens x 32 layers x (2 x 8 heads x 128 x 2 B)
    assert fit.kv_cache_bytes == 4 * 2048 * 32 * 4096 == 1_073_741_824
    # activations: an 8192-token chunk over 8 groups = 1024 tokens; resident 2 x hidden x 2 B;
    # experts peak: 8192 x top-2 / 8 ranks = 2048 copies x (2 x 4096 + 2 x 14336) x 2 B
    assert fit.activation_bytes == 1024 * 2 * 4096 * 2 + 2048 * (2 * 4096 + 2 * 14336) * 2
    assert fit.activation_bytes == 167_772_160
    # a2a buffers: 1024 tokens x 2 copies sent + 2048 copies received, 4096 x 2 B each
    assert fit.comm_buffer_bytes == (1024 * 2 + 2048) * 4096 * 2 == 33_554_432
    assert fit.reserved_bytes == 8_000_000_000  # 10% of 80 GB (vLLM's 0.9 utilisation)
    assert fit.total_bytes == 23_760_629_760
    assert fit.headroom_bytes == 80_000_000_000 - 23_760_629_760 == 56_239_370_240
    assert fit.fits and fit.reason == ""


@pytest.mark.parametrize(
    ("placement", "sequences", "kv_heads_per_rank", "context_per_rank"),
    [
        ("TP8", 32, 1, 2048),  # all 32 sequences, 8 KV heads / 8 ranks
        ("EP8", 4, 8, 2048),  # attention DP: 32 / 8 sequences, all heads
        ("TP2xEP4", 8, 4, 2048),  # 4 DP groups of 8 sequences, 8 / 2 heads
        ("SP8", 32, 8, 256),  # SP shards the context 2048 / 8
    ],
)
def test_kv_cache_bytes_hand_worked(
    placement: str, sequences: int, kv_heads_per_rank: int, context_per_rank: int
) -> None:
    """KV per rank = sequences x context per rank x layers x 2 x KV heads per rank x 128 x 2 B;
    for these 8-GPU layouts it is the same 1 GiB: the cache is split 8 ways in each."""
    fit = memory_fit(MIXTRAL, parse_placement(placement), H100_BYTES, batch=32, context=2048)
    per_token_layer = 2 * kv_heads_per_rank * 128 * 2
    assert fit.kv_cache_bytes == sequences * context_per_rank * 32 * per_token_layer
    assert fit.kv_cache_bytes == 2**30


def test_kv_cache_takes_the_fullest_rank_and_replicates_heads_beyond_kv_heads() -> None:
    """Batch 33 on EP8 puts ceil(33/8) = 5 sequences on the fullest rank; with attention TP16
    the 8 KV heads cannot split further, so each rank keeps one whole head (512 B/token/layer)."""
    fit = memory_fit(MIXTRAL, parse_placement("EP8"), H100_BYTES, batch=33, context=2048)
    assert fit.kv_cache_bytes == 5 * 2048 * 32 * 4096
    assert MIXTRAL.kv_bytes_per_token_per_layer_per_rank(attn_tp=16) == 2 * 1 * 128 * 2
    assert MIXTRAL.kv_bytes_per_token_per_layer_per_rank(attn_tp=4) == 2 * 2 * 128 * 2


def test_deepseek_v3_mla_kv_per_token_is_latent_plus_rope_key_unsharded() -> None:
    """MLA caches kv_lora_rank + qk_rope_head_dim = 512 + 64 values per token and layer
    (DeepSeek-V2 paper, arXiv 2405.04434, Table 1: (d_c + d_h^R) l), not split by TP."""
    for attn_tp in (1, 8):
        assert DEEPSEEK.kv_bytes_per_token_per_layer_per_rank(attn_tp) == (512 + 64) * 2
    fit = memory_fit(DEEPSEEK, Parallelism(attn_dp=8, moe_ep=8), 141e9, batch=8, context=1000)
    assert fit.kv_cache_bytes == 1 * 1000 * 61 * 1152  # one sequence per rank, 61 blocks


@pytest.mark.parametrize("name", list(PRESETS))
def test_unsharded_weights_sum_to_the_model_total(name: str) -> None:
    """On one rank (world 1) the parts add up to every parameter the model counts."""
    model = PRESETS[name]
    parts = weight_bytes_per_rank(model, Parallelism(), weight_bytes=2)
    assert sum(parts.values()) == model.weight_bytes(2)


def test_expert_sharding_and_replication() -> None:
    """EP8 holds 1/8 of the experts per rank, TP8 1/8 of each expert; EP4xDP2 replicates each
    expert twice, so a rank holds twice what EP8 does; attention is split by TP only."""
    ep8 = weight_bytes_per_rank(MIXTRAL, parse_placement("EP8"))
    tp8 = weight_bytes_per_rank(MIXTRAL, parse_placement("TP8"))
    ep4dp2 = weight_bytes_per_rank(MIXTRAL, parse_placement("EP4xDP2"))
    assert ep8["experts"] == tp8["experts"] == 2 * 32 * EXPERT
    assert ep4dp2["experts"] == 2 * ep8["experts"]
    assert ep8["attention"] == 2 * 32 * ATTENTION
    assert tp8["attention"] == ep8["attention"] // 8
    assert tp8["embeddings"] == ep8["embeddings"] // 8


def test_mla_down_projections_stay_replicated_under_tp() -> None:
    """DeepSeek-V3 attention under TP8 keeps the latent down-projections whole on every rank,
    so it is more than 1/8 of the TP1 attention but less than all of it."""
    tp1 = weight_bytes_per_rank(DEEPSEEK, Parallelism())["attention"]
    tp8 = weight_bytes_per_rank(DEEPSEEK, Parallelism(attn_tp=8, moe_tp=8))["attention"]
    replicated = 2 * 61 * (7168 * (512 + 64) + 7168 * 1536 + 1536 + 512)
    assert tp8 == replicated + (tp1 - replicated) // 8


def test_kv_cache_overflow_names_the_kv_cache_not_the_weights() -> None:
    """When weights fit but a huge batch does not, the reason lists the parts and suggests
    lowering the batch or context or sharding the KV cache."""
    fit = memory_fit(MIXTRAL, parse_placement("EP8"), 48e9, batch=256, context=32768)
    assert not fit.fits
    assert fit.reason.startswith("KV cache 137.4 GB is the largest part")  # 256 x 32768 / 8 x
    assert "lower the batch or context" in fit.reason  # x 32 layers x 4096 B = 137.4 GB
