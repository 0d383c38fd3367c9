"""Placement: a parallel layout and which rank owns which tokens and experts.

A layout is the product form used by current serving stacks:
`attn_tp * attn_dp * attn_sp == moe_tp * moe_ep * moe_dp == world`.

Rank numbering (stated once here, used everywhere):
- attention side: rank `r` has `attn_tp` index `r % attn_tp`, SP index `(r // attn_tp) % attn_sp`
  and DP index `r // (attn_tp * attn_sp)`; its *token group* is `r // attn_tp`, so TP groups are
  contiguous ranks (inside one node where possible).
- MoE side: rank `r` has `moe_tp` index `r % moe_tp`, EP index `(r // moe_tp) % moe_ep` and MoE DP
  index `r // (moe_tp * moe_ep)`; every MoE DP replica holds all experts.

Who owns what (the default replay of a trace):
- the `attn_dp * attn_sp` token groups own the trace's tokens in contiguous blocks of
  `T // groups` in trace order, the last block taking the remainder;
- an attention-TP group splits its block the same way among its `attn_tp` ranks before dispatch
  (each token is dispatched by exactly one rank) and gathers them again after combine;
- which EP index holds expert `e` is the expert placement's (moesim.traffic.experts; default
  `e // (E / moe_ep)`); a token dispatched by rank `s` goes to the rank with `s`'s MoE DP index,
  the expert's EP index and `s`'s MoE TP index (`moe_rank`); with `moe_tp > 1` the expert's TP
  group all-gathers the tokens it received and reduce-scatters the outputs.
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from moesim.errors import PlacementError

__all__ = [
    "Parallelism",
    "parse_placement",
    "block_owner",
    "block_sizes",
    "token_source_rank",
    "moe_ep_index",
    "moe_dp_index",
    "moe_rank",
    "check_tp_fits_model",
]


class Parallelism(BaseModel):
    """A parallel layout in product form; `name` is the preset it came from, if any."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attn_tp: int = Field(1, ge=1)
    attn_dp: int = Field(1, ge=1)
    attn_sp: int = Field(1, ge=1)
    moe_tp: int = Field(1, ge=1)
    moe_ep: int = Field(1, ge=1)
    moe_dp: int = Field(1, ge=1)
    name: str | None = None

    @model_validator(mode="after")
    def _products_agree(self) -> Parallelism:
        attn_world = self.attn_tp * self.attn_dp * self.attn_sp
        moe_world = self.moe_tp * self.moe_ep * self.moe_dp
        if attn_world != moe_world:
            raise ValueError(
                f"attention ranks attn_tp*attn_dp*attn_sp = {self.attn_tp}*{self.attn_dp}*"
                f"{self.attn_sp} = {attn_world} differ from MoE ranks moe_tp*moe_ep*moe_dp = "
                f"{self.moe_tp}*{self.moe_ep}*{self.moe_dp} = {moe_world}; both must equal the "
                "world size"
            )
        return self

    @property
    def world(self) -> int:
        """Number of ranks (GPUs)."""
        return self.attn_tp * self.attn_dp * self.attn_sp

    @property
    def token_groups(self) -> int:
        """Number of attention token groups (DP times SP)."""
        return self.attn_dp * self.attn_sp

    @property
    def label(self) -> str:
        """The preset name, or the explicit product form."""
        if self.name:
            return self.name
        return (
            f"attn(tp{self.attn_tp},dp{self.attn_dp},sp{self.attn_sp})"
            f"/moe(tp{self.moe_tp},ep{self.moe_ep},dp{self.moe_dp})"
        )

    def ranks(self) -> np.ndarray:
        """All rank ids, 0..world-1."""
        return np.arange(self.world)


_TERM = re.compile(r"^(TP|EP|DP|SP)(\d+)$")


