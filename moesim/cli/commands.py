"""The `moesim` commands: each one's name, help line and module, and sub-parsers built on demand.

`moesim --help` lists every command from the table below without importing any command module;
`moesim run ...` builds (and imports) only `run`'s sub-parser. A sub-parser is built by its
module's `add_parser`, exactly as if all were built up front, so each command's help and errors
are the same either way (tests/test_startup.py holds that).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import import_module
from typing import Any

__all__ = ["COMMANDS", "command_help", "LazyCommands"]

# name -> (module whose `add_parser(commands)` registers it, the help line `moesim --help` shows),
# in the order `moesim --help` lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("moesim.cli.run",
            "run one scenario: traffic, imbalance (and latency where a topology is given)"),
    "serve": ("moesim.cli.serve",
              "serve requests under load: TTFT/TPOT percentiles, throughput, goodput"),
    "compare": ("moesim.cli.compare",
                "compare layouts on topologies: ranked table, infeasible list, plots, HTML"),
    "report": ("moesim.cli.report",
               "turn `moesim compare --json` output into a table, PNG plots or one HTML page"),
    "sweep": ("moesim.cli.sweep",
              "run a grid of scenarios to CSV/parquet (resumable; process pool or Ray)"),
    "plan": ("moesim.cli.plan", "cheapest deployment of a model on the GPUs at hand that meets a "
             "TPOT (and TTFT) SLO"),
    "trace": ("moesim.cli.trace", "import, inspect and generate router traces"),
    "collective": ("moesim.cli.collective",
                   "predicted time of one collective (nccl-tests conventions)"),
    "kernel": ("moesim.cli.kernel", "predicted time of one op on one rank"),
    "calibrate": ("moesim.cli.calibrate", "fit a topology to measurements"),
    "validate": ("moesim.cli.validate",
                 "run the predicted traffic live (torch.distributed) and compare"),
    "list": ("moesim.cli.listing",
             "list the bundled models, topologies, traces and kernel profiles"),
}


def command_help(name: str) -> str:
    """The help line of command `name`, as `moesim --help` lists it."""
    return COMMANDS[name][1]


class _Parsers(dict[str, argparse.ArgumentParser]):
    """Command name -> sub-parser; a name still pending is built by `build(name)` when looked up.

    Every name is present from the start (so `in`, iteration and argparse's "invalid choice"
    list see all commands, in order); a pending one holds an empty placeholder parser.
    """

    def __init__(self, build: Callable[[str], None]) -> None:
        super().__init__()
        self._build = build
        self.pending: set[str] = set()
        self.building_now: str | None = None  # the command whose module is registering it

    def __contains__(self, name: object) -> bool:
        # while a command's module registers it, argparse must not see it as taken
        return name != self.building_now and super().__contains__(name)

    def __getitem__(self, name: str) -> argparse.ArgumentParser:
        if name in self.pending:
            self.pending.discard(name)
            self._build(name)
        return super().__getitem__(name)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[name] if super().__contains__(name) else default

    def values(self) -> list[argparse.ArgumentParser]:  # type: ignore[override]
        return [self[name] for name in self]

    def items(self) -> list[tuple[str, argparse.ArgumentParser]]:  # type: ignore[override]
        return [(name, self[name]) for name in self]

    @contextmanager
    def building(self, name: str) -> Iterator[None]:
        self.building_now = name
        try:
            yield
        finally:
            self.building_now = None


class LazyCommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """The top-level subparsers action: `register` lists a command now, its module builds its
    sub-parser the first time argparse (or a caller walking `choices`) looks it up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._name_parser_map = self.choices = _Parsers(self._build)  # type: ignore[assignment]

    def register(self, name: str) -> None:
        """List command `name` (its help line) without importing its module."""
        self.add_parser(name, help=command_help(name))
        self._name_parser_map.pending.add(name)  # type: ignore[attr-defined]

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parsers: _Parsers = self._name_parser_map  # type: ignore[assignment]
        if name == parsers.building_now:
            kwargs.pop("help", None)  # listed once, by `register`
        return super().add_parser(name, **kwargs)

    def _build(self, name: str) -> None:
        parsers: _Parsers = self._name_parser_map  # type: ignore[assignment]
        with parsers.building(name):
            import_module(COMMANDS[name][0]).add_parser(self)
