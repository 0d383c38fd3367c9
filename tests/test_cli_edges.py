"""Edge inputs of compare, sweep, trace stats/synth/convert, plan's table, calibrate's output
and the writers of traces and validation plots: a bad flag is refused with exit 2 naming the
flag (never a traceback, never a silent wrong answer), and results are written whole."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from moesim.cli import main
from moesim.trace.bundled import BUNDLED_TRACES, DEFAULT_BUNDLED_TRACE, load_bundled_trace
from moesim.trace.format import load_trace, save_trace

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = str(ROOT / "scenarios" / "mixtral-8x7b-ep8.yaml")
SMALL = ["--fidelity", "analytic", "--layers", "2", "--trace-tokens", "64"]
COMPARE = ["compare", SCENARIO, *SMALL, "--quiet", "--placements", "EP8"]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `moesim ARGV` (argparse's SystemExit included)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _refused(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Assert `moesim ARGV` exits 2 with one error line naming `flag`; return that line."""
    code, _, err = _cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert flag in errors[0], errors[0]
    return errors[0]


# -- compare ------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "flag"), [
    (["--batch", "0"], "--batch"),
    (["--batch", "4,-1"], "--batch"),
    (["--batch", "many"], "--batch"),
    (["--topology", ","], "--topology"),
    (["--placements", ",,"], "--placements"),
    (["--max-tpot-ms", "nan"], "--max-tpot-ms"),
    (["--max-tpot-ms", "-1"], "--max-tpot-ms"),
    (["--max-tpot-ms", "0"], "--max-tpot-ms"),
    (["--max-ttft-ms", "inf"], "--max-ttft-ms"),
    (["--sweep-batches", "garbage"], "--sweep-batches"),
    (["--sweep-batches", "1,0"], "--sweep-batches"),
])
def test_compare_refuses_bad_lists_and_targets(extra: list[str], flag: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _refused([*COMPARE, *extra], flag, capsys)


def test_compare_still_runs_good_lists(capsys: pytest.CaptureFixture[str]) -> None:
    """Batches, a target and `--sweep-batches none` as given run (no figures asked)."""
    code, _, err = _cli([*COMPARE, "--batch", "4, 8", "--max-tpot-ms", "1e4",
                         "--sweep-batches", "none", "--json", "-"], capsys)
    assert code == 0, err


# -- sweep --------------------------------------------------------------------------------

def test_sweep_refuses_negative_max_points(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    grid = str(ROOT / "scenarios" / "grid-mixtral.yaml")
    _refused(["sweep", grid, "-o", str(tmp_path / "s.csv"), "--max-points", "-2"],
             "--max-points", capsys)


def test_sweep_plot_uses_the_topology_coloured_figure(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """plot_pareto draws `save_pareto_plot` with the front of the rows' TPOT/throughput."""
    from moesim.cli import sweep as sweep_cli
    from moesim.output import plots

    rows = [{"feasible": True, "tpot_s": t, "tokens_per_s_per_gpu": y, "placement": "EP8",
             "topology": topo, "batch": b}
            for t, y, topo, b in [(0.01, 100.0, "dgx-h100", 8), (0.02, 300.0, "dgx-h100", 32),
                                  (0.03, 200.0, "l40s-8x-pcie", 64)]]
    seen: dict[str, Any] = {}
    real = plots.save_pareto_plot

    def spy(rows_: Any, front: Any, out_dir: Any, *rest: Any, **kw: Any) -> Path:
        seen["front"] = [(r["tpot_s"], r["batch"]) for r in front]
        return real(rows_, front, out_dir, *rest, **kw)

    monkeypatch.setattr(plots, "save_pareto_plot", spy)
    path = sweep_cli.plot_pareto(rows, tmp_path / "plots")
    assert path == tmp_path / "plots" / "pareto.png"
    assert path.read_bytes().startswith(b"\x89PNG")
    assert seen["front"] == [(0.01, 8), (0.02, 32)]


# -- trace stats / synth / convert --------------------------------------------------------

@pytest.mark.parametrize("spec", [DEFAULT_BUNDLED_TRACE, f"bundled:{DEFAULT_BUNDLED_TRACE}"])
def test_trace_stats_takes_a_bundled_name_either_way(spec: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["trace", "stats", spec, "--json", "-"], capsys)
    assert code == 0, err
    assert json.loads(out)["num_tokens"] == load_bundled_trace().num_tokens


def test_trace_stats_unknown_trace_lists_the_bundled_names(
        capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(["trace", "stats", "bundled:nope"], "nope", capsys)
    assert DEFAULT_BUNDLED_TRACE in line
    line = _refused(["trace", "stats", "no_such_trace.npz"], "no_such_trace.npz", capsys)
    assert all(name in line for name in BUNDLED_TRACES)


def test_trace_stats_bounds_num_experts(capsys: pytest.CaptureFixture[str]) -> None:
    """Beyond the int16 id limit is refused by argparse; 30,000 (within it) is computed without
    a dense experts^2 table."""
    _refused(["trace", "stats", DEFAULT_BUNDLED_TRACE, "--num-experts", "40000"],
             "--num-experts", capsys)
    _refused(["trace", "stats", DEFAULT_BUNDLED_TRACE, "--num-experts", "0"],
             "--num-experts", capsys)
    code, out, err = _cli(["trace", "stats", DEFAULT_BUNDLED_TRACE, "--num-experts", "30000",
                           "--json", "-"], capsys)
    assert code == 0, err
    assert json.loads(out)["num_experts"] == 30000


def test_compute_stats_refuses_an_unbounded_expert_count() -> None:
    from moesim.errors import TraceError
    from moesim.trace.stats import MAX_NUM_EXPERTS, compute_stats

    with pytest.raises(TraceError, match="num_experts"):
        compute_stats(load_bundled_trace(), MAX_NUM_EXPERTS + 1)


def test_trace_synth_fit_not_found_lists_the_bundled_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(["trace", "synth", "--fit", "missing.npz", "--tokens", "32", "-o",
                     str(tmp_path / "s.npz")], "missing.npz", capsys)
    assert DEFAULT_BUNDLED_TRACE in line


@pytest.mark.parametrize(("extra", "flag"), [
    (["--num-experts", "40000"], "--num-experts"),
    (["--num-experts", "0"], "--num-experts"),
    (["--top-k", "0"], "--top-k"),
    (["--top-k", "99999"], "--top-k"),
])
def test_trace_convert_bounds_its_numbers(extra: list[str], flag: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text("{}\n")
    _refused(["trace", "convert", "--from", "vllm-jsonl", str(log), "-o",
              str(tmp_path / "t.npz"), *extra], flag, capsys)


def test_save_trace_writes_exactly_the_path_whole(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """No `.npz` appended to a bare name, no temporary left behind, and a failed write leaves
    the previous file untouched."""
    trace = load_bundled_trace()
    save_trace(trace, tmp_path / "bare")
    assert sorted(os.listdir(tmp_path)) == ["bare"]
    assert load_trace(tmp_path / "bare").num_tokens == trace.num_tokens
    target = tmp_path / "t.npz"
    save_trace(trace, target)
    before = target.read_bytes()
    from moesim.trace import format as trace_format

    def half_then_fail(handle: Any, **arrays: Any) -> None:
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trace_format.np, "savez_compressed", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        save_trace(trace, target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["bare", "t.npz"]


# -- plan table ---------------------------------------------------------------------------

def test_plan_table_prints_notes_and_fits_long_labels() -> None:
    from moesim.cli.plan import format_plan_table
    from moesim.planning.deployment import Candidate, PlanResult

    def candidate(topology: str, gpus: int, subset: int | None, verdict: str) -> Candidate:
        return Candidate(topology=topology, replicas=1, placement=f"EP{gpus}", gpus=gpus,
                         batch_per_replica=8, feasible=True, meets_slo=not verdict,
                         tpot_s=0.02, tokens_per_s=400.0, usd_per_hour=8.0,
                         usd_per_million_tokens=5.5, verdict=verdict, subset_of=subset)

    long = candidate("l40s-8x-pcie-with-a-much-longer-name", 4, 8, "")
    other = candidate("l40s-8x-pcie", 4, 8, "costs more")
    notes = ["4x L40S fills no preset: planned on the first 4 GPUs of l40s-8x-pcie (8 GPUs)",
             "l40s-8x-pcie is not calibrated on measurements"]
    query = {"model": "mixtral-8x7b", "users": 8, "context": 512, "slo_tpot_s": 0.05,
             "objective": "usd_per_million_tokens", "serving": None}
    text = format_plan_table(PlanResult(query, long, [long, other], notes))
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("note: ")] == [f"note: {n}" for n in notes]
    header = next(line for line in lines if "deployment" in line)
    rows = [line for line in lines if long.label in line or other.label in line]
    assert len(rows) == 2
    # the GPUs column lines up under its header however long the label
    column = header.index("GPUs") + len("GPUs")
    assert all(row[column - 1] == "4" and row[column] == " " for row in rows), text


# -- calibrate ----------------------------------------------------------------------------

def test_calibrate_rescues_the_fit_when_the_yaml_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.cli import calibrate as calibrate_cli
    from tests.test_calibrate_live import _bench, _spec
    from validate.microbench import with_loopback_latency

    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_bench(with_loopback_latency(_spec(0.4, 2e-4), 5e-4),
                                       1 / 2e10, 3e-5)))
    rescued = tmp_path / "rescued"
    rescued.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(rescued))

    def disk_full(path: Any, data: Any) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(calibrate_cli, "write_atomic", disk_full)
    line = _refused(["calibrate", "live", "--from-bench", str(bench), "-o",
                     str(tmp_path / "cal.yaml")], "cal.yaml", capsys)
    assert "No space left on device" in line and "saved to" in line
    (saved,) = rescued.iterdir()
    assert "moesim calibrate live" in saved.read_text()


# -- validate plots -----------------------------------------------------------------------

def test_validate_plots_are_written_whole(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from moesim.output import files
    from validate.predict import plot_comparison

    rows = [{"measured_s": {"dispatch": 1e-3, "experts": 2e-3},
             "predicted_s": {"dispatch": 1.1e-3, "experts": 1.8e-3},
             "layer_measured_s": 3e-3, "layer_predicted_s": 2.9e-3} for _ in range(2)]
    written: list[Path] = []
    real = files.write_atomic_with

    def spy(path: Any, write: Any) -> Path:
        written.append(Path(path))
        return real(path, write)

    monkeypatch.setattr(files, "write_atomic_with", spy)
    paths = plot_comparison({"per_layer": rows}, str(tmp_path / "plots"), "EP2")
    assert [Path(p) for p in paths] == written
    assert sorted(os.listdir(tmp_path / "plots")) == ["per_layer.png", "pred_vs_measured.png"]
    assert all(Path(p).read_bytes().startswith(b"\x89PNG") for p in paths)
