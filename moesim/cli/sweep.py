"""`moesim sweep GRID.yaml -o OUT.csv|OUT.parquet`: every point of a grid to one row each."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moesim.cli.commands import command_help
from moesim.cli.numbers import non_negative_int, positive_int

__all__ = ["add_parser", "plot_pareto"]


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim sweep`."""
    parser = commands.add_parser(
        "sweep",
        help=command_help("sweep"),
        description="Run every point of a grid (models x traces x placements x batches x "
        "contexts x topologies) and write one row per point. Rows are appended as they "
        "finish; rerunning with the same output skips points already there (a row cut short "
        "by a kill is computed again). One sweep at a time writes an output: OUT.lock beside "
        "it holds the sweep's pid.",
    )
    parser.add_argument("grid", help="grid YAML (see scenarios/grid-mixtral.yaml)")
    parser.add_argument("-o", "--out", required=True, help="output .csv or .parquet")
    parser.add_argument("--workers", type=positive_int,
                        help="local processes (default: all cores)")
    parser.add_argument(
        "--ray", metavar="ADDRESS", help="run on Ray: a cluster address, or 'local'"
    )
    parser.add_argument(
        "--fidelity", choices=["analytic", "des"], help="override the grid's fidelity"
    )
    parser.add_argument("--max-points", type=non_negative_int,
                        help="stop after this many new points (0: none, only resume/plot)")
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
    """Feasible points coloured by topology, throughput per GPU against TPOT, with the Pareto
    front (`moesim.output.plots.pareto_figure`); returns the PNG. Served rows (a grid with a
    `serve` block) plot p90 TPOT and served output tokens/s/GPU."""
    from moesim.output.plots import save_pareto_plot
    from moesim.planning.sweep import pareto_front

    served = any(r.get("served_tpot_p90_s") is not None for r in rows)
    x, y = (("served_tpot_p90_s", "served_output_tokens_per_s_per_gpu") if served
            else ("tpot_s", "tokens_per_s_per_gpu"))
    return save_pareto_plot(rows, pareto_front(rows, x, y), out_dir)
