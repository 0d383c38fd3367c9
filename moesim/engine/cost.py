"""Compute cost: a roofline per operation plus a launch overhead.

time = max(FLOPs / (peak * compute_efficiency), bytes / (memory bandwidth * memory_efficiency))
       + kernel_launch_s

Peaks and efficiencies come from the topology's `GpuSpec` (datasheet peaks, calibrated
efficiencies). Expert GEMMs are costed per local expert from the tokens it received, with its
weights read once when it got any token: that is how expert load imbalance becomes time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.inputs.models import ModelSpec
from moesim.inputs.topology_spec import GpuSpec

__all__ = [
    "OpCost",
    "roofline_time_s",
    "attention_cost",
    "router_cost",
    "experts_cost",
    "dense_ffn_cost",
    "lm_head_cost",
]


@dataclass(frozen=True)
class OpCost:
    """FLOPs, bytes moved through memory, and modelled time of one operation on one rank."""

    flops: float
    bytes_moved: float
    time_s: float


def _peak_flops_per_s(gpu: GpuSpec, weight_bytes: float) -> float:
    """FP8 peak for 1-byte weights where the GPU has it, else the BF16 peak."""
    if weight_bytes <= 1 and gpu.peak_fp8_flops_per_s:
        return gpu.peak_fp8_flops_per_s
    return gpu.peak_bf16_flops_per_s


def roofline_time_s(
    flops: float, bytes_moved: float, gpu: GpuSpec, weight_bytes: float = 2, launches: int = 1
) -> float:
    """Roofline time of one op: the slower of compute and memory, plus `launches` overheads."""
    compute_s = flops / (_peak_flops_per_s(gpu, weight_bytes) * gpu.compute_efficiency)
    memory_s = bytes_moved / (gpu.memory_bandwidth_bytes_per_s * gpu.memory_efficiency)
    return max(compute_s, memory_s) + launches * gpu.kernel_launch_s


def _op(
    flops: float, bytes_moved: float, gpu: GpuSpec, weight_bytes: float, launches: int = 1
) -> OpCost:
    return OpCost(
        flops, bytes_moved, roofline_time_s(flops, bytes_moved, gpu, weight_bytes, launches)
    )


def attention_cost(
    model: ModelSpec,
    gpu: GpuSpec,
    *,
    tokens: int,
    keys_attended: float,
    kv_cache_tokens_read: float,
    attn_tp: int,
    weight_bytes: float,
    act_bytes: float,
) -> OpCost:
    """One block's attention on one rank: projections for `tokens` plus scores over
    `keys_attended` (sum over query tokens of keys each attends to), with `attn_tp` sharding
    heads and weights, reading `kv_cache_tokens_read` tokens of KV cache."""
    heads = model.heads_per_rank(attn_tp)
    proj_flops = 2 * model.attention_matmul_params_per_rank(attn_tp) * tokens
    score_flops = 2 * heads * (model.head_dim + model.value_head_dim) * keys_attended
    kv_bytes = kv_cache_tokens_read * model.kv_bytes_per_token_per_layer_per_rank(
        attn_tp, act_bytes
    )
    weight_read = model.attention_params_per_rank(attn_tp) * weight_bytes
    activations = 4 * tokens * model.hidden_size * act_bytes
    return _op(proj_flops + score_flops, weight_read + kv_bytes + activations, gpu, weight_bytes, 2)


def router_cost(model: ModelSpec, gpu: GpuSpec, *, tokens: int, act_bytes: float) -> OpCost:
    """Router GEMM and top-k of `tokens` on one rank."""
    flops = model.router_flops_per_token * tokens
    bytes_moved = model.router_params_per_layer * act_bytes + tokens * model.hidden_size * act_bytes
    return _op(flops, bytes_moved, gpu, act_bytes)


def experts_cost(
    model: ModelSpec,
    gpu: GpuSpec,
    *,
    tokens_per_expert: np.ndarray,
    moe_tp: int,
    weight_bytes: float,
    act_bytes: float,
) -> OpCost:
    """Grouped GEMM of one rank's local experts: each expert's roofline from its token count,
    weights (sharded by `moe_tp`) read once per expert that received any token; one launch."""
    tokens = np.asarray(tokens_per_expert, dtype=np.float64)
    params = model.expert_params_per_shard(moe_tp)
    flops = 2 * params * tokens
    ffn = model.expert_ffn_per_shard(moe_tp)
    bytes_moved = (tokens > 0) * params * weight_bytes + tokens * (
        2 * model.hidden_size + 3 * ffn
    ) * act_bytes
    peak = _peak_flops_per_s(gpu, weight_bytes) * gpu.compute_efficiency
    bandwidth = gpu.memory_bandwidth_bytes_per_s * gpu.memory_efficiency
    per_expert_s = np.maximum(flops / peak, bytes_moved / bandwidth)
    return OpCost(
        float(flops.sum()),
        float(bytes_moved.sum()),
        float(per_expert_s.sum()) + gpu.kernel_launch_s,
    )


def dense_ffn_cost(
    model: ModelSpec,
    gpu: GpuSpec,
    *,
    tokens: int,
    params: int,
    weight_bytes: float,
    act_bytes: float,
) -> OpCost:
    """Dense SwiGLU FFNs of `params` weights on one rank (dense blocks, shared experts) on
    `tokens`; nothing when either is 0."""
    if params == 0 or tokens == 0:
        return OpCost(0.0, 0.0, 0.0)
    flops = 2 * params * tokens
    bytes_moved = params * weight_bytes + tokens * (2 * model.hidden_size) * act_bytes
    return _op(flops, bytes_moved, gpu, weight_bytes)


def lm_head_cost(
    model: ModelSpec, gpu: GpuSpec, *, tokens: int, tp: int, weight_bytes: float, act_bytes: float
) -> OpCost:
    """Output projection to the vocabulary for `tokens` (vocab-parallel over `tp`)."""
    vocab = model.vocab_per_rank(tp)
    params = model.hidden_size * vocab
    bytes_moved = params * weight_bytes + tokens * vocab * act_bytes
    return _op(2 * params * tokens, bytes_moved, gpu, weight_bytes)
