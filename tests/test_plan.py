"""Planning: inventory parsing, layouts searched, the cheapest deployment meeting the SLO."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from moesim.errors import ConfigError
from moesim.inputs.config import Scenario
from moesim.planning.deployment import deployments, layout_presets, parse_inventory, plan_deployment
from moesim.traffic.placement import parse_placement

# Fixed decode times (s) per (topology, placement, batch per replica); anything else does not fit.
FAKE_TPOT_S = {
    ("dgx-h100", "EP8", 64): 0.020,
    ("dgx-h100", "TP8", 64): 0.010,
    ("l40s-8x-pcie", "EP8", 64): 0.060,
    ("l40s-8x-pcie", "EP8", 32): 0.040,
}
PRICE = {"dgx-h100": 2.99, "l40s-8x-pcie": 0.99}  # the presets' USD per GPU-hour


def fake_evaluate(sc: Scenario) -> dict[str, Any]:
    """A sweep row with the fixed TPOT above, or infeasible with reason 'fake: too big'."""
    topology = str(sc.topology)
    tpot_s = FAKE_TPOT_S.get((topology, str(sc.placement), sc.batch or 0))
    return {
        "placement": sc.placement,
        "world": 8,
        "gpu_price_per_hour_usd": PRICE[topology],
        "feasible": tpot_s is not None,
        "reason": "" if tpot_s else "fake: too big",
        "tpot_s": tpot_s,
    }


def test_parse_inventory_adds_counts_and_normalises_names() -> None:
    """`8xH100, 16x l40s, 8xH100` is 16 H100 and 16 L40S; spaces, dashes and case are ignored."""
    assert parse_inventory("8xH100, 16x l40s,8xH100") == {"H100": 16, "L40S": 16}
    assert parse_inventory("4xRTX-4090") == {"RTX4090": 4}
    for bad in ("8xB200", "H100", "0xH100"):
        with pytest.raises(ConfigError, match="COUNTxGPU"):
            parse_inventory(bad)


def test_layout_presets_cover_every_product_form() -> None:
    """World 8: the 10 (tp, ep, dp) factorisations plus SP8, each parsing to 8 ranks."""
    layouts = layout_presets(8)
    assert layouts == [
        "DP8", "EP2xDP4", "EP4xDP2", "EP8", "TP2xDP4", "TP2xEP2xDP2", "TP2xEP4", "TP4xDP2",
        "TP4xEP2", "TP8", "SP8",
    ]  # fmt: skip
    assert all(parse_placement(name).world == 8 for name in layouts)
    assert layout_presets(1) == ["TP1"]


def test_deployments_count_whole_nodes_as_replicas() -> None:
    """16 H100: one or two DGX H100 boxes, or the 16-GPU two-node preset; 8 L40S: one box."""
    sizes = {"dgx-h100": 8, "h100-2node-ib": 16, "l40s-8x-pcie": 8}
    assert deployments({"H100": 16, "L40S": 8}, sizes) == [
        ("dgx-h100", 1), ("dgx-h100", 2), ("h100-2node-ib", 1), ("l40s-8x-pcie", 1),
    ]  # fmt: skip
    assert deployments({"L40S": 7}, sizes) == []


def test_plan_picks_cheapest_per_token_and_explains_losers() -> None:
    """64 users, 50 ms SLO; worked by hand from FAKE_TPOT_S and the presets' prices.

    dgx TP8: 64/0.010 = 6400 tok/s at 8 x 2.99 = 23.92 $/h -> 23.92/3600/6400*1e6 = 1.0382 $/M.
    dgx EP8: 3200 tok/s -> 2.0764 $/M (+100.0%). 2x l40s EP8 (32 users each): 64/0.040 = 1600
    tok/s at 16 x 0.99 = 15.84 $/h -> 2.75 $/M (+164.9%). 1x l40s EP8: 60 ms, 10 ms over.
    """
    result = plan_deployment(
        "mixtral-8x7b", "8xH100,16xL40S", slo_tpot_s=0.050, context=4096, users=64,
        evaluate=fake_evaluate,
    )  # fmt: skip
    best = result.chosen
    assert best is not None and (best.topology, best.placement, best.replicas) == (
        "dgx-h100", "TP8", 1,
    )  # fmt: skip
    assert best.usd_per_million_tokens == pytest.approx(23.92 / 3600 / 6400 * 1e6)
    assert best.tokens_per_s == pytest.approx(6400)
    verdicts = {c.label: c.verdict for c in result.candidates}
    assert verdicts["1x dgx-h100 EP8"].startswith("more expensive by 100.0%")
    assert verdicts["2x l40s-8x-pcie EP8"].startswith("more expensive by 164.9%")
    assert verdicts["1x l40s-8x-pcie EP8"] == "slower than the SLO by 10.00 ms (TPOT 60.00 ms)"
    assert verdicts["1x dgx-h100 SP8"] == "does not fit: fake: too big"
    # 11 layouts for each of 1x dgx-h100, 1x l40s, 2x l40s
    assert len(result.candidates) == 33 and result.candidates[0] == best
    assert [c.label for c in result.candidates[1:4]] == [
        "1x dgx-h100 EP8", "2x l40s-8x-pcie EP8", "1x l40s-8x-pcie EP8",
    ]  # fmt: skip


def test_plan_by_dollars_per_hour_prefers_the_cheaper_cluster() -> None:
    """Cheapest by $/h: 2x L40S (15.84 $/h) beats a DGX H100 (23.92 $/h, 51.0% dearer)."""
    result = plan_deployment(
        "mixtral-8x7b", "8xH100,16xL40S", slo_tpot_s=0.050, context=4096, users=64,
        objective="usd_per_hour", evaluate=fake_evaluate,
    )  # fmt: skip
    assert result.chosen is not None and result.chosen.label == "2x l40s-8x-pcie EP8"
    assert result.candidates[1].verdict.startswith("more expensive by 51.0%")  # 23.92 / 15.84


def test_plan_with_nothing_meeting_the_slo_chooses_none() -> None:
    """With a 5 ms SLO nothing qualifies; the closest (dgx TP8, 5 ms over) is listed first."""
    result = plan_deployment(
        "mixtral-8x7b", "8xH100,16xL40S", slo_tpot_s=0.005, context=4096, users=64,
        evaluate=fake_evaluate,
    )  # fmt: skip
    assert result.chosen is None
    assert result.candidates[0].verdict == "slower than the SLO by 5.00 ms (TPOT 10.00 ms)"


def test_plan_real_run_on_one_dgx() -> None:
    """A real analytic plan: the winner meets the SLO and fits; every loser says why."""
    result = plan_deployment("mixtral-8x7b", "8xH100", slo_tpot_s=0.5, context=512, users=8)
    assert result.chosen is not None and (result.chosen.tpot_s or 1.0) <= 0.5
    assert result.chosen.verdict == ""
    assert all(c.verdict for c in result.candidates[1:])
    assert any(c.verdict.startswith("does not fit: out of memory") for c in result.candidates)


def test_cli_plan_table_and_json(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`moesim plan ... --json -` prints the plan JSON; exit 0 when a candidate qualifies."""
    from moesim.cli import plan as cli_plan

    parser = argparse.ArgumentParser()
    cli_plan.add_parser(parser.add_subparsers())
    args = parser.parse_args(["plan", "--gpus-available", "8xH100", "--slo-tpot-ms", "500",
                              "--context", "512", "--users", "8", "--json", "-"])  # fmt: skip
    assert args.handler(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["chosen"]["tpot_s"] <= 0.5 and data["query"]["users"] == 8
    args = parser.parse_args(["plan", "--gpus-available", "8xH100", "--slo-tpot-ms", "0.001",
                              "--context", "512", "--users", "8"])  # fmt: skip
    assert args.handler(args) == 1
    assert "no candidate meets the SLO" in capsys.readouterr().out
