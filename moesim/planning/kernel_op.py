"""One operation on one rank: what `moesim kernel` predicts, to hold against a microbenchmark.

- `moe`: the whole MoE layer's routed-expert compute of one rank (gate-up and down GEMMs and the
  activation), `tokens` routed in perfect balance: every expert gets tokens * top_k / E; the
  rank holds E / moe_ep experts, each sharded over moe_tp.
- `gemm`: one GEMM of `tokens` rows on an [k, n] weight (default: one routed expert's gate-up
  shard, hidden x 2 ffn / moe_tp).
- `attention`: one block's attention kernel on one attention-TP rank (heads / attn_tp):
  prefill: one causal sequence of `tokens` after `context` cached tokens; decode: `tokens`
  sequences, one new token each, over `context` cached tokens.

Weights stay warm in L2 between repeats (`warm_l2`), as a microbenchmark runs them; a model's
step reads each layer's weights once and `moesim run` costs them cold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.engine.cost import ComputeModel, attention_cost, roofline_time_s
from moesim.engine.kernels import attention_time, gemm_time, moe_time
from moesim.errors import ConfigError
from moesim.inputs.models import ModelSpec
from moesim.inputs.options import Precision, compute_dtype
from moesim.traffic.placement import Parallelism

__all__ = ["KernelPrediction", "predict_op"]


@dataclass(frozen=True)
class KernelPrediction:
    """The predicted time of one op and what it was costed from."""

    op: str
    time_s: float
    flops: float
    bytes_moved: float
    kernel: str  # the kernel family (roofline where no profile covers the op)

    def to_json(self) -> dict[str, object]:
        return {"op": self.op, "time_s": self.time_s, "flops": self.flops,
                "bytes": self.bytes_moved, "kernel": self.kernel}


def predict_op(op: str, cm: ComputeModel, model: ModelSpec, par: Parallelism, prec: Precision,
               *, tokens: int, context: int = 0, phase: str = "decode", n: int | None = None,
               k: int | None = None) -> KernelPrediction:
    """Predict one op on one rank (see the module docstring)."""
    if op == "moe":
        return _moe(cm, model, par, prec, tokens)
    if op == "gemm":
        return _gemm(cm, model, par, prec, tokens, n, k)
    if op == "attention":
        return _attention(cm, model, par, prec, tokens, context, phase)
    raise ConfigError(f"--op: '{op}' is not one of moe, gemm, attention")


def _moe(cm: ComputeModel, model: ModelSpec, par: Parallelism, prec: Precision,
         tokens: int) -> KernelPrediction:
    local = model.num_experts // par.moe_ep
    assignments = tokens * model.top_k
    per_expert = np.full(model.num_experts, assignments // model.num_experts, dtype=np.float64)
    per_expert[: assignments % model.num_experts] += 1
    rank_tokens = per_expert[:local]
    ffn = model.expert_ffn_per_shard(par.moe_tp)
    flops = float(2 * 3 * model.hidden_size * ffn * rank_tokens.sum())
    moved = float((rank_tokens > 0).sum() * 3 * model.hidden_size * ffn
                  * prec.expert_weight_bytes)
    curves = cm.curves("moe")
    if curves is None:
        from moesim.engine.cost import experts_cost

        cost = experts_cost(model, cm.gpu, tokens_per_expert=rank_tokens, moe_tp=par.moe_tp,
                            weight_bytes=prec.expert_weight_bytes, act_bytes=prec.act_bytes,
                            peak=cm.peak(prec.expert_dtype))
        return KernelPrediction("moe", float(cost.time_s), flops, moved, "roofline")
    time_s = moe_time(curves, cm.gpu, tokens_per_expert=rank_tokens, hidden=model.hidden_size,
                      ffn=ffn, weight_bytes=prec.expert_weight_bytes, act_bytes=prec.act_bytes,
                      peak_flops_per_s=cm.peak(prec.expert_dtype), warm_l2=cm.warm_l2)
    return KernelPrediction("moe", float(time_s), flops, moved, curves.family)


def _gemm(cm: ComputeModel, model: ModelSpec, par: Parallelism, prec: Precision, tokens: int,
          n: int | None, k: int | None) -> KernelPrediction:
    n = n or 2 * model.expert_ffn_per_shard(par.moe_tp)
    k = k or model.hidden_size
    flops = 2.0 * tokens * n * k
    moved = n * k * prec.weight_bytes + tokens * (n + k) * prec.act_bytes
    curves = cm.curves("gemm")
    if curves is None:
        peak = cm.gpu.peak_flops_per_s(compute_dtype(prec.weight, cm.gpu.formats))
        time_s = roofline_time_s(flops, moved, cm.gpu, prec.weight_bytes, 1, peak)
        return KernelPrediction("gemm", float(time_s), flops, moved, "roofline")
    time_s = gemm_time(curves, cm.gpu, m=tokens, n=n, k=k, weight_bytes=prec.weight_bytes,
                       act_bytes=prec.act_bytes, peak_flops_per_s=cm.peak(prec.weight),
                       warm_l2=cm.warm_l2)
    return KernelPrediction("gemm", float(time_s), flops, moved, curves.family)


def _attention(cm: ComputeModel, model: ModelSpec, par: Parallelism, prec: Precision,
               tokens: int, context: int, phase: str) -> KernelPrediction:
    heads = model.heads_per_rank(par.attn_tp)
    width = model.head_dim + model.value_head_dim
    if phase == "prefill":
        keys = tokens * context + tokens * (tokens + 1) / 2
        kv_tokens, x = context + tokens, keys / tokens
    else:
        keys = tokens * context
        kv_tokens, x = keys, float(context)
    flops = 2.0 * heads * width * keys
    moved = kv_tokens * model.kv_bytes_per_token_per_layer_per_rank(par.attn_tp, prec.kv_bytes) \
        + tokens * heads * width * prec.act_bytes
    decode = phase == "decode"
    kind = ("mla_decode" if model.attention == "mla" else "attention_decode") if decode \
        else "attention_prefill"
    curves = cm.curves(kind)
    if curves is None:
        cost = attention_cost(model, cm.gpu, tokens=0, keys_attended=keys,
                              kv_cache_tokens_read=kv_tokens, attn_tp=par.attn_tp,
                              weight_bytes=0, act_bytes=prec.act_bytes, kv_bytes=prec.kv_bytes)
        return KernelPrediction("attention", float(cost.time_s), flops, float(moved), "roofline")
    time_s = attention_time(curves, cm.gpu, flops=flops, bytes_moved=moved, x=x,
                            peak_flops_per_s=cm.gpu.peak_bf16_flops_per_s)
    return KernelPrediction("attention", float(time_s), flops, float(moved), curves.family)
