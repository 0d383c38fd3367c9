"""`moesim calibrate nccl-tests`: fit a topology's link efficiency and launch latency to logs.

    moesim calibrate nccl-tests LOG... -t TOPOLOGY -o OUT.yaml [--gpus N]

reads nccl-tests logs (all_reduce_perf, alltoall_perf, all_gather_perf, reduce_scatter_perf
output; several tests per file are fine), predicts every row with `moesim collective`'s
model on the topology, fits `link_efficiency` (one value for the chosen link media, default
all) and `collective_launch_s` by least squares on log time, writes the topology with the
fitted values (and a `sources` entry naming the logs) to OUT, and prints measured vs
predicted time per row before and after.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import yaml

from moesim.calibrate.fit import (
    FitResult,
    Measurement,
    calibrated_spec,
    fit_topology,
    measurements_from_sections,
)
from moesim.calibrate.nccl_tests import read_nccl_tests
from moesim.cli.collective import parse_bytes
from moesim.config import load_model_file
from moesim.errors import ConfigError
from moesim.topology import resolve_topology_path
from moesim.topology_spec import TopologySpec

__all__ = ["add_parser", "format_table", "write_topology"]


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim calibrate` and its `nccl-tests` subcommand."""
    parser = commands.add_parser(
        "calibrate", help="fit a topology to measurements", description=__doc__.split("\n\n")[0]
    )
    sources = parser.add_subparsers(dest="calibrate_source", metavar="SOURCE", required=True)
    nccl = sources.add_parser("nccl-tests", help="fit to nccl-tests logs",
                              description=__doc__.split("\n\n")[2])
    nccl.add_argument("logs", nargs="+", metavar="LOG", help="nccl-tests output file(s)")
    nccl.add_argument("-t", "--topology", required=True, help="topology YAML or preset name")
    nccl.add_argument("-o", "--output", required=True, help="where to write the fitted YAML")
    nccl.add_argument("--gpus", type=int, default=None,
                      help="ranks per test (default: counted from the log's Rank lines)")
    nccl.add_argument("--min-bytes", default="1", help="ignore rows smaller than this (e.g. 1M)")
    nccl.add_argument("--max-bytes", default="1T", help="ignore rows larger than this (e.g. 1G)")
    nccl.add_argument("--ops", default=None,
                      help="only these collectives, comma-separated (e.g. alltoall,allgather; "
                           "leave out all-reduce rows that ran NVLS, which is not modelled)")
    nccl.add_argument("--medium", action="append", default=None,
                      help="link medium to fit (nvlink, pcie, network...; repeatable; "
                           "default: all)")
    nccl.add_argument("--fixed-launch", action="store_true",
                      help="keep the topology's launch latency, fit only the efficiency")
    nccl.add_argument("--loss", choices=("log", "relative"), default="log",
                      help="least squares on log time (default) or on relative error")
    nccl.add_argument("--fidelity", choices=("des", "analytic"), default="des")
    nccl.add_argument("--algorithm", choices=("ring", "tree"), default="ring",
                      help="all-reduce algorithm the log used (NCCL_ALGO)")
    nccl.set_defaults(handler=_run_nccl_tests)


def _run_nccl_tests(args: argparse.Namespace) -> int:
    path = resolve_topology_path(args.topology)
    spec = load_model_file(TopologySpec, path, "topology")
    sections = [s for log in args.logs for s in read_nccl_tests(log)]
    measurements = measurements_from_sections(
        sections,
        num_ranks=args.gpus,
        min_size_bytes=parse_bytes(args.min_bytes),
        max_size_bytes=parse_bytes(args.max_bytes),
    )
    if args.ops:
        wanted = {op.strip() for op in args.ops.split(",")}
        measurements = [m for m in measurements if m.op in wanted]
    if not measurements:
        raise ConfigError(
            f"{', '.join(args.logs)}: no rows of all_reduce/alltoall/all_gather/reduce_scatter "
            "in the size range; check --min-bytes/--max-bytes"
        )
    result = fit_topology(
        spec, measurements, media=args.medium, fit_launch=not args.fixed_launch,
        loss=args.loss, fidelity=args.fidelity, algorithm=args.algorithm,
    )
    print(format_table(measurements, result))
    write_topology(spec, result, args.logs, Path(args.output), original=path)
    print(f"wrote {args.output}")
    return 0


def format_table(measurements: list[Measurement], result: FitResult) -> str:
    """Measured vs predicted time (and error) per row, before and after the fit."""
    effs = ", ".join(f"{m} {e:.4f}" for m, e in result.efficiency_by_medium.items())
    lines = [
        f"fitted link_efficiency: {effs}; collective_launch_s: {result.launch_s * 1e6:.2f} us",
        f"{'op':<14}{'ranks':>5}{'bytes':>14}{'measured us':>13}"
        f"{'before us':>11}{'err':>8}{'after us':>11}{'err':>8}",
    ]
    rows = zip(measurements, result.before_s, result.after_s, strict=True)
    for m, before, after in rows:
        lines.append(
            f"{m.op:<14}{m.num_ranks:>5}{m.size_bytes:>14,.0f}{m.time_s * 1e6:>13.2f}"
            f"{before * 1e6:>11.2f}{_pct(before, m.time_s):>8}"
            f"{after * 1e6:>11.2f}{_pct(after, m.time_s):>8}"
        )
    return "\n".join(lines)


def _pct(predicted: float, measured: float) -> str:
    return f"{100 * (predicted / measured - 1):+.1f}%"


def write_topology(
    spec: TopologySpec, result: FitResult, logs: list[str], out: Path, original: Path
) -> None:
    """Write the fitted topology YAML with a comment and a `sources` entry naming the logs."""
    effs = ", ".join(f"{m}={e:.4f}" for m, e in result.efficiency_by_medium.items())
    note = (
        f"Calibrated by `moesim calibrate nccl-tests` on {datetime.date.today()} from "
        f"{', '.join(logs)}: link_efficiency {effs}, collective_launch_s "
        f"{result.launch_s:.3e} s (RMS log error {result.loss ** 0.5:.3f})"
    )
    fitted = calibrated_spec(spec, result.efficiency_by_medium, result.launch_s)
    fitted = fitted.model_copy(update={"sources": (*spec.sources, note)})
    data = fitted.model_dump(mode="json", exclude_defaults=True)
    header = (
        f"# {spec.name}, calibrated from nccl-tests logs ({', '.join(logs)}).\n"
        f"# Base topology: {original} (see its comments for the source of every figure).\n"
        "# Fitted: link_efficiency and collective_launch_s; see the last `sources` entry.\n"
    )
    out.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
