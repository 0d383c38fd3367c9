"""The `moesim` command: one sub-module per command group, each with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import cast

from moesim import __version__
from moesim.errors import MoesimError

__all__ = ["main", "build_parser"]

_VERSION = f"moesim {__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command group registered.

    Each command's sub-parser (and the modules it needs) is built the first time it is looked
    up: when argparse selects it, or when a caller walks the subparsers action's `choices`.
    """
    from moesim.cli.commands import COMMANDS, LazyCommands

    parser = argparse.ArgumentParser(
        prog="moesim",
        description="Simulate MoE serving on multi-GPU clusters from real router traces.",
    )
    parser.add_argument("--version", action="version", version=_VERSION)
    commands = cast(LazyCommands, parser.add_subparsers(
        action=LazyCommands, dest="command", metavar="COMMAND", required=True))
    for name in COMMANDS:
        commands.register(name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run the command, turn user errors into one line and exit code 2."""
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(_VERSION)  # as argparse's version action: the line on stdout, then exit 0
        raise SystemExit(0)
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
