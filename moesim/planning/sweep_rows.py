"""Sweep rows on disk: CSV cells, append-and-flush logs for resuming, parquet at the end, and
the lock that keeps two sweeps off one output.

Rows are appended whole lines at a time and flushed; a sweep killed mid-write (kill -9) can leave
one last record cut short. Such a record is never read as a row (`read_rows` reads whole lines
only) and is cut off the file before appending resumes (`repair_log`), so the point is recomputed.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from moesim.errors import ConfigError
from moesim.output.files import write_atomic_with

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the lock falls back to the pid alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["ROW_COLUMNS", "format_cell", "parse_row", "read_rows", "RowLog", "RowStore",
           "SweepLock", "parquet_module", "complete_length", "repair_log"]

ROW_COLUMNS = (
    "key",
    "model",
    "trace",
    "topology",
    "placement",
    "world",
    "batch",
    "context",
    "phase",
    "fidelity",
    "act_dtype",
    "weight_dtype",
    "dedup",
    "sp_variant",
    "feasible",
    "reason",
    "ttft_s",
    "tpot_s",
    "tokens_per_s",
    "tokens_per_s_per_gpu",
    "a2a_bytes",
    "expert_imbalance_max",
    "rank_imbalance_max",
    "memory_total_bytes",
    "memory_headroom_bytes",
    "gpu_price_per_hour_usd",
    "usd_per_hour",
    "usd_per_million_tokens",
    # served figures (a grid with `fixed.serve`); empty otherwise
    "served_ttft_p50_s",
    "served_ttft_p90_s",
    "served_ttft_p99_s",
    "served_tpot_p50_s",
    "served_tpot_p90_s",
    "served_tpot_p99_s",
    "served_request_throughput_per_s",
    "served_output_tokens_per_s_per_gpu",
    "served_goodput_per_s",
    "served_preemptions",
    "served_usd_per_million_tokens",
    "served_reason",
)
# Columns of sweeps written before the served figures: such an output still resumes (its rows
# read with empty served cells, and the file is rewritten with today's header before appending).
_FIRST_COLUMNS = ROW_COLUMNS[: ROW_COLUMNS.index("served_ttft_p50_s")]


# ---- rows on disk ---------------------------------------------------------------------------

_INT_COLUMNS = frozenset(
    {"world", "batch", "context", "a2a_bytes", "memory_total_bytes", "memory_headroom_bytes",
     "served_preemptions"}
)
_FLOAT_COLUMNS = frozenset(
    {
        "ttft_s",
        "tpot_s",
        "tokens_per_s",
        "tokens_per_s_per_gpu",
        "expert_imbalance_max",
        "rank_imbalance_max",
        "gpu_price_per_hour_usd",
        "usd_per_hour",
        "usd_per_million_tokens",
        *(name for name in ROW_COLUMNS
          if name.startswith("served_") and name not in ("served_preemptions", "served_reason")),
    }
)


def format_cell(value: Any) -> str:
    """A row value as CSV text: None empty, booleans true/false, floats round-tripping."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_row(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row back to typed values (empty cells become None)."""
    typed: dict[str, Any] = {}
    for name, text in row.items():
        if text is None or text == "":
            typed[name] = None
        elif name == "feasible":
            typed[name] = text == "true"
        elif name in _INT_COLUMNS:
            typed[name] = int(text)
        elif name in _FLOAT_COLUMNS:
            typed[name] = float(text)
        else:
            typed[name] = text
    return typed


def complete_length(data: bytes) -> int:
    """Bytes of CSV `data` that hold whole records: up to the last line end outside quotes
    (a quoted cell may span lines; the quotes before a record's end are even in number)."""
    quotes = data.count(b'"')
    end = len(data)
    while True:
        newline = data.rfind(b"\n", 0, end)
        if newline < 0:
            return 0
        quotes -= data.count(b'"', newline + 1, end)
        if quotes % 2 == 0:
            return newline + 1
        end = newline


