"""Output flags checked before any work: every command's output paths are refused up front,
naming the flag and the fix, when the result could not be written there afterwards.

`check_outputs(args)` runs once in `moesim.cli.main` on the parsed arguments of every command.
It looks at the dests in `OUTPUT_FLAGS` (a file or, for `--plot`, a folder): a file path must not
be a folder, nor an existing read-only file, nor lie under a regular file or in a folder that
cannot be written; a missing folder is fine where it can be created (the writers create it),
except for trace outputs, whose folder must exist. '-' (stdout) stays allowed for file flags.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from moesim.errors import ConfigError

__all__ = ["OutputFlag", "OUTPUT_FLAGS", "TRACE_OUTPUT", "check_output", "check_outputs",
           "rescue_output"]


@dataclass(frozen=True)
class OutputFlag:
    """How one output dest is checked: its flag as the user types it, folder or file, the
    suffixes its writer needs and whether its folder must already exist."""

    flag: str
    directory: bool = False
    suffixes: tuple[str, ...] = ()
    folder_must_exist: bool = False


# dest on the parsed arguments -> its check. A dest of the same name that is not a path (the
# `--json` switch of collective and kernel) is skipped: only str and Path values are checked.
OUTPUT_FLAGS: dict[str, OutputFlag] = {
    "json": OutputFlag("--json"),
    "json_out": OutputFlag("--json"),
    "output": OutputFlag("-o/--output"),
    "out": OutputFlag("-o/--out"),
    "html": OutputFlag("--html"),
    "bench_json": OutputFlag("--bench-json"),
    "requests_out": OutputFlag("--requests-out", suffixes=(".csv", ".parquet")),
    "plot": OutputFlag("--plot", directory=True),
}
# A trace is written exactly where -o says: numpy would append .npz to any other name (trace
# capture alone takes a bare name and says it wrote NAME.npz), and the folder must exist.
TRACE_OUTPUT = OutputFlag("-o/--output", suffixes=(".npz",), folder_must_exist=True)
# (command, dest) -> its check where a command needs more than the dest's default; the command
# is the group and its subcommand ("trace capture") or the group alone.
_COMMAND_FLAGS: dict[tuple[str, str], OutputFlag] = {
    ("sweep", "out"): OutputFlag("-o/--out", suffixes=(".csv", ".parquet")),
    ("trace", "output"): TRACE_OUTPUT,
    ("trace capture", "output"): OutputFlag("-o/--output", suffixes=(".npz", ""),
                                            folder_must_exist=True),
}


def check_outputs(args: argparse.Namespace) -> None:
    """`check_output` for every output flag a command was given (ConfigError on the first bad
    one)."""
    command = str(getattr(args, "command", "") or "")
    sub = f"{command} {getattr(args, f'{command}_command', '')}"
    for dest, default in OUTPUT_FLAGS.items():
        value = getattr(args, dest, None)
        if isinstance(value, (str, Path)):
            spec = _COMMAND_FLAGS.get((sub, dest)) or _COMMAND_FLAGS.get((command, dest), default)
            check_output(value, spec.flag, directory=spec.directory, suffixes=spec.suffixes,
                         folder_must_exist=spec.folder_must_exist)


def check_output(path: str | Path, flag: str, *, directory: bool = False,
                 suffixes: tuple[str, ...] = (), folder_must_exist: bool = False) -> None:
    """Raise ConfigError naming `flag` unless a result can be written at `path` (a file, or a
    folder of files with `directory`); see the module doc. '-' passes for files (stdout)."""
    text = str(path)
    if text == "-" and not directory and not suffixes:
        return
    if not text.strip():
        raise ConfigError(f"{flag} is empty; give a {'folder' if directory else 'file'} path")
    target = Path(text)
    if suffixes and target.suffix not in suffixes:
        ends = " or ".join(s for s in suffixes if s)
        raise ConfigError(f"{flag} {text}: give a path ending in {ends}")
    if directory:
        if target.exists() and not target.is_dir():
            raise ConfigError(f"{flag} {text} is a file; give a folder (created if missing)")
        if target.is_dir():
            _check_writable(target, flag, text)
            return
    elif target.is_dir():
        raise ConfigError(f"{flag} {text} is a folder; give a file path such as "
                          f"{target / _example_name(flag, suffixes)}")
    elif target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"{flag} {text} is a read-only file; make it writable or give "
                          "another path")
    folder = target.parent
    ancestor = folder  # the nearest folder that exists: the writers create those below it
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{flag} {text} lies under {ancestor}, which is a file, not a "
                          "folder; give a path in a folder")
    if folder_must_exist and ancestor != folder:
        raise ConfigError(f"{flag} {text}: folder {folder} does not exist; create it first "
                          "or give a path in an existing folder")
    _check_writable(ancestor, flag, text)


def _check_writable(folder: Path, flag: str, text: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {text}: cannot write in folder {folder} (permission "
                          "denied); give a path in a writable folder")


def _example_name(flag: str, suffixes: tuple[str, ...]) -> str:
    """A file name to suggest inside a folder given for `flag`."""
    if suffixes and suffixes[0]:
        return f"result{suffixes[0]}"
    return "report.html" if "html" in flag else "result.json"


def rescue_output(data: str | bytes, path: str | Path, error: OSError) -> ConfigError:
    """After the work, `path` could not be written: save `data` in the temporary folder (else
    print it to stdout) and return the error that says where it went, to raise."""
    name = Path(str(path)).name or "output"
    reason = error.strerror or str(error)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        handle, saved = tempfile.mkstemp(prefix=f"moesim-{name}.", suffix=".rescued")
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
    except OSError:
        if isinstance(data, str):
            sys.stdout.write(data if data.endswith("\n") else data + "\n")
            return ConfigError(f"cannot write {path} ({reason}); the result was printed above "
                               "instead")
        return ConfigError(f"cannot write {path} ({reason}); the result is lost")
    return ConfigError(f"cannot write {path} ({reason}); the result was saved to {saved}: "
                       "move it where you want it")
