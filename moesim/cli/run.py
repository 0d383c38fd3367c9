"""`moesim run [SCENARIO.yaml] [flags]`: one scenario to a Result (table and JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from moesim.cli.commands import command_help
from moesim.cli.flags import RUN_FIELDS, add_scenario_flags, scenario_from_args
from moesim.cli.outputs import rescue_output
from moesim.output.files import write_atomic

__all__ = ["add_parser", "write_json"]

def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim run`."""
    parser = commands.add_parser(
        "run",
        help=command_help("run"),
        description="Run one scenario. Flags override the scenario file; with no file the "
        "defaults are Mixtral-8x7B, the bundled real HumanEval trace and EP8.",
    )
    parser.add_argument("scenario", nargs="?", help="scenario YAML (see scenarios/)")
    add_scenario_flags(parser, RUN_FIELDS)
    parser.add_argument("--json", metavar="OUT", help="write the Result JSON here ('-' for stdout)")
    parser.add_argument("--quiet", action="store_true", help="no table")
    parser.set_defaults(handler=_run)


def write_json(result: dict[str, Any], out: str) -> None:
    """Write a Result dict as JSON to a path or stdout ('-'); when the path cannot be written
    after all (the work is done), the JSON is saved elsewhere and the error says where."""
    text = json.dumps(result, indent=2)
    if out == "-":
        sys.stdout.write(text + "\n")
        return
    try:
        write_atomic(out, text + "\n")
    except OSError as exc:
        raise rescue_output(text + "\n", out, exc) from None


def _run(args: argparse.Namespace) -> int:
    from moesim.output.report import format_run_table
    from moesim.planning.evaluate import evaluate

    result = evaluate(scenario_from_args(args)).to_json()
    if not args.quiet and args.json != "-":
        print(format_run_table(result))
    if args.json:
        write_json(result, args.json)
        if args.json != "-" and not args.quiet:
            print(f"wrote {args.json}")
    return 0
