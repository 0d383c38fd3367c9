"""`moesim serve [SCENARIO.yaml] (--rate R | --concurrency C | --requests-file F) ...`: a served
workload's TTFT/TPOT/ITL/E2E percentiles, throughput and goodput; `--rates`/`--concurrencies`
give a load curve with its saturation point."""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moesim.cli.commands import command_help
from moesim.cli.compare import parse_list
from moesim.cli.flags import (
    RUN_FIELDS,
    SERVE_FIELDS,
    add_model_flags,
    add_scenario_flags,
    scenario_with_serve,
)
from moesim.cli.run import write_json
from moesim.errors import ConfigError
from moesim.inputs.config import MAX_BATCH, Scenario, ServeSpec
from moesim.output.files import write_atomic, write_atomic_with

__all__ = ["add_parser"]

# Scenario flags of serve: the one-step workload flags (phase, batch, context, decode steps,
# prefill chunk) do not apply, the served workload has its own.
SCENARIO_FIELDS = tuple(f for f in RUN_FIELDS if f not in ("phase", "batch", "context",
                                                           "decode_steps",
                                                           "prefill_chunk_tokens"))
# Load levels of one curve: each level is a whole serving run.
MAX_LEVELS = 100


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim serve`."""
    parser = commands.add_parser(
        "serve",
        help=command_help("serve"),
        description="Requests arrive (--rate, --concurrency or --requests-file), a continuous-"
        "batching scheduler like vLLM's runs them iteration by iteration on the scenario's "
        "layout and topology, each iteration routing the tokens in flight, and the report "
        "gives per-request latency percentiles as serving benchmark clients measure them.",
    )
    parser.add_argument("scenario", nargs="?", help="scenario YAML (may hold a 'serve' block)")
    add_scenario_flags(parser, SCENARIO_FIELDS)
    add_model_flags(parser, ServeSpec, SERVE_FIELDS)
    parser.add_argument("--rates", help="load curve: comma-separated request rates (1/s)")
    parser.add_argument("--concurrencies", help="load curve: comma-separated concurrencies")
    parser.add_argument("--json", metavar="OUT", help="write the result JSON ('-': stdout)")
    parser.add_argument("--requests-out", dest="requests_out", metavar="OUT",
                        help="write one row per request (.csv or .parquet)")
    parser.add_argument("--plot", metavar="DIR", help="write the serving plots here")
    parser.add_argument("--quiet", action="store_true", help="no table")
    parser.set_defaults(handler=_run)


def _levels(args: argparse.Namespace) -> tuple[str, list[float]]:
    if args.rates and args.concurrencies:
        raise ConfigError("give --rates or --concurrencies, not both")
    if args.rates:
        kind, flag, levels = "rate", "--rates", parse_list(args.rates, "--rates", float)
        bad = [v for v in levels if not (math.isfinite(v) and v > 0)]
        what = "finite request rates > 0 (1/s)"
    elif args.concurrencies:
        kind, flag = "concurrency", "--concurrencies"
        levels = parse_list(args.concurrencies, "--concurrencies", int)
        bad = [v for v in levels if not 1 <= v <= MAX_BATCH]
        what = f"concurrencies of 1..{MAX_BATCH:,} clients"
    else:
        return "", []
    if bad or not levels:
        raise ConfigError(f"{flag} {args.rates or args.concurrencies}: give comma-separated "
                          f"{what}, e.g. 1,2,4; not {bad or 'nothing'}")
    if len(levels) > MAX_LEVELS:
        raise ConfigError(f"{flag}: {len(levels)} levels, above the {MAX_LEVELS} of one load "
                          "curve (each is a whole serving run); give fewer")
    return kind, levels


def _run(args: argparse.Namespace) -> int:
    from moesim.output.serve_report import format_load_curve, format_serve_table
    from moesim.planning.evaluate import EvaluationCache
    from moesim.planning.serving import serve

    scenario = scenario_with_serve(args)
    if scenario.serve is None:
        scenario = scenario.model_copy(update={"serve": ServeSpec()})
    kind, levels = _levels(args)
    cache = EvaluationCache()
    say = not args.quiet and args.json != "-"
    if not levels:
        result = serve(scenario, cache)
        data = result.to_json()
        if say:
            print(format_serve_table(data))
        runs = {scenario.placement if isinstance(scenario.placement, str) else "run":
                result.plot_data()}
        _outputs(args, data, result.request_rows(), runs, None, "", scenario, say)
        return 0
    curve, runs = [], {}
    for level in levels:
        spec = _level_spec(scenario.serve, kind, level)  # type: ignore[arg-type]
        result = serve(scenario.model_copy(update={"serve": spec}), cache)
        curve.append({"level": level, "result": result.to_json()})
        runs[f"{kind} {level:g}"] = result.plot_data()
        if say:
            print(f"{kind} {level:g}: done", file=sys.stderr)
    if say:
        print(format_load_curve(curve, kind))
    from moesim.output.serve_report import saturation_level

    data = {"kind": "moesim.serve.load_curve", "load": kind, "levels": levels,
            "saturation": saturation_level(curve), "curve": curve}
    _outputs(args, data, None, runs, {"load": curve}, kind, scenario, say)
    return 0


def _outputs(args: argparse.Namespace, data: dict[str, Any], rows: list[dict[str, Any]] | None,
             runs: dict[str, dict[str, Any]], curves: dict[str, list[dict[str, Any]]] | None,
             kind: str, scenario: Scenario, say: bool) -> None:
    """JSON, per-request table and plots, as asked."""
    if args.json:
        write_json(data, args.json)
        if say:
            print(f"wrote {args.json}")
    if args.requests_out:
        if rows is None:
            raise ConfigError("--requests-out writes the requests of one run; leave out "
                              "--rates/--concurrencies")
        _write_rows(Path(args.requests_out), rows)
        if say:
            print(f"wrote {args.requests_out}")
    if args.plot:
        from moesim.output.serve_plots import save_serve_plots

        spec = scenario.serve
        assert spec is not None
        slo = {"ttft_s": None if spec.slo_ttft_ms is None else spec.slo_ttft_ms / 1e3,
               "tpot_s": None if spec.slo_tpot_ms is None else spec.slo_tpot_ms / 1e3}
        written = save_serve_plots(args.plot, runs, curves=curves, kind=kind, slo=slo)
        if say:
            print(f"wrote {len(written)} plots to {args.plot}")


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """The per-request table as CSV or parquet."""
    from moesim.output.serve_result import REQUEST_COLUMNS

    if path.suffix == ".parquet":
        from moesim.planning.sweep_rows import parquet_module

        parquet = parquet_module()
        import pyarrow as pa

        table = pa.Table.from_pylist(rows)
        write_atomic_with(path, lambda tmp: parquet.write_table(table, tmp))
        return
    if path.suffix != ".csv":
        raise ConfigError(f"--requests-out {path}: give a .csv or .parquet file")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REQUEST_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def _level_spec(spec: ServeSpec, kind: str, level: float) -> ServeSpec:
    """The served workload at one load level, validated as a flag's value would be (its
    limits and the run's size: `ServeSpec._check_work`)."""
    flag = "--rates" if kind == "rate" else "--concurrencies"
    data = {**spec.model_dump(), "rate": level if kind == "rate" else None,
            "concurrency": int(level) if kind == "concurrency" else None,
            "requests_file": None}
    if kind != "rate":
        data["duration_s"] = None
    try:
        return ServeSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in exc.errors())
        raise ConfigError(f"{flag} {level:g}: {problems}") from None
