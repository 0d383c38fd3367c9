"""Expert placement: per MoE layer, which EP ranks hold a copy of each expert, and which copy a
token's assignment goes to.

Each EP rank has `slots` places for experts; `slot_expert[l, i, s]` is the expert EP rank i
holds in slot s of MoE layer l (-1: empty). Every MoE-DP replica holds the same placement, and
with `moe_tp > 1` every TP rank of an EP index holds a shard of each of its experts, so the
rank a token's assignment goes to is `moesim.traffic.placement.moe_rank(par, src, ep_index)`.

The default (`contiguous_placement`) is DESIGN.md's rule: expert e in slot e % (E / ep) of EP
rank e // (E / ep). A placement from a file or a scenario (`placement_from_spec`) may list an
expert on several EP ranks; its assignments then pick a copy (`route_assignments`) by the
placement's `copy_choice`, copies taken in EP-rank order:
- `round_robin`: the i-th assignment of expert e in a layer (step tokens in order, each token's
  top-k in order) goes to copy i mod c, c being e's number of copies;
- `local_first`: the copy on the dispatching rank itself when there is one (it crosses no
  link), else the copies on its node, else all copies, round robin (by the same i) among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from moesim.errors import PlacementError
from moesim.inputs.config import ExpertPlacementSpec
from moesim.inputs.options import CopyChoice
from moesim.traffic.placement import Parallelism, moe_rank

__all__ = [
    "ExpertPlacement",
    "contiguous_placement",
    "placement_from_spec",
    "route_assignments",
]


@dataclass(frozen=True, eq=False)
class ExpertPlacement:
    """The experts each EP rank holds per MoE layer (`slot_expert[L, ep, slots]`, -1 empty)."""

    slot_expert: np.ndarray
    num_experts: int
    copy_choice: CopyChoice = "round_robin"
    name: str = "contiguous"

    @property
    def num_layers(self) -> int:
        """MoE layers L."""
        return int(self.slot_expert.shape[0])

    @property
    def moe_ep(self) -> int:
        """EP ranks."""
        return int(self.slot_expert.shape[1])

    @property
    def slots(self) -> int:
        """Expert slots per EP rank (the most any rank fills in any layer)."""
        return int(self.slot_expert.shape[2])

    @cached_property
    def copies(self) -> np.ndarray:
        """`[L, E]` EP ranks holding each expert."""
        held = self.slot_expert >= 0
        layer = np.broadcast_to(np.arange(self.num_layers)[:, None, None], held.shape)[held]
        flat = layer * self.num_experts + self.slot_expert[held]
        counts = np.bincount(flat, minlength=self.num_layers * self.num_experts)
        return counts.reshape(self.num_layers, self.num_experts)

    @property
    def has_replicas(self) -> bool:
        """Whether any expert is held by more than one EP rank."""
        return bool(self.copies.max(initial=0) > 1)

    @cached_property
    def holders(self) -> tuple[np.ndarray, np.ndarray]:
        """`(ep_index, slot)`, each `[L, E, C]`: expert e's copies in EP-rank order, -1 padded."""
        layers, ep, slots = self.slot_expert.shape
        width = int(self.copies.max(initial=1))
        ep_index = np.full((layers, self.num_experts, width), -1, dtype=np.int64)
        slot = np.full_like(ep_index, -1)
        layer, rank, s = np.nonzero(self.slot_expert >= 0)  # C order: EP-rank order per layer
        expert = self.slot_expert[layer, rank, s].astype(np.int64)
        key = layer * self.num_experts + expert
        order = np.argsort(key, kind="stable")
        starts = np.searchsorted(key[order], key[order], side="left")
        nth = np.empty_like(order)
        nth[order] = np.arange(order.size) - starts
        ep_index[layer, expert, nth] = rank
        slot[layer, expert, nth] = s
        return ep_index, slot

    @cached_property
    def experts_per_rank(self) -> np.ndarray:
        """`[L, ep]` experts (filled slots) each EP rank holds."""
        return (self.slot_expert >= 0).sum(axis=2)

    def to_spec(self) -> dict[str, Any]:
        """The placement as an `ExpertPlacementSpec` mapping (what a scenario file would say)."""
        per_layer = [[[int(e) for e in rank if e >= 0] for rank in layer]
                     for layer in self.slot_expert]
        if all(layer == per_layer[0] for layer in per_layer):
            return {"ep_ranks": per_layer[0], "copy_choice": self.copy_choice}
        return {"layers": per_layer, "copy_choice": self.copy_choice}


