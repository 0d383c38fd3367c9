"""`moesim sweep GRID.yaml -o OUT.csv|OUT.parquet`: every point of a grid to one row each."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "plot_pareto"]


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim sweep`."""
    parser = commands.add_parser(
        "sweep",
        help="run a grid of scenarios to CSV/parquet (resumable; process pool or Ray)",
        description="Run every point of a grid (models x traces x placements x batches x "
        "contexts x topologies) and write one row per point. Rows are appended as they "
        "finish; rerunning with the same output skips points already there.",
    )
    parser.add_argument("grid", help="grid YAML (see scenarios/grid-mixtral.yaml)")
    parser.add_argument("-o", "--out", required=True, help="output .csv or .parquet")
    parser.add_argument("--workers", type=int, help="local processes (default: all cores)")
    parser.add_argument(
        "--ray", metavar="ADDRESS", help="run on Ray: a cluster address, or 'local'"
    )
    parser.add_argument(
        "--fidelity", choices=["analytic", "des"], help="override the grid's fidelity"
    )
    parser.add_argument("--max-points", type=int, help="stop after this many new points")
    parser.add_argument("--plot", metavar="DIR", help="write the Pareto front plot here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from moesim.errors import ConfigError
    from moesim.planning.sweep import expand_grid, load_grid, parse_row, read_rows, run_sweep

    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    points = expand_grid(load_grid(args.grid), fidelity=args.fidelity)
    summary = run_sweep(
        points,
        args.out,
        workers=args.workers,
        ray_address=args.ray,
        max_points=args.max_points,
        progress=not args.no_progress,
    )
    print(
        f"{summary.points} points: {summary.computed} computed, {summary.resumed} already in "
        f"{summary.out}, {summary.feasible} feasible, {summary.remaining} left; "
        f"{summary.wall_s:.1f} s -> {summary.out}"
    )
    if args.plot:
        rows = [parse_row(row) for row in read_rows(summary.out)]
        print(f"wrote {plot_pareto(rows, Path(args.plot))}")
    return 0


def plot_pareto(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """Scatter of throughput per GPU against TPOT, Pareto front highlighted; returns the PNG.
    Served rows (a grid with a `serve` block) plot p90 TPOT and served output tokens/s/GPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moesim.planning.sweep import pareto_front

    served = any(r.get("served_tpot_p90_s") is not None for r in rows)
    x, y = (("served_tpot_p90_s", "served_output_tokens_per_s_per_gpu") if served
            else ("tpot_s", "tokens_per_s_per_gpu"))
    timed = [r for r in rows if r.get("feasible") and r.get(x) is not None]
    front = pareto_front(timed, x, y)
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([r[x] * 1e3 for r in timed], [r[y] for r in timed], s=12, color="0.7",
               label="feasible points")
    ax.plot([r[x] * 1e3 for r in front], [r[y] for r in front], "o-", color="tab:red",
            label="Pareto front")
    for r in front:
        label = f"{r['placement']} {r['topology']} b{r['batch']}"
        ax.annotate(label, (r[x] * 1e3, r[y]), fontsize=7)
    if served:
        ax.set_xlabel("served p90 time per output token, TPOT (ms)")
        ax.set_ylabel("served output tokens/s per GPU")
        ax.set_title("Sweep (served): throughput per GPU vs p90 TPOT")
    else:
        ax.set_xlabel("time per output token, TPOT (ms)")
        ax.set_ylabel("decode throughput per GPU (tokens/s/GPU)")
        ax.set_title("Sweep: throughput per GPU vs TPOT")
    ax.grid(True, alpha=0.3)
    ax.legend()
    from moesim.output.files import write_atomic_with

    path = write_atomic_with(out_dir / "pareto.png", lambda tmp: fig.savefig(
        tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path
