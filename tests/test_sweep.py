"""Sweeps: grid expansion, per-point rows, resumable output, pool/Ray equal to serial."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

import pytest

from moesim.errors import ConfigError
from moesim.inputs.config import Scenario
from moesim.planning.evaluate import evaluate
from moesim.planning.sweep import (
    ROW_COLUMNS,
    Grid,
    Progress,
    evaluate_point,
    expand_grid,
    load_grid,
    pareto_front,
    parse_row,
    point_key,
    read_rows,
    run_sweep,
)

SMALL_GRID = Grid(
    name="small",
    placements=["EP8", "TP2xEP4", "EP4"],
    batches=[1, 4],
    contexts=[16],
    topologies=["dgx-h100", "rtx4090-4x-pcie"],
    fixed={"phase": "decode", "fidelity": "analytic"},
)


def _counting(calls: list[str]):  # type: ignore[no-untyped-def]
    def evaluate(scenario: Scenario) -> dict[str, object]:
        calls.append(point_key(scenario))
        return evaluate_point(scenario)

    return evaluate


def test_grid_expands_to_the_product_with_topology_innermost() -> None:
    """3 placements x 2 batches x 1 context x 2 topologies = 12 distinct points, fixed applied."""
    points = expand_grid(SMALL_GRID)
    assert len(points) == SMALL_GRID.size == 12
    assert len({point_key(p) for p in points}) == 12
    assert [p.topology for p in points[:4]] == ["dgx-h100", "rtx4090-4x-pcie"] * 2
    assert [(p.placement, p.batch) for p in points[:4:2]] == [("EP8", 1), ("EP8", 4)]
    assert all(p.phase == "decode" and p.fidelity == "analytic" for p in points)
    assert {p.fidelity for p in expand_grid(SMALL_GRID, fidelity="des")} == {"des"}


def test_grid_file_rejects_swept_fields_in_fixed(tmp_path: Path) -> None:
    """A grid that fixes a swept field fails with one ConfigError naming the file and field."""
    path = tmp_path / "g.yaml"
    path.write_text(
        "placements: [EP8]\nbatches: [1]\ncontexts: [8]\ntopologies: [dgx-h100]\n"
        "fixed: {batch: 4}\n"
    )
    with pytest.raises(ConfigError, match=r"g\.yaml.*fixed"):
        load_grid(path)
    path.write_text("placements: [EP8]\nbatches: [1]\ncontexts: [8]\ntopologies: [dgx-h100]\n"
                    "fixed: {phasee: decode}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="phasee"):
        load_grid(path)


def test_bundled_example_grid_loads() -> None:
    """scenarios/grid-mixtral.yaml is a valid grid of the size its comment states (360)."""
    grid = load_grid(Path(__file__).parents[1] / "scenarios" / "grid-mixtral.yaml")
    assert grid.size == 360 == len(expand_grid(grid))


def test_point_key_ignores_names_but_not_inputs() -> None:
    """The key is what a point computes: renaming keeps it, changing any input changes it."""
    base = Scenario(topology="dgx-h100", batch=4, context=16)
    assert point_key(base) == point_key(base.model_copy(update={"name": "other"}))
    assert point_key(base) != point_key(base.model_copy(update={"fidelity": "analytic"}))
    assert len(point_key(base)) == 16


@pytest.mark.parametrize(
    ("placement", "topology", "fidelity", "phase"),
    [("EP8", "dgx-h100", "analytic", "decode"), ("TP2xEP4", "l40s-8x-pcie", "des", "prefill")],
)
def test_row_figures_equal_evaluate(
    placement: str, topology: str, fidelity: str, phase: str
) -> None:
    """The cached point evaluation reports exactly what `moesim run` reports, plus economics."""
    sc = Scenario(
        placement=placement, topology=topology, fidelity=fidelity, phase=phase, batch=4, context=32
    )
    row, result = evaluate_point(sc), evaluate(sc).to_json()
    assert row["feasible"] is True and row["reason"] == ""
    for name in ("ttft_s", "tpot_s", "tokens_per_s", "a2a_bytes"):
        assert row[name] == result[name]
    imbalance = result["imbalance"]
    assert row["expert_imbalance_max"] == imbalance["expert_max_over_mean"]["max"]
    assert row["rank_imbalance_max"] == imbalance["rank_max_over_mean"]["max"]
    assert row["tokens_per_s_per_gpu"] == row["tokens_per_s"] / 8
    price = row["gpu_price_per_hour_usd"]
    assert row["usd_per_hour"] == pytest.approx(price * 8)
    # $/M tokens = $/s / tokens/s * 1e6
    assert row["usd_per_million_tokens"] == pytest.approx(
        price * 8 / 3600 / row["tokens_per_s"] * 1e6
    )


def test_infeasible_points_are_rows_with_reasons() -> None:
    """A layout larger than the topology and experts not divisible are rows, not aborts."""
    too_big = evaluate_point(Scenario(placement="EP8", topology="rtx4090-4x-pcie", batch=1))
    assert too_big["feasible"] is False and too_big["world"] == 8
    assert "needs 8 GPUs" in too_big["reason"] and too_big["tpot_s"] is None
    uneven = evaluate_point(Scenario(placement="EP3", topology="dgx-h100", batch=1))
    assert uneven["feasible"] is False and "not divisible by moe_ep=3" in uneven["reason"]


def test_out_of_memory_point_is_infeasible() -> None:
    """Full Mixtral-8x7B (~93 GB of bf16 weights) per GPU cannot fit a 24 GB RTX 4090 (DP4)."""
    row = evaluate_point(Scenario(placement="DP4", topology="rtx4090-4x-pcie", batch=1, context=8))
    assert row["feasible"] is False and row["reason"].startswith("out of memory")
    assert row["memory_headroom_bytes"] < 0


def test_sweep_resumes_without_recomputing(tmp_path: Path) -> None:
    """Stop after 5 points, rerun: only the other 7 are computed; all 12 rows, grid order."""
    out, points, calls = tmp_path / "s.csv", expand_grid(SMALL_GRID), list[str]()
    first = run_sweep(points, out, workers=1, max_points=5, progress=False,
                      evaluate=_counting(calls))  # fmt: skip
    assert (first.computed, first.remaining, len(calls)) == (5, 7, 5)
    assert len(read_rows(out)) == 5
    calls.clear()
    second = run_sweep(points, out, workers=1, progress=False, evaluate=_counting(calls))
    assert (second.computed, second.resumed, second.remaining, len(calls)) == (7, 5, 0, 7)
    assert [row["key"] for row in read_rows(out)] == [point_key(p) for p in points]
    calls.clear()
    assert (
        run_sweep(points, out, workers=1, progress=False, evaluate=_counting(calls)).computed == 0
    )
    assert calls == []


def test_sweep_recomputes_a_row_cut_short(tmp_path: Path) -> None:
    """A last line cut off mid-write (interrupted) is recomputed; whole rows are kept."""
    out, points = tmp_path / "s.csv", expand_grid(SMALL_GRID)[:3]
    run_sweep(points, out, workers=1, progress=False)
    text = out.read_text()
    out.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 12])  # 11 chars of row 3
    calls: list[str] = []
    run_sweep(points, out, workers=1, progress=False, evaluate=_counting(calls))
    assert calls == [point_key(points[2])]
    assert out.read_text() == text


def test_pool_rows_equal_serial_rows(tmp_path: Path) -> None:
    """Two worker processes write byte-identical output to a serial run."""
    points = expand_grid(SMALL_GRID)
    run_sweep(points, tmp_path / "serial.csv", workers=1, progress=False)
    run_sweep(points, tmp_path / "pool.csv", workers=2, progress=False)
    serial = (tmp_path / "serial.csv").read_text()
    assert serial == (tmp_path / "pool.csv").read_text()
    rows = [parse_row(r) for r in read_rows(tmp_path / "serial.csv")]
    # on the 4-GPU RTX 4090 box EP8 and TP2xEP4 need 8 GPUs, EP4 holds 2 of Mixtral's 8
    # experts per GPU (~26 GB of bf16 weights > 24 GB): 6 of 12 points run
    assert sum(r["feasible"] for r in rows) == 6


@pytest.mark.slow
def test_ray_rows_equal_serial_rows(tmp_path: Path) -> None:
    """The same sweep on a local Ray instance writes byte-identical output."""
    ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'ray>=2.9'")
    points = expand_grid(SMALL_GRID)
    run_sweep(points, tmp_path / "serial.csv", workers=1, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_sweep(points, tmp_path / "ray.csv", ray_address="local", progress=False)
    finally:
        ray.shutdown()
    assert (tmp_path / "serial.csv").read_text() == (tmp_path / "ray.csv").read_text()


def test_output_with_other_columns_is_refused(tmp_path: Path) -> None:
    """Appending to a CSV that is not a sweep's output fails instead of mixing columns."""
    out = tmp_path / "other.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="other columns"):
        run_sweep(expand_grid(SMALL_GRID)[:1], out, workers=1, progress=False)
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        run_sweep([], tmp_path / "x.txt", workers=1, progress=False)


