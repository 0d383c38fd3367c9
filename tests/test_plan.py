"""Planning: inventory parsing, layouts searched, the cheapest deployment meeting the SLO."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from moesim.errors import ConfigError
from moesim.inputs.config import Scenario, ServeSpec
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


# Served figures (p90 TTFT s, p90 TPOT s, output tokens/s of one replica) per (topology,
# placement, clients per replica); anything else cannot serve.
FAKE_SERVED = {
    ("dgx-h100", "EP8", 64): (0.30, 0.020, 3000.0),
    ("dgx-h100", "TP8", 64): (0.90, 0.010, 5000.0),
    ("l40s-8x-pcie", "EP8", 32): (0.40, 0.040, 1000.0),
}


def fake_serve(sc: Scenario, percentile: str) -> dict[str, Any]:
    """A served row with the figures above; records the workload each replica was given."""
    assert percentile == "p90" and sc.serve is not None
    SEEN.append((str(sc.topology), str(sc.placement), sc.serve))
    figures = FAKE_SERVED.get((str(sc.topology), str(sc.placement), sc.serve.concurrency or 0))
    if figures is None:
        return {"placement": sc.placement, "feasible": False, "reason": "fake",
                "verdict": "cannot serve: fake"}
    ttft_s, tpot_s, tokens = figures
    return {"placement": sc.placement, "world": 8, "feasible": True, "reason": "",
            "gpu_price_per_hour_usd": PRICE[str(sc.topology)], "ttft_s": ttft_s,
            "tpot_s": tpot_s, "output_tokens_per_s": tokens, "goodput_per_s": 1.0}


SEEN: list[tuple[str, str, Any]] = []


def test_served_plan_needs_both_targets_and_prices_served_tokens() -> None:
    """64 users, TTFT 500 ms and TPOT 50 ms at p90; worked by hand from FAKE_SERVED.

    dgx TP8 has the best TPOT but a 900 ms TTFT: it misses. dgx EP8 meets both and serves
    3000 tok/s at 23.92 $/h -> 23.92/3600/3000*1e6 = 2.2148 $/M. 2x l40s EP8 (32 clients each)
    serves 2 x 1000 tok/s at 15.84 $/h -> 2.2 $/M: the cheapest. 1x l40s EP8 cannot serve 64.
    Each replica got its share of the users as closed-loop clients and prompts of the context.
    """
    SEEN.clear()
    result = plan_deployment(
        "mixtral-8x7b", "8xH100,16xL40S", slo_tpot_s=0.050, slo_ttft_s=0.5, context=4096,
        users=64, serve=fake_serve,
    )  # fmt: skip
    best = result.chosen
    assert best is not None and best.label == "2x l40s-8x-pcie EP8"
    assert best.tokens_per_s == 2000.0 and best.goodput_per_s == 2.0
    assert best.usd_per_million_tokens == pytest.approx(15.84 / 3600 / 2000 * 1e6)
    verdicts = {c.label: c.verdict for c in result.candidates}
    assert verdicts["1x dgx-h100 EP8"].startswith("more expensive by 0.7%")  # 2.2148 / 2.2
    assert verdicts["1x dgx-h100 TP8"] == "misses the SLO: p90 TTFT 900.0 ms > 500 ms"
    assert verdicts["1x l40s-8x-pcie EP8"] == "cannot serve: fake"
    assert {(topo, spec.concurrency) for topo, _, spec in SEEN} == {
        ("dgx-h100", 64), ("l40s-8x-pcie", 64), ("l40s-8x-pcie", 32)}
    assert {(spec.isl, spec.osl, spec.slo_ttft_ms, spec.slo_tpot_ms) for *_, spec in SEEN} == {
        (4096, 256, 500.0, 50.0)}
    assert result.query["serving"]["percentile"] == "p90"


def test_served_plan_splits_a_request_rate_over_replicas() -> None:
    """With --rate 6 and no --users, two replicas each serve 3 requests/s open loop."""
    SEEN.clear()
    plan_deployment("mixtral-8x7b", "16xL40S", slo_tpot_s=0.05, slo_ttft_s=0.5, context=512,
                    users=None, serve_spec=ServeSpec(rate=6.0, isl=100), serve=fake_serve)
    assert {(spec.rate, spec.isl) for *_, spec in SEEN if spec.rate == 3.0} == {(3.0, 100)}
    assert {spec.rate for *_, spec in SEEN} == {6.0, 3.0}
    with pytest.raises(ConfigError, match="--users"):
        plan_deployment("mixtral-8x7b", "8xH100", slo_tpot_s=0.05, context=512, users=None)


def test_cli_served_plan_reports_ttft_and_tpot(tmp_path: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A real served plan on one DGX H100 (8 users, short requests): the table has the
    percentile TTFT column, SP cannot serve, the JSON carries both figures of the winner."""
    from moesim.cli import plan as cli_plan

    parser = argparse.ArgumentParser()
    cli_plan.add_parser(parser.add_subparsers())
    args = parser.parse_args(["plan", "--gpus-available", "8xH100", "--slo-tpot-ms", "50",
                              "--slo-ttft-ms", "2000", "--context", "256", "--users", "8",
                              "--osl", "8", "--requests", "16", "--quiet",
                              "--json", str(tmp_path / "plan.json")])  # fmt: skip
    assert args.handler(args) == 0
    table = capsys.readouterr().out
    assert "TTFT ms" in table and "p90 TTFT SLO 2000 ms" in table
    data = json.loads((tmp_path / "plan.json").read_text())
    chosen = data["chosen"]
    assert chosen["ttft_s"] <= 2.0 and chosen["tpot_s"] <= 0.05
    sp = next(c for c in data["candidates"] if c["placement"] == "SP8")
    assert sp["verdict"].startswith("cannot serve: placement SP8")


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--users", "4", "--osl", "0"], "--osl: Input should be greater than or equal to 1"),
        (["--users", "4", "--slo-ttft-ms", "-5"], "--slo-ttft-ms must be positive"),
        ([], "plan needs --users"),
        (["--users", "4", "--rate", "-1"], "--rate: Input should be greater than 0"),
    ],
)
def test_served_plan_refuses_bad_flags_by_name(flags: list[str], needle: str) -> None:
    """Malformed serving flags of plan: one ConfigError naming the flag, nothing simulated."""
    from moesim.cli import plan as cli_plan

    parser = argparse.ArgumentParser()
    cli_plan.add_parser(parser.add_subparsers())
    args = parser.parse_args(["plan", "--gpus-available", "8xH100", "--slo-tpot-ms", "50",
                              "--context", "64", "--quiet", *flags])
    with pytest.raises(ConfigError, match=needle):
        args.handler(args)
