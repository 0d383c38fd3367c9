"""A new user's first commands: what ships (`moesim list`), one name per bundled trace in every
command, plan's wording of ties, partial presets and calibration, and a readable HTML report."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest

from moesim.cli import main
from moesim.inputs.config import Scenario
from moesim.inputs.kernel_profile import list_kernel_profiles, load_kernel_profile
from moesim.inputs.models import PRESETS, get_model
from moesim.inputs.topology import list_presets, load_topology
from moesim.output.html_report import render_html
from moesim.output.report import format_compare_table
from moesim.planning.compare import run_compare
from moesim.planning.deployment import (
    PRESET_CALIBRATION,
    plan_deployment,
    subset_deployments,
    topology_calibration,
)
from moesim.trace.bundled import BUNDLED_TRACES

TESTS = Path(__file__).parent
TRACE = "mixtral8x7b_humaneval0_prefill_decode"  # 94 tokens: the quickest bundled trace


def _out(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


# ---- moesim list ----------------------------------------------------------------------------


def test_list_models_names_every_preset_by_a_name_run_takes(
        capsys: pytest.CaptureFixture[str]) -> None:
    """One line per model preset; the name printed first is one `--model` accepts."""
    lines = _out(["list", "models"], capsys).splitlines()
    assert lines[0] == "models:" and len(lines) == 1 + len(PRESETS)
    names = [line.split()[0] for line in lines[1:]]
    assert [get_model(name).name for name in names] == list(PRESETS)
    assert "mixtral-8x7b" in names and "8 experts, top-2" in lines[1 + names.index("mixtral-8x7b")]


def test_list_topologies_gives_gpus_and_calibration(capsys: pytest.CaptureFixture[str]) -> None:
    """Every preset with its GPU count; calibrated ones say how, the others say NOT."""
    text = _out(["list", "topologies"], capsys)
    rows = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert sorted(rows) == list_presets()
    for name, line in rows.items():
        assert f" {load_topology(name).num_gpus}x " in f" {line.split(maxsplit=1)[1]}"
        assert ("NOT calibrated" in line) == (name not in PRESET_CALIBRATION)
    data = json.loads(_out(["list", "topologies", "--json"], capsys))
    by_name = {item["name"]: item for item in data}
    assert by_name["gb200-nvl72"]["gpus"] == 72 and by_name["gb200-nvl72"]["calibrated"]
    assert not by_name["l40s-8x-pcie"]["calibrated"]


def test_list_traces_gives_tokens_layers_and_experts(capsys: pytest.CaptureFixture[str]) -> None:
    """Every bundled trace by the name `--trace` takes, with its size."""
    data = {t["name"]: t for t in json.loads(_out(["list", "traces", "--json"], capsys))}
    assert sorted(data) == sorted(BUNDLED_TRACES)
    decode = data["mixtral8x7b_humaneval_decode"]
    assert (decode["tokens"], decode["layers"], decode["experts"], decode["top_k"]) == (
        333, 32, 8, 2)
    assert "333 tokens x 32 layers, top-2 of 8 experts" in _out(["list", "traces"], capsys)


def test_list_kernels_and_everything(capsys: pytest.CaptureFixture[str]) -> None:
    """Kernel profiles with the GPUs they cover; no KIND lists all four kinds."""
    lines = _out(["list", "kernels"], capsys).splitlines()[1:]
    assert [line.split()[0] for line in lines] == list_kernel_profiles()
    for line in lines:
        for gpu in load_kernel_profile(line.split()[0]).gpus:
            assert gpu in line
    text = _out(["list"], capsys)
    assert all(f"{kind}:" in text for kind in ("models", "topologies", "traces", "kernels"))


def test_calibration_table_covers_the_presets_fitted_to_published_logs() -> None:
    """Every preset tests/test_presets_vs_published.py checks against published logs is
    calibrated; a file written by `moesim calibrate` is calibrated whatever its name."""
    tree = ast.parse((TESTS / "test_presets_vs_published.py").read_text(encoding="utf-8"))
    table = next(node.value for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)
                 and getattr(node.target, "id", "") == "CALIBRATED")
    assert isinstance(table, ast.Dict)
    checked = {ast.literal_eval(key) for key in table.keys if key is not None}
    assert checked and checked <= set(PRESET_CALIBRATION) <= set(list_presets())
    assert topology_calibration("l40s-8x-pcie") is None
    note = "Calibrated by `moesim calibrate nccl-tests` on 2026-01-01 from a.txt: protocols"
    assert topology_calibration("l40s-8x-pcie", ("datasheet", note)) == note.split(": ")[0]


# ---- one trace name everywhere -----------------------------------------------------------


def test_a_bundled_trace_runs_by_either_name(capsys: pytest.CaptureFixture[str]) -> None:
    """`run --trace NAME` and `run --trace bundled:NAME` replay the same trace, recorded as
    `bundled:NAME`; `trace stats NAME` reads it too."""
    results = []
    for spelled in (TRACE, f"bundled:{TRACE}"):
        results.append(json.loads(_out(["run", "--trace", spelled, "--placement", "EP2",
                                        "--quiet", "--json", "-"], capsys)))
    assert results[0]["inputs"]["trace"] == results[1]["inputs"]["trace"] == f"bundled:{TRACE}"
    assert results[0]["a2a_bytes"] == results[1]["a2a_bytes"]
    assert "94 tokens x 32 layers" in _out(["trace", "stats", TRACE], capsys)


def test_an_unknown_trace_lists_the_bundled_names(capsys: pytest.CaptureFixture[str]) -> None:
    """Neither a file nor a bundled name: one error line naming every bundled trace."""
    assert main(["run", "--trace", "humaneval", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NAME or bundled:NAME" in err
    assert all(name in err for name in BUNDLED_TRACES)


# ---- plan: ties, partial presets, calibration ----------------------------------------------


def _fake(tpot_s: dict[tuple[str, str], float], seen: list[Scenario] | None = None) -> Any:
    """An evaluate() giving each (topology, placement) a fixed TPOT, else infeasible."""
    def evaluate(sc: Scenario) -> dict[str, Any]:
        if seen is not None:
            seen.append(sc)
        tpot = tpot_s.get((str(sc.topology), str(sc.placement)))
        world = int(re.sub(r"\D", " ", str(sc.placement)).split()[-1]) if tpot else 8
        return {"placement": sc.placement, "world": world,
                "gpu_price_per_hour_usd": 2.99 if "h100" in str(sc.topology) else 0.99,
                "feasible": tpot is not None, "reason": "" if tpot else "fake", "tpot_s": tpot}
    return evaluate


def test_plan_calls_equal_costs_a_tie_and_says_what_broke_it() -> None:
    """Two layouts at the same cost: no 'more expensive by 0.0%'; the loser ties with the
    chosen, and the rule that broke the tie is named."""
    result = plan_deployment("mixtral-8x7b", "8xH100", slo_tpot_s=0.05, context=512, users=8,
                             evaluate=_fake({("dgx-h100", "EP8"): 0.01,
                                             ("dgx-h100", "TP8"): 0.01}))
    assert result.chosen is not None and result.chosen.placement == "EP8"
    loser = result.candidates[1]
    assert loser.placement == "TP8" and loser.verdict.startswith("ties with the chosen at $")
    assert "label comes first alphabetically" in loser.verdict
    by_hour = plan_deployment("mixtral-8x7b", "8xH100", slo_tpot_s=0.05, context=512, users=8,
                              objective="usd_per_hour",
                              evaluate=_fake({("dgx-h100", "EP8"): 0.02,
                                              ("dgx-h100", "TP8"): 0.01}))
    assert by_hour.candidates[1].verdict.startswith("ties with the chosen at $23.92/h; the "
                                                    "chosen has the lower TPOT (10.00 vs 20.00")
    near = plan_deployment("mixtral-8x7b", "8xH100", slo_tpot_s=0.05, context=512, users=8,
                           evaluate=_fake({("dgx-h100", "EP8"): 0.01,
                                           ("dgx-h100", "TP8"): 0.0100001}))
    assert "by 0.001%" in near.candidates[1].verdict
    assert not any("0.0%" in c.verdict for r in (result, by_hour, near) for c in r.candidates)


def test_four_l40s_plan_on_the_first_four_gpus_of_the_eight_gpu_preset() -> None:
    """`4xL40S` fills no preset: every layout of 4 GPUs runs on l40s-8x-pcie, said in the
    label and the notes; a whole preset (4 RTX 4090s) is not a subset."""
    assert subset_deployments({"L40S": 4}, {"l40s-8x-pcie": 8}) == [("l40s-8x-pcie", 4)]
    assert subset_deployments({"L40S": 8}, {"l40s-8x-pcie": 8}) == []
    assert subset_deployments({"RTX4090": 4}, {"rtx4090-4x-pcie": 4}) == []
    seen: list[Scenario] = []
    result = plan_deployment("mixtral-8x7b", "4xL40S", slo_tpot_s=0.1, context=512, users=8,
                             evaluate=_fake({("l40s-8x-pcie", "EP4"): 0.03}, seen))
    assert {sc.topology for sc in seen} == {"l40s-8x-pcie"}
    assert {sc.placement for sc in seen} == {"DP4", "EP2xDP2", "EP4", "TP2xDP2", "TP2xEP2",
                                             "TP4", "SP4"}
    chosen = result.chosen
    assert chosen is not None and chosen.label == "1x l40s-8x-pcie (4 GPUs) EP4"
    assert (chosen.gpus, chosen.subset_of) == (4, 8)
    assert chosen.usd_per_hour == pytest.approx(4 * 0.99)
    assert any("first 4 GPUs of l40s-8x-pcie (8 GPUs)" in note for note in result.notes)


def test_real_plan_on_four_l40s_finds_a_deployment() -> None:
    """The same inventory through the real analytic engine: a 4-GPU layout qualifies."""
    result = plan_deployment("mixtral-8x7b", "4xL40S", slo_tpot_s=0.2, context=512, users=4)
    assert result.chosen is not None and result.chosen.gpus == 4
    assert result.to_dict()["chosen"]["subset_of"] == 8


def test_plan_flags_uncalibrated_presets(capsys: pytest.CaptureFixture[str]) -> None:
    """Candidates on l40s-8x-pcie are flagged in the progress lines, the JSON and the notes;
    dgx-h100's are not."""
    lines: list[str] = []
    result = plan_deployment("mixtral-8x7b", "8xH100,8xL40S", slo_tpot_s=0.05, context=512,
                             users=8, progress=lines.append,
                             evaluate=_fake({("dgx-h100", "EP8"): 0.01,
                                             ("l40s-8x-pcie", "EP8"): 0.03}))
    flagged = {line.split("] ")[1].split(":")[0] for line in lines
               if line.endswith("[uncalibrated preset]")}
    assert flagged and all("l40s-8x-pcie" in label for label in flagged)
    assert all("dgx-h100" not in label for label in flagged)
    data = result.to_dict()
    assert {c["topology"] for c in data["candidates"] if not c["calibrated"]} == {"l40s-8x-pcie"}
    assert any(n.startswith("l40s-8x-pcie is not calibrated on measurements")
               for n in data["notes"])
    assert not any(n.startswith("dgx-h100") for n in data["notes"])


