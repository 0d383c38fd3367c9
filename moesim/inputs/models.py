"""Model specs: the shapes of a Mixture-of-Experts transformer and the sizes derived from them.

A `ModelSpec` holds only what a Hugging Face `config.json` says (hidden size, layers, heads,
experts, ...). Everything else (parameters, bytes, FLOPs per token) is derived here, in one
place, so a reader finds where a number comes from in one hop.

Counting conventions (all derived sizes are exact integers):
- FFNs and experts are SwiGLU: gate, up and down projections, `3 * hidden * ffn` parameters.
- Linear layers have no biases unless a field says so (gpt-oss): `attention_bias` gives q, k, v
  and o projection biases, `expert_bias` gives each routed expert a gate-up (2 * ffn) and a
  down (hidden) bias and the router a bias of num_experts; `attention_sinks` adds one learned
  sink logit per head per block. These are counted exactly: in `params_per_expert`,
  `attention_params_per_layer` and `router_params_per_layer`, so in every total. RMSNorm
  weights (two per block, one final, plus MLA's latent norms) are counted in `total_params`
  and `active_params`.
- Ignored because no field carries them (each well under 0.01% of the model): Qwen3's and
  OLMoE's per-head q/k norms, DeepSeek-V3's router score bias, Qwen2-MoE's shared-expert gate
  and qkv biases. DeepSeek-V3's multi-token-prediction module is not part of the main model.
- FLOPs are 2 per multiply-accumulate; MLA projections are counted unabsorbed (as in prefill).
  A bias costs one add per token but is counted at 2 FLOPs like a weight (under 0.05% of an
  expert's FLOPs in gpt-oss).
- Sliding-window attention (`sliding_window`, `layer_types`) changes how many keys a block
  keeps, not its weights or the bytes one cached token takes: `kv_bytes_per_token` is the
  per-token figure of every block; `kv_cache_tokens_per_layer` caps the sliding blocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    NonNegativeInt,
    PositiveInt,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from moesim.errors import ModelError
from moesim.inputs.config import parse_model

__all__ = [
    "ModelSpec",
    "PRESETS",
    "SIZE_LIMITS",
    "MAX_TOTAL_PARAMS",
    "get_model",
    "list_models",
    "model_spec_from_mapping",
]

_MLA_FIELDS = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")

# Upper bounds of the integer fields: generous (each at least 8x the largest released model's
# value: DeepSeek-V3/Kimi-K2 hidden 7168, 61 blocks, 384 experts; vocab 256k) but finite, so a
# typo or a corrupt config (hidden 10^12, 10^9 layers) is one error naming the field instead of
# an overflow or an out-of-memory later. Expert ids are int16 in traces, hence 32768 experts;
# positions are int32, hence the sliding window.
SIZE_LIMITS: Mapping[str, int] = MappingProxyType({
    "hidden_size": 1 << 20,
    "num_layers": 4096,
    "vocab_size": 1 << 24,
    "first_dense_layers": 4096,
    "dense_ffn_size": 1 << 22,
    "num_attention_heads": 4096,
    "num_kv_heads": 4096,
    "head_dim": 1 << 16,
    "q_lora_rank": 1 << 20,
    "kv_lora_rank": 1 << 20,
    "qk_nope_head_dim": 1 << 16,
    "qk_rope_head_dim": 1 << 16,
    "v_head_dim": 1 << 16,
    "num_experts": 1 << 15,
    "top_k": 1 << 15,
    "expert_ffn_size": 1 << 22,
    "num_shared_experts": 4096,
    "shared_expert_ffn_size": 1 << 22,
    "sliding_window": (1 << 31) - 1,
    "num_expert_groups": 1 << 15,
})
# Total parameters: 10^15 is 500x Kimi-K2's 1T, and keeps every byte count far inside int64.
MAX_TOTAL_PARAMS = 10**15


class ModelSpec(BaseModel):
    """Shapes of one MoE transformer, as its Hugging Face config gives them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    hidden_size: PositiveInt
    num_layers: PositiveInt  # all transformer blocks, dense and MoE
    vocab_size: PositiveInt
    tie_embeddings: bool = False
    first_dense_layers: NonNegativeInt = 0  # leading blocks with a dense FFN (DeepSeek-V3: 3)
    dense_ffn_size: NonNegativeInt = 0  # intermediate size of those dense FFNs
    attention: Literal["gqa", "mla"] = "gqa"
    num_attention_heads: PositiveInt
    num_kv_heads: PositiveInt  # MLA: equal to num_attention_heads (K/V expanded per head)
    head_dim: PositiveInt  # MLA: qk_nope_head_dim + qk_rope_head_dim (the q.k dimension)
    q_lora_rank: NonNegativeInt = 0  # MLA only; 0 means q is projected directly (V2-Lite)
    kv_lora_rank: NonNegativeInt = 0
    qk_nope_head_dim: NonNegativeInt = 0
    qk_rope_head_dim: NonNegativeInt = 0
    v_head_dim: NonNegativeInt = 0
    num_experts: PositiveInt  # routed experts per MoE layer
    top_k: PositiveInt
    expert_ffn_size: PositiveInt  # intermediate size of one routed expert
    num_shared_experts: NonNegativeInt = 0
    shared_expert_ffn_size: NonNegativeInt = 0  # intermediate size of one shared expert
    # Sliding-window attention (gpt-oss): keys a sliding block attends to (0: none), and the
    # kind of every block in order ("full" or "sliding"; empty means every block is full).
    sliding_window: NonNegativeInt = 0
    layer_types: tuple[Literal["full", "sliding"], ...] = ()
    attention_bias: bool = False  # q, k, v and o projections carry biases (gpt-oss)
    attention_sinks: bool = False  # one learned sink logit per head per block (gpt-oss)
    expert_bias: bool = False  # routed experts' gate-up and down biases and a router bias
    # Routed experts fall in this many groups (DeepSeek-V3's n_group: a token picks experts in
    # at most topk_group groups); EPLB's hierarchical policy packs whole groups onto nodes.
    num_expert_groups: PositiveInt = 1

    @field_validator(*SIZE_LIMITS, mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        """A size is a JSON/YAML number: not a string ("4096") or a boolean (true is not 1)."""
        if isinstance(value, (str, bool)):
            raise ValueError(f"must be a whole number, got {type(value).__name__} {value!r}")
        return value

    @field_validator(*SIZE_LIMITS)
    @classmethod
    def _within_limit(cls, value: int, info: ValidationInfo) -> int:
        """At most SIZE_LIMITS[field]: far above any real model, so a typo is caught here."""
        limit = SIZE_LIMITS[str(info.field_name)]
        if value > limit:
            shown = value if value.bit_length() < 64 else f"a {value.bit_length()}-bit integer"
            raise ValueError(f"{shown} is above moesim's limit of {limit}; check the value")
        return value

    @field_serializer("layer_types")
    def _layer_types_as_list(self, value: tuple[str, ...]) -> list[str]:
        """A list when dumped, so a spec writes to YAML (safe_dump has no tuples)."""
        return list(value)

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelSpec:
        """Cross-field rules; each message names the field and the fix."""
        problem = _consistency_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    # ---- parameters -------------------------------------------------------------------

    @property
    def num_moe_layers(self) -> int:
        """Blocks whose FFN is a routed MoE layer."""
        return self.num_layers - self.first_dense_layers

    @property
    def num_sliding_layers(self) -> int:
        """Blocks with sliding-window attention (the rest attend to the whole context)."""
        return self.layer_types.count("sliding")

    @property
    def params_per_expert(self) -> int:
        """Parameters of one routed expert: SwiGLU 3 * hidden * expert_ffn_size, plus its
        gate-up (2 * expert_ffn_size) and down (hidden) biases when `expert_bias`."""
        return self.expert_params_per_shard(1)

    @property
    def params_per_shared_expert(self) -> int:
        """Parameters of one shared expert (SwiGLU)."""
        return 3 * self.hidden_size * self.shared_expert_ffn_size

    @property
    def dense_ffn_params(self) -> int:
        """Parameters of one dense FFN in the leading dense blocks (SwiGLU)."""
        return 3 * self.hidden_size * self.dense_ffn_size

    @property
    def attention_params_per_layer(self) -> int:
        """Attention parameters of one block: q, k, v, o projections (MLA: and latent norms;
        with `attention_bias` their biases, with `attention_sinks` one sink per head)."""
        return self.attention_params_per_rank(1)

    @property
    def router_params_per_layer(self) -> int:
        """Router (gate) parameters of one MoE block: hidden * num_experts (+ num_experts bias)."""
        bias = self.num_experts if self.expert_bias else 0
        return self.hidden_size * self.num_experts + bias

    @property
    def norm_params_per_layer(self) -> int:
        """RMSNorm weights around attention and FFN in one block (2 * hidden)."""
        return 2 * self.hidden_size

    @property
    def embedding_params(self) -> int:
        """Input embedding plus output head (one matrix when tied)."""
        matrices = 1 if self.tie_embeddings else 2
        return matrices * self.vocab_size * self.hidden_size

    @property
    def total_params(self) -> int:
        """Every parameter of the main model (embeddings and norms included, MTP excluded)."""
        moe_layer = (
            self.num_experts * self.params_per_expert
            + self.num_shared_experts * self.params_per_shared_expert
            + self.router_params_per_layer
        )
        return self._common_params() + self.num_moe_layers * moe_layer

    @property
    def non_embedding_params(self) -> int:
        """total_params without the input embedding and output head."""
        return self.total_params - self.embedding_params

    @property
    def active_params(self) -> int:
        """Parameters used per token, counting BOTH embedding matrices in full.

        Attention, norms, dense FFNs, shared experts, top_k routed experts and the router of
        every block, plus the whole input embedding and output head. This is how Mistral
        (12.9B for Mixtral-8x7B, 39B for Mixtral-8x22B) and Qwen (3.3B for Qwen3-30B-A3B, 22B
        for Qwen3-235B-A22B) count; DeepSeek, Moonshot (Kimi-K2) and OpenAI (gpt-oss) publish
        figures that match without the input embedding, see `active_compute_params`.
        """
        moe_layer = (
            self.top_k * self.params_per_expert
            + self.num_shared_experts * self.params_per_shared_expert
            + self.router_params_per_layer
        )
        return self._common_params() + self.num_moe_layers * moe_layer

    @property
    def active_compute_params(self) -> int:
        """active_params without the input embedding, a row lookup that multiplies nothing.

        gpt-oss's stated convention ("Unembedding parameters are counted towards active, but
        not embeddings": 5.13B for gpt-oss-120b). DeepSeek-V3's 36.7B activated and
        Kimi-K2's 32B match this count too (36.63B, 31.69B), not active_params (37.55B,
        32.86B), although DeepSeek's README_WEIGHTS.md says its 36.7B includes both the 0.9B
        embedding and the 0.9B output head. 2 * this is the weight FLOPs of one token outside
        the attention scores.
        """
        lookup = 0 if self.tie_embeddings else self.vocab_size * self.hidden_size
        return self.active_params - lookup

    def weight_bytes(self, dtype_bytes: float = 2) -> int:
        """Bytes of all weights (total_params) stored at `dtype_bytes` per parameter."""
        return math.ceil(self.total_params * dtype_bytes)

    def expert_weight_bytes(self, dtype_bytes: float = 2) -> int:
        """Bytes of one routed expert's weights at `dtype_bytes` per parameter."""
        return math.ceil(self.params_per_expert * dtype_bytes)

    # ---- per-token bytes and FLOPs ------------------------------------------------------

    def kv_bytes_per_token_per_layer(self, kv_dtype_bytes: float = 2) -> int:
        """KV-cache bytes one token adds to one block (MLA caches the latent and rope key)."""
        if self.attention == "mla":
            values = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            values = 2 * self.num_kv_heads * self.head_dim
        return math.ceil(values * kv_dtype_bytes)

    def kv_bytes_per_token(self, kv_dtype_bytes: float = 2) -> int:
        """KV-cache bytes one token adds over all blocks (sliding ones too: a full-layer
        figure; `kv_cache_tokens_per_layer` gives how many tokens each block keeps)."""
        return self.num_layers * self.kv_bytes_per_token_per_layer(kv_dtype_bytes)

    def kv_cache_tokens_per_layer(self, context: int) -> list[int]:
        """Tokens of a `context`-token sequence each block keeps in its KV cache, in order:
        a sliding block keeps at most `sliding_window`, a full block all of them."""
        if not self.layer_types:
            return [context] * self.num_layers
        window = min(context, self.sliding_window)
        return [window if kind == "sliding" else context for kind in self.layer_types]

    @property
    def attention_proj_flops_per_token(self) -> int:
        """FLOPs of one block's attention projections for one token (2 * their weights)."""
        return 2 * self._attention_matmul_params()

    @property
    def expert_flops_per_token(self) -> int:
        """FLOPs of one routed expert for one token (2 * params_per_expert, biases included)."""
        return 2 * self.params_per_expert

    @property
    def shared_expert_flops_per_token(self) -> int:
        """FLOPs of all shared experts of one block for one token."""
        return 2 * self.num_shared_experts * self.params_per_shared_expert

    @property
    def router_flops_per_token(self) -> int:
        """FLOPs of one block's router for one token."""
        return 2 * self.router_params_per_layer

    # ---- one rank's share under tensor parallelism -----------------------------------------
    # Attention heads are split over attn_tp and expert FFNs over moe_tp (the placement checks
    # that they divide). GQA K/V heads split only up to num_kv_heads (beyond that a head is
    # replicated); MLA's latent down-projections and their norms are replicated on every rank
    # (vLLM: ReplicatedLinear) and its per-head up-projections split. Cost, traffic and memory
    # all take a rank's share from these methods.

    @property
    def value_head_dim(self) -> int:
        """Size of one attention output (value) head; the q.k size is `head_dim`."""
        return self.v_head_dim if self.attention == "mla" else self.head_dim

    def heads_per_rank(self, attn_tp: int) -> int:
        """Query heads one attention-TP rank computes."""
        return -(-self.num_attention_heads // attn_tp)

    def kv_head_shards(self, attn_tp: int) -> int:
        """Ranks one token's KV cache is split over: GQA up to num_kv_heads, MLA's latent 1."""
        return 1 if self.attention == "mla" else min(attn_tp, self.num_kv_heads)

    def kv_bytes_per_token_per_layer_per_rank(self, attn_tp: int, kv_dtype_bytes: float = 2) -> int:
        """KV-cache bytes one token adds to one block on one attention-TP rank."""
        if self.attention == "mla":
            return self.kv_bytes_per_token_per_layer(kv_dtype_bytes)
        heads = -(-self.num_kv_heads // self.kv_head_shards(attn_tp))
        return math.ceil(2 * heads * self.head_dim * kv_dtype_bytes)

    def attention_matmul_params_per_rank(self, attn_tp: int) -> int:
        """Weights of one block's attention projections held by one attention-TP rank."""
        hidden, heads = self.hidden_size, self.num_attention_heads
        if self.attention == "gqa":
            q_and_o = 2 * hidden * heads * self.head_dim
            k_and_v = 2 * hidden * self.num_kv_heads * self.head_dim
            return -(-q_and_o // attn_tp) + -(-k_and_v // self.kv_head_shards(attn_tp))
        q_out = heads * (self.qk_nope_head_dim + self.qk_rope_head_dim)
        replicated = hidden * (self.kv_lora_rank + self.qk_rope_head_dim)  # kv down-projection
        if self.q_lora_rank:
            replicated += hidden * self.q_lora_rank
            q_up = self.q_lora_rank * q_out
        else:
            q_up = hidden * q_out
        kv_up = self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
        o_proj = heads * self.v_head_dim * hidden
        return replicated + -(-(q_up + kv_up + o_proj) // attn_tp)

    def attention_params_per_rank(self, attn_tp: int) -> int:
        """One block's attention weights on one attention-TP rank, norms (replicated) included.

        Biases split as their projections do (o's, of size hidden, is replicated, as vLLM's
        RowParallelLinear keeps it); sinks split with the heads."""
        params = self.attention_matmul_params_per_rank(attn_tp) + self._attention_norm_params()
        if self.attention_bias:  # gqa only (checked)
            q_bias = self.num_attention_heads * self.head_dim
            kv_bias = 2 * self.num_kv_heads * self.head_dim
            params += (-(-q_bias // attn_tp) + -(-kv_bias // self.kv_head_shards(attn_tp))
                       + self.hidden_size)
        if self.attention_sinks:
            params += self.heads_per_rank(attn_tp)
        return params

    def expert_ffn_per_shard(self, moe_tp: int) -> int:
        """Intermediate width of one routed expert's MoE-TP shard."""
        return -(-self.expert_ffn_size // moe_tp)

    def expert_params_per_shard(self, moe_tp: int) -> int:
        """Parameters of one routed expert's MoE-TP shard (SwiGLU); with `expert_bias` the
        gate-up bias splits with the intermediate size and the down bias (hidden) is whole
        on every shard."""
        split = 3 * self.hidden_size * self.expert_ffn_size
        if not self.expert_bias:
            return -(-split // moe_tp)
        return -(-(split + 2 * self.expert_ffn_size) // moe_tp) + self.hidden_size

    def shared_expert_params_per_shard(self, moe_tp: int) -> int:
        """Parameters of one shared expert's MoE-TP shard (SwiGLU)."""
        return -(-self.params_per_shared_expert // moe_tp)

    def dense_ffn_params_per_shard(self, attn_tp: int) -> int:
        """Parameters of one leading dense FFN's attention-TP shard (SwiGLU)."""
        return -(-self.dense_ffn_params // attn_tp)

    def vocab_per_rank(self, attn_tp: int) -> int:
        """Vocabulary rows of the embedding and LM head on one rank (vocab-parallel)."""
        return -(-self.vocab_size // attn_tp)

    # ---- helpers ------------------------------------------------------------------------

    def _attention_matmul_params(self) -> int:
        """Weights of the attention projections of one block, without norms."""
        return self.attention_matmul_params_per_rank(1)

    def _attention_norm_params(self) -> int:
        """MLA's RMSNorms on the compressed q and kv latents (DeepSeek-V2/V3); none for GQA."""
        if self.attention == "gqa":
            return 0
        return self.q_lora_rank + self.kv_lora_rank

    def _common_params(self) -> int:
        """Parameters outside MoE layers: attention, norms, dense FFNs, embeddings."""
        per_block = self.attention_params_per_layer + self.norm_params_per_layer
        final_norm = self.hidden_size
        dense = self.first_dense_layers * self.dense_ffn_params
        return self.num_layers * per_block + dense + self.embedding_params + final_norm


def _consistency_problem(spec: ModelSpec) -> str | None:
    """The first cross-field rule `spec` breaks, as a message naming the field, or None."""
    if spec.total_params > MAX_TOTAL_PARAMS:
        return (f"hidden_size {spec.hidden_size}, num_layers {spec.num_layers}, num_experts "
                f"{spec.num_experts}, expert_ffn_size {spec.expert_ffn_size} and vocab_size "
                f"{spec.vocab_size} give {spec.total_params:.3g} parameters, above moesim's "
                f"limit of {MAX_TOTAL_PARAMS:.0e}; check these sizes")
    if spec.top_k > spec.num_experts:
        return f"top_k ({spec.top_k}) must be <= num_experts ({spec.num_experts})"
    if spec.first_dense_layers >= spec.num_layers:
        return (
            f"first_dense_layers ({spec.first_dense_layers}) must be < num_layers "
            f"({spec.num_layers}): at least one block must be MoE"
        )
    if (spec.first_dense_layers > 0) != (spec.dense_ffn_size > 0):
        return "first_dense_layers and dense_ffn_size must both be > 0 or both be 0"
    if (spec.num_shared_experts > 0) != (spec.shared_expert_ffn_size > 0):
        return "num_shared_experts and shared_expert_ffn_size must both be > 0 or both be 0"
    if spec.num_experts % spec.num_expert_groups:
        return (f"num_experts ({spec.num_experts}) must be a multiple of num_expert_groups "
                f"({spec.num_expert_groups})")
    window_problem = _sliding_window_problem(spec)
    if window_problem:
        return window_problem
    if spec.attention == "mla":
        if spec.attention_bias:
            return "attention_bias is modelled for attention: gqa only; set attention_bias: false"
        return _mla_problem(spec)
    if spec.num_attention_heads % spec.num_kv_heads:
        return (
            f"num_attention_heads ({spec.num_attention_heads}) must be a multiple of "
            f"num_kv_heads ({spec.num_kv_heads})"
        )
    set_fields = [f for f in ("q_lora_rank", *_MLA_FIELDS) if getattr(spec, f)]
    if set_fields:
        return (f"{', '.join(set_fields)} set but attention is gqa; "
                "remove them or set attention: mla")
    return None


def _sliding_window_problem(spec: ModelSpec) -> str | None:
    """The first sliding-window rule `spec` breaks, or None."""
    if spec.layer_types and len(spec.layer_types) != spec.num_layers:
        return (
            f"layer_types has {len(spec.layer_types)} entries but num_layers is "
            f"{spec.num_layers}; give one per block, or leave it empty for all full"
        )
    if spec.num_sliding_layers and not spec.sliding_window:
        return "layer_types has sliding blocks but sliding_window is 0; set sliding_window > 0"
    if spec.sliding_window and not spec.num_sliding_layers:
        return (
            f"sliding_window ({spec.sliding_window}) is set but no block of layer_types is "
            "'sliding'; list the sliding blocks in layer_types or set sliding_window: 0"
        )
    return None


def _mla_problem(spec: ModelSpec) -> str | None:
    """The first MLA rule `spec` breaks, or None."""
    missing = [f for f in _MLA_FIELDS if not getattr(spec, f)]
    if missing:
        return f"attention: mla needs {', '.join(missing)} > 0"
    qk_dim = spec.qk_nope_head_dim + spec.qk_rope_head_dim
    if spec.head_dim != qk_dim:
        return f"attention: mla needs head_dim == qk_nope_head_dim + qk_rope_head_dim ({qk_dim})"
    if spec.num_kv_heads != spec.num_attention_heads:
        return "attention: mla needs num_kv_heads == num_attention_heads"
    return None


def model_spec_from_mapping(data: dict[str, Any], source: str = "model spec") -> ModelSpec:
    """Validate a mapping of ModelSpec fields; errors are one ConfigError naming the field."""
    return parse_model(ModelSpec, data, source)


# ---- presets -----------------------------------------------------------------------------
# Every size below is copied from the model's Hugging Face config.json, named per preset;
# the published totals each must reproduce are tested in tests/test_models.py.

# huggingface.co/deepseek-ai/DeepSeek-V3, file config.json (num_hidden_layers 61 excludes
# the num_nextn_predict_layers=1 MTP module; one shared expert of moe_intermediate_size).
# Published: 671B total, 37B activated (arXiv 2412.19437); 671B total and 36.7B
# activated for the main model without MTP (DeepSeek-V3 README_WEIGHTS.md), which
# `active_compute_params` matches (36.63B; active_params is 37.55B).
_DEEPSEEK_V3 = ModelSpec(
    name="DeepSeek-V3", hidden_size=7168, num_layers=61, vocab_size=129280,
    first_dense_layers=3, dense_ffn_size=18432,
    attention="mla", num_attention_heads=128, num_kv_heads=128, head_dim=192,
    q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
    v_head_dim=128,
    num_experts=256, top_k=8, expert_ffn_size=2048,
    num_shared_experts=1, shared_expert_ffn_size=2048,
    num_expert_groups=8,  # config.json n_group
)

PRESETS: Mapping[str, ModelSpec] = MappingProxyType({
    # huggingface.co/mistralai/Mixtral-8x7B-v0.1, file config.json (head_dim = 4096 / 32).
    # Published: 46.7B total, 12.9B per token (mistral.ai/news/mixtral-of-experts).
    "Mixtral-8x7B": ModelSpec(
        name="Mixtral-8x7B", hidden_size=4096, num_layers=32, vocab_size=32000,
        num_attention_heads=32, num_kv_heads=8, head_dim=128,
        num_experts=8, top_k=2, expert_ffn_size=14336,
    ),
    # huggingface.co/mistralai/Mixtral-8x22B-v0.1, file config.json (vocab_size 32000;
    # head_dim = 6144 / 48). Mixtral-8x22B-Instruct-v0.1's config.json and mistral-inference's
    # mixtral-8x22B-v0.3 have the v3 tokenizer's 32768 instead (+9.4M parameters, 0.007%);
    # their names resolve to this preset.
    # Published: 141B total, 39B active (mistral.ai/news/mixtral-8x22b).
    "Mixtral-8x22B": ModelSpec(
        name="Mixtral-8x22B", hidden_size=6144, num_layers=56, vocab_size=32000,
        num_attention_heads=48, num_kv_heads=8, head_dim=128,
        num_experts=8, top_k=2, expert_ffn_size=16384,
    ),
    # See _DEEPSEEK_V3 above.
    "DeepSeek-V3": _DEEPSEEK_V3,
    # huggingface.co/deepseek-ai/DeepSeek-R1, file config.json: every field is DeepSeek-V3's
    # but transformers_version ("DeepSeek-R1-Zero & DeepSeek-R1 are trained based on
    # DeepSeek-V3-Base", DeepSeek-R1 README). Published: 671B total, 37B activated (ibid.),
    # i.e. DeepSeek-V3's figures. DeepSeek-R1-0528, a minor version upgrade of R1 (its model
    # card), resolves here too.
    "DeepSeek-R1": _DEEPSEEK_V3.model_copy(update={"name": "DeepSeek-R1"}),
    # huggingface.co/Qwen/Qwen3-30B-A3B, file config.json (decoder_sparse_step 1,
    # mlp_only_layers [], so every block is MoE; no shared expert).
    # Published: 30.5B total, 29.9B non-embedding, 3.3B activated (Qwen3-30B-A3B model card).
    "Qwen3-30B-A3B": ModelSpec(
        name="Qwen3-30B-A3B", hidden_size=2048, num_layers=48, vocab_size=151936,
        num_attention_heads=32, num_kv_heads=4, head_dim=128,
        num_experts=128, top_k=8, expert_ffn_size=768,
    ),
    # huggingface.co/Qwen/Qwen3-235B-A22B, file config.json (decoder_sparse_step 1,
    # mlp_only_layers [], so every block is MoE; no shared expert; the dense intermediate_size
    # 12288 is unused).
    # Published: "235B in total and 22B activated", "Non-Embedding: 234B" (Qwen3-235B-A22B
    # model card; the Qwen3 technical report, arXiv 2505.09388: 235B / 22B). Activated
    # counts both embedding matrices: active_params.
    "Qwen3-235B-A22B": ModelSpec(
        name="Qwen3-235B-A22B", hidden_size=4096, num_layers=94, vocab_size=151936,
        num_attention_heads=64, num_kv_heads=4, head_dim=128,
        num_experts=128, top_k=8, expert_ffn_size=1536,
    ),
    # huggingface.co/openai/gpt-oss-120b, file config.json (model_type gpt_oss;
    # intermediate_size 2880 is one expert's; layer_types alternate sliding_attention and
    # full_attention from block 0; attention_bias true; every gpt-oss block has attention
    # sinks and biased experts and router, per openai/gpt-oss gpt_oss/torch/model.py).
    # Published: 116.83B total, 5.13B active, where "Unembedding parameters are counted
    # towards active, but not embeddings" (gpt-oss model card, arXiv 2508.10925, Table 1):
    # active_compute_params.
    "gpt-oss-120b": ModelSpec(
        name="gpt-oss-120b", hidden_size=2880, num_layers=36, vocab_size=201088,
        num_attention_heads=64, num_kv_heads=8, head_dim=64,
        num_experts=128, top_k=4, expert_ffn_size=2880,
        sliding_window=128, layer_types=("sliding", "full") * 18,
        attention_bias=True, attention_sinks=True, expert_bias=True,
    ),
    # huggingface.co/openai/gpt-oss-20b, file config.json (as gpt-oss-120b, with 24 blocks
    # and 32 experts).
    # Published: 20.91B total, 3.61B active (gpt-oss model card, arXiv 2508.10925, Table 1;
    # embedding not counted as active): active_compute_params.
    "gpt-oss-20b": ModelSpec(
        name="gpt-oss-20b", hidden_size=2880, num_layers=24, vocab_size=201088,
        num_attention_heads=64, num_kv_heads=8, head_dim=64,
        num_experts=32, top_k=4, expert_ffn_size=2880,
        sliding_window=128, layer_types=("sliding", "full") * 12,
        attention_bias=True, attention_sinks=True, expert_bias=True,
    ),
    # huggingface.co/moonshotai/Kimi-K2-Instruct, file config.json (model_type kimi_k2,
    # architectures DeepseekV3ForCausalLM: DeepSeek-V3's MLA and MoE with 64 heads, 384
    # routed experts, first_k_dense_replace 1, vocab 163840, no MTP module).
    # Published: 1T total, 32B activated (Kimi-K2-Instruct model card; Kimi K2 report,
    # arXiv 2507.20534). Exact from the config: 1026.4B total; 31.69B activated without the
    # input embedding (active_compute_params, within 1% of 32B), 32.86B with it.
    "Kimi-K2": ModelSpec(
        name="Kimi-K2", hidden_size=7168, num_layers=61, vocab_size=163840,
        first_dense_layers=1, dense_ffn_size=18432,
        attention="mla", num_attention_heads=64, num_kv_heads=64, head_dim=192,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128,
        num_experts=384, top_k=8, expert_ffn_size=2048,
        num_shared_experts=1, shared_expert_ffn_size=2048,
    ),
})

_ALIASES: dict[str, str] = {
    "mixtral-8x7b": "Mixtral-8x7B",
    "mixtral-8x7b-v0.1": "Mixtral-8x7B",
    "mixtral-8x7b-instruct-v0.1": "Mixtral-8x7B",
    "mixtral-8x22b": "Mixtral-8x22B",
    "mixtral-8x22b-v0.1": "Mixtral-8x22B",
    "mixtral-8x22b-instruct-v0.1": "Mixtral-8x22B",
    "deepseek-v3": "DeepSeek-V3",
    "deepseek-v3-base": "DeepSeek-V3",
    "deepseek-v3-0324": "DeepSeek-V3",
    "deepseek-r1": "DeepSeek-R1",
    "deepseek-r1-zero": "DeepSeek-R1",
    "deepseek-r1-0528": "DeepSeek-R1",
    "qwen3-30b-a3b": "Qwen3-30B-A3B",
    "qwen3-30b-a3b-base": "Qwen3-30B-A3B",
    "qwen3-30b-a3b-instruct-2507": "Qwen3-30B-A3B",
    "qwen3-235b-a22b": "Qwen3-235B-A22B",
    "qwen3-235b-a22b-instruct-2507": "Qwen3-235B-A22B",
    "qwen3-235b-a22b-thinking-2507": "Qwen3-235B-A22B",
    "gpt-oss-120b": "gpt-oss-120b",
    "gpt-oss-20b": "gpt-oss-20b",
    "kimi-k2": "Kimi-K2",
    "kimi-k2-instruct": "Kimi-K2",
    "kimi-k2-base": "Kimi-K2",
}


def list_models() -> list[str]:
    """Names of the built-in presets."""
    return list(PRESETS)


def _preset_key(name: str) -> str | None:
    """The preset a (case-insensitive, optionally `org/`-prefixed) name refers to, or None."""
    key = name.strip().lower().replace("_", "-").rsplit("/", 1)[-1]
    return _ALIASES.get(key)


def get_model(name: str) -> ModelSpec:
    """The preset called `name` (case-insensitive; HF repo ids such as mistralai/... work)."""
    key = _preset_key(name)
    if key is None:
        raise ModelError(
            f"unknown model '{name}'; presets: {', '.join(list_models())} "
            "(or give a path to a Hugging Face config.json or a YAML model file)"
        )
    return PRESETS[key]
