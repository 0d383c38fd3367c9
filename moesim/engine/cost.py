"""Compute cost: a roofline per operation plus a launch overhead, per rank of a step.

time = max(FLOPs / (peak * compute_efficiency), bytes / (memory bandwidth * memory_efficiency))
       + kernel_launch_s

Peaks and efficiencies come from the topology's `GpuSpec` (datasheet peaks, calibrated
efficiencies). A rank's share of each weight comes from `ModelSpec` (heads, K/V heads, expert
shards). Expert GEMMs are costed per expert slot from the tokens it received, with its weights
read once when it got any token: that is how expert load imbalance becomes time.

The op functions take numpy arrays (one entry per rank, or per layer and rank) as well as
numbers. `step_costs` costs every operation of one step on every rank; the step plan
(`moesim.engine.plan`) only orders what it computes here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.inputs.models import ModelSpec
from moesim.inputs.options import ACT_DTYPE_BYTES, ActDtype
from moesim.inputs.topology_spec import GpuSpec
from moesim.traffic.traffic import Traffic
from moesim.traffic.workload import StepWorkload

__all__ = [
    "OpCost",
    "StepCosts",
    "roofline_time_s",
    "attention_cost",
    "router_cost",
    "experts_cost",
    "dense_ffn_cost",
    "lm_head_cost",
    "step_costs",
]

Number = Any  # float or numpy array, broadcast elementwise


@dataclass(frozen=True)
class OpCost:
    """FLOPs, bytes moved through memory, and modelled time of one operation (per rank when
    the fields are arrays)."""

    flops: Number
    bytes_moved: Number
    time_s: Number

    def arrays(self, layer: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(time_s, flops, bytes_moved) as arrays; `layer` picks a row of per-layer costs."""
        parts = (self.time_s, self.flops, self.bytes_moved)
        out = tuple(np.asarray(p, dtype=np.float64) for p in parts)
        if layer is not None:
            out = tuple(p[layer] for p in out)
        return out  # type: ignore[return-value]


def _peak_flops_per_s(gpu: GpuSpec, weight_bytes: float) -> float:
    """FP8 peak for 1-byte weights where the GPU has it, else the BF16 peak."""
    if weight_bytes <= 1 and gpu.peak_fp8_flops_per_s:
        return gpu.peak_fp8_flops_per_s
    return gpu.peak_bf16_flops_per_s


def roofline_time_s(
    flops: Number, bytes_moved: Number, gpu: GpuSpec, weight_bytes: float = 2, launches: int = 1
) -> Number:
    """Roofline time of one op: the slower of compute and memory, plus `launches` overheads."""
    compute_s = np.divide(flops, _peak_flops_per_s(gpu, weight_bytes) * gpu.compute_efficiency)
    memory_s = np.divide(bytes_moved, gpu.memory_bandwidth_bytes_per_s * gpu.memory_efficiency)
    return np.maximum(compute_s, memory_s) + launches * gpu.kernel_launch_s


def _op(
    flops: Number, bytes_moved: Number, gpu: GpuSpec, weight_bytes: float, launches: int = 1
) -> OpCost:
    return OpCost(
        flops, bytes_moved, roofline_time_s(flops, bytes_moved, gpu, weight_bytes, launches)
    )


def attention_cost(
    model: ModelSpec,
    gpu: GpuSpec,
    *,
    tokens: Number,
    keys_attended: Number,
    kv_cache_tokens_read: Number,
    attn_tp: int,
    weight_bytes: float,
    act_bytes: float,
) -> OpCost:
    """One block's attention on one rank: projections for `tokens` plus scores over
    `keys_attended` (sum over query tokens of keys each attends to), with `attn_tp` sharding
    heads and weights, reading `kv_cache_tokens_read` tokens of KV cache."""
    heads = model.heads_per_rank(attn_tp)
    proj_flops = 2 * model.attention_matmul_params_per_rank(attn_tp) * np.asarray(tokens)
    score_flops = 2 * heads * (model.head_dim + model.value_head_dim) * np.asarray(keys_attended)
    kv_bytes = np.asarray(kv_cache_tokens_read) * model.kv_bytes_per_token_per_layer_per_rank(
        attn_tp, act_bytes
    )
    weight_read = model.attention_params_per_rank(attn_tp) * weight_bytes
    activations = 4 * np.asarray(tokens) * model.hidden_size * act_bytes
    return _op(proj_flops + score_flops, weight_read + kv_bytes + activations, gpu, weight_bytes, 2)


def router_cost(model: ModelSpec, gpu: GpuSpec, *, tokens: Number, act_bytes: float) -> OpCost:
    """Router GEMM and top-k of `tokens` on one rank."""
    tokens = np.asarray(tokens)
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
    """Grouped GEMM of a rank's expert slots (`tokens_per_expert[..., S]`): each expert's
    roofline from its token count, weights (sharded by `moe_tp`) read once per expert that
    received any token; one launch. Sums over the last axis."""
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
        flops.sum(axis=-1),
        bytes_moved.sum(axis=-1),
        per_expert_s.sum(axis=-1) + gpu.kernel_launch_s,
    )


