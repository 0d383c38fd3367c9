"""Speed of `moesim sweep`: points/s and wall time of a >= 1,000-point analytic grid.

The grid: Mixtral-8x7B replaying the bundled real HumanEval decode trace, 8 layouts x 6
topology presets x 7 batch sizes (1..64) x 3 contexts (256, 1024, 4096) = 1,008 points, each
timing a prefill (TTFT) and a decode step (TPOT). Layouts larger than a topology are
infeasible rows (cheap). Output goes to a fresh temporary CSV, so nothing is resumed.

Run: python benchmarks/bench_sweep.py [--workers N] [--fidelity analytic|des] [--out OUT.csv]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from moesim.planning.sweep import Grid, expand_grid, run_sweep

GRID = Grid(
    name="bench",
    placements=["TP8", "EP8", "EP4xDP2", "TP2xEP4", "SP8", "TP4", "EP4", "TP2xEP2"],
    topologies=[
        "dgx-h100",
        "hgx-a100",
        "h200-8x",
        "l40s-8x-pcie",
        "h100-2node-ib",
        "rtx4090-4x-pcie",
    ],  # fmt: skip
    batches=[1, 2, 4, 8, 16, 32, 64],
    contexts=[256, 1024, 4096],
    fixed={"phase": "decode"},
)


def main() -> None:
    """Run the grid once from scratch and print wall time and points/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, help="processes (default: all cores)")
    parser.add_argument("--fidelity", choices=["analytic", "des"], default="analytic")
    parser.add_argument("--out", help="output CSV (default: a temporary file)")
    args = parser.parse_args()
    points = expand_grid(GRID, fidelity=args.fidelity)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "bench.csv"
        out.unlink(missing_ok=True)
        start_s = time.perf_counter()
        summary = run_sweep(points, out, workers=args.workers, progress=False)
        wall_s = time.perf_counter() - start_s
    print(
        f"{summary.points} points ({summary.feasible} feasible), {args.fidelity}: "
        f"wall {wall_s:.1f} s, {summary.points / wall_s:.1f} points/s"
    )


if __name__ == "__main__":
    main()
