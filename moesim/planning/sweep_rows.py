"""Sweep rows on disk: CSV cells, append-and-flush logs for resuming, parquet at the end."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from moesim.errors import ConfigError

__all__ = ["ROW_COLUMNS", "format_cell", "parse_row", "read_rows", "RowLog", "RowStore",
           "parquet_module"]

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


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Complete rows of a sweep CSV or parquet file, as text; [] when it does not exist."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return []
    if path.suffix == ".parquet":
        table = parquet_module().read_table(path).to_pylist()
        return [{name: format_cell(row.get(name)) for name in ROW_COLUMNS} for row in table]
    with path.open(newline="", encoding="utf-8") as handle:
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
    rows = read_rows(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROW_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


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
        fresh = not path.is_file() or path.stat().st_size == 0
        if not fresh:
            _upgrade_header(path)
        if not fresh and not path.read_bytes().endswith(b"\n"):
            with path.open("a", encoding="utf-8") as handle:
                handle.write("\n")  # end a line cut short by an interruption
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
            parquet_module().write_table(table, self.out)
            self.log_path.unlink(missing_ok=True)
            return
        tmp = self.out.with_name(self.out.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=ROW_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.out)


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
