"""nccl-tests logs: the text tables `all_reduce_perf`, `alltoall_perf`, ... print, as numbers.

A log holds one or more *sections*, one per test binary run. A section starts at
`# Collective test starting: <name>_perf` (nccl-tests >= 2.14; older logs have no such line,
and the test name then comes from the command echoed in the file or the file name). Header
lines start with `#`; the `#  Rank  r ... device ...` lines give the number of ranks. Each
result row is

    size count type [redop] [root] time algbw busbw #wrong time algbw busbw #wrong

with the out-of-place columns first and the in-place ones after. `redop` and `root` are
absent in old versions (and `redop` is blank for alltoall in some), and `#wrong` was once an
`error` column: rows are read from the right, 8 numbers after `size count type`, so every
variant parses. Times are microseconds in the file and seconds here; sizes are bytes as
nccl-tests counts them (see `moesim collective`). Lines that are neither `#` headers nor rows
(NCCL INFO output, job-scheduler chatter) are skipped; a row that starts like one but does not
parse is a `ConfigError` naming the file and line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from moesim.errors import ConfigError

__all__ = ["TEST_OPS", "NcclTestsRow", "NcclTestsSection", "parse_nccl_tests", "read_nccl_tests"]

# nccl-tests binary -> moesim collective name (the ops `moesim collective` predicts)
TEST_OPS = {
    "all_reduce": "allreduce",
    "alltoall": "alltoall",
    "all_gather": "allgather",
    "reduce_scatter": "reducescatter",
}

_START_RE = re.compile(r"Collective test starting:\s*(\w+?)(?:_perf\w*)?\s*$")
_BINARY_RE = re.compile(
    r"\b(all_reduce|alltoall|all_gather|reduce_scatter|sendrecv|broadcast|reduce|gather|"
    r"scatter|hypercube)_perf"
)
_RANK_RE = re.compile(r"^#\s+Rank\s+\d+\s")
_NGPUS_RE = re.compile(r"\bnGpus\s+(\d+)")
_GPUS_NOTE_RE = re.compile(r"^#.*\bGPUs:\s*(\d+)\b")
# `# MOESIM: algorithm=ring gpus=8`: what a run forced (NCCL_ALGO) and its true rank count,
# for logs whose text cannot say (interleaved hosts, no Rank lines).
_MOESIM_RE = re.compile(r"^#\s*MOESIM:\s*(.*)$")
_ROW_START_RE = re.compile(r"^\s*\d+\s+\d+\s+[A-Za-z]")
_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_US = 1e-6
# Largest buffer a row may report: 1 PiB, ~5000x any GPU's memory (nccl-tests runs reach
# 16-64 GiB); a larger size is a corrupted line.
MAX_ROW_BYTES = 2**50


@dataclass(frozen=True)
class NcclTestsRow:
    """One result row: bytes, dtype, and the out-of-place / in-place time and bandwidths."""

    size_bytes: int
    count: int
    dtype: str
    time_s: float  # out-of-place
    algbw_bytes_per_s: float
    busbw_bytes_per_s: float
    inplace_time_s: float | None
    inplace_algbw_bytes_per_s: float | None
    inplace_busbw_bytes_per_s: float | None
    line: int  # 1-based line in the file


@dataclass
class NcclTestsSection:
    """One test run in a log: the test name, its moesim op (None if unsupported), ranks, rows."""

    test: str | None  # e.g. "all_reduce", "alltoall"
    num_ranks: int
    rows: list[NcclTestsRow] = field(default_factory=list)
    source: str = ""
    line: int = 1  # where the section starts
    gpus_per_thread: int = 1  # the header's `nGpus G`: one thread launches G GPUs in turn
    algorithm: str = "auto"  # forced by the run (a `# MOESIM: algorithm=ring` line)

    @property
    def op(self) -> str | None:
        """moesim's name of the collective (`allreduce`, ...), None for other tests."""
        return TEST_OPS.get(self.test or "")


