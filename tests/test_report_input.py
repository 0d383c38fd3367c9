"""`moesim report` on a malformed comparison JSON: exit 2 and one `moesim: error:` line naming the
file and the field's path (`check_compare_dict`), never a traceback; a valid comparison still
renders. Also `parse_inventory`'s bounds on --gpus-available counts."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from moesim.cli import main
from moesim.errors import ConfigError
from moesim.inputs.config import Scenario
from moesim.output.html_report import check_compare_dict
from moesim.planning.compare import run_compare
from moesim.planning.deployment import MAX_GPUS_OF_ONE_KIND, parse_inventory

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "mixtral-8x7b-ep8.yaml"

Edit = Callable[[dict[str, Any]], Any]


@pytest.fixture(scope="module")
def compare_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`moesim compare --json` of EP8 on the scenario's topology (2 layers, analytic)."""
    out = tmp_path_factory.mktemp("compare") / "compare.json"
    assert main(["compare", str(SCENARIO), "--placements", "EP8", "--fidelity", "analytic",
                 "--layers", "2", "--trace-tokens", "64", "--quiet", "--json", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def plotted() -> dict[str, Any]:
    """A comparison carrying plot data and a latency-throughput sweep (as --html records)."""
    base = Scenario(topology="dgx-h100", phase="decode", batch=4, context=64, layers=2,
                    trace_tokens=64, fidelity="analytic")
    return run_compare(base, ["EP2", "TP2"], plot_data=True, sweep_batches=[1, 4],
                       progress=None)


def _ranked0(data: dict[str, Any]) -> dict[str, Any]:
    return data["groups"][0]["ranked"][0]


# name: (edit, the field path the error names)
MALFORMED: dict[str, tuple[Edit, str]] = {
    "version_future": (lambda d: d.update(version=99), "version: expected 1, got 99"),
    "version_string": (lambda d: d.update(version="1"), "version: expected 1, got '1'"),
    "groups_not_list": (lambda d: d.update(groups={"a": 1}),
                        "groups: expected a list, got a mapping"),
    "groups_entry_string": (lambda d: d.update(groups=["x"]),
                            "groups[0]: expected a mapping, got 'x'"),
    "group_missing_ranked": (lambda d: d["groups"][0].pop("ranked"),
                             "groups[0].ranked: missing (expected a list)"),
    "ranked_row_empty": (lambda d: d["groups"][0].update(ranked=[{}]),
                         "groups[0].ranked[0].rank: missing"),
    "tpot_string": (lambda d: _ranked0(d).update(tpot_s="fast"),
                    "groups[0].ranked[0].tpot_s: expected a number >= 0, got 'fast'"),
    "tpot_negative": (lambda d: _ranked0(d).update(tpot_s=-1.0),
                      "groups[0].ranked[0].tpot_s: expected a number >= 0, got -1.0"),
    "tokens_per_s_list": (lambda d: _ranked0(d).update(tokens_per_s=[1]),
                          "groups[0].ranked[0].tokens_per_s: expected a number >= 0 or null"),
    "rank_string": (lambda d: _ranked0(d).update(rank="first"),
                    "groups[0].ranked[0].rank: expected an integer >= 1, got 'first'"),
    "rank_bool": (lambda d: _ranked0(d).update(rank=True),
                  "groups[0].ranked[0].rank: expected an integer >= 1, got True"),
    "imbalance_null": (lambda d: _ranked0(d).update(expert_imbalance_max=None),
                       "groups[0].ranked[0].expert_imbalance_max: expected a number >= 0"),
    "placement_number": (lambda d: _ranked0(d).update(placement=8),
                         "groups[0].ranked[0].placement: expected a string, got 8"),
    "infeasible_not_list": (lambda d: d["groups"][0].update(infeasible="none"),
                            "groups[0].infeasible: expected a list"),
    "topologies_not_list": (lambda d: d.update(topologies="dgx-h100"),
                            "topologies: expected a list, got 'dgx-h100'"),
    "scenario_not_mapping": (lambda d: d.update(scenario=[1]),
                             "scenario: expected a mapping, got a list of 1"),
    "slo_string": (lambda d: d.update(slo="fast"), "slo: expected a mapping or null"),
    "slo_target_string": (lambda d: d.update(slo={"max_tpot_s": "50ms"}),
                          "slo.max_tpot_s: expected a number >= 0 or null, got '50ms'"),
    "serving_string": (lambda d: d.update(serving="yes"),
                       "serving: expected a mapping or null, got 'yes'"),
    "variants_label_number": (lambda d: d.update(variants=[{"label": 1}]),
                              "variants[0].label: expected a string, got 1"),
    "assumptions_model_list": (lambda d: d["assumptions"].update(model=["m"]),
                               "assumptions.model: expected a string or number"),
    "gpu_spec_memory_string": (
        lambda d: next(iter(d["assumptions"]["topologies"].values()))["gpu_spec"].update(
            memory_bytes="80GB"),
        "assumptions.topologies['dgx-h100'].gpu_spec.memory_bytes: expected a number >= 0"),
}


def _report(tmp_path: Path, data: dict[str, Any], *extra: str) -> tuple[int, Path]:
    """`moesim report` on `data` written to a file; its exit status and the file."""
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return main(["report", str(path), *extra]), path


@pytest.mark.parametrize("html", [False, True], ids=["table", "html"])
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_comparison_is_one_error_line(
    name: str, html: bool, compare_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """Each malformed shape: exit 2, one `moesim: error:` line naming the file and the field,
    no traceback, no HTML written."""
    edit, field = MALFORMED[name]
    data = json.loads(compare_file.read_text())
    edit(data)
    out = tmp_path / "o.html"
    code, path = _report(tmp_path, data, *(["--quiet", "--html", str(out)] if html else []))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("moesim: error: "), lines
    assert str(path) in lines[0] and field in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()


def test_valid_comparison_renders(compare_file: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON `moesim compare --json` wrote passes the check and renders: table and page."""
    check_compare_dict(json.loads(compare_file.read_text()), "compare.json")
    out = tmp_path / "page.html"
    assert main(["report", str(compare_file), "--html", str(out)]) == 0
    captured = capsys.readouterr()
    assert "EP8" in captured.out and captured.err == ""
    assert "<td class=\"text\">EP8</td>" in out.read_text(encoding="utf-8")


def test_file_without_version_still_reads(compare_file: Path) -> None:
    """A comparison written before `version` existed has the same shape: it reads."""
    data = json.loads(compare_file.read_text())
    data.pop("version")
    check_compare_dict(data, "old.json")


def _gantt(data: dict[str, Any]) -> dict[str, Any]:
    gantt: dict[str, Any] = _ranked0(data)["plot_data"]["gantt"]
    return gantt


# What the figures read: plot data arrays, the sweep, plot file names.
PLOT_MALFORMED: dict[str, tuple[Edit, str]] = {
    "gantt_row_short": (lambda d: _gantt(d)["start_s"][0].pop(),
                        "groups[0].ranked[0].plot_data.gantt.start_s[0]: expected a list of "),
    "gantt_world_huge": (lambda d: _gantt(d).update(world=10**9),
                         "groups[0].ranked[0].plot_data.gantt.world: expected an integer from"),
    "gantt_missing": (lambda d: _ranked0(d)["plot_data"].pop("gantt"),
                      "groups[0].ranked[0].plot_data.gantt: missing"),
    "traffic_not_square": (
        lambda d: _ranked0(d)["plot_data"]["traffic_rank_bytes"].pop(),
        "groups[0].ranked[0].plot_data.traffic_rank_bytes: expected a square matrix"),
    "expert_load_empty": (lambda d: _ranked0(d)["plot_data"].update(expert_load=[]),
                          "groups[0].ranked[0].plot_data.expert_load: expected a non-empty"),
    "phase_time_string": (
        lambda d: _ranked0(d)["result"]["latency"]["per_block"][0]["phase_max_s"].update(
            experts="slow"),
        "groups[0].ranked[0].result.latency.per_block[0].phase_max_s.experts: expected a "
        "number >= 0, got 'slow'"),
    "result_missing": (lambda d: _ranked0(d).pop("result"),
                       "groups[0].ranked[0].result: missing (expected a mapping)"),
    "order_missing": (lambda d: _ranked0(d).pop("order"),
                      "groups[0].ranked[0].order: missing"),
    "topology_escapes": (lambda d: _ranked0(d).update(topology="../../../tmp/x"),
                         "groups[0].ranked[0].topology: expected a topology name"),
    "sweep_unknown_topology": (
        lambda d: d["latency_throughput"].update({"elsewhere": {}}),
        "latency_throughput['elsewhere']: expected one of the comparison's topologies"),
    "sweep_tpot_string": (
        lambda d: next(iter(d["latency_throughput"]["dgx-h100"].values()))[0].update(
            tpot_s="x"),
        "latency_throughput['dgx-h100']['EP2'][0].tpot_s: expected a number >= 0"),
    "slo_null_with_sweep": (lambda d: d.update(slo=None),
                            "slo: expected a mapping, got None"),
}


@pytest.mark.parametrize("name", list(PLOT_MALFORMED))
def test_malformed_plot_data_is_refused(name: str, plotted: dict[str, Any]) -> None:
    """A comparison with plot data: a bad array or name is one ConfigError naming its path."""
    check_compare_dict(plotted, "good.json")
    edit, field = PLOT_MALFORMED[name]
    data = copy.deepcopy(plotted)
    edit(data)
    with pytest.raises(ConfigError) as info:
        check_compare_dict(data, "results.json")
    message = str(info.value)
    assert message.startswith("results.json: ") and field in message and "\n" not in message


def test_parse_inventory_refuses_absurd_counts() -> None:
    """More than MAX_GPUS_OF_ONE_KIND GPUs of one kind (in one entry or added up), or a count
    of more than 6 digits, is a ConfigError naming --gpus-available, called directly."""
    assert parse_inventory(f"{MAX_GPUS_OF_ONE_KIND}xH100") == {"H100": MAX_GPUS_OF_ONE_KIND}
    assert parse_inventory("8xH100,8xL40S") == {"H100": 8, "L40S": 8}
    for text in (f"{MAX_GPUS_OF_ONE_KIND + 1}xH100", "4000xH100,100xH100", "1234567xH100",
                 "0000008xH100", "9" * 5000 + "xH100"):
        with pytest.raises(ConfigError, match="--gpus-available") as info:
            parse_inventory(text)
        assert "of one kind" in str(info.value) and len(str(info.value)) < 300
    for text in ("8xB200", "0xH100", "H100", "x" * 1000):
        with pytest.raises(ConfigError, match="--gpus-available entry .*COUNTxGPU") as info:
            parse_inventory(text)
        assert len(str(info.value)) < 300
