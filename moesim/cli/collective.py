"""`moesim collective` (stub: filled in by its owner)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim collective`."""
    parser = commands.add_parser("collective", help="(not yet implemented)")
    parser.set_defaults(handler=lambda args: print("not yet implemented") or 1)
