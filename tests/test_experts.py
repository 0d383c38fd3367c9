"""Expert placement as data: the default is DESIGN.md's contiguous rule; replicas split their
tokens by the stated rule, exact to the byte on a hand-worked trace; bad placements are one
clear error.

The trace is tests/test_traffic.py's (top-2 of 4 experts, hidden 4 in bf16: 8 bytes a vector):
    layer 0: t0 [0,1]  t1 [1,2]  t2 [2,3]  t3 [0,3]
    layer 1: t0 [3,2]  t1 [0,1]  t2 [1,0]  t3 [2,1]
On EP2 rank 0 dispatches t0, t1 and rank 1 t2, t3.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moesim.cli import main
from moesim.errors import ConfigError, PlacementError
from moesim.inputs.config import ExpertPlacementSpec, Scenario, parse_model
from moesim.planning.evaluate import evaluate
from moesim.planning.resolve import resolve_inputs
from moesim.traffic.experts import contiguous_placement, placement_from_spec, route_assignments
from moesim.traffic.memory import weight_bytes_per_rank
from moesim.traffic.placement import Parallelism, parse_placement
from moesim.traffic.traffic import compute_traffic
from tests.helpers import tiny_model, trace_from

VEC = 8
EXPERTS = [
    [[0, 1], [1, 2], [2, 3], [0, 3]],
    [[3, 2], [0, 1], [1, 0], [2, 1]],
]
# expert 3 on both EP ranks (copy 0 on EP rank 0, copy 1 on EP rank 1)
REPLICATED = {"ep_ranks": [[0, 1, 3], [2, 3]]}


def _placement(spec: dict, moe_ep: int = 2, layers: int = 2, experts: int = 4):  # type: ignore[no-untyped-def]
    parsed = parse_model(ExpertPlacementSpec, spec, "test placement")
    return placement_from_spec(parsed, num_experts=experts, moe_ep=moe_ep, num_layers=layers,
                               source="test placement")


def test_default_is_the_contiguous_rule() -> None:
    """Expert e sits in slot e % (E/ep) of EP rank e // (E/ep) in every layer, no replicas."""
    placement = contiguous_placement(256, 64, num_layers=3)
    ep, slot = placement.holders
    experts = np.arange(256)
    assert (ep[:, :, 0] == experts // 4).all() and (slot[:, :, 0] == experts % 4).all()
    assert not placement.has_replicas and placement.slots == 4
    assert (placement.copies == 1).all()


def test_round_robin_splits_a_replicated_experts_tokens_exactly() -> None:
    """Round robin: expert 3's i-th assignment of a layer goes to copy i mod 2. Layer 0: t2's
    goes to EP rank 0 and t3's stays on rank 1; layer 1: t0's goes to rank 0 (local)."""
    traffic = compute_traffic(trace_from(EXPERTS), tiny_model(), parse_placement("EP2"),
                              experts=_placement(REPLICATED))
    expected = np.array([[[3, 1], [2, 2]], [[3, 1], [3, 1]]]) * VEC
    np.testing.assert_array_equal(traffic.dispatch_bytes, expected)
    np.testing.assert_array_equal(traffic.combine_bytes, expected.transpose(0, 2, 1))
    # slots: rank 0 holds [0, 1, 3], rank 1 [2, 3, empty]
    np.testing.assert_array_equal(traffic.rank_expert_tokens,
                                  [[[2, 2, 1], [2, 1, 0]], [[2, 3, 1], [2, 0, 0]]])
    # every assignment is processed exactly once
    assert (traffic.rank_expert_tokens.sum(axis=(1, 2)) == 4 * 2).all()
    np.testing.assert_array_equal(traffic.expert_load.sum(axis=1), [8, 8])


def test_local_first_keeps_a_local_copy_local() -> None:
    """local_first: t2 and t3 (rank 1) use expert 3's copy on rank 1, t0 (rank 0) its copy on
    rank 0: layer 0 moves 2 vectors between ranks where round robin moved 3."""
    spec = {**REPLICATED, "copy_choice": "local_first"}
    traffic = compute_traffic(trace_from(EXPERTS), tiny_model(), parse_placement("EP2"),
                              experts=_placement(spec))
    expected = np.array([[[3, 1], [1, 3]], [[3, 1], [3, 1]]]) * VEC
    np.testing.assert_array_equal(traffic.dispatch_bytes, expected)


def test_local_first_prefers_the_same_node() -> None:
    """EP4 on two nodes of two GPUs, expert 0 on EP ranks 1 and 3: a token of rank 2 (node 1,
    no local copy) goes to rank 3 on its node; a token of rank 0 to rank 1 on its node."""
    placement = _placement({"ep_ranks": [[1], [0, 2], [3], [0]], "copy_choice": "local_first"},
                           moe_ep=4, layers=1)
    par = parse_placement("EP4")
    dst, _, _ = route_assignments(placement, par, np.array([2, 0]), np.array([[[0], [0]]]), 2)
    assert dst[0, :, 0].tolist() == [3, 1]


def test_replicas_cost_memory() -> None:
    """Two EP ranks of 3 slots (experts 0 and 2 replicated) hold 3/2 of the default expert
    weights per rank."""
    model = tiny_model()
    spec = {"ep_ranks": [[0, 1, 2], [2, 3, 0]]}
    placement = _placement(spec)
    par = parse_placement("EP2")
    replicated = weight_bytes_per_rank(model, par, experts=placement)["experts"]
    default = weight_bytes_per_rank(model, par)["experts"]
    assert replicated * 2 == default * 3  # 3 slots per layer instead of 2


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"ep_ranks": [[0, 1], [2]]}, "no copy of expert(s) [3]"),
        ({"ep_ranks": [[0, 1], [2, 7]]}, "names expert 7"),
        ({"ep_ranks": [[0, 1, 2, 3]]}, "lists 1 EP ranks but the layout has moe_ep=2"),
        ({"layers": [[[0, 1], [2, 3]]]}, "'layers' has 1 entries but the model has 2"),
    ],
)
def test_placements_that_do_not_fit_name_the_problem(spec: dict, needle: str) -> None:
    """Every expert held, ids below the model's, one list per EP rank, one entry per layer."""
    with pytest.raises(PlacementError, match=None) as info:
        _placement(spec)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"ep_ranks": [[0, 0, 1], [2, 3]]}, "lists an expert twice"),
        ({"ep_ranks": [[0]], "layers": [[[0]]]}, "exactly one of"),
        ({}, "exactly one of"),
        ({"ep_ranks": [[-1]]}, "greater than or equal to 0"),
        ({"ep_ranks": [[0]], "copy_choice": "random"}, "copy_choice"),
    ],
)
def test_malformed_placement_specs_are_config_errors(data: dict, needle: str) -> None:
    """Structure is checked when the file is read, naming the field."""
    with pytest.raises(ConfigError) as info:
        parse_model(ExpertPlacementSpec, data, "placement file p.yaml")
    assert needle in str(info.value) and "p.yaml" in str(info.value)


