"""Memory fit: does one rank of a parallel layout hold its weights, KV cache and buffers?

Per rank, in bytes (the largest rank where ranks differ: uneven sequence or token blocks are
rounded up):

- **weights**: routed experts in the rank's slots of the expert placement (default `E / moe_ep`
  per MoE layer; replicas add slots), each split over `moe_tp` (MoE-DP replicas each hold all
  experts); shared experts split over `moe_tp`; attention q/o
  projections split over `attn_tp`, GQA k/v projections over `min(attn_tp, kv_heads)` (a K/V
  head is replicated beyond that), MLA's latent down-projections replicated and its per-head
  up-projections split; leading dense FFNs split over `attn_tp`; input embedding and LM head
  vocab-parallel over `attn_tp`; routers and norms replicated.
- **KV cache**: the sequences of the rank's attention-DP group (`ceil(batch / attn_dp)`) times
  `context` cached tokens (pass context plus the tokens still to generate for the end of a
  request) times every block. GQA K/V heads are split over `attn_tp` up to `kv_heads`; MLA's
  latent and rope key (`kv_lora_rank + qk_rope_head_dim`) are one per token and not split;
  SP splits the context (`ceil(context / attn_sp)`).
- **activations**: the peak of the largest step a serving engine runs. Chunked prefill fills a
  step up to `prefill_chunk_tokens` tokens (decode tokens included), so the step has
  `max(batch, prefill_chunk_tokens)` tokens, spread over the `attn_dp * attn_sp` token groups.
  Every rank keeps its group's residual stream and normed input (`2 * hidden` per token; TP
  ranks hold all the group's tokens) plus the largest of: attention (q, k, v and output of
  its heads), the experts (per received token copy its input, gate and up outputs of
  `ffn / moe_tp` each and its output, with the step's `top_k` copies spread evenly over the
  EP ranks, shared experts on the dispatching rank's tokens), and fp32 logits (one row per
  sequence of the group, `vocab / attn_tp` wide). Balanced routing is assumed; a hot expert's
  rank holds more.
- **communication buffers**: all-to-all send and receive buffers of one dispatch (reused by
  the combine): every copy a rank dispatches (`top_k` per token, no dedup) and every copy it
  receives, `hidden * act_bytes` each; with SP, two K/V blocks of the ring (double buffer).
- **reserve**: `(1 - usable_fraction)` of the GPU for the CUDA context, NCCL's internal
  buffers, CUDA graphs and allocator fragmentation. The default 0.9 is vLLM's default
  `--gpu-memory-utilization` (docs.vllm.ai, engine arguments: "default 0.9").

`headroom_bytes = capacity_bytes - total_bytes`; the layout fits when it is >= 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from moesim.inputs.models import ModelSpec
from moesim.traffic.experts import ExpertPlacement, contiguous_placement
from moesim.traffic.placement import Parallelism

__all__ = [
    "MemoryFit",
    "memory_fit",
    "weight_bytes_per_rank",
    "kv_cache_capacity_tokens",
    "DEFAULT_USABLE_FRACTION",
    "DEFAULT_PREFILL_CHUNK_TOKENS",
]

# vLLM's default --gpu-memory-utilization (docs.vllm.ai engine arguments): the rest of the GPU
# is left to the CUDA context, NCCL buffers and fragmentation.
DEFAULT_USABLE_FRACTION = 0.9
# ASSUMPTION: a common chunked-prefill token budget (`--max-num-batched-tokens 8192`); it sets
# the activation peak. Pass your engine's value.
DEFAULT_PREFILL_CHUNK_TOKENS = 8192

_DTYPE_NAMES = {4: "fp32", 2: "bf16", 1: "fp8", 0.5: "int4"}
GB = 1e9


@dataclass(frozen=True)
class MemoryFit:
    """Bytes one rank needs (the largest rank), the GPU's capacity, and whether it fits."""

    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    comm_buffer_bytes: int
    reserved_bytes: int
    total_bytes: int
    capacity_bytes: int
    headroom_bytes: int
    fits: bool
    reason: str
    weights_detail_bytes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return asdict(self)