def repair_log(path: Path) -> str | None:
    """Cut a record left unfinished by an interruption off the end of the CSV at `path`; the
    note to show when one was cut (None when the file was whole)."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    keep = complete_length(data)
    if keep == len(data):
        return None
    with path.open("r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return (f"dropped an unfinished last row of {path} ({len(data) - keep} bytes, cut short "
            "when a sweep was interrupted); its point is computed again")


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Complete rows of a sweep CSV or parquet file, as text; [] when it does not exist."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return []
    if path.suffix == ".parquet":
        table = parquet_module().read_table(path).to_pylist()
        return [{name: format_cell(row.get(name)) for name in ROW_COLUMNS} for row in table]
    data = path.read_bytes()
    text = data[: complete_length(data)].decode("utf-8", errors="replace")
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        header = tuple(reader.fieldnames or ())
        if reader.fieldnames is not None and header not in (ROW_COLUMNS, _FIRST_COLUMNS):
            raise ConfigError(
                f"{path} holds rows with other columns than a moesim sweep writes; "
                "give a new output file or delete this one"
            )
        # a row cut short by an interruption has None cells: it is recomputed
        rows = [row for row in reader if None not in row.values() and row.get("key")]
    return [{**dict.fromkeys(ROW_COLUMNS, ""), **row} for row in rows]


def _upgrade_header(path: Path) -> None:
    """Rewrite an output written before the served columns with today's header."""
    with path.open(newline="", encoding="utf-8") as handle:
        header = tuple(next(csv.reader(handle), ()))
    if header != _FIRST_COLUMNS:
        return
    _write_csv(path, read_rows(path))


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    """Rows under today's header, replacing `path` whole (temporary file and rename)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=ROW_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    write_atomic_with(path, write)


def parquet_module() -> Any:
    """pyarrow.parquet, or a ConfigError saying how to get it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "writing or reading .parquet needs pyarrow (pip install pyarrow); "
            "or give an output ending in .csv"
        ) from None
    return pq


class RowLog:
    """Append-only CSV: the header once, then one flushed line per completed row."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_log(path)  # never append after a record cut short by an interruption
        fresh = not path.is_file() or path.stat().st_size == 0
        if not fresh:
            _upgrade_header(path)
        self.handle = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=ROW_COLUMNS)
        if fresh:
            self.writer.writeheader()

    def append(self, rows: list[dict[str, str]]) -> None:
        """Write rows and flush them to disk."""
        self.writer.writerows(rows)
        self.handle.flush()

    def close(self) -> None:
        """Close the file."""
        self.handle.close()


class RowStore:
    """Where rows live: OUT.csv itself, or OUT.parquet plus a CSV journal beside it."""

    def __init__(self, out: Path) -> None:
        if out.suffix not in (".csv", ".parquet"):
            raise ConfigError(f"output {out} must end in .csv or .parquet")
        self.out = out
        self.parquet = out.suffix == ".parquet"
        if self.parquet:
            parquet_module()
        self.log_path = Path(f"{out}.partial.csv") if self.parquet else out

    def rows(self) -> list[dict[str, str]]:
        """Rows already on disk, first occurrence of each key."""
        rows = read_rows(self.out) if self.parquet else []
        rows += read_rows(self.log_path)
        unique: dict[str, dict[str, str]] = {}
        for row in rows:
            unique.setdefault(row["key"], row)
        return list(unique.values())

    def finalize(self, keys: list[str]) -> None:
        """Rewrite the output in grid order (rows of other grids kept after them)."""
        rows = self.rows()
        order = {key: i for i, key in enumerate(keys)}
        rows.sort(key=lambda row: order.get(row["key"], len(order)))
        if self.parquet:
            typed = [parse_row(row) for row in rows]
            table = _pyarrow_table(typed)
            parquet = parquet_module()
            write_atomic_with(self.out, lambda tmp: parquet.write_table(table, tmp))
            self.log_path.unlink(missing_ok=True)
            return
        _write_csv(self.out, rows)


class SweepLock:
    """`OUT.lock` beside a sweep's output, holding the pid of the sweep that writes it.

    A second sweep on the same output is refused (ConfigError naming the holder). The lock is an
    advisory `flock` the kernel drops when its holder dies, so the file of a sweep that was
    killed is stale: the next sweep takes it over and says so (`acquire` returns the note).
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = Path(f"{out}.lock")
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock or raise ConfigError; a note when a dead sweep's lock was taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_pid(fd)
                    os.close(fd)
                    raise self._busy(holder) from None
                except OSError:
                    os.close(fd)
                    raise
            try:  # the holder may have removed the file between our open and flock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_pid(fd)
        if fcntl is None and previous not in (None, os.getpid()) and _alive(previous):
            os.close(fd)
            raise self._busy(previous)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        if previous is None or previous == os.getpid():
            return None
        return (f"took over the lock {self.path} of pid {previous}, a sweep that stopped "
                "without releasing it")

    def _busy(self, holder: int | None) -> ConfigError:
        who = "another sweep" if holder is None else f"another sweep (pid {holder})"
        return ConfigError(f"{who} is writing {self.out} (lock {self.path}); wait for it to "
                           "finish, stop it, or give another -o/--out")

    def release(self) -> None:
        """Remove the lock file and let go of it."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> int | None:
    """The pid written in a lock file, None when it holds none."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pyarrow_table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    def kind(name: str) -> Any:
        if name == "feasible":
            return pa.bool_()
        if name in _INT_COLUMNS:
            return pa.int64()
        return pa.float64() if name in _FLOAT_COLUMNS else pa.string()

    schema = pa.schema([(name, kind(name)) for name in ROW_COLUMNS])
    return pa.Table.from_pylist(rows, schema=schema)