def parse_placement(text: str) -> Parallelism:
    """Parse a named preset: TP{n}, EP{n}, EP{e}xDP{d}, SP{n}, or mixes such as TP2xEP4.

    TP t sets attn_tp = moe_tp = t; EP e sets moe_ep = e; DP d sets moe_dp = d; SP s sets
    attn_sp = s and, when no EP is given, moe_ep = s. The world is moe_tp*moe_ep*moe_dp and
    attention DP takes what is left: attn_dp = world / (attn_tp * attn_sp).
    """
    terms: dict[str, int] = {}
    for raw in text.strip().upper().split("X"):
        match = _TERM.match(raw.strip())
        if not match:
            raise PlacementError(
                f"placement '{text}': cannot read '{raw}'; write terms TP<n>, EP<n>, DP<n>, SP<n> "
                "joined by 'x', e.g. TP8, EP8, EP4xDP2, SP8, TP2xEP4"
            )
        kind, size = match.group(1), int(match.group(2))
        if kind in terms:
            raise PlacementError(f"placement '{text}': {kind} appears twice; give it once")
        if size < 1:
            raise PlacementError(f"placement '{text}': {kind}{size} must be at least 1")
        terms[kind] = size
    tp, sp, dp = terms.get("TP", 1), terms.get("SP", 1), terms.get("DP", 1)
    ep = terms.get("EP", sp if "SP" in terms else 1)
    world = tp * ep * dp
    if world % (tp * sp):
        raise PlacementError(
            f"placement '{text}': world moe_tp*moe_ep*moe_dp = {tp}*{ep}*{dp} = {world} is not "
            f"divisible by attn_tp*attn_sp = {tp}*{sp}; choose sizes that multiply out"
        )
    return Parallelism(
        attn_tp=tp,
        attn_sp=sp,
        attn_dp=world // (tp * sp),
        moe_tp=tp,
        moe_ep=ep,
        moe_dp=dp,
        name=text.strip(),
    )


def check_tp_fits_model(par: Parallelism, num_attention_heads: int, expert_ffn_size: int) -> None:
    """Raise PlacementError unless heads divide over attn_tp and expert FFNs over moe_tp."""
    if num_attention_heads % par.attn_tp:
        raise PlacementError(
            f"placement {par.label}: the model's {num_attention_heads} attention heads are not "
            f"divisible by attn_tp={par.attn_tp}; choose a TP size that divides them"
        )
    if expert_ffn_size % par.moe_tp:
        raise PlacementError(
            f"placement {par.label}: expert FFN size {expert_ffn_size} is not divisible by "
            f"moe_tp={par.moe_tp}; choose a TP size that divides it"
        )


def block_sizes(num_items: int, parts: int) -> np.ndarray:
    """Sizes of `parts` contiguous blocks: `num_items // parts` each, the last takes the rest."""
    sizes = np.full(parts, num_items // parts, dtype=np.int64)
    sizes[-1] += num_items - sizes.sum()
    return sizes


def block_owner(num_items: int, parts: int) -> np.ndarray:
    """Block index of each of `num_items` items split by `block_sizes`."""
    return np.repeat(np.arange(parts), block_sizes(num_items, parts))


def token_source_rank(
    par: Parallelism, num_tokens: int, token_group: np.ndarray | None = None
) -> np.ndarray:
    """The rank that dispatches each token: its attention group (`token_group`, default the
    contiguous blocks), then the TP split of the group's tokens in token order."""
    if token_group is None:
        group = block_owner(num_tokens, par.token_groups)
        group_sizes = block_sizes(num_tokens, par.token_groups)
        group_start = np.concatenate(([0], np.cumsum(group_sizes)[:-1]))
        offset = np.arange(num_tokens) - group_start[group]
    else:
        group = np.asarray(token_group, dtype=np.int64)
        group_sizes = np.bincount(group, minlength=par.token_groups)
        order = np.argsort(group, kind="stable")
        group_start = np.concatenate(([0], np.cumsum(group_sizes)[:-1]))
        offset = np.empty(num_tokens, dtype=np.int64)
        offset[order] = np.arange(num_tokens) - group_start[group[order]]
    # Within a block of n tokens, TP rank i takes n // tp tokens; the last takes the rest.
    share = group_sizes[group] // par.attn_tp
    tp_index = np.minimum(offset // np.maximum(share, 1), par.attn_tp - 1)
    tp_index = np.where(share == 0, par.attn_tp - 1, tp_index)
    return (group * par.attn_tp + tp_index).astype(np.int64)


def moe_ep_index(par: Parallelism, rank: np.ndarray) -> np.ndarray:
    """EP index of MoE rank(s) `rank`."""
    return (rank // par.moe_tp) % par.moe_ep


def moe_dp_index(par: Parallelism, rank: np.ndarray) -> np.ndarray:
    """MoE-DP replica of MoE rank(s) `rank`."""
    return rank // (par.moe_tp * par.moe_ep)


def moe_rank(par: Parallelism, src_rank: np.ndarray, ep_index: np.ndarray) -> np.ndarray:
    """The MoE rank with EP index `ep_index` that serves tokens dispatched by `src_rank`: the
    one in `src_rank`'s MoE-DP replica with its MoE-TP index (arrays broadcast)."""
    src_rank = np.asarray(src_rank)
    return (moe_dp_index(par, src_rank) * (par.moe_ep * par.moe_tp)
            + np.asarray(ep_index) * par.moe_tp + src_rank % par.moe_tp)