def read_nccl_tests(path: str | Path) -> list[NcclTestsSection]:
    """Parse an nccl-tests log file into its sections (ConfigError if unreadable or empty)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"nccl-tests log {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    return parse_nccl_tests(text, source=str(path))


def parse_nccl_tests(text: str, source: str = "nccl-tests log") -> list[NcclTestsSection]:
    """Parse nccl-tests output text; sections without rows are dropped."""
    default_test = _test_from_text(Path(source).name) or _test_from_text(text)
    sections: list[NcclTestsSection] = []
    current = NcclTestsSection(default_test, 0, source=source)
    declared = 0  # a '# ... GPUs: N' note: the rank count of a log that lists no ranks
    algorithm = "auto"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            started = _START_RE.search(line)
            gpus = _NGPUS_RE.search(line)
            note = _GPUS_NOTE_RE.match(line)
            if started:
                sections.append(current)
                current = NcclTestsSection(started[1], 0, source=source, line=number,
                                           gpus_per_thread=current.gpus_per_thread)
            elif _RANK_RE.match(line):
                current.num_ranks += 1
            if gpus:
                current.gpus_per_thread = int(gpus[1])
            if note:
                declared = int(note[1])
            marker = _MOESIM_RE.match(line)
            if marker:
                settings = dict(item.split("=", 1) for item in marker[1].split() if "=" in item)
                if "gpus" in settings and settings["gpus"].isdigit():
                    declared = int(settings["gpus"])
                if "algorithm" in settings:
                    algorithm = settings["algorithm"]
                    if algorithm not in ("auto", "ring", "tree", "nvls"):
                        raise ConfigError(
                            f"{source}: line {number}: `# MOESIM: algorithm={algorithm}`; "
                            "give auto, ring, tree or nvls (what the run forced)")
        elif _ROW_START_RE.match(line) and "NCCL" not in line:
            current.rows.append(_parse_row(line, number, source))
    sections.append(current)
    for section in sections:
        section.num_ranks = declared or section.num_ranks
        section.algorithm = algorithm
    found = [s for s in sections if s.rows]
    if not found:
        raise ConfigError(
            f"{source}: no nccl-tests result rows found (expected lines like "
            "'size count type redop root time algbw busbw #wrong ...'); "
            "pass the output of all_reduce_perf / alltoall_perf / ..."
        )
    return found


def _test_from_text(text: str) -> str | None:
    match = _BINARY_RE.search(text)
    return match[1] if match else None


def _parse_row(line: str, number: int, source: str) -> NcclTestsRow:
    tokens = line.split()
    values = tokens[-8:] if len(tokens) >= 11 else []
    numbers = [_number(v) for v in values]
    if (
        len(tokens) > 13
        or not values
        or any(numbers[i] is None for i in (0, 1, 2))
        or not _NUMBER_RE.match(tokens[0])
        or not tokens[1].isdigit()
    ):
        raise ConfigError(
            f"{source}: line {number}: cannot read this nccl-tests row: '{line}'; expected "
            "'size count type [redop] [root]' then out-of-place and in-place "
            "'time algbw busbw #wrong'; fix or delete the line"
        )
    _check_row_values(tokens, numbers, line, number, source)
    has_inplace = numbers[4] is not None and numbers[4] > 0
    return NcclTestsRow(
        size_bytes=int(tokens[0]),
        count=int(tokens[1]),
        dtype=tokens[2],
        time_s=numbers[0] * _US,  # type: ignore[operator]
        algbw_bytes_per_s=numbers[1] * 1e9,  # type: ignore[operator]
        busbw_bytes_per_s=numbers[2] * 1e9,  # type: ignore[operator]
        inplace_time_s=numbers[4] * _US if has_inplace else None,  # type: ignore[operator]
        inplace_algbw_bytes_per_s=_scaled(numbers[5], 1e9) if has_inplace else None,
        inplace_busbw_bytes_per_s=_scaled(numbers[6], 1e9) if has_inplace else None,
        line=number,
    )


def _check_row_values(tokens: list[str], numbers: list[float | None], line: str, number: int,
                      source: str) -> None:
    """Refuse a row no nccl-tests run prints: a size above MAX_ROW_BYTES, a time that is not
    finite and positive, a bandwidth that is not finite and >= 0 (nccl-tests rounds small ones
    to 0.00), in either the out-of-place or the in-place columns."""
    problem = ""
    if int(tokens[0]) > MAX_ROW_BYTES:
        problem = f"size {tokens[0]} bytes is above the {MAX_ROW_BYTES} (1 PiB) a buffer may have"
    for start, columns in ((0, "out-of-place"), (4, "in-place")):
        time_us, algbw, busbw = numbers[start:start + 3]
        if problem or (start == 4 and time_us is None):  # in-place columns may be N/A
            continue
        if time_us is None or not (math.isfinite(time_us) and time_us > 0):
            problem = f"{columns} time {_values_of(tokens, start)} us must be a finite number > 0"
        elif any(bw is None or not (math.isfinite(bw) and bw >= 0) for bw in (algbw, busbw)):
            problem = (f"{columns} bandwidths {_values_of(tokens, start + 1)} and "
                       f"{_values_of(tokens, start + 2)} GB/s must be finite numbers >= 0")
    if problem:
        raise ConfigError(f"{source}: line {number}: {problem}: '{line}'; nccl-tests never "
                          "prints this, fix or delete the line")


def _values_of(tokens: list[str], index: int) -> str:
    """The text of value column `index` (0: out-of-place time) of a row's last 8 columns."""
    return tokens[-8:][index]


def _number(token: str) -> float | None:
    return float(token) if _NUMBER_RE.match(token) else None


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale
