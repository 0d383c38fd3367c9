"""`moesim compare --variants`: MoE-engine variants evaluated, labelled and ranked together; bad
specs refused in one line; the rank-load plot of EPLB rows and the Gantt of two-batch overlap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moesim.cli import main
from moesim.cli.compare import compare_table
from moesim.errors import ConfigError
from moesim.inputs.config import Scenario
from moesim.output import plots
from moesim.output.html_report import render_html
from moesim.output.plots import save_plots
from moesim.planning.compare import parse_variants, run_compare, variant_scenarios
from moesim.planning.evaluate import evaluate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPLB = "eplb=deepseek+redundant_experts=8"
# EP8 on dgx-h100, 16 sequences (two per attention-DP group, so two-batch overlap can split
# them), 2 MoE layers, analytic timing: well under a second per point.
SMALL = Scenario(topology="dgx-h100", placement="EP8", phase="decode", batch=16, context=64,
                 fidelity="analytic", layers=2)
SMALL_FLAGS = ["--topology", "dgx-h100", "--batch", "16", "--context", "64", "--phase",
               "decode", "--fidelity", "analytic", "--layers", "2"]


def test_parse_variants_labels_and_overrides() -> None:
    """`base` is the scenario as given; `+` joins overrides; dashed names become field names;
    a list value keeps its own commas; `none` of an optional field is None."""
    variants = parse_variants(
        "base, eplb=deepseek+redundant-experts=8,overlap=tbo,mtp=2+mtp_acceptance=0.9,0.7,"
        "a2a=deepep-ll+dispatch_dtype=none")
    assert variants == [
        ("base", {}),
        (EPLB, {"eplb": "deepseek", "redundant_experts": "8"}),
        ("overlap=tbo", {"overlap": "tbo"}),
        ("mtp=2+mtp_acceptance=0.9,0.7", {"mtp": "2", "mtp_acceptance": "0.9,0.7"}),
        ("a2a=deepep-ll+dispatch_dtype=none", {"a2a": "deepep-ll", "dispatch_dtype": None}),
    ]
    scenarios = dict(variant_scenarios(SMALL, variants))
    assert scenarios["base"] is SMALL
    assert scenarios[EPLB].redundant_experts == 8 and scenarios[EPLB].eplb == "deepseek"
    assert scenarios["mtp=2+mtp_acceptance=0.9,0.7"].mtp_acceptance == [0.9, 0.7]
    assert parse_variants(None) == [] and parse_variants("") == []


SYNTAX = "FIELD=VALUE overrides joined by '+', FIELD among eplb"  # how to write a variant
VALUE = "change its values (each takes what its flag takes"  # a value the scenario refuses


@pytest.mark.parametrize(
    ("spec", "needle", "fix"),
    [
        ("base,experts=8", "unknown field 'experts' in 'experts=8'", SYNTAX),
        ("overlap", "cannot read 'overlap' in 'overlap' (write FIELD=VALUE)", SYNTAX),
        ("base,,overlap=tbo", "empty variant", SYNTAX),
        ("base,base", "variant 'base' is given twice", SYNTAX),
        ("mtp=1+mtp=2", "field 'mtp' is given twice", SYNTAX),
        ("eplb=magic", "variant 'eplb=magic': eplb: Input should be 'none', 'greedy' or", VALUE),
        ("redundant_experts=8", "needs a balancing policy", VALUE),
    ],
)
def test_bad_variant_specs_are_one_error_line_with_exit_2(
    spec: str, needle: str, fix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown field, a malformed or repeated variant, a refused value, a rule across
    fields: exit 2 and one `moesim: error:` line naming --variants, what is wrong and the fix;
    nothing is evaluated (no progress line)."""
    code = main(["compare", "--placements", "EP8", *SMALL_FLAGS, "--variants", spec])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moesim: error: --variants: ")
    assert needle in err and fix in err