def _ceil_div(num: int, den: int) -> int:
    return -(-num // den)


def weight_bytes_per_rank(
    model: ModelSpec,
    par: Parallelism,
    weight_bytes: float = 2,
    experts: ExpertPlacement | None = None,
    expert_weight_bytes: float | None = None,
) -> dict[str, int]:
    """Weight bytes one rank holds, by part: experts, shared_experts, attention, dense_ffn,
    embeddings, router_and_norms. Routed experts (at `expert_weight_bytes`, default
    `weight_bytes`): the EP rank holding the most expert slots over all MoE layers (`experts`;
    default the contiguous placement, E / moe_ep per layer)."""
    if experts is None:
        experts = contiguous_placement(model.num_experts, par.moe_ep, model.num_moe_layers)
    params = {
        "experts": int(experts.experts_per_rank.sum(axis=0).max())
        * model.expert_params_per_shard(par.moe_tp),
        "shared_experts": model.num_moe_layers
        * model.num_shared_experts
        * model.shared_expert_params_per_shard(par.moe_tp),
        "attention": model.num_layers * model.attention_params_per_rank(par.attn_tp),
        "dense_ffn": model.first_dense_layers * model.dense_ffn_params_per_shard(par.attn_tp),
        "embeddings": (1 if model.tie_embeddings else 2)
        * model.vocab_per_rank(par.attn_tp)
        * model.hidden_size,
        "router_and_norms": model.num_moe_layers * model.router_params_per_layer
        + model.num_layers * model.norm_params_per_layer
        + model.hidden_size,
    }
    per_param = {"experts": weight_bytes if expert_weight_bytes is None else expert_weight_bytes}
    return {part: math.ceil(count * per_param.get(part, weight_bytes))
            for part, count in params.items()}


def _kv_cache_bytes(
    model: ModelSpec, par: Parallelism, batch: int, context: int, kv_bytes: float
) -> int:
    sequences = _ceil_div(batch, par.attn_dp)  # a scheduler balancing sequences over DP
    tokens = sequences * _ceil_div(context, par.attn_sp)
    return tokens * model.num_layers * model.kv_bytes_per_token_per_layer_per_rank(
        par.attn_tp, kv_bytes
    )


def _step_shape(par: Parallelism, batch: int, prefill_chunk_tokens: int) -> tuple[int, int, int]:
    """Tokens per attention group, token copies received per expert rank, sequences per group."""
    step_tokens = max(batch, prefill_chunk_tokens)
    group_tokens = _ceil_div(step_tokens, par.token_groups)
    received = _ceil_div(step_tokens, par.moe_dp * par.moe_ep)  # times top_k, see caller
    group_sequences = _ceil_div(batch, par.token_groups)
    return group_tokens, received, group_sequences


def _activation_bytes(
    model: ModelSpec, par: Parallelism, batch: int, chunk: int, act_bytes: float
) -> int:
    group_tokens, received, group_sequences = _step_shape(par, batch, chunk)
    received *= model.top_k
    hidden = model.hidden_size
    heads = model.heads_per_rank(par.attn_tp)
    if model.attention == "mla":  # K/V expanded per head in prefill
        kv_heads = heads
    else:
        kv_heads = _ceil_div(model.num_kv_heads, model.kv_head_shards(par.attn_tp))
    head_width = model.head_dim + model.value_head_dim  # q.k plus value
    attention = group_tokens * (heads + kv_heads) * head_width * act_bytes
    expert_width = 2 * hidden + 2 * model.expert_ffn_per_shard(par.moe_tp)
    shared_ffn = _ceil_div(model.shared_expert_ffn_size, par.moe_tp)
    shared_width = model.num_shared_experts * 2 * shared_ffn
    dispatched = _ceil_div(group_tokens, par.attn_tp)
    experts = (received * expert_width + dispatched * shared_width) * act_bytes
    logits = group_sequences * model.vocab_per_rank(par.attn_tp) * 4  # fp32
    resident = group_tokens * 2 * hidden * act_bytes
    return math.ceil(resident + max(attention, experts, logits))


def _comm_buffer_bytes(
    model: ModelSpec, par: Parallelism, batch: int, chunk: int, act_bytes: float, kv_bytes: float
) -> int:
    group_tokens, received, _ = _step_shape(par, batch, chunk)
    total = 0.0
    if par.moe_ep > 1:
        send = _ceil_div(group_tokens, par.attn_tp) * model.top_k
        recv = _ceil_div(received * model.top_k, par.moe_tp)
        total += (send + recv) * model.hidden_size * act_bytes
    if par.attn_sp > 1:
        per_token = model.kv_bytes_per_token_per_layer_per_rank(par.attn_tp, kv_bytes)
        total += 2 * group_tokens * per_token
    return math.ceil(total)


def _dtype_name(weight_bytes: float) -> str:
    return _DTYPE_NAMES.get(weight_bytes, f"{weight_bytes:g} B/param")


def _reason(
    model: ModelSpec, par: Parallelism, parts: dict[str, int], usable: float, capacity: float,
    weight_bytes: float,
) -> str:
    """Why a layout does not fit, naming the dominant part and the fix."""
    gpu = f"the {usable / GB:.1f} GB usable of {capacity / GB:.1f} GB per GPU"
    name = f"{model.name} {_dtype_name(weight_bytes)}"
    if parts["weights"] > usable:
        total_weights = model.weight_bytes(weight_bytes)
        need = math.ceil(total_weights / usable)
        if need > par.world:
            fix = f"needs >= {need} GPUs"
        else:
            fix = f"on {par.label} replicates too much: shard further (more moe_ep or attn_tp)"
        if weight_bytes > 1 and parts["weights"] / weight_bytes <= usable:
            fix += " or fp8"
        return f"weights {parts['weights'] / GB:.1f} GB exceed {gpu}: {name} {fix}"
    largest = max(parts, key=lambda k: parts[k])
    listed = " + ".join(f"{k} {v / GB:.2f}" for k, v in parts.items())
    return (f"{largest} {parts[largest] / GB:.1f} GB is the largest part: {listed} = "
            f"{sum(parts.values()) / GB:.1f} GB exceed {gpu}: lower the batch or context, use an "
            "fp8 KV cache, or add GPUs")


def memory_fit(
    model: ModelSpec,
    par: Parallelism,
    gpu_memory_bytes: float,
    *,
    batch: int,
    context: int,
    weight_bytes: float = 2,
    act_bytes: float = 2,
    kv_bytes: float = 2,
    prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
    usable_fraction: float = DEFAULT_USABLE_FRACTION,
    experts: ExpertPlacement | None = None,
    expert_weight_bytes: float | None = None,
    a2a_buffer_bytes: int = 0,
) -> MemoryFit:
    """Per-rank memory of serving `batch` sequences at `context` tokens on layout `par`, with
    `experts` placed as given (default: contiguous) and an all-to-all implementation's fixed
    buffers (`a2a_buffer_bytes`: DeepEP low-latency's) among the comm buffers."""
    detail = weight_bytes_per_rank(model, par, weight_bytes, experts, expert_weight_bytes)
    parts = {
        "weights": sum(detail.values()),
        "KV cache": _kv_cache_bytes(model, par, batch, context, kv_bytes),
        "activations": _activation_bytes(model, par, batch, prefill_chunk_tokens, act_bytes),
        "comm buffers": _comm_buffer_bytes(
            model, par, batch, prefill_chunk_tokens, act_bytes, kv_bytes
        ) + a2a_buffer_bytes,
    }
    capacity = int(gpu_memory_bytes)
    reserved = math.ceil(capacity * (1 - usable_fraction))
    total = sum(parts.values()) + reserved
    fits = total <= capacity
    reason = "" if fits else _reason(
        model, par, parts, capacity - reserved, capacity, weight_bytes
    )
    return MemoryFit(
        weights_bytes=parts["weights"],
        kv_cache_bytes=parts["KV cache"],
        activation_bytes=parts["activations"],
        comm_buffer_bytes=parts["comm buffers"],
        reserved_bytes=reserved,
        total_bytes=total,
        capacity_bytes=capacity,
        headroom_bytes=capacity - total,
        fits=fits,
        reason=reason,
        weights_detail_bytes=detail,
    )


def kv_cache_capacity_tokens(
    model: ModelSpec,
    par: Parallelism,
    gpu_memory_bytes: float,
    *,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    weight_bytes: float = 2,
    act_bytes: float = 2,
    kv_bytes: float = 2,
    usable_fraction: float = DEFAULT_USABLE_FRACTION,
    experts: ExpertPlacement | None = None,
    expert_weight_bytes: float | None = None,
) -> int:
    """Tokens of KV cache one attention group holds when serving: what a rank has left after
    the reserve, its weights, the activation peak of a `max_num_batched_tokens` step of
    `max_num_seqs` sequences and the communication buffers, over the KV bytes one token costs
    on the rank in every block (vLLM sizes its paged cache the same way). 0 when nothing is
    left. Sequence parallelism is not covered (a serving engine splits no context)."""
    capacity = int(gpu_memory_bytes)
    reserved = math.ceil(capacity * (1 - usable_fraction))
    used = (sum(weight_bytes_per_rank(model, par, weight_bytes, experts,
                                      expert_weight_bytes).values())
            + _activation_bytes(model, par, max_num_seqs, max_num_batched_tokens, act_bytes)
            + _comm_buffer_bytes(model, par, max_num_seqs, max_num_batched_tokens, act_bytes,
                                 kv_bytes))
    per_token = model.num_layers * model.kv_bytes_per_token_per_layer_per_rank(par.attn_tp,
                                                                                kv_bytes)
    return max(0, (capacity - reserved - used) // per_token)
