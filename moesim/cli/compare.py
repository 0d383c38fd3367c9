"""`moesim compare SCENARIO.yaml --placements ...`: layouts x topologies, ranked, with plots."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from moesim.cli.commands import command_help
from moesim.cli.flags import (
    RUN_FIELDS,
    SERVE_FIELDS,
    add_model_flags,
    add_scenario_flags,
    scenario_with_serve,
)
from moesim.cli.numbers import finite_positive_float
from moesim.cli.run import write_json
from moesim.errors import ConfigError
from moesim.inputs.config import MAX_BATCH, ServeSpec

__all__ = ["add_parser", "run_compare_command", "parse_list", "parse_batches", "write_figures",
           "compare_table"]

DEFAULT_PLACEMENTS = "TP8,EP8,EP4xDP2,SP8,TP2xEP4"
# The scenario flags of compare: all of run's but those it takes as comma-separated lists.
COMPARE_FIELDS = tuple(f for f in RUN_FIELDS if f not in ("placement", "topology", "batch"))
# The served-workload flags of compare (every layout serves it): all but disaggregation.
COMPARE_SERVE_FIELDS = tuple(f for f in SERVE_FIELDS if f != "disagg")


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim compare`."""
    parser = commands.add_parser(
        "compare",
        help=command_help("compare"),
        description="Run the scenario for every layout on every topology (and batch). "
        "Layouts needing more GPUs than a topology has, invalid for the model, or not fitting "
        "in memory are listed as infeasible with the reason. Feasible ones are ranked by "
        "decode tokens/s per GPU (ties: lower TPOT); with --max-tpot-ms/--max-ttft-ms those "
        "meeting the targets rank first.",
    )
    parser.add_argument("scenario", nargs="?", help="scenario YAML (see scenarios/)")
    parser.add_argument("--placements", default=DEFAULT_PLACEMENTS,
                        help=f"comma-separated layouts (default {DEFAULT_PLACEMENTS})")
    parser.add_argument("--topology", dest="topologies",
                        help="comma-separated topology presets or YAML files (default: the "
                        "scenario's)")
    parser.add_argument("--batch", dest="batches", help="comma-separated batch sizes")
    parser.add_argument("--variants", metavar="SPEC",
                        help="evaluate every layout once per variant and rank them together: "
                        "comma-separated variants, each 'base' (the scenario as given) or "
                        "FIELD=VALUE overrides joined by '+', FIELD among eplb, "
                        "redundant_experts, eplb_window, rebalance_steps, overlap, a2a, "
                        "dispatch_dtype, mtp, mtp_acceptance; e.g. "
                        "base,eplb=deepseek+redundant_experts=8,overlap=tbo,a2a=deepep-ll")
    add_scenario_flags(parser, COMPARE_FIELDS)
    add_model_flags(parser, ServeSpec, COMPARE_SERVE_FIELDS)
    parser.add_argument("--percentile", choices=["p50", "p90", "p99", "mean"], default="p90",
                        help="with a served workload (--rate/--concurrency/--requests-file): "
                        "the TTFT/TPOT percentile the targets and the ranking use (default p90)")
    # a NaN, infinite or non-positive target would be met (or missed) by every layout silently
    parser.add_argument("--max-tpot-ms", dest="max_tpot_ms", type=finite_positive_float,
                        help="TPOT target (ms, > 0): layouts meeting it rank first")
    parser.add_argument("--max-ttft-ms", dest="max_ttft_ms", type=finite_positive_float,
                        help="TTFT target (ms, > 0): layouts meeting it rank first")
    parser.add_argument("--plot", metavar="DIR", help="write PNG plots here")
    parser.add_argument("--html", metavar="OUT", help="write a self-contained HTML report")
    parser.add_argument("--json", metavar="OUT", help="write the comparison JSON ('-': stdout)")
    parser.add_argument("--sweep-batches", dest="sweep_batches",
                        default="1,2,4,8,16,32,64,128,256",
                        help="batches of the latency-throughput plot ('none' to skip); only "
                        "used with --plot or --html")
    parser.add_argument("--quiet", action="store_true", help="no table, no progress")
    parser.set_defaults(handler=run_compare_command)


def parse_list(text: str | None, what: str, cast: type = str) -> list:  # type: ignore[type-arg]
    """A comma-separated flag value as a list; ConfigError naming the flag on a bad item, or
    when the flag is given but lists nothing (`--topology ,`). None (flag not given): []."""
    if text is None:
        return []
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"{what}: no value in {text!r}; give comma-separated values, or "
                          "leave the flag out for the default")
    try:
        return [cast(item) for item in items]
    except ValueError:
        raise ConfigError(f"{what}: cannot read '{text}'; give comma-separated values such "
                          "as 32,128") from None


