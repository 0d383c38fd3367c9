"""Expert load balancing on a run: measure the load, place the copies, say what it changed.

`balanced_placement` measures each expert's load (token-expert assignments per MoE layer) over
a window of trace tokens and places `num_experts + redundant` expert slots on the EP ranks by a
policy of `moesim.traffic.eplb` (`deepseek`: DeepSeek's hierarchical EPLB, with the model's
expert groups and the EP ranks' nodes; `greedy`: the baseline). A token's assignment picks among
an expert's copies by `local_first` (its own rank, then its node, then all copies, round robin:
`moesim.traffic.experts`).

`rank_load` reports the tokens each EP rank's experts process per layer before (the contiguous
placement, DESIGN.md's default) and after balancing, and `moved_weight_bytes` the expert weights
a change of placement sends between ranks (each new copy from a rank that held the expert: on
its node where one did, else the lowest EP index), so serving can charge rebalancing its time.
A policy labels its GPUs afresh each time, so `keep_in_place` first gives each new rank's expert
set to the old rank (on the same node) that already holds most of it: the loads are the same,
the weights that move far fewer (as engines move only the experts that change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.errors import PlacementError
from moesim.inputs.models import ModelSpec
from moesim.traffic.eplb import deepseek_eplb, greedy_eplb, placement_from_phy2log
from moesim.traffic.experts import ExpertPlacement
from moesim.traffic.placement import Parallelism

__all__ = ["Balance", "balanced_placement", "expert_load", "ep_rank_load",
           "moved_weight_bytes", "keep_in_place"]


def expert_load(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """`[L, E]` token-expert assignments per expert from `experts[L, T, k]` (one bincount)."""
    layers = experts.shape[0]
    flat = (np.arange(layers).reshape(-1, 1, 1) * num_experts + experts).ravel()
    return np.bincount(flat, minlength=layers * num_experts).reshape(layers, num_experts)


def _nodes(par: Parallelism, gpus_per_node: int) -> int:
    """Nodes the EP ranks of one MoE-DP replica span (1 when they do not split evenly)."""
    span = par.moe_ep * par.moe_tp
    if span <= gpus_per_node or span % gpus_per_node:
        return 1
    return span // gpus_per_node


def balanced_placement(load: np.ndarray, model: ModelSpec, par: Parallelism, *, policy: str,
                       redundant: int, gpus_per_node: int) -> ExpertPlacement:
    """The EP ranks' expert slots balancing `load[L, E]` (module doc)."""
    slots = model.num_experts + redundant
    if slots % par.moe_ep:
        fits = [r for r in range(redundant, redundant + par.moe_ep)
                if (model.num_experts + r) % par.moe_ep == 0][0]
        raise PlacementError(
            f"--redundant-experts {redundant}: {model.num_experts} experts + {redundant} copies "
            f"= {slots} slots do not split evenly over moe_ep={par.moe_ep} ranks; use "
            f"--redundant-experts {fits} (or another value making experts + R a multiple of "
            f"{par.moe_ep})")
    if policy == "deepseek":
        phy2log = deepseek_eplb(load, slots, model.num_expert_groups,
                                _nodes(par, gpus_per_node), par.moe_ep)
    else:
        phy2log = greedy_eplb(load, slots, par.moe_ep)
    return placement_from_phy2log(phy2log, model.num_experts, par.moe_ep,
                                  copy_choice="local_first", name=f"eplb-{policy}")


def ep_rank_load(par: Parallelism, rank_load: np.ndarray) -> np.ndarray:
    """`[L, moe_ep]` tokens per EP index, summed over MoE-DP replicas (one MoE-TP rank each),
    from a `[L, W]` per-rank load."""
    ranks = par.ranks()
    first_tp = ranks[ranks % par.moe_tp == 0]
    per = rank_load[:, first_tp].reshape(rank_load.shape[0], par.moe_dp, par.moe_ep)
    return per.sum(axis=1)