def contiguous_placement(num_experts: int, moe_ep: int, num_layers: int) -> ExpertPlacement:
    """Expert e in slot e % (E / ep) of EP rank e // (E / ep), in every layer."""
    if moe_ep > num_experts:
        raise PlacementError(
            f"moe_ep={moe_ep} exceeds the model's {num_experts} experts; without expert "
            f"replication each EP rank needs at least one expert: use moe_ep <= {num_experts} "
            "and add moe_dp or moe_tp, or give an expert_placement that replicates experts"
        )
    if num_experts % moe_ep:
        raise PlacementError(
            f"{num_experts} experts are not divisible by moe_ep={moe_ep}; choose moe_ep among "
            f"the divisors of {num_experts}, or give an expert_placement"
        )
    per_rank = num_experts // moe_ep
    table = np.arange(num_experts, dtype=np.int64).reshape(moe_ep, per_rank)
    slot_expert = np.broadcast_to(table, (num_layers, moe_ep, per_rank))
    return ExpertPlacement(slot_expert, num_experts)


def placement_from_spec(
    spec: ExpertPlacementSpec, *, num_experts: int, moe_ep: int, num_layers: int, source: str
) -> ExpertPlacement:
    """An ExpertPlacement from a file's or scenario's spec, checked against the model and layout."""
    layers = spec.layers if spec.layers is not None else [spec.ep_ranks or []] * num_layers
    if len(layers) != num_layers:
        raise PlacementError(f"{source}: 'layers' has {len(layers)} entries but the model has "
                             f"{num_layers} MoE layers; give one list of EP ranks per layer")
    slots = max((len(experts) for ranks in layers for experts in ranks), default=0)
    slot_expert = np.full((num_layers, moe_ep, max(slots, 1)), -1, dtype=np.int64)
    for layer, ranks in enumerate(layers):
        where = f"{source}: layer {layer}" if spec.layers is not None else source
        if len(ranks) != moe_ep:
            raise PlacementError(f"{where} lists {len(ranks)} EP ranks but the layout has "
                                 f"moe_ep={moe_ep}; give one list of experts per EP rank")
        held = {e for experts in ranks for e in experts}
        beyond = sorted(e for e in held if e >= num_experts)
        if beyond:
            raise PlacementError(f"{where} names expert {beyond[0]} but the model has "
                                 f"{num_experts} experts (ids 0..{num_experts - 1})")
        missing = sorted(set(range(num_experts)) - held)
        if missing:
            raise PlacementError(f"{where} places no copy of expert(s) {missing[:8]}; every "
                                 "expert needs at least one EP rank")
        for rank, experts in enumerate(ranks):
            slot_expert[layer, rank, : len(experts)] = experts
    return ExpertPlacement(slot_expert, num_experts, spec.copy_choice, name=source)


def _occurrence(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """`[L, T, k]`: how many assignments of the same expert in the same layer come before."""
    layers = experts.shape[0]
    key = (np.arange(layers).reshape(-1, 1, 1) * num_experts + experts).reshape(-1)
    order = np.argsort(key, kind="stable")
    counts = np.bincount(key, minlength=layers * num_experts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    nth = np.empty(key.size, dtype=np.int64)
    nth[order] = np.arange(key.size) - starts[key[order]]
    return nth.reshape(experts.shape)


def _copy_index(
    placement: ExpertPlacement,
    par: Parallelism,
    src: np.ndarray,
    experts: np.ndarray,
    gpus_per_node: int,
) -> np.ndarray:
    """`[L, T, k]` which copy of its expert each assignment uses (`copy_choice`)."""
    layer = np.arange(experts.shape[0]).reshape(-1, 1, 1)
    copies = placement.copies[layer, experts]  # [L, T, k]
    nth = _occurrence(experts, placement.num_experts)
    if placement.copy_choice == "round_robin":
        return nth % copies
    ep_index = placement.holders[0][layer, experts]  # [L, T, k, C]
    source = src.reshape(1, -1, 1, 1)
    dst = np.where(ep_index >= 0, moe_rank(par, source, np.maximum(ep_index, 0)), -1)
    local = dst == source
    near = (dst >= 0) & (dst // gpus_per_node == source // gpus_per_node)
    pool = np.where(local.any(axis=3, keepdims=True), local,
                    np.where(near.any(axis=3, keepdims=True), near, ep_index >= 0))
    size = pool.sum(axis=3)  # [L, T, k]
    pick = nth % size  # the pick-th member of the pool
    rank_in_pool = np.cumsum(pool, axis=3) - 1
    chosen = pool & (rank_in_pool == pick[..., None])
    return np.argmax(chosen, axis=3)


def route_assignments(
    placement: ExpertPlacement,
    par: Parallelism,
    src: np.ndarray,
    experts: np.ndarray,
    gpus_per_node: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each (layer, token, choice) assignment goes: `(dst_rank, ep_index, slot)`, each
    `[L, T, k]`, for tokens dispatched by `src[T]` choosing `experts[L, T, k]`."""
    experts = experts.astype(np.int64)
    layer = np.arange(experts.shape[0]).reshape(-1, 1, 1)
    holder_ep, holder_slot = placement.holders
    if placement.has_replicas:
        copy = _copy_index(placement, par, src, experts, gpus_per_node)
    else:
        copy = np.zeros(experts.shape, dtype=np.int64)
    ep_index = holder_ep[layer, experts, copy]
    slot = holder_slot[layer, experts, copy]
    return moe_rank(par, src.reshape(1, -1, 1), ep_index), ep_index, slot