@pytest.fixture(scope="module")
def variant_compare() -> dict[str, Any]:
    """EP8 and TP2 x (base, DeepSeek EPLB with 8 redundant experts, two-batch overlap), with
    plot data and a two-batch sweep."""
    variants = parse_variants(f"base,{EPLB},overlap=tbo")
    return run_compare(SMALL, ["EP8", "TP2"], ["dgx-h100"], [16], plot_data=True,
                       sweep_batches=[16, 32], progress=None, variants=variants)


def test_every_layout_runs_once_per_variant_and_all_rank_together(
    variant_compare: dict[str, Any]
) -> None:
    """Six rows (2 layouts x 3 variants), each labelled with its variant and holding exactly
    what `evaluate` gives for the layout with the variant's overrides; one ranking over all
    six, by tokens/s per GPU; the JSON lists the variants with their typed overrides."""
    (group,) = variant_compare["groups"]
    ranked = group["ranked"]
    assert sorted((r["placement"], r["variant"]) for r in ranked) == sorted(
        (p, v) for p in ("EP8", "TP2") for v in ("base", EPLB, "overlap=tbo"))
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4, 5, 6]
    per_gpu = [r["tokens_per_s_per_gpu"] for r in ranked]
    assert per_gpu == sorted(per_gpu, reverse=True)
    updates = {"base": {}, EPLB: {"eplb": "deepseek", "redundant_experts": 8},
               "overlap=tbo": {"overlap": "tbo"}}
    for row in ranked:
        direct = evaluate(SMALL.model_copy(update={"placement": row["placement"],
                                                   **updates[row["variant"]]})).to_json()
        assert row["tpot_s"] == direct["tpot_s"]
        assert row["result"]["moe_engine"] == direct["moe_engine"]
    assert variant_compare["variants"] == [
        {"label": "base", "overrides": {}},
        {"label": EPLB, "overrides": {"eplb": "deepseek", "redundant_experts": 8}},
        {"label": "overlap=tbo", "overrides": {"overlap": "tbo"}},
    ]
    json.dumps(variant_compare)  # JSON-ready
    sweep = variant_compare["latency_throughput"]["dgx-h100"]
    assert set(sweep) == {f"{p} [{v}]" for p in ("EP8", "TP2") for v in updates}


def test_table_and_html_show_the_variant(variant_compare: dict[str, Any]) -> None:
    """The printed table has a variant column after the layout (the rank-1 row first); the
    HTML table has one too and the page names the variants."""
    table = compare_table(variant_compare)
    header = next(line for line in table.splitlines() if line.lstrip().startswith("rank"))
    assert header.split()[:4] == ["rank", "layout", "variant", "topology"]
    first = variant_compare["groups"][0]["ranked"][0]
    row_line = table.splitlines()[table.splitlines().index(header) + 1]
    assert row_line.split()[:4] == ["1", first["placement"], first["variant"], "dgx-h100"]
    assert table.count(EPLB) == 2 and table.count("overlap=tbo") == 2
    page = render_html(variant_compare, figures=[])
    assert "<th>layout</th><th>variant</th><th>topology</th>" in page
    assert f'<td class="text">{EPLB}</td>' in page


def test_variants_write_the_rank_load_plot(variant_compare: dict[str, Any],
                                           tmp_path: Path) -> None:
    """EPLB rows add the before/after rank-load figure to the usual ones."""
    written = save_plots(variant_compare, tmp_path)
    names = sorted(Path(info["path"]).name for info in written)
    assert names == sorted([
        "phases_dgx-h100_b16.png", "gantt_dgx-h100_b16.png", "traffic_b16.png",
        "expert_load_b16.png", "rank_load_b16.png", "latency_throughput.png",
    ])
    for info in written:
        assert Path(info["path"]).read_bytes().startswith(PNG_MAGIC)


