"""Compare: cost formula, ranking rule, infeasible reasons, plots and the CLI round trip."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest

import moesim.planning.evaluate as evaluate_module
from moesim.cli import compare as cli_compare
from moesim.cli import report as cli_report
from moesim.errors import ConfigError
from moesim.inputs.config import Scenario, ServeSpec
from moesim.inputs.topology import load_topology
from moesim.output.html_report import render_html
from moesim.output.plots import save_plots
from moesim.output.report import format_compare_table
from moesim.output.result import usd_per_million_tokens
from moesim.planning.compare import evaluate_point, rank_rows, run_compare
from moesim.planning.evaluate import evaluate
from moesim.planning.serving import serve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Small and fast: Mixtral-8x7B, bundled real trace, 4 sequences of 64 tokens, analytic timing.
SMALL = Scenario(topology="dgx-h100", phase="decode", batch=4, context=64, fidelity="analytic")


def _cli(argv: list[str]) -> int:
    """Parse and run `moesim compare|report` with this module's parsers (no registry needed)."""
    parser = argparse.ArgumentParser(prog="moesim")
    commands = parser.add_subparsers(dest="command", required=True)
    cli_compare.add_parser(commands)
    cli_report.add_parser(commands)
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_usd_per_million_tokens_formula() -> None:
    """8 GPUs at 2.99 USD/h = 23.92 USD/h = 0.0066444 USD/s; at 4232 tokens/s that is
    1.5701e-6 USD per token = 1.5701 USD per million; no price gives None."""
    assert usd_per_million_tokens(8, 2.99, 4232.0) == pytest.approx(1.57006, rel=1e-5)
    assert usd_per_million_tokens(8, 2.99, 4232.0) == 8 * 2.99 / 3600 / 4232.0 * 1e6
    assert usd_per_million_tokens(8, None, 4232.0) is None
    assert usd_per_million_tokens(1, 1.0, 3600.0) == pytest.approx(1e6 / 3600 / 3600)


def _row(name: str, per_gpu: float, tpot_ms: float, feasible: bool = True) -> dict[str, Any]:
    return {"placement": name, "feasible": feasible, "tokens_per_s_per_gpu": per_gpu,
            "tpot_s": tpot_ms * 1e-3, "ttft_s": 0.5}


def test_ranking_by_tokens_per_gpu_then_tpot() -> None:
    """Higher tokens/s per GPU ranks first; equal throughput goes to the lower TPOT;
    infeasible rows are not ranked."""
    rows = [_row("A", 100, 10), _row("B", 200, 20), _row("C", 200, 15), _row("D", 999, 1, False)]
    ranked = rank_rows(rows)
    assert [r["placement"] for r in ranked] == ["C", "B", "A"]
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    assert all(r["meets_slo"] is None for r in ranked)


def test_ranking_puts_layouts_meeting_the_target_first() -> None:
    """With a TPOT target of 12 ms only A (10 ms) meets it, so it ranks above faster-per-GPU
    B and C, which keep their order among themselves."""
    rows = [_row("A", 100, 10), _row("B", 200, 20), _row("C", 200, 15)]
    ranked = rank_rows(rows, max_tpot_s=12e-3)
    assert [(r["placement"], r["meets_slo"]) for r in ranked] == [
        ("A", True), ("C", False), ("B", False)]
    assert rank_rows(rows, max_ttft_s=0.1)[0]["meets_slo"] is False  # every TTFT is 0.5 s