def test_parquet_output(tmp_path: Path) -> None:
    """Parquet output holds typed columns equal to the CSV rows (needs pyarrow)."""
    pytest.importorskip("pyarrow", reason="parquet output needs pyarrow")
    points = expand_grid(SMALL_GRID)[:4]
    run_sweep(points, tmp_path / "s.csv", workers=1, progress=False)
    run_sweep(points, tmp_path / "s.parquet", workers=1, progress=False)
    assert read_rows(tmp_path / "s.parquet") == read_rows(tmp_path / "s.csv")
    assert not (tmp_path / "s.parquet.partial.csv").exists()


def test_csv_header_is_the_row_columns(tmp_path: Path) -> None:
    """The CSV header is exactly ROW_COLUMNS, so resumed and fresh files agree."""
    out = tmp_path / "s.csv"
    run_sweep(expand_grid(SMALL_GRID)[:1], out, workers=1, progress=False)
    with out.open() as handle:
        assert tuple(next(csv.reader(handle))) == ROW_COLUMNS


def test_progress_prints_deciles_when_not_a_terminal() -> None:
    """Off a terminal the bar prints one line per 10% and the final count."""
    stream = io.StringIO()
    bar = Progress(20, stream=stream)
    for _ in range(20):
        bar.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("[" + "#" * 30 + "] 20/20 points")