def test_rank_load_figure_draws_the_eplb_rows_on_one_scale(
    variant_compare: dict[str, Any]
) -> None:
    """Only EPLB rows with more than one EP rank are drawn (EP8; TP2 has one EP rank): bars
    per EP rank before and after, per-layer max/mean lines, one y scale per column."""
    (group,) = variant_compare["groups"]
    rows = plots._rank_load_rows(group["ranked"])
    assert [(r["placement"], r["variant"]) for r in rows] == [("EP8", EPLB)]
    rows = rows + [{**rows[0], "variant": "copy"}]  # a second row to share the scale with
    fig = plots._rank_load_figure(rows, "t", named_topology=False)
    axes = fig.axes
    assert len(axes) == 2 * len(rows)
    bars = [ax for ax in axes if ax.get_xlabel() == "EP rank" or ax.get_ylabel() ==
            "tokens per layer"]
    assert len({ax.get_ylim() for ax in bars}) == 1
    assert EPLB in bars[0].get_title(loc="left")
    assert [len(ax.patches) for ax in bars] == [16, 16]  # 8 ranks before, 8 after


def test_gantt_of_two_batch_overlap_says_so_and_hatches_micro_batch_1(
    variant_compare: dict[str, Any]
) -> None:
    """The overlapped step's plan repeats every operation of a block once per micro-batch;
    its Gantt row is titled "two-batch overlap" and draws micro-batch 1 hatched; rows
    without overlap are neither."""
    (group,) = variant_compare["groups"]
    tbo = next(r for r in group["ranked"] if r["variant"] == "overlap=tbo"
               and r["placement"] == "EP8")
    base = next(r for r in group["ranked"] if r["variant"] == "base" and r["placement"] == "EP8")
    micro = plots._micro_batches(tbo["plot_data"]["gantt"])
    assert micro is not None and micro.count(0) == micro.count(1)
    assert plots._micro_batches(base["plot_data"]["gantt"]) is None
    fig = plots._gantt_figure([base, tbo], "t")
    titles = [ax.get_title(loc="left") for ax in fig.axes[::2]]
    assert "two-batch overlap" not in titles[0]
    assert "EP8 [overlap=tbo]" in titles[1] and "two-batch overlap" in titles[1]
    hatched = [c for c in fig.axes[2].collections if c.get_hatch()]
    assert hatched and not [c for c in fig.axes[0].collections if c.get_hatch()]


def test_cli_variants_json_table_and_eplb_plot(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`moesim compare --variants` end to end: progress lines and the table name the variant,
    the JSON rows carry it, and --plot writes the rank-load figure."""
    out, folder = tmp_path / "cmp.json", tmp_path / "plots"
    code = main(["compare", "--placements", "EP8", *SMALL_FLAGS, "--variants", f"base,{EPLB}",
                 "--json", str(out), "--plot", str(folder), "--sweep-batches", "none"])
    assert code == 0
    printed = capsys.readouterr()
    assert f"[2/2] EP8 [{EPLB}] on dgx-h100, batch 16" in printed.err
    assert " variant " in printed.out and EPLB in printed.out
    data = json.loads(out.read_text())
    assert sorted(r["variant"] for r in data["groups"][0]["ranked"]) == sorted(["base", EPLB])
    assert (folder / "rank_load_b16.png").read_bytes().startswith(PNG_MAGIC)


def test_eplb_scenario_without_variants_also_draws_rank_load(tmp_path: Path) -> None:
    """A comparison whose scenario balances experts (no --variants) draws the rank-load plot
    too, and its rows and JSON carry no variant."""
    base = SMALL.model_copy(update={"eplb": "greedy"})
    compare = run_compare(base, ["EP8"], ["dgx-h100"], [16], plot_data=True, progress=None)
    assert "variants" not in compare
    assert all("variant" not in r for r in compare["groups"][0]["ranked"])
    names = {Path(i["path"]).name for i in save_plots(compare, tmp_path)}
    assert "rank_load_b16.png" in names


def test_run_compare_refuses_a_bad_variant_before_evaluating() -> None:
    """A variant the scenario refuses is a ConfigError from run_compare itself."""
    with pytest.raises(ConfigError, match="--variants: variant 'eplb_window=0'"):
        run_compare(SMALL, ["EP8"], progress=None, variants=parse_variants("eplb_window=0"))