def _contiguous_rank_load(load: np.ndarray, ep: int) -> np.ndarray | None:
    """`[L, ep]` tokens per EP rank with expert e on rank e // (E / ep), or None if E % ep."""
    layers, experts = load.shape
    if experts % ep:
        return None
    return load.reshape(layers, ep, experts // ep).sum(axis=2)


def _imbalance(tokens: np.ndarray) -> np.ndarray:
    """Per layer max / mean over ranks (1 for an empty layer)."""
    mean = tokens.mean(axis=1)
    return np.where(mean > 0, tokens.max(axis=1) / np.where(mean > 0, mean, 1), 1.0)


@dataclass(frozen=True)
class Balance:
    """How a run's expert placement was balanced."""

    policy: str
    redundant: int
    window_tokens: int  # trace tokens the load was measured over
    placement: ExpertPlacement

    def rank_load(self, expert_tokens: np.ndarray, par: Parallelism,
                  rank_load: np.ndarray) -> dict[str, Any]:
        """Tokens per EP rank per layer before (contiguous) and after (this placement, as the
        step routed them), and their max/mean: `expert_tokens[L, E]` is the step's expert
        load, `rank_load[L, W]` its per-rank load under this placement."""
        after = ep_rank_load(par, rank_load)
        before = _contiguous_rank_load(expert_tokens, par.moe_ep)
        out: dict[str, Any] = {
            "after_tokens": after.tolist(),
            "after_max_over_mean": _summary(_imbalance(after)),
        }
        if before is not None:
            out["before_tokens"] = before.tolist()
            out["before_max_over_mean"] = _summary(_imbalance(before))
        return out


def _summary(per_layer: np.ndarray) -> dict[str, Any]:
    return {"max": float(per_layer.max()), "mean": float(per_layer.mean()),
            "per_layer": [float(x) for x in per_layer]}


def moved_weight_bytes(old: ExpertPlacement, new: ExpertPlacement, par: Parallelism,
                       expert_bytes: float, gpus_per_node: int) -> np.ndarray:
    """`[W, W]` bytes of expert weights a change from `old` to `new` sends: every expert an EP
    rank holds in `new` but not in `old` comes from a holder in `old` (on its node where one
    is, else the lowest EP index), each MoE-TP rank its shard, in every MoE-DP replica."""
    layers, ep = new.num_layers, par.moe_ep
    experts = new.num_experts
    held_old = np.zeros((layers, ep, experts), dtype=bool)
    held_new = np.zeros_like(held_old)
    for held, placement in ((held_old, old), (held_new, new)):
        layer, rank, slot = np.nonzero(placement.slot_expert >= 0)
        held[layer, rank, placement.slot_expert[layer, rank, slot]] = True
    layer, dst, expert = np.nonzero(held_new & ~held_old)
    matrix = np.zeros((par.world, par.world))
    if not layer.size:
        return matrix
    ranks_per_node = max(gpus_per_node // par.moe_tp, 1)  # EP indices per node
    holders = held_old[layer, :, expert]  # [moves, ep]
    same_node = (np.arange(ep)[None, :] // ranks_per_node) == (dst[:, None] // ranks_per_node)
    pick = np.where((holders & same_node).any(axis=1, keepdims=True), holders & same_node,
                    holders)
    if not pick.any(axis=1).all():
        raise PlacementError("a new expert placement names an expert no rank held before")
    src = np.argmax(pick, axis=1)
    shard = expert_bytes / par.moe_tp
    pairs = np.zeros((ep, ep))
    np.add.at(pairs, (src, dst), shard)
    for replica in range(par.moe_dp):
        for tp in range(par.moe_tp):
            rank = replica * ep * par.moe_tp + np.arange(ep) * par.moe_tp + tp
            matrix[np.ix_(rank, rank)] += pairs
    return matrix


def keep_in_place(old: ExpertPlacement, new: ExpertPlacement, ranks_per_node: int
                  ) -> ExpertPlacement:
    """`new` with its EP ranks relabelled, per layer and within each node, so that each rank
    keeps as many of the experts it held in `old` as it can (greedy: the pair of new and old
    ranks sharing the most experts first). Per-rank expert sets, and so the balance, are
    unchanged; only which GPU holds which set."""
    layers, ep, slots = new.slot_expert.shape
    experts = new.num_experts
    per_node = max(min(ranks_per_node, ep), 1)
    if ep % per_node:
        per_node = ep
    held_old = np.zeros((layers, ep, experts), dtype=np.int64)
    held_new = np.zeros_like(held_old)
    for held, placement in ((held_old, old), (held_new, new)):
        where = np.nonzero(placement.slot_expert >= 0)
        held[where[0], where[1], placement.slot_expert[where]] = 1
    out = np.empty_like(new.slot_expert)
    for index in range(layers):
        for start in range(0, ep, per_node):
            ranks = np.arange(start, start + per_node)
            shared = held_new[index, ranks] @ held_old[index, ranks].T  # [new, old]
            order = np.argsort(-shared, axis=None, kind="stable")
            taken_new, taken_old = set(), set()
            for flat in order.tolist():
                i, j = divmod(flat, per_node)
                if i in taken_new or j in taken_old:
                    continue
                out[index, ranks[j]] = new.slot_expert[index, ranks[i]]
                taken_new.add(i)
                taken_old.add(j)
    return ExpertPlacement(out, new.num_experts, new.copy_choice, new.name)