def test_pareto_front_keeps_undominated_points() -> None:
    """A point is on the front unless another has lower-or-equal TPOT and more tokens/s/GPU."""
    rows: list[dict[str, Any]] = [
        {"feasible": True, "tpot_s": 0.01, "tokens_per_s_per_gpu": 100.0, "id": "a"},
        {"feasible": True, "tpot_s": 0.02, "tokens_per_s_per_gpu": 90.0, "id": "dominated"},
        {"feasible": True, "tpot_s": 0.03, "tokens_per_s_per_gpu": 300.0, "id": "b"},
        {"feasible": False, "tpot_s": None, "tokens_per_s_per_gpu": None, "id": "x"},
        {"feasible": True, "tpot_s": 0.005, "tokens_per_s_per_gpu": 50.0, "id": "c"},
    ]
    assert [r["id"] for r in pareto_front(rows)] == ["c", "a", "b"]


def test_cli_sweep_writes_rows_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`moesim sweep GRID -o OUT --plot DIR` writes every row and a Pareto PNG."""
    from moesim.cli import sweep as cli_sweep

    grid = tmp_path / "g.yaml"
    grid.write_text(
        "name: g\nplacements: [EP8, TP8]\nbatches: [2]\ncontexts: [16]\n"
        "topologies: [dgx-h100]\nfixed: {phase: decode}\n"
    )
    parser = argparse.ArgumentParser()
    cli_sweep.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sweep", str(grid), "-o", str(tmp_path / "o.csv"),
                              "--workers", "1", "--fidelity", "analytic", "--plot",
                              str(tmp_path / "plots"), "--no-progress"])  # fmt: skip
    assert args.handler(args) == 0
    assert "2 points: 2 computed" in capsys.readouterr().out
    assert (tmp_path / "plots" / "pareto.png").stat().st_size > 0
    assert {r["fidelity"] for r in read_rows(tmp_path / "o.csv")} == {"analytic"}


SERVED_GRID = Grid(
    name="served",
    placements=["EP8", "SP8"],
    batches=[2, 4],
    contexts=[64],
    topologies=["dgx-h100"],
    fixed={"phase": "decode", "fidelity": "analytic",
           "serve": {"osl": 8, "requests": 8, "slo_ttft_ms": 500, "slo_tpot_ms": 50}},
)


def test_a_served_grid_is_a_load_sweep_of_closed_loops(tmp_path: Path) -> None:
    """A serve block without arrivals: each point serves `batch` closed-loop clients with
    prompts of `context` tokens; its served cells are `serve`'s figures of that scenario; SP
    keeps its one-step figures and says why it cannot serve."""
    from moesim.planning.serving import serve

    points = expand_grid(SERVED_GRID)
    workloads = [(p.serve.concurrency, p.serve.isl) for p in points if p.serve]
    assert workloads == [(2, 64), (4, 64)] * 2
    out = tmp_path / "s.csv"
    run_sweep(points, out, workers=1, progress=False)
    rows = {(r["placement"], r["batch"]): r for r in map(parse_row, read_rows(out))}
    for batch, point in zip((2, 4), points[:2], strict=True):
        row, direct = rows[("EP8", batch)], serve(point).to_json()
        assert row["served_ttft_p90_s"] == direct["ttft_s"]["p90"]
        assert row["served_tpot_p99_s"] == direct["tpot_s"]["p99"]
        assert row["served_goodput_per_s"] == direct["goodput_per_s"]
        assert row["served_preemptions"] == direct["preemptions"] and row["served_reason"] is None
    sp = rows[("SP8", 2)]
    assert sp["feasible"] and sp["tpot_s"] is not None and sp["served_tpot_p90_s"] is None
    assert "sequence parallel attention (SP) is not modelled for serving" in sp["served_reason"]
    from moesim.cli.sweep import plot_pareto

    assert plot_pareto(list(rows.values()), tmp_path).read_bytes().startswith(b"\x89PNG")


def test_an_output_written_before_the_served_columns_resumes(tmp_path: Path) -> None:
    """A CSV with the columns sweeps wrote before serving: its rows count as done, and the file
    is rewritten with today's header (served cells empty) before new rows are appended."""
    points = expand_grid(SMALL_GRID)[:3]
    out = tmp_path / "s.csv"
    run_sweep(points[:2], out, workers=1, progress=False)
    old = ROW_COLUMNS[: ROW_COLUMNS.index("served_ttft_p50_s")]
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    calls: list[str] = []
    summary = run_sweep(points, out, workers=1, progress=False, evaluate=_counting(calls))
    assert summary.resumed == 2 and len(calls) == 1
    with out.open() as handle:
        assert tuple(next(csv.reader(handle))) == ROW_COLUMNS
    assert len(read_rows(out)) == 3


def test_a_bad_serve_block_in_a_grid_names_the_field(tmp_path: Path) -> None:
    """A grid whose fixed serve block has a negative rate fails on load, naming the field."""
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nplacements: [EP8]\nbatches: [2]\ncontexts: [16]\n"
                    "topologies: [dgx-h100]\nfixed: {serve: {rate: -1}}\n")
    with pytest.raises(ConfigError, match="serve.rate"):
        load_grid(grid)
