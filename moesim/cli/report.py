"""`moesim report RESULTS.json --html OUT.html`: a comparison's JSON as tables, plots and HTML."""

from __future__ import annotations

import argparse

from moesim.cli.commands import command_help

__all__ = ["add_parser", "run_report_command"]


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim report`."""
    parser = commands.add_parser(
        "report",
        help=command_help("report"),
        description="Read the JSON written by `moesim compare --json` and print its ranked "
        "table; --html writes one self-contained page (plots embedded, no external files), "
        "--plot writes the PNGs. Plots need the JSON of a compare run with --plot or --html.",
    )
    parser.add_argument("results", help="comparison JSON from `moesim compare --json`")
    parser.add_argument("--html", metavar="OUT", help="write the self-contained HTML page here")
    parser.add_argument("--plot", metavar="DIR", help="write the PNG plots here")
    parser.add_argument("--quiet", action="store_true", help="no table")
    parser.set_defaults(handler=run_report_command)


def run_report_command(args: argparse.Namespace) -> int:
    """Handler of `moesim report`."""
    from moesim.cli.compare import compare_table, write_figures
    from moesim.inputs.config import read_mapping
    from moesim.output.html_report import check_compare_dict

    compare = read_mapping(args.results, "comparison results")
    check_compare_dict(compare, f"comparison results file {args.results}")
    if not args.quiet:
        print(compare_table(compare))
    write_figures(compare, args.plot, args.html, not args.quiet)
    return 0
