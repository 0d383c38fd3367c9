"""StepPlan: everything the engine needs for one step, per rank, in seconds and bytes.

Built from a workload, its traffic, the model and the GPU spec; the engine only reads it.
Per block (transformer layer) and rank the step runs, in order:
attention comm (SP exchange) -> attention -> attention comm (TP reduce-scatter) ->
[dense blocks: dense FFN as `experts`] or [router -> dispatch -> MoE-TP all-gather ->
experts -> MoE-TP reduce-scatter -> combine] -> MoE comm (attention-TP all-gather);
after the last block, the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.engine.cost import (
    attention_cost,
    dense_ffn_cost,
    experts_cost,
    lm_head_cost,
    router_cost,
)
from moesim.inputs.models import ModelSpec
from moesim.inputs.options import ACT_DTYPE_BYTES
from moesim.inputs.topology_spec import GpuSpec
from moesim.traffic.placement import block_sizes
from moesim.traffic.traffic import Traffic
from moesim.traffic.workload import StepWorkload

__all__ = ["PHASES", "StepPlan", "build_step_plan"]

PHASES = ("attention", "attn_comm", "router", "dispatch", "experts", "combine", "moe_comm")


@dataclass(frozen=True)
class StepPlan:
    """Per-rank compute times and per-block traffic of one step."""

    world: int
    num_dense_blocks: int
    attention_s: np.ndarray  # [W] every block
    dense_ffn_s: np.ndarray  # [W] dense blocks
    router_s: np.ndarray  # [W] MoE blocks
    experts_s: np.ndarray  # [L, W] MoE blocks, routed and shared experts
    lm_head_s: np.ndarray  # [W]
    sp_bytes: np.ndarray  # [W, W] every block
    dispatch_bytes: np.ndarray  # [L, W, W]
    moe_tp_gather_bytes: np.ndarray  # [L, W, W]
    attn_tp_groups: tuple[tuple[tuple[int, ...], int], ...]  # (ranks, buffer bytes) per group

    @property
    def num_moe_layers(self) -> int:
        """MoE blocks L."""
        return int(self.dispatch_bytes.shape[0])

    @property
    def num_blocks(self) -> int:
        """All transformer blocks."""
        return self.num_dense_blocks + self.num_moe_layers


def _group_sums(values: np.ndarray, groups: int) -> np.ndarray:
    """Sum of `values` over `groups` contiguous blocks (last takes the remainder)."""
    sizes = block_sizes(values.size, groups)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    sums = np.add.reduceat(values, starts) if values.size else np.zeros(groups)
    return np.where(sizes > 0, sums, 0)


def build_step_plan(
    workload: StepWorkload,
    traffic: Traffic,
    model: ModelSpec,
    gpu: GpuSpec,
    *,
    act_dtype: str = "bf16",
    weight_bytes: float = 2,
) -> StepPlan:
    """Cost every rank's compute and collect the step's traffic."""
    par = traffic.parallelism
    act_bytes = ACT_DTYPE_BYTES[act_dtype]
    ranks = par.ranks()
    group = ranks // par.attn_tp  # attention token group of each rank
    group_tokens = block_sizes(workload.num_tokens, par.token_groups)[group]
    group_keys = _group_sums(workload.keys_per_token.astype(np.float64), par.token_groups)[group]
    if workload.phase == "decode" and par.attn_sp > 1:
        # the KV cache is sharded over SP ranks: each computes every group token on its shard
        sp_group = ranks // (par.attn_tp * par.attn_sp)
        sp_keys = np.bincount(sp_group, weights=group_keys) / par.attn_tp
        group_keys = sp_keys[sp_group] / par.attn_sp
    if workload.phase == "decode":
        kv_read = group_keys
    else:  # the chunk's own K/V plus, for a later piece of a long prompt, its cached prefix
        kv_read = group_tokens * workload.kv_tokens_read_per_token
    attention_s = np.array(
        [
            attention_cost(
                model,
                gpu,
                tokens=int(n),
                keys_attended=float(k),
                kv_cache_tokens_read=float(kv),
                attn_tp=par.attn_tp,
                weight_bytes=weight_bytes,
                act_bytes=act_bytes,
            ).time_s
            for n, k, kv in zip(group_tokens, group_keys, kv_read, strict=True)
        ]
    )
    dense_ffn_s = np.array(
        [
            dense_ffn_cost(
                model,
                gpu,
                tokens=int(n),
                params=model.dense_ffn_params_per_shard(par.attn_tp),
                weight_bytes=weight_bytes,
                act_bytes=act_bytes,
            ).time_s
            for n in group_tokens
        ]
    )
    router_s = np.array(
        [
            router_cost(model, gpu, tokens=int(n), act_bytes=act_bytes).time_s
            for n in traffic.tokens_per_rank
        ]
    )
    shared_s = np.array(
        [
            dense_ffn_cost(
                model,
                gpu,
                tokens=int(n) * par.moe_tp,
                params=model.num_shared_experts * model.shared_expert_params_per_shard(par.moe_tp),
                weight_bytes=weight_bytes,
                act_bytes=act_bytes,
            ).time_s
            for n in traffic.tokens_per_rank
        ]
    )
    experts_s = (
        np.array(
            [
                [
                    experts_cost(
                        model,
                        gpu,
                        tokens_per_expert=traffic.rank_expert_tokens[layer, rank],
                        moe_tp=par.moe_tp,
                        weight_bytes=weight_bytes,
                        act_bytes=act_bytes,
                    ).time_s
                    for rank in ranks
                ]
                for layer in range(traffic.num_layers)
            ]
        )
        + shared_s[None, :]
    )
    last = np.r_[workload.trace.seq_id[1:] != workload.trace.seq_id[:-1], True]
    logits_tokens = last if workload.phase == "prefill" else np.ones(workload.num_tokens, bool)
    lm_tokens = _group_sums(logits_tokens.astype(np.float64), par.token_groups)[group]
    lm_head_s = np.array(
        [
            lm_head_cost(
                model,
                gpu,
                tokens=int(n),
                tp=par.attn_tp,
                weight_bytes=weight_bytes,
                act_bytes=act_bytes,
            ).time_s
            for n in lm_tokens
        ]
    )
    groups = tuple(
        (coll.ranks, coll.buffer_bytes)
        for coll in traffic.attn_collectives
        if coll.op == "reducescatter"
    )
    return StepPlan(
        world=par.world,
        num_dense_blocks=model.first_dense_layers,
        attention_s=attention_s,
        dense_ffn_s=dense_ffn_s,
        router_s=router_s,
        experts_s=experts_s,
        lm_head_s=lm_head_s,
        sp_bytes=traffic.sp_bytes,
        dispatch_bytes=traffic.dispatch_bytes,
        moe_tp_gather_bytes=traffic.moe_tp_gather_bytes,
        attn_tp_groups=groups,
    )