@pytest.mark.parametrize(
    ("placement", "needle"),
    [
        ("EP16", "needs 16 GPUs but dgx-h100 has 8"),
        ("EP3", "8 experts are not divisible by moe_ep=3"),
        ("TP3", "32 attention heads are not divisible by attn_tp=3"),
        ("TP1", "out of memory: weights 93.4 GB exceed the 72.0 GB usable of 80.0 GB per GPU"),
    ],
)
def test_infeasible_points_carry_the_reason_and_are_not_simulated(
    placement: str, needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Too many GPUs, experts or heads not dividing, and not fitting in memory are each
    reported with the reason, and no step is simulated for them."""
    def forbidden(*_: Any, **__: Any) -> None:
        raise AssertionError("an infeasible point must not be simulated")

    monkeypatch.setattr(evaluate_module, "execute", forbidden)
    scenario = SMALL.model_copy(update={"placement": placement})
    row, result = evaluate_point(scenario, load_topology("dgx-h100"))
    assert result is None
    assert not row["feasible"]
    assert needle in row["reason"]


@pytest.fixture(scope="module")
def small_compare() -> dict[str, Any]:
    """2 layouts x 1 topology, with plot data and a 2-point latency-throughput sweep."""
    progress = io.StringIO()
    result = run_compare(SMALL, ["EP2", "TP2"], ["dgx-h100"], [4], plot_data=True,
                         sweep_batches=[1, 4], progress=progress)
    result["_progress"] = progress.getvalue()
    return result


def test_compare_rows_are_evaluate_results(small_compare: dict[str, Any]) -> None:
    """Each feasible row carries exactly what `evaluate` gives for its scenario, plus
    tokens/s per GPU and the cost; one progress line per point."""
    (group,) = small_compare["groups"]
    assert {r["placement"] for r in group["ranked"]} == {"EP2", "TP2"}
    for row in group["ranked"]:
        direct = evaluate(SMALL.model_copy(update={"placement": row["placement"]})).to_json()
        assert row["tpot_s"] == direct["tpot_s"]
        assert row["a2a_bytes"] == direct["a2a_bytes"]
        assert row["tokens_per_s_per_gpu"] == direct["tokens_per_s"] / 2
        assert row["usd_per_million_tokens"] == 2 * 2.99 / 3600 / direct["tokens_per_s"] * 1e6
    lines = small_compare["_progress"].splitlines()
    assert [line[:6] for line in lines] == ["[1/2] ", "[2/2] ", "sweep ", "sweep "]
    table = format_compare_table(small_compare)
    assert "EP2" in table and "TP2" in table and "$/M tok" in table


def test_small_compare_writes_every_plot(small_compare: dict[str, Any], tmp_path: Path) -> None:
    """Phase breakdown, Gantt, traffic heatmap, expert load and latency-throughput PNGs
    exist, are non-empty PNG files, one per kind for one topology and one batch."""
    written = save_plots(small_compare, tmp_path)
    names = sorted(Path(info["path"]).name for info in written)
    assert names == sorted([
        "phases_dgx-h100_b4.png", "gantt_dgx-h100_b4.png", "traffic_b4.png",
        "expert_load_b4.png", "latency_throughput.png",
    ])
    for info in written:
        data = Path(info["path"]).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_sweep_holds_tpot_and_throughput_per_batch(small_compare: dict[str, Any]) -> None:
    """Each swept point that fits has tokens/s = batch / TPOT."""
    sweep = small_compare["latency_throughput"]["dgx-h100"]
    assert set(sweep) == {"EP2", "TP2"}
    for points in sweep.values():
        assert [p["batch"] for p in points] == [1, 4]
        for p in points:
            assert p["fits"] and p["tokens_per_s"] == pytest.approx(p["batch"] / p["tpot_s"])


def test_cli_compare_json_then_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`moesim compare --json` writes a file `moesim report` reads back into the same table;
    an infeasible layout is listed with its reason."""
    out = tmp_path / "cmp.json"
    code = _cli(["compare", "--topology", "dgx-h100", "--placements", "EP2,EP16", "--batch",
                 "4", "--context", "64", "--phase", "decode", "--fidelity", "analytic",
                 "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert "infeasible EP16 on dgx-h100: placement EP16 needs 16 GPUs" in printed.out
    assert "[1/2] EP2 on dgx-h100, batch 4" in printed.err
    data = json.loads(out.read_text())
    assert data["kind"] == "moesim.compare"
    assert _cli(["report", str(out)]) == 0
    assert format_compare_table(data) in capsys.readouterr().out


def test_compare_without_topology_is_a_config_error() -> None:
    """A scenario with no topology and no --topology cannot be compared."""
    with pytest.raises(ConfigError, match="compare needs a topology"):
        run_compare(Scenario(), ["EP8"], progress=None)


def _served(name: str, goodput_per_gpu: float, tokens_per_gpu: float, ttft_ms: float,
            tpot_ms: float) -> dict[str, Any]:
    row = _row(name, 1.0, 1.0)  # one-step figures the serving ranking must ignore
    row["serve"] = {"ttft_s": ttft_ms * 1e-3, "tpot_s": tpot_ms * 1e-3,
                    "goodput_per_s_per_gpu": goodput_per_gpu,
                    "output_tokens_per_s_per_gpu": tokens_per_gpu}
    return row


def test_serving_ranking_is_by_goodput_per_gpu_with_targets_and_throughput_without() -> None:
    """With a target, goodput per GPU decides among layouts meeting it (A over B, though B
    serves more tokens) and C, missing the TTFT target, ranks last despite the most goodput;
    without one, served output tokens/s per GPU decides (C, B, A)."""
    rows = [_served("A", 2.0, 100, 50, 10), _served("B", 1.0, 300, 50, 10),
            _served("C", 9.0, 900, 500, 10)]
    ranked = rank_rows(rows, max_ttft_s=0.1, serving=True)
    assert [(r["placement"], r["meets_slo"]) for r in ranked] == [
        ("A", True), ("B", True), ("C", False)]
    assert [r["placement"] for r in rank_rows(rows, serving=True)] == ["C", "B", "A"]


@pytest.fixture(scope="module")
def served_compare() -> dict[str, Any]:
    """EP2, TP2 and SP2 on dgx-h100 serving 6 requests from 2 closed-loop clients."""
    spec = ServeSpec(concurrency=2, requests=6, isl=64, osl=8, slo_ttft_ms=500)
    base = SMALL.model_copy(update={"serve": spec})
    return run_compare(base, ["EP2", "TP2", "SP2"], ["dgx-h100"], [4], max_tpot_s=0.05,
                       plot_data=True, percentile="p50", progress=None)


def test_serving_compare_rows_are_serve_results(served_compare: dict[str, Any]) -> None:
    """Each served row holds what `serve` gives for its scenario at the chosen percentile,
    goodput counted against the targets (--max-tpot-ms and the workload's TTFT SLO); SP,
    which has no served decode, is listed infeasible with the reason."""
    (group,) = served_compare["groups"]
    assert served_compare["serving"]["percentile"] == "p50"
    assert served_compare["slo"] == {"max_tpot_s": 0.05, "max_ttft_s": 0.5}
    assert [r["placement"] for r in group["infeasible"]] == ["SP2"]
    assert group["infeasible"][0]["reason"].startswith("cannot serve:")
    for row in group["ranked"]:
        spec = ServeSpec(concurrency=2, requests=6, isl=64, osl=8, slo_ttft_ms=500,
                         slo_tpot_ms=50)
        direct = serve(SMALL.model_copy(update={"placement": row["placement"],
                                                "serve": spec})).to_json()
        got = row["serve"]
        assert got["ttft_s"] == direct["ttft_s"]["p50"]
        assert got["tpot_s"] == direct["tpot_s"]["p50"]
        assert got["goodput_per_s_per_gpu"] == direct["goodput_per_s"] / 2
        assert row["meets_slo"] == (got["ttft_s"] <= 0.5 and got["tpot_s"] <= 0.05)
    table = format_compare_table(served_compare)
    assert "goodput/GPU" in table and "p50 over the requests" in table
    assert "infeasible SP2 on dgx-h100: cannot serve" in table


def test_serving_compare_draws_the_served_distributions(served_compare: dict[str, Any],
                                                        tmp_path: Path) -> None:
    """The served comparison adds the TTFT/TPOT CDF and batch/KV plots; the HTML report says
    what was served and tables the served columns."""
    names = {Path(info["path"]).name for info in save_plots(served_compare, tmp_path)}
    assert {"serve_latency_cdf_b4.png", "serve_batch_kv_b4.png"} <= names
    page = render_html(served_compare, figures=None)
    assert "Served workload" in page and "closed loop of 2 clients" in page
    assert "goodput/GPU" in page
