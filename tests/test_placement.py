"""Placement: presets parse to the product form; ownership follows DESIGN.md's conventions."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import PlacementError
from moesim.traffic.experts import contiguous_placement, route_assignments
from moesim.traffic.placement import (
    Parallelism,
    block_sizes,
    parse_placement,
    token_source_rank,
)


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("TP8", dict(attn_tp=8, attn_dp=1, attn_sp=1, moe_tp=8, moe_ep=1, moe_dp=1)),
        ("EP8", dict(attn_tp=1, attn_dp=8, attn_sp=1, moe_tp=1, moe_ep=8, moe_dp=1)),
        ("EP4xDP2", dict(attn_tp=1, attn_dp=8, attn_sp=1, moe_tp=1, moe_ep=4, moe_dp=2)),
        ("SP8", dict(attn_tp=1, attn_dp=1, attn_sp=8, moe_tp=1, moe_ep=8, moe_dp=1)),
        ("TP2xEP4", dict(attn_tp=2, attn_dp=4, attn_sp=1, moe_tp=2, moe_ep=4, moe_dp=1)),
        ("tp2xsp4", dict(attn_tp=2, attn_dp=1, attn_sp=4, moe_tp=2, moe_ep=4, moe_dp=1)),
    ],
)
def test_presets_parse_to_product_form(text: str, fields: dict[str, int]) -> None:
    """Named presets expand as DESIGN.md defines them, and both products equal the world."""
    par = parse_placement(text)
    assert {k: getattr(par, k) for k in fields} == fields
    assert par.world == 8


@pytest.mark.parametrize("text", ["TPx", "EP8xEP2", "ZZ4", "SP3xTP2xEP2", ""])
def test_bad_presets_fail_with_one_message(text: str) -> None:
    """Unreadable or non-multiplying presets raise PlacementError, not a traceback."""
    with pytest.raises(PlacementError):
        parse_placement(text)


def test_explicit_products_must_agree() -> None:
    """attn_tp*attn_dp*attn_sp must equal moe_tp*moe_ep*moe_dp."""
    with pytest.raises(ValueError, match="world size"):
        Parallelism(attn_dp=8, moe_ep=4)


def test_experts_must_divide_over_ep() -> None:
    """6 experts on EP4 and 8 experts on EP16 are rejected with the fix named."""
    with pytest.raises(PlacementError, match="divisible"):
        contiguous_placement(6, parse_placement("EP4").moe_ep, num_layers=1)
    with pytest.raises(PlacementError, match="exceeds"):
        contiguous_placement(8, parse_placement("EP16").moe_ep, num_layers=1)


def test_blocks_give_the_remainder_to_the_last() -> None:
    """10 tokens over 4 groups: 2, 2, 2, 4."""
    assert block_sizes(10, 4).tolist() == [2, 2, 2, 4]


def test_token_source_rank_blocks_then_tp_split() -> None:
    """TP2xEP2 (attn_dp=2) on 10 tokens: groups of 5 and 5, each split 2/3 over its TP pair."""
    par = Parallelism(attn_tp=2, attn_dp=2, moe_tp=2, moe_ep=2)
    assert token_source_rank(par, 10).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def _home(par: Parallelism, src: int, expert: int) -> int:
    """The rank the default placement sends `src`'s token for `expert` to (4 experts)."""
    placement = contiguous_placement(4, par.moe_ep, num_layers=1)
    dst, _, _ = route_assignments(placement, par, np.array([src]), np.array([[[expert]]]), 4)
    return int(dst[0, 0, 0])


def test_expert_home_rank_keeps_dp_replica_and_tp_index() -> None:
    """EP2xDP2: rank 3 (dp 1) sends expert 0 to rank 2; TP2xEP2 rank 1 sends expert 3 to rank 3."""
    assert _home(parse_placement("EP2xDP2"), 3, 0) == 2
    assert _home(Parallelism(attn_tp=2, attn_dp=2, moe_tp=2, moe_ep=2), 1, 3) == 3