def parse_batches(text: str | None, what: str) -> list[int]:
    """Comma-separated batch sizes, each a whole number in [1, MAX_BATCH]; ConfigError naming
    the flag and the item otherwise (a batch of 0 or -1 has no step to run)."""
    batches = parse_list(text, what, str)
    values = []
    for item in batches:
        try:
            value = int(item.replace("_", ""), 10)
        except ValueError:
            raise ConfigError(f"{what}: cannot read {item!r} in '{text}'; give comma-separated "
                              "whole batch sizes such as 32,128") from None
        if not 1 <= value <= MAX_BATCH:
            raise ConfigError(f"{what}: batch {value} in '{text}' is outside [1, "
                              f"{MAX_BATCH:,}]; give batch sizes of at least 1, e.g. 32,128")
        values.append(value)
    return values


def _check_scenario_files(scenario: Any) -> None:
    """Files and profiles the scenario names for every layout (kernel profile, expert placement
    file) are read once up front: a bad one is one error, not every layout listed infeasible."""
    from moesim.inputs.config import ExpertPlacementSpec, load_model_file
    from moesim.inputs.kernel_profile import load_kernel_profile

    if scenario.kernels not in ("auto", "roofline"):
        load_kernel_profile(scenario.kernels)
    if isinstance(scenario.expert_placement, str):
        load_model_file(ExpertPlacementSpec, scenario.expert_placement, "expert placement")


def run_compare_command(args: argparse.Namespace) -> int:
    """Handler of `moesim compare`."""
    from moesim.planning.compare import parse_variants, run_compare

    variants = parse_variants(args.variants)
    base = scenario_with_serve(args)
    _check_scenario_files(base)
    drawing = bool(args.plot or args.html)
    # read even when no figure is drawn, so a bad value is refused rather than ignored
    sweep = ([] if args.sweep_batches.strip() == "none"
             else parse_batches(args.sweep_batches, "--sweep-batches"))
    if not drawing:
        sweep = []
    ms = 1e-3
    compare = run_compare(
        base,
        parse_list(args.placements, "--placements"),
        parse_list(args.topologies, "--topology") or None,
        parse_batches(args.batches, "--batch") or None,
        max_tpot_s=None if args.max_tpot_ms is None else args.max_tpot_ms * ms,
        max_ttft_s=None if args.max_ttft_ms is None else args.max_ttft_ms * ms,
        plot_data=drawing,
        sweep_batches=sweep,
        percentile=args.percentile,
        progress=None if args.quiet else sys.stderr,
        variants=variants,
    )
    if not args.quiet and args.json != "-":
        print(compare_table(compare))
    _write_outputs(compare, args)
    return 0


def compare_table(compare: dict) -> str:  # type: ignore[type-arg]
    """The comparison's ranked tables: `format_compare_table`, with a `variant` column after
    the layout (and the variant in each infeasible line) when the comparison ran --variants.
    """
    from moesim.output.report import format_compare_table, table_cells, table_columns

    if not compare.get("variants"):
        return format_compare_table(compare)
    # format_compare_table without groups: the model (and served) lines, then a blank line,
    # the legend and the ranking rule; the groups go between them, with the extra column.
    lines = format_compare_table({**compare, "groups": []}).split("\n")
    head, tail = lines[:-3], lines[-3:]
    rows = [r for g in compare["groups"] for r in g["ranked"] + g["infeasible"]]
    width = max(len(r.get("variant") or "") for r in [{"variant": "variant"}, *rows])
    columns = table_columns(compare)

    def line(cells: list[str], variant: str) -> str:
        padded = [f"{c:>{w}}" for c, (_, w) in zip(cells, columns, strict=True)]
        return " ".join([*padded[:2], f"{variant:<{width}}", *padded[2:]])

    header = line([name for name, _ in columns], "variant")
    for group in compare["groups"]:
        where = f"batch {group['batch']}, context {group['context']}"
        if compare.get("serving"):
            where = f"served; a2a GB, imb e/r and free GB of one decode step at {where}"
        head += ["", f"{where}:", header]
        head += [line(table_cells(row), row.get("variant") or "") for row in group["ranked"]]
        head += [f"  infeasible {row['placement']} [{row.get('variant')}] on {row['topology']}: "
                 f"{row['reason']}" for row in group["infeasible"]]
    legend = "variant: the scenario's MoE-engine overrides (--variants; base: as given)"
    return "\n".join([*head, tail[0], legend, *tail[1:]])


def _write_outputs(compare: dict, args: argparse.Namespace) -> None:  # type: ignore[type-arg]
    """JSON, PNG plots and HTML as asked (figures rendered once for both)."""
    say = not args.quiet and args.json != "-"
    if args.json:
        write_json(compare, args.json)
        if say and args.json != "-":
            print(f"wrote {args.json}")
    write_figures(compare, args.plot, args.html, say)


def write_figures(compare: dict, plot_dir: str | None, html: str | None,  # type: ignore[type-arg]
                  say: bool) -> None:
    """PNGs under `plot_dir` and/or the HTML page `html`, rendering each figure once."""
    if not plot_dir and not html:
        return
    from moesim.output.plots import plot_pngs, save_plots

    figures = plot_pngs(compare)
    if plot_dir:
        written = save_plots(compare, plot_dir, figures)
        if say:
            print(f"wrote {len(written)} plots to {plot_dir}")
    if html:
        from moesim.output.html_report import write_html_report

        write_html_report(compare, html, figures)
        if say:
            print(f"wrote {html}")
