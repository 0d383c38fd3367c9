"""Helpers of `tests/test_fuzz_cli.py`: run one bad input through `moesim.cli.main`, judge it.

The project rule under test: every bad input to every CLI entry point gives exit status 2 and
exactly one stderr line starting `moesim: error:` (an argparse usage error may instead print its
usage block and one `moesim <cmd>: error:` line), never a traceback, never a hang, and never a
silent wrong answer (exit 0 with NaN/Infinity in what it prints or writes).

`run_cli` calls `main(argv)` in-process under a per-case alarm; `judge` turns the outcome into
`None` (the rule holds) or a one-line symptom naming what went wrong and where (the exception's
type and its last frame's file:line, and the deepest frame inside moesim/ or validate/).
Every judged case is appended to `RESULTS`; set `MOESIM_FUZZ_REPORT=FILE.json` to have
`tests/test_fuzz_cli.py` write them all (passes and failures) when its module finishes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import signal
import time
import traceback
import warnings
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "bad_inputs"
CASE_TIMEOUT_S = 20.0

# What to expect of an input: "error" (it is bad: exit 2 and one line) or "either" (odd but
# arguably valid: exit 2 and one line, or exit 0 with finite output). Corpus files whose name
# starts with `odd_` are "either".
ERROR, EITHER = "error", "either"

RESULTS: list[dict[str, Any]] = []
TRIED: Counter[str] = Counter()


class CaseTimeout(BaseException):  # noqa: N818 - a BaseException so `except Exception` can't eat it
    """Raised by the alarm when a case runs past its limit."""


class WouldSpawn(BaseException):  # noqa: N818
    """Raised in place of starting rank processes or microbenchmarks (the input got that far)."""


@dataclass
class Outcome:
    """What one call of `main` did."""

    code: int | None
    out: str
    err: str
    exc_type: str | None = None
    exc_msg: str = ""
    last_frame: str = ""
    repo_frame: str = ""
    hang: bool = False
    spawned: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def expectation(name: str) -> str:
    """`either` for corpus names starting `odd_`, else `error`."""
    return EITHER if Path(name).name.startswith("odd_") else ERROR


def _where(frame: traceback.FrameSummary) -> str:
    """`path:line` relative to the repository (or after site-packages/ for libraries)."""
    path = Path(frame.filename)
    try:
        text = str(path.resolve().relative_to(ROOT))
    except ValueError:
        text = str(path)
        if "site-packages/" in text:
            text = text.split("site-packages/", 1)[1]
    return f"{text}:{frame.lineno}"


def _repo_frame(frames: list[traceback.FrameSummary]) -> str:
    """The deepest frame inside moesim/ or validate/."""
    roots = (ROOT / "moesim", ROOT / "validate")
    for frame in reversed(frames):
        path = Path(frame.filename).resolve()
        if any(root in path.parents for root in roots):
            return _where(frame)
    return ""


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str],
            timeout_s: float = CASE_TIMEOUT_S) -> Outcome:
    """`moesim.cli.main(argv)` in-process with its output captured and an alarm at `timeout_s`."""
    from moesim.cli import main

    _reset_caches()
    capsys.readouterr()
    outcome = Outcome(code=None, out="", err="")

    def on_alarm(signum: int, frame: Any) -> None:
        raise CaseTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome.code = main(argv)
            finally:
                outcome.warnings = sorted({f"{w.category.__name__}: {w.message}"[:160]
                                           for w in caught})
    except SystemExit as exc:
        outcome.code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CaseTimeout as exc:
        outcome.hang = True
        frames = traceback.extract_tb(exc.__traceback__)
        outcome.last_frame = _where(frames[-2]) if len(frames) > 1 else ""
        outcome.repo_frame = _repo_frame(frames)
    except WouldSpawn as exc:
        outcome.spawned = str(exc)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every escape is a finding
        frames = traceback.extract_tb(exc.__traceback__)
        outcome.exc_type = type(exc).__name__
        outcome.exc_msg = " ".join(str(exc).split())[:200]
        outcome.last_frame = _where(frames[-1]) if frames else ""
        outcome.repo_frame = _repo_frame(frames)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    outcome.seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    outcome.out, outcome.err = captured.out, captured.err
    return outcome


def _reset_caches() -> None:
    """Forget what earlier cases loaded (caches keyed by file name would hide a new file)."""
    try:
        from moesim.inputs import kernel_profile

        kernel_profile._CACHE.clear()
    except (ImportError, AttributeError):
        pass
    try:
        from moesim.planning import sweep_point

        sweep_point._CACHE = None
    except (ImportError, AttributeError):
        pass


# ---- judging ---------------------------------------------------------------------------------

_ARGPARSE_ERROR = re.compile(r"^moesim(?: [\w-]+)*: error: ")
_NONFINITE_WORD = re.compile(r"(?<![\w.])[-+]?(?:nan|inf|infinity)(?![\w])", re.IGNORECASE)


def stderr_problem(err: str) -> str | None:
    """None when stderr is one `moesim: error:` line (or an argparse usage block and one
    `moesim <cmd>: error:` line); else what is wrong with it."""
    # Lines as a terminal shows them (str.splitlines would also split on \x1c-\x1e, \x85 and
    # \u2028, which a message quoting the user's bad input may legitimately hold).
    lines = [line for line in re.split(r"\r\n|\r|\n", err.strip()) if line.strip()]
    if not lines:
        return "exit 2 with nothing on stderr"
    if len(lines) == 1 and lines[0].startswith("moesim: error:"):
        return None
    errors = [line for line in lines if ": error:" in line]
    usage = lines[0].startswith("usage: ")
    if usage and len(errors) == 1 and _ARGPARSE_ERROR.match(lines[-1]):
        return None
    shown = " | ".join(line[:100] for line in lines[:3])
    return f"exit 2 but stderr is {len(lines)} lines, not one 'moesim: error:' line: {shown}"


def _walk_nonfinite(value: Any, path: str = "") -> list[str]:
    """Paths of NaN/Infinity floats inside parsed JSON/YAML."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{path or '(top)'}={value}"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _walk_nonfinite(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _walk_nonfinite(v, f"{path}[{i}]")]
    return []