def dense_ffn_cost(
    model: ModelSpec,
    gpu: GpuSpec,
    *,
    tokens: Number,
    params: int,
    weight_bytes: float,
    act_bytes: float,
) -> OpCost:
    """Dense SwiGLU FFNs of `params` weights on one rank (dense blocks, shared experts) on
    `tokens`; nothing where either is 0."""
    tokens = np.asarray(tokens, dtype=np.float64)
    flops = 2 * params * tokens
    bytes_moved = params * weight_bytes + tokens * (2 * model.hidden_size) * act_bytes
    time_s = roofline_time_s(flops, bytes_moved, gpu, weight_bytes)
    idle = (tokens == 0) | (params == 0)
    return OpCost(np.where(idle, 0.0, flops), np.where(idle, 0.0, bytes_moved),
                  np.where(idle, 0.0, time_s))


def lm_head_cost(
    model: ModelSpec, gpu: GpuSpec, *, tokens: Number, tp: int, weight_bytes: float,
    act_bytes: float
) -> OpCost:
    """Output projection to the vocabulary for `tokens` (vocab-parallel over `tp`)."""
    vocab = model.vocab_per_rank(tp)
    params = model.hidden_size * vocab
    bytes_moved = params * weight_bytes + np.asarray(tokens) * vocab * act_bytes
    return _op(2 * params * np.asarray(tokens), bytes_moved, gpu, weight_bytes)


# ---- one step, every rank ------------------------------------------------------------------


@dataclass(frozen=True)
class StepCosts:
    """Every compute operation of one step, per rank (`experts` per MoE layer and rank)."""

    attention: OpCost  # [W], every block
    dense_ffn: OpCost  # [W], leading dense blocks
    router: OpCost  # [W], MoE blocks
    experts: OpCost  # [L, W], routed experts per MoE layer
    shared_experts: OpCost  # [W], MoE blocks
    lm_head: OpCost  # [W]


def _attention_reads(workload: StepWorkload, traffic: Traffic) -> tuple[np.ndarray, ...]:
    """Per rank: tokens of its attention group, keys they attend to, KV-cache tokens read."""
    par = traffic.parallelism
    ranks = par.ranks()
    group = ranks // par.attn_tp  # attention token group of each rank
    group_tokens = workload.group_sizes(par.token_groups)[group]
    group_keys = workload.per_group(workload.keys_per_token, par.token_groups)[group]
    if workload.phase == "decode" and par.attn_sp > 1:
        # the KV cache is sharded over SP ranks: each computes every group token on its shard
        sp_group = ranks // (par.attn_tp * par.attn_sp)
        sp_keys = np.bincount(sp_group, weights=group_keys) / par.attn_tp
        group_keys = sp_keys[sp_group] / par.attn_sp
    if workload.kv_read_per_token is not None:
        kv_read = workload.per_group(workload.kv_read_per_token, par.token_groups)[group]
    elif workload.phase == "decode":
        kv_read = group_keys
    else:  # the chunk's own K/V plus, for a later piece of a long prompt, its cached prefix
        kv_read = group_tokens * workload.kv_tokens_read_per_token
    return group_tokens, group_keys, kv_read


def _logit_tokens(workload: StepWorkload, traffic: Traffic) -> np.ndarray:
    """Per rank: tokens whose logits it computes (prefill: each sequence's last; decode: all)."""
    par = traffic.parallelism
    if workload.logits_per_token is not None:
        logits = workload.logits_per_token
    elif workload.phase == "prefill":
        seq = workload.trace.seq_id
        logits = np.r_[seq[1:] != seq[:-1], True]
    else:
        logits = np.ones(workload.num_tokens, bool)
    return workload.per_group(logits, par.token_groups)[par.ranks() // par.attn_tp]


def step_costs(
    workload: StepWorkload,
    traffic: Traffic,
    model: ModelSpec,
    gpu: GpuSpec,
    *,
    act_dtype: ActDtype = "bf16",
    weight_bytes: float = 2,
) -> StepCosts:
    """Cost every compute operation of one step on every rank."""
    par = traffic.parallelism
    act_bytes = ACT_DTYPE_BYTES[act_dtype]
    tokens, keys, kv_read = _attention_reads(workload, traffic)
    dispatched = traffic.tokens_per_rank.astype(np.float64)
    bytes_ = {"weight_bytes": weight_bytes, "act_bytes": act_bytes}
    return StepCosts(
        attention=attention_cost(model, gpu, tokens=tokens.astype(np.float64), keys_attended=keys,
                                 kv_cache_tokens_read=kv_read, attn_tp=par.attn_tp, **bytes_),
        dense_ffn=dense_ffn_cost(model, gpu, tokens=tokens,
                                 params=model.dense_ffn_params_per_shard(par.attn_tp), **bytes_),
        router=router_cost(model, gpu, tokens=dispatched, act_bytes=act_bytes),
        experts=experts_cost(model, gpu, tokens_per_expert=traffic.rank_expert_tokens,
                             moe_tp=par.moe_tp, **bytes_),
        shared_experts=dense_ffn_cost(
            model, gpu, tokens=dispatched * par.moe_tp,
            params=model.num_shared_experts * model.shared_expert_params_per_shard(par.moe_tp),
            **bytes_),
        lm_head=lm_head_cost(model, gpu, tokens=_logit_tokens(workload, traffic),
                             tp=par.attn_tp, **bytes_),
    )