# ---- compare and the HTML report -----------------------------------------------------------


@pytest.fixture(scope="module")
def compare() -> dict[str, Any]:
    """EP4 and TP4 on dgx-h100 (calibrated) and l40s-8x-pcie (not), with plot data."""
    base = Scenario(trace=f"bundled:{TRACE}", phase="decode", batch=4, context=64,
                    fidelity="analytic")
    return run_compare(base, ["EP4", "TP4"], ["dgx-h100", "l40s-8x-pcie"], None,
                       plot_data=True, progress=None, max_tpot_s=0.01)


def test_compare_table_flags_uncalibrated_topologies(compare: dict[str, Any]) -> None:
    """The table names l40s-8x-pcie as uncalibrated above the rows, and only it."""
    lines = format_compare_table(compare).splitlines()
    assert lines[1].startswith("UNCALIBRATED: l40s-8x-pcie is not calibrated")
    assert "dgx-h100" not in lines[1]
    facts = compare["assumptions"]["topologies"]
    assert facts["dgx-h100"]["calibrated"] and not facts["l40s-8x-pcie"]["calibrated"]
    only_dgx = {**compare, "assumptions": {**compare["assumptions"],
                                           "topologies": {"dgx-h100": facts["dgx-h100"]}}}
    assert "UNCALIBRATED" not in format_compare_table(only_dgx)