def nonfinite_in_text(text: str, label: str) -> list[str]:
    """NaN/Infinity in a command's text output: parsed when it is JSON, else by word."""
    stripped = text.strip()
    if not stripped:
        return []
    if stripped[0] in "[{":
        try:
            return [f"{label}{p}" for p in _walk_nonfinite(json.loads(stripped))]
        except json.JSONDecodeError:
            pass
    found = sorted({m.group(0) for m in _NONFINITE_WORD.finditer(text)})
    return [f"{label} prints {word!r}" for word in found]


def nonfinite_in_file(path: Path) -> list[str]:
    """NaN/Infinity (or an unreadable result) in a file a command wrote."""
    label = path.name
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return [f"{label}{p}" for p in _walk_nonfinite(json.loads(path.read_text()))]
        if suffix in (".yaml", ".yml"):
            return [f"{label}{p}" for p in _walk_nonfinite(yaml.safe_load(path.read_text()))]
        if suffix == ".csv":
            cells = [c for row in csv.reader(io.StringIO(path.read_text())) for c in row]
            bad = sorted({c for c in cells if _NONFINITE_WORD.fullmatch(c.strip())})
            return [f"{label} holds {c!r}" for c in bad]
        if suffix == ".npz":
            from moesim.errors import TraceError
            from moesim.trace.format import load_trace

            try:
                load_trace(path)
            except TraceError as exc:
                return [f"{label} written but unreadable: {exc}"]
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
        return [f"{label} unreadable: {type(exc).__name__}"]
    return []


def judge(outcome: Outcome, expect: str, outputs: list[Path],
          verdict_exit: int | None = None) -> str | None:
    """None when the outcome keeps the rule; else a one-line symptom. `verdict_exit`: an exit
    status the command documents as a verdict on valid input (plan: 1 when no candidate meets
    the SLO), allowed for odd inputs."""
    if outcome.hang:
        where = outcome.repo_frame or outcome.last_frame
        return f"hang: no answer within {CASE_TIMEOUT_S:.0f} s (was at {where})"
    if outcome.spawned:
        if expect == EITHER:  # an odd but valid input may go on to run
            return None
        return f"bad input accepted: got as far as {outcome.spawned}"
    if outcome.exc_type:
        where = outcome.last_frame
        if outcome.repo_frame and outcome.repo_frame != where:
            where += f" (moesim frame {outcome.repo_frame})"
        return f"traceback {outcome.exc_type}: {outcome.exc_msg} at {where}"
    if "Traceback" in outcome.err:
        return "a traceback printed on stderr"
    if outcome.code == 2:
        return stderr_problem(outcome.err)
    if outcome.code == 0 or (outcome.code == verdict_exit and expect == EITHER):
        garbage = nonfinite_in_text(outcome.out, "stdout")
        for path in outputs:
            if path.is_file():
                garbage += nonfinite_in_file(path)
        if expect == ERROR:
            tail = f"; output holds {', '.join(garbage[:3])}" if garbage else ""
            return f"exit 0 on bad input (silently accepted){tail}"
        if garbage:
            return f"exit {outcome.code} with non-finite output: {', '.join(garbage[:3])}"
        return None
    first = outcome.err.strip().splitlines()[:1]
    return f"exit {outcome.code} (not 2): {first[0][:120] if first else 'nothing on stderr'}"


