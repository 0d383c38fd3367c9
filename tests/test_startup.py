"""`moesim` starts fast: `--version` and `--help` import no command module, the engine, numpy,
networkx or pydantic; a command builds (and imports) only its own sub-parser; and the help and
errors are exactly those of a parser with every command built up front."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.cli import build_parser, main
from moesim.cli.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "networkx", "pydantic", "yaml", "simpy", "matplotlib", "moesim.engine",
         "moesim.planning", "moesim.inputs.config")


def _modules_after(argv: list[str]) -> tuple[int, str, list[str]]:
    """(exit code, stdout, modules imported) of `moesim ARGV` run in a fresh interpreter."""
    code = (
        "import contextlib, io, json, sys\n"
        "from moesim.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):\n"
        "    try:\n"
        f"        rc = main({argv!r})\n"
        "    except SystemExit as exc:\n"
        "        rc = exc.code\n"
        "print(json.dumps([rc, out.getvalue(), sorted(sys.modules)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    rc, out, modules = json.loads(done.stdout.splitlines()[-1])
    return rc, out, modules


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]


def _eager_parser() -> argparse.ArgumentParser:
    """The parser as built before: a plain subparsers action, every command module's
    `add_parser` called up front."""
    from moesim import __version__

    parser = argparse.ArgumentParser(
        prog="moesim",
        description="Simulate MoE serving on multi-GPU clusters from real router traces.",
    )
    parser.add_argument("--version", action="version", version=f"moesim {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module, _ in COMMANDS.values():
        importlib.import_module(module).add_parser(commands)
    return parser


def _helps(parser: argparse.ArgumentParser, path: str = "moesim") -> dict[str, str]:
    """The help text of the parser and of every sub-parser under it, by command path."""
    found = {path: parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_helps(sub, f"{path} {name}"))
    return found


def test_version_imports_nothing_heavy() -> None:
    from moesim import __version__

    rc, out, modules = _modules_after(["--version"])
    assert (rc, out) == (0, f"moesim {__version__}\n")
    assert _heavy(modules) == []
    assert not any(m.startswith("moesim.cli.") for m in modules)  # no parser built at all


def test_help_lists_every_command_without_importing_one() -> None:
    rc, out, modules = _modules_after(["--help"])
    assert rc == 0
    listed = [line.split()[0] for line in out.split("COMMAND\n", 1)[1].splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == list(COMMANDS)
    assert _heavy(modules) == []
    assert {m for m in modules if m.startswith("moesim.cli.")} == {"moesim.cli.commands"}


@pytest.mark.parametrize("argv", [[], ["bogus"], ["--bogus"]])
def test_top_level_errors_import_no_command(argv: list[str]) -> None:
    rc, _, modules = _modules_after(argv)
    assert rc == 2 and _heavy(modules) == []


def test_a_command_builds_only_its_own_parser() -> None:
    rc, out, modules = _modules_after(["list", "--json", "models"])
    assert rc == 0 and json.loads(out)
    commands = {m for m in modules if m.startswith("moesim.cli.")}
    assert commands == {"moesim.cli.commands", "moesim.cli.listing", "moesim.cli.outputs"}


@pytest.mark.parametrize("command", ["collective", "kernel", "calibrate", "validate",
                                     "report", "sweep"])
def test_parsing_a_command_imports_no_engine(command: str) -> None:
    """A command's parser needs constants and types, not the engine, numpy or networkx."""
    rc, _, modules = _modules_after([command, "--help"])
    assert rc == 0
    assert [m for m in modules if m.startswith(("moesim.engine", "moesim.planning",
                                                "moesim.calibrate", "numpy", "networkx",
                                                "simpy", "matplotlib"))] == []


def test_lazy_help_is_the_eager_help_for_every_command() -> None:
    """`moesim --help` and every `moesim CMD [SUB] --help` read as with every parser built."""
    lazy, eager = _helps(build_parser()), _helps(_eager_parser())
    assert list(lazy) == list(eager)
    assert {p.split()[1] for p in lazy if p != "moesim"} == set(COMMANDS)
    for path, text in eager.items():
        assert lazy[path] == text, path


def test_each_command_module_registers_its_listed_name() -> None:
    """The table's module for each name registers exactly that command (with that help)."""
    for name, (module, help_line) in COMMANDS.items():
        parser = argparse.ArgumentParser(prog="moesim")
        sub = parser.add_subparsers()
        importlib.import_module(module).add_parser(sub)
        assert list(sub.choices) == [name]
        assert [a.help for a in sub._choices_actions] == [help_line]


@pytest.mark.parametrize("argv", [["bogus"], [], ["list", "bogus"], ["run", "--bogus"],
                                  ["trace"], ["run", "--help"], ["--help"]])
def test_errors_and_exits_match_the_eager_parser(argv: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    results = []
    for parser in (build_parser(), _eager_parser()):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        results.append((exc.value.code, capsys.readouterr()))
    assert results[0] == results[1]
    if argv == ["bogus"]:
        assert "invalid choice: 'bogus' (choose from 'run', 'serve'" in results[0][1].err


def test_parsed_arguments_match_the_eager_parser() -> None:
    argv = ["run", "--placement", "EP4", "--batch", "8", "--json", "-", "--quiet"]
    lazy, eager = vars(build_parser().parse_args(argv)), vars(_eager_parser().parse_args(argv))
    assert lazy.pop("handler") is eager.pop("handler")
    assert lazy == eager


def test_version_through_main_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("moesim ")


def test_run_imports_what_the_work_needs_and_nothing_else(tmp_path: Path) -> None:
    """`moesim run` of the bundled scenario: no other command, no calibration, no plotting."""
    out = tmp_path / "r.json"
    rc, _, modules = _modules_after(["run", "scenarios/mixtral-8x7b-ep8.yaml", "--json",
                                     str(out), "--quiet"])
    assert rc == 0 and json.loads(out.read_text())["a2a_bytes"] > 0
    cli = {m for m in modules if m.startswith("moesim.cli.")}
    assert cli <= {"moesim.cli.commands", "moesim.cli.run", "moesim.cli.flags",
                   "moesim.cli.outputs", "moesim.cli.numbers"}
    assert [m for m in modules if m.startswith(("moesim.calibrate", "matplotlib", "torch",
                                                "moesim.output.plots", "moesim.serve"))] == []


def test_no_module_imports_matplotlib_until_a_plot_is_drawn() -> None:
    """Every command and output module imports without matplotlib: plots import it inside
    the drawing functions."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import moesim.cli, moesim.output\n"
        "for package in (moesim.cli, moesim.output):\n"
        "    for info in pkgutil.iter_modules(package.__path__):\n"
        "        importlib.import_module(f'{package.__name__}.{info.name}')\n"
        "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'torch'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"


def test_collective_choices_are_the_engines() -> None:
    """`moesim collective --op` lists its choices without the engine: the same list."""
    from moesim.cli.collective import OPS
    from moesim.engine.collective_model import OPS as ENGINE_OPS

    assert OPS == ENGINE_OPS and "alltoall" in OPS