def test_html_report_has_a_table_of_contents_and_the_flag_on_top(
        compare: dict[str, Any]) -> None:
    """The uncalibrated flag comes before the contents and the tables; every contents entry
    points at an element of the page; every plot is one collapsible entry of the contents."""
    page = render_html(compare)
    flag = page.index('class="warn"')
    assert "l40s-8x-pcie is not calibrated" in page[flag:flag + 300]
    assert flag < page.index('<nav class="toc">') < page.index('id="ranked"')
    targets = re.findall(r'data-goto="([^"]+)"', page)
    ids = set(re.findall(r'\bid="([^"]+)"', page))
    assert targets and set(targets) <= ids
    plots = page.count('<img class="plot"')
    assert plots >= 5 and page.count('<details class="plot"') == plots
    assert len([t for t in targets if t.startswith("plot-")]) == plots
    assert "Topology l40s-8x-pcie (not calibrated on measurements)" in page


def test_compared_traffic_panels_share_one_colour_scale(compare: dict[str, Any]) -> None:
    """The dispatch heatmaps of the layouts compared use one colour scale and one colour bar."""
    from moesim.output.plots import _figures

    fig = next(f for info, f in _figures(compare) if info["name"].startswith("traffic_"))
    images = [image for ax in fig.axes for image in ax.get_images()]
    assert len(images) == 2 and len({(i.norm.vmin, i.norm.vmax) for i in images}) == 1
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1


def test_pareto_points_are_coloured_by_topology(tmp_path: Path) -> None:
    """`moesim sweep --plot`'s figure: one colour per topology, the front joined and labelled."""
    from moesim.output.plots import pareto_figure, save_pareto_plot

    rows = [{"feasible": True, "topology": topology, "placement": "EP8", "batch": batch,
             "tpot_s": tpot, "tokens_per_s_per_gpu": rate}
            for topology, batch, tpot, rate in (("dgx-h100", 1, 0.005, 20.0),
                                                ("dgx-h100", 64, 0.010, 900.0),
                                                ("l40s-8x-pcie", 64, 0.030, 300.0))]
    front = rows[:2]
    fig = pareto_figure(rows, front)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["dgx-h100", "l40s-8x-pcie",
                                                          "Pareto front"]
    colours = {tuple(c.get_facecolor()[0]) for c in fig.axes[0].collections[:2]}
    assert len(colours) == 2
    assert save_pareto_plot(rows, front, tmp_path).read_bytes().startswith(b"\x89PNG")