def test_replicas_are_accepted_end_to_end(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`moesim run --expert-placement FILE` on EP8 with expert 0 replicated on every rank:
    expert 0's tokens spread over 8 copies, so the busiest rank works less than with the default
    placement, and the JSON records the placement. A broken file is one error line, exit 2."""
    path = tmp_path / "replicas.yaml"
    path.write_text("ep_ranks: [" + ", ".join(f"[{e}, 0]" if e else "[0]" for e in range(8))
                    + "]\n")
    base = Scenario(placement="EP8", topology="dgx-h100", batch=8, context=256,
                    fidelity="analytic", phase="decode")
    default = evaluate(base)
    assert main(["run", "--placement", "EP8", "--topology", "dgx-h100", "--batch", "8",
                 "--context", "256", "--fidelity", "analytic", "--phase", "decode",
                 "--expert-placement", str(path), "--json", "-", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["inputs"]["expert_placement"]["ep_ranks"][1] == [1, 0]
    assert result["imbalance"]["rank_max_over_mean"]["mean"] < default.imbalance[
        "rank_max_over_mean"].mean
    assert result["a2a_bytes"] + result["local_bytes"] == default.a2a_bytes + default.local_bytes
    path.write_text("ep_ranks: [[0]]\n")
    assert main(["run", "--expert-placement", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesim: error: expert placement file") and "\n" not in err


def test_scenario_inline_placement_resolves_like_a_file() -> None:
    """A scenario may give the placement inline; the resolved one is the same object data."""
    scenario = Scenario(placement="EP2", model=tiny_model().model_dump(), expert_placement={
        "ep_ranks": [[0, 1, 3], [2, 3]]}, trace="bundled:mixtral8x7b_humaneval0_prefill_decode")
    # a trace given by name (not the default, which falls back to a synthetic trace of the
    # model's shape) is Mixtral's: 8 experts, so it does not fit the 4-expert model
    with pytest.raises(Exception) as info:
        evaluate(scenario)
    assert "expert id" in str(info.value) or "MoE layers" in str(info.value)
    inputs = resolve_inputs(Scenario(
        placement="EP2", model=tiny_model(num_layers=32, num_experts=8).model_dump(),
        expert_placement={"ep_ranks": [[0, 1, 2, 3, 7], [4, 5, 6, 7]]}))
    assert inputs.experts.has_replicas and inputs.experts.copies[0, 7] == 2
    assert isinstance(inputs.parallelism, Parallelism)
