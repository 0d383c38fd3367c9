"""The `moesim` command: one sub-module per command group, each with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from moesim import __version__
from moesim.errors import MoesimError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command group registered."""
    from moesim.cli import (
        calibrate,
        collective,
        compare,
        kernel,
        listing,
        plan,
        report,
        run,
        serve,
        sweep,
        trace,
        validate,
    )

    parser = argparse.ArgumentParser(
        prog="moesim",
        description="Simulate MoE serving on multi-GPU clusters from real router traces.",
    )
    parser.add_argument("--version", action="version", version=f"moesim {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (run, serve, compare, report, sweep, plan, trace, collective, kernel, calibrate,
                   validate, listing):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run the command, turn user errors into one line and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from moesim.cli.outputs import check_outputs  # output paths, before any work

        check_outputs(args)
        code = args.handler(args)
    except MoesimError as exc:
        # one line, whatever the message quotes (a value with a carriage return or newline)
        print("moesim: error: " + " ".join(str(exc).splitlines()), file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