def record(command: str, case: str, argv: list[str], expect: str, outcome: Outcome,
           symptom: str | None) -> None:
    """Remember one judged case for the summary and the optional JSON report."""
    TRIED[command] += 1
    RESULTS.append({"command": command, "case": case, "expect": expect, "symptom": symptom,
                    "argv": argv, **{k: v for k, v in asdict(outcome).items()
                                     if k not in ("out", "err")},
                    "stderr": outcome.err[-300:]})


def summary() -> str:
    """Cases tried and failed per command, as lines."""
    failed = Counter(r["command"] for r in RESULTS if r["symptom"])
    lines = [f"{'command':24} {'tried':>6} {'failed':>6}"]
    for command in sorted(TRIED):
        lines.append(f"{command:24} {TRIED[command]:>6} {failed[command]:>6}")
    lines.append(f"{'total':24} {sum(TRIED.values()):>6} {sum(failed.values()):>6}")
    return "\n".join(lines)


# ---- generated bad files (binary ones stay out of git) -----------------------------------------

def odd_bytes() -> dict[str, bytes]:
    """Byte-level defects any text input can have, by name."""
    rng = np.random.default_rng(15)
    return {
        "binary_bytes": bytes(rng.integers(0, 256, 512, dtype=np.uint8)),
        "nul_bytes": b"model: mix\x00tral\x00\x01\x02\n",
        "non_utf8": "model: mixtral-8x7b\nname: caf\xe9 \xff\xfe\n".encode("latin-1"),
        "utf16": "model: mixtral-8x7b\n".encode("utf-16"),
    }


def deep_list(key: str, depth: int = 5000) -> str:
    """`key: [[[...]]]` nested `depth` deep (flow style)."""
    return f"{key}: " + "[" * depth + "]" * depth + "\n"


def deep_mapping(key: str, depth: int = 3000) -> str:
    """`key: {a: {a: ...}}` nested `depth` deep (flow style)."""
    return f"{key}: " + "{a: " * depth + "1" + "}" * depth + "\n"


def digits(count: int = 5000) -> str:
    """A `count`-digit integer."""
    return "9" * count


def tiny_zip() -> bytes:
    """A valid zip archive holding one text file and no arrays."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("readme.txt", "no arrays here")
    return buf.getvalue()


# ---- the report for fixers ---------------------------------------------------------------------

def _kind(symptom: str) -> str:
    """The class of a symptom, for grouping."""
    for prefix, kind in (("traceback", "traceback"), ("hang", "hang"),
                         ("exit 0 on bad input", "exit 0 on bad input"),
                         ("bad input accepted", "reached process start"),
                         ("exit 2 but stderr", "stderr not one line")):
        if symptom.startswith(prefix):
            return kind
    if "non-finite output" in symptom:
        return "exit 0 with non-finite output"
    return "wrong exit status"


def _group_key(result: dict[str, Any]) -> str:
    """Failures with one cause share a key: a traceback's type and place, else the symptom."""
    if result["exc_type"]:
        return f"{result['exc_type']} at {result['repo_frame'] or result['last_frame']}"
    if result["hang"]:
        return "hang"
    symptom = re.sub(r"/tmp/\S+", "<tmp>", result["symptom"])
    return re.sub(r"\d[\d.]*(?:it/s|%)", "#", symptom)


def format_report(results: list[dict[str, Any]]) -> str:
    """Failures grouped by command, by what went wrong, and by cause (the inputs that fail the
    same way are listed together)."""
    lines = []
    failed = [r for r in results if r["symptom"]]
    for command in sorted({r["command"] for r in failed}):
        mine = [r for r in failed if r["command"] == command]
        tried = sum(r["command"] == command for r in results)
        lines.append(f"## {command} ({len(mine)} failing of {tried})")
        for kind in sorted({_kind(r["symptom"]) for r in mine}):
            lines.append(f"### {kind}")
            groups: dict[str, list[dict[str, Any]]] = {}
            for r in sorted(mine, key=lambda r: r["case"]):
                if _kind(r["symptom"]) == kind:
                    groups.setdefault(_group_key(r), []).append(r)
            for members in groups.values():
                first = members[0]
                symptom = re.sub(r"/tmp/\S+", "<tmp>", first["symptom"])[:260]
                cases = sorted({r["case"][:90] for r in members})
                lines.append(f"- {', '.join(cases)}\n    -> {symptom}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.fuzz_helpers REPORT.json
    import sys

    print(format_report(json.loads(Path(sys.argv[1]).read_text())))
