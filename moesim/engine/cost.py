"""Compute cost of every operation of a step, per rank: kernel curves, or the roofline.

With a kernel profile entry for the GPU (`ComputeModel.kernels`), each op is costed by its
kernel family's curves (moesim.engine.kernels: tiles, waves, launch, efficiency by size). An op
kind the profile leaves out, and every op on a GPU no profile covers, uses the roofline:

time = max(FLOPs / (peak * compute_efficiency), bytes / (memory bandwidth * memory_efficiency))
       + kernel_launch_s

Peaks and efficiencies come from the topology's `GpuSpec` (datasheet peaks, calibrated
efficiencies). Norms and other elementwise kernels are costed only with a profile's
`elementwise` curves (the roofline leaves them out, as it always has).

A rank's share of each weight comes from `ModelSpec` (heads, K/V heads, expert
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

from moesim.engine.kernels import attention_time, elementwise_time, gemm_time, moe_time
from moesim.errors import ConfigError
from moesim.inputs.kernel_profile import OP_KINDS, GpuKernels, KernelCurves, load_kernel_profile
from moesim.inputs.models import ModelSpec
from moesim.inputs.options import WEIGHT_DTYPE_BYTES, ActDtype, Precision, compute_dtype
from moesim.inputs.topology_spec import GpuSpec
from moesim.traffic.traffic import Traffic
from moesim.traffic.workload import StepWorkload

__all__ = [
    "ComputeModel",
    "compute_model",
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


def _peak_flops_per_s(gpu: GpuSpec, weight_bytes: float, peak: float | None = None) -> float:
    """`peak` where given (step_costs passes the op format's), else FP8 for 1-byte weights
    where the GPU has it, else BF16."""
    if peak is not None:
        return peak
    if weight_bytes <= 1 and gpu.peak_fp8_flops_per_s:
        return gpu.peak_fp8_flops_per_s
    return gpu.peak_bf16_flops_per_s


def roofline_time_s(
    flops: Number, bytes_moved: Number, gpu: GpuSpec, weight_bytes: float = 2, launches: int = 1,
    peak: float | None = None,
) -> Number:
    """Roofline time of one op: the slower of compute and memory, plus `launches` overheads."""
    compute_s = np.divide(flops, _peak_flops_per_s(gpu, weight_bytes, peak)
                          * gpu.compute_efficiency)
    memory_s = np.divide(bytes_moved, gpu.memory_bandwidth_bytes_per_s * gpu.memory_efficiency)
    return np.maximum(compute_s, memory_s) + launches * gpu.kernel_launch_s


def _op(
    flops: Number, bytes_moved: Number, gpu: GpuSpec, weight_bytes: float, launches: int = 1,
    peak: float | None = None,
) -> OpCost:
    return OpCost(
        flops, bytes_moved, roofline_time_s(flops, bytes_moved, gpu, weight_bytes, launches, peak)
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
    kv_bytes: float | None = None,
    peak: float | None = None,
) -> OpCost:
    """One block's attention on one rank: projections for `tokens` plus scores over
    `keys_attended` (sum over query tokens of keys each attends to), with `attn_tp` sharding
    heads and weights, reading `kv_cache_tokens_read` tokens of KV cache (`kv_bytes` per value,
    default the activations')."""
    heads = model.heads_per_rank(attn_tp)
    proj_flops = 2 * model.attention_matmul_params_per_rank(attn_tp) * np.asarray(tokens)
    score_flops = 2 * heads * (model.head_dim + model.value_head_dim) * np.asarray(keys_attended)
    kv_read = np.asarray(kv_cache_tokens_read) * model.kv_bytes_per_token_per_layer_per_rank(
        attn_tp, act_bytes if kv_bytes is None else kv_bytes
    )
    weight_read = model.attention_params_per_rank(attn_tp) * weight_bytes
    activations = 4 * np.asarray(tokens) * model.hidden_size * act_bytes
    return _op(proj_flops + score_flops, weight_read + kv_read + activations, gpu, weight_bytes, 2,
               peak)


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
    peak: float | None = None,
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
    peak = _peak_flops_per_s(gpu, weight_bytes, peak) * gpu.compute_efficiency
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
    peak: float | None = None,
) -> OpCost:
    """Dense SwiGLU FFNs of `params` weights on one rank (dense blocks, shared experts) on
    `tokens`; nothing where either is 0."""
    tokens = np.asarray(tokens, dtype=np.float64)
    flops = 2 * params * tokens
    bytes_moved = params * weight_bytes + tokens * (2 * model.hidden_size) * act_bytes
    time_s = roofline_time_s(flops, bytes_moved, gpu, weight_bytes, peak=peak)
    idle = (tokens == 0) | (params == 0)
    return OpCost(np.where(idle, 0.0, flops), np.where(idle, 0.0, bytes_moved),
                  np.where(idle, 0.0, time_s))


def lm_head_cost(
    model: ModelSpec, gpu: GpuSpec, *, tokens: Number, tp: int, weight_bytes: float,
    act_bytes: float, peak: float | None = None,
) -> OpCost:
    """Output projection to the vocabulary for `tokens` (vocab-parallel over `tp`)."""
    vocab = model.vocab_per_rank(tp)
    params = model.hidden_size * vocab
    bytes_moved = params * weight_bytes + np.asarray(tokens) * vocab * act_bytes
    return _op(2 * params * np.asarray(tokens), bytes_moved, gpu, weight_bytes, peak=peak)


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
    if workload.kv_read_per_token is not None:
        kv_read = workload.per_group(workload.kv_read_per_token, par.token_groups)[group]
    elif workload.phase == "decode":
        kv_read = group_keys
    else:  # the chunk's own K/V plus, for a later piece of a long prompt, its cached prefix
        kv_read = group_tokens * workload.kv_tokens_read_per_token
    if workload.phase == "decode" and par.attn_sp > 1:
        # the KV cache is sharded over SP ranks: each computes every group token on its shard
        sp_group = ranks // (par.attn_tp * par.attn_sp)

        def sharded(per_group: np.ndarray) -> np.ndarray:
            return (np.bincount(sp_group, weights=per_group) / par.attn_tp)[sp_group] \
                / par.attn_sp

        group_keys, kv_read = sharded(group_keys), sharded(kv_read)
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


# ---- the compute model of a run ---------------------------------------------------------


@dataclass(frozen=True)
class ComputeModel:
    """How a run costs compute: the GPU, its kernel profile entry (None: the roofline), and
    whether weights stay warm in L2 between repeats of one op (microbenchmarks: yes; a model's
    step, which reads every layer's weights once: no)."""

    gpu: GpuSpec
    kernels: GpuKernels | None = None
    profile: str = "roofline"
    warm_l2: bool = False

    def curves(self, kind: str) -> KernelCurves | None:
        """The curves of op kind `kind`, or None where the roofline costs it."""
        return None if self.kernels is None else self.kernels.curves(kind)

    def peak(self, weight_dtype: str) -> float:
        """Tensor-core peak of GEMMs on `weight_dtype` weights (moesim.inputs.options)."""
        return self.gpu.peak_flops_per_s(compute_dtype(weight_dtype, self.gpu.formats))


def compute_model(kernels: str, gpu: GpuSpec, *, warm_l2: bool = False) -> ComputeModel:
    """The compute model a run's `kernels` option names on `gpu`: `roofline`; `auto` (the
    GPU's own calibrated curves (`GpuSpec.kernels`), else the vllm profile where it covers the
    GPU, else the roofline); a shipped profile's name or a profile
    YAML, which must cover the GPU (`GpuSpec.kernel_key`)."""
    if kernels == "roofline":
        return ComputeModel(gpu, warm_l2=warm_l2)
    if kernels == "auto" and gpu.kernels is not None:  # curves measured on this very device,
        shipped = load_kernel_profile("vllm").for_gpu(gpu.kernel_key)  # the profile's for the rest
        own = {kind: getattr(gpu.kernels, kind) for kind in OP_KINDS
               if getattr(gpu.kernels, kind) is not None}
        merged = own if shipped is None else {
            **{kind: getattr(shipped, kind) for kind in OP_KINDS}, **own}
        return ComputeModel(gpu, GpuKernels(**merged), f"{gpu.name} (calibrated)", warm_l2)
    profile = load_kernel_profile("vllm" if kernels == "auto" else kernels)
    entry = profile.for_gpu(gpu.kernel_key)
    if entry is None:
        if kernels == "auto":
            return ComputeModel(gpu, warm_l2=warm_l2)
        raise ConfigError(
            f"kernels: profile '{profile.name}' has no entry for GPU '{gpu.name}' (kernel_key "
            f"{gpu.kernel_key}); it covers {', '.join(profile.gpus) or 'no GPU'}: use --kernels "
            "roofline, or fit one with moesim calibrate kernels")
    return ComputeModel(gpu, entry, profile.name, warm_l2)


class _Gemms:
    """Dense GEMMs on the profile's `gemm` curves (callers check they exist), timed together:
    `add` each (m rows per rank, weights [k, n]), then `times_s` gives each one's seconds, from
    one element-wise evaluation of the curves over all of them."""

    def __init__(self, cm: ComputeModel, weight_dtype: str, act_bytes: float) -> None:
        self.cm, self.weight_dtype, self.act_bytes = cm, weight_dtype, act_bytes
        self.rows: list[tuple[Number, int, int, float]] = []

    def add(self, m: Number, n: int, k: int, weight_bytes: float | None = None) -> int:
        """Queue a GEMM (weights of `weight_bytes` per value, default the weight dtype's);
        its index in `times_s`."""
        size = WEIGHT_DTYPE_BYTES[self.weight_dtype] if weight_bytes is None else weight_bytes
        self.rows.append((m, n, k, size))
        return len(self.rows) - 1

    def times_s(self) -> list[np.ndarray]:
        """Each queued GEMM's seconds (`kernels.gemm_time`), in the order they were added."""
        if not self.rows:
            return []
        curves = self.cm.curves("gemm")
        assert curves is not None
        m = np.stack(np.broadcast_arrays(*(np.asarray(r[0], dtype=np.float64)
                                           for r in self.rows)))
        column = (len(self.rows),) + (1,) * (m.ndim - 1)
        n, k = (np.array([r[i] for r in self.rows], dtype=np.int64).reshape(column)
                for i in (1, 2))
        size = np.array([r[3] for r in self.rows], dtype=np.float64).reshape(column)
        return list(gemm_time(curves, self.cm.gpu, m=m, n=n, k=k, weight_bytes=size,
                              act_bytes=self.act_bytes,
                              peak_flops_per_s=self.cm.peak(self.weight_dtype),
                              warm_l2=self.cm.warm_l2))


def _swiglu(gemms: _Gemms, tokens: Number, hidden: int, ffn: int) -> tuple[int, int]:
    """Queue a dense SwiGLU FFN's gate-up and down GEMMs; `_swiglu_s` adds them up."""
    return gemms.add(tokens, 2 * ffn, hidden), gemms.add(tokens, hidden, ffn)


def _swiglu_s(cm: ComputeModel, times_s: list[np.ndarray], queued: tuple[int, int],
              tokens: Number, ffn: int, act_bytes: float) -> np.ndarray:
    """A dense SwiGLU FFN: gate-up GEMM, activation, down GEMM."""
    time_s = times_s[queued[0]] + times_s[queued[1]]
    return time_s + _elementwise_s(cm, np.asarray(tokens) * 3 * ffn * act_bytes, 1)


def _elementwise_s(cm: ComputeModel, bytes_moved: Number, kernels: int) -> np.ndarray | float:
    """Memory-bound helper kernels; 0 without the profile's `elementwise` curves."""
    curves = cm.curves("elementwise")
    if curves is None:
        return 0.0
    return elementwise_time(curves, cm.gpu, bytes_moved=bytes_moved, kernels=kernels)


def _attention_projections(gemms: _Gemms, model: ModelSpec, tokens: np.ndarray,
                           attn_tp: int) -> tuple[int, int]:
    """Queue attention's input (Q, K, V) and output projections."""
    hidden = model.hidden_size
    out_k = model.heads_per_rank(attn_tp) * model.value_head_dim
    in_params = model.attention_matmul_params_per_rank(attn_tp) - out_k * hidden
    return (gemms.add(tokens, max(in_params // hidden, 1), hidden),
            gemms.add(tokens, hidden, out_k))


def _attention_s(cm: ComputeModel, model: ModelSpec, tokens: np.ndarray, keys: np.ndarray,
                 kv_read: np.ndarray, attn_tp: int, prec: Precision, decode: bool,
                 roofline: OpCost, projections_s: tuple[np.ndarray, np.ndarray] | None
                 ) -> np.ndarray:
    """One block's attention on the profile: norms and rotary, projections (their GEMMs'
    seconds where the profile has GEMM curves), the attention kernel; a part the profile lacks
    keeps its share of the roofline."""
    hidden, act = model.hidden_size, prec.act_bytes
    heads = model.heads_per_rank(attn_tp)
    score_flops = 2 * heads * (model.head_dim + model.value_head_dim) * keys
    kind = ("mla_decode" if model.attention == "mla" else "attention_decode") if decode \
        else "attention_prefill"
    kernel = cm.curves(kind)
    per_seq = np.divide(keys, np.maximum(tokens, 1))  # keys per query: the context
    kv_bytes = kv_read * model.kv_bytes_per_token_per_layer_per_rank(attn_tp, prec.kv_bytes)
    qo_bytes = tokens * heads * (model.head_dim + model.value_head_dim) * act
    if kernel is not None:
        attend_s = attention_time(kernel, cm.gpu, flops=score_flops,
                                  bytes_moved=kv_bytes + qo_bytes, x=per_seq,
                                  peak_flops_per_s=cm.gpu.peak_bf16_flops_per_s)
    else:
        attend_s = roofline_time_s(score_flops, kv_bytes + qo_bytes, cm.gpu, 2, 1)
    if projections_s is not None:
        project_s = projections_s[0] + projections_s[1]
    else:
        project_s = roofline.time_s - roofline_time_s(score_flops, kv_bytes + qo_bytes, cm.gpu,
                                                      prec.weight_bytes, 1)
    # input norm, rotary on q/k, residual add + post-attention norm
    norms_s = _elementwise_s(cm, 3 * 2 * tokens * hidden * act, 3)
    return np.where(tokens > 0, attend_s + project_s + norms_s, 0.0)


def step_costs(
    workload: StepWorkload,
    traffic: Traffic,
    model: ModelSpec,
    gpu: GpuSpec,
    *,
    act_dtype: ActDtype = "bf16",
    weight_bytes: float | None = None,
    precision: Precision | None = None,
    compute: ComputeModel | None = None,
) -> StepCosts:
    """Cost every compute operation of one step on every rank.

    `precision` gives every dtype (default: bf16, activations `act_dtype`); `weight_bytes`
    overrides the bytes of every weight (the live harness's scaled runs). `compute` picks the
    kernel profile (default: the roofline of `gpu`)."""
    prec = precision or Precision(act=act_dtype)
    cm = compute or ComputeModel(gpu)
    par = traffic.parallelism
    act_bytes = prec.act_bytes
    w_bytes = prec.weight_bytes if weight_bytes is None else weight_bytes
    e_bytes = prec.expert_weight_bytes if weight_bytes is None else weight_bytes
    peak, e_peak = cm.peak(prec.weight), cm.peak(prec.expert_dtype)
    tokens, keys, kv_read = _attention_reads(workload, traffic)
    tokens = tokens.astype(np.float64)
    dispatched = traffic.tokens_per_rank.astype(np.float64)
    logits = _logit_tokens(workload, traffic).astype(np.float64)
    shared_params = model.num_shared_experts * model.shared_expert_params_per_shard(par.moe_tp)
    bytes_ = {"weight_bytes": w_bytes, "act_bytes": act_bytes, "peak": peak}
    costs = StepCosts(
        attention=attention_cost(model, gpu, tokens=tokens, keys_attended=keys,
                                 kv_cache_tokens_read=kv_read, attn_tp=par.attn_tp,
                                 kv_bytes=prec.kv_bytes, **bytes_),
        dense_ffn=dense_ffn_cost(model, gpu, tokens=tokens,
                                 params=model.dense_ffn_params_per_shard(par.attn_tp), **bytes_),
        router=router_cost(model, gpu, tokens=dispatched, act_bytes=act_bytes),
        experts=experts_cost(model, gpu, tokens_per_expert=traffic.rank_expert_tokens,
                             moe_tp=par.moe_tp, weight_bytes=e_bytes, act_bytes=act_bytes,
                             peak=e_peak),
        shared_experts=dense_ffn_cost(model, gpu, tokens=dispatched * par.moe_tp,
                                      params=shared_params, **bytes_),
        lm_head=lm_head_cost(model, gpu, tokens=logits, tp=par.attn_tp, **bytes_),
    )
    if cm.kernels is None:
        return costs
    return _on_kernels(costs, cm, workload, traffic, model, prec, w_bytes, e_bytes,
                       (tokens, keys, kv_read, dispatched, logits))


def _retime(cost: OpCost, time_s: Number) -> OpCost:
    return OpCost(cost.flops, cost.bytes_moved, time_s)


def _on_kernels(costs: StepCosts, cm: ComputeModel, workload: StepWorkload, traffic: Traffic,
                model: ModelSpec, prec: Precision, w_bytes: float, e_bytes: float,
                counts: tuple[np.ndarray, ...]) -> StepCosts:
    """`costs` with each op the profile covers re-timed on its kernel curves."""
    tokens, keys, kv_read, dispatched, logits = counts
    par, hidden, act = traffic.parallelism, model.hidden_size, prec.act_bytes
    decode = workload.phase == "decode"
    moe_curves = cm.curves("moe")
    experts = costs.experts
    if moe_curves is not None:
        experts = _retime(experts, moe_time(
            moe_curves, cm.gpu, tokens_per_expert=traffic.rank_expert_tokens, hidden=hidden,
            ffn=model.expert_ffn_per_shard(par.moe_tp), weight_bytes=e_bytes, act_bytes=act,
            peak_flops_per_s=cm.peak(prec.expert_dtype), warm_l2=cm.warm_l2))
    if cm.curves("gemm") is None:
        attention = _retime(costs.attention, _attention_s(
            cm, model, tokens, keys, kv_read, par.attn_tp, prec, decode, costs.attention, None))
        return StepCosts(attention=attention, dense_ffn=costs.dense_ffn, router=costs.router,
                         experts=experts, shared_experts=costs.shared_experts,
                         lm_head=costs.lm_head)
    # every dense GEMM of the step, timed in one go
    gemms = _Gemms(cm, prec.weight, act)
    projections = _attention_projections(gemms, model, tokens, par.attn_tp)
    dense_ffn_size = -(-model.dense_ffn_size // par.attn_tp)
    dense = _swiglu(gemms, tokens, hidden, dense_ffn_size) if model.first_dense_layers else None
    shared_tokens = dispatched * par.moe_tp
    shared_ffn_size = model.num_shared_experts * -(-model.shared_expert_ffn_size // par.moe_tp)
    shared_queued = _swiglu(gemms, shared_tokens, hidden, shared_ffn_size) \
        if model.num_shared_experts else None
    # router: a GEMM to the experts' logits (kept in the activation dtype)
    router_gemm = gemms.add(dispatched, model.num_experts, hidden, weight_bytes=act)
    lm_gemm = gemms.add(logits, model.vocab_per_rank(par.attn_tp), hidden)
    times_s = gemms.times_s()
    attention = _retime(costs.attention, _attention_s(
        cm, model, tokens, keys, kv_read, par.attn_tp, prec, decode, costs.attention,
        (times_s[projections[0]], times_s[projections[1]])))
    dense_ffn = costs.dense_ffn
    if dense is not None:
        dense_ffn = _retime(dense_ffn, _swiglu_s(cm, times_s, dense, tokens, dense_ffn_size,
                                                 act))
    shared = costs.shared_experts
    if shared_queued is not None:
        shared = _retime(shared, _swiglu_s(cm, times_s, shared_queued, shared_tokens,
                                           shared_ffn_size, act))
    # and the softmax / top-k
    router_s = times_s[router_gemm] + _elementwise_s(
        cm, dispatched * model.num_experts * 4 * 2, 1)
    lm_s = times_s[lm_gemm]
    return StepCosts(attention=attention, dense_ffn=dense_ffn,
                     router=_retime(costs.router, router_s), experts=experts,
                     shared_experts=shared, lm_head=_retime(costs.lm_head, lm_s))
