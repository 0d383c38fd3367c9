"""Kernel measurements and the fit of a kernel profile's curves to them.

A measured table is a CSV with one row per timed op (`moesim calibrate kernels --from-csv`; the
shipped tables under moesim/presets/kernels/measurements/ use the same format). Lines starting
with `#` are comments (sources). Columns, by `op`:

- `gemm`: m, n, k, dtype, time_s          one GEMM [m, k] x [k, n] of `dtype` weights
- `moe`: tokens, experts, top_k, hidden, ffn, dtype, time_s
                                          a SwiGLU expert layer (gate-up and down GEMMs) over
                                          `experts` local experts, `tokens` routed to `top_k` of
                                          them in balance (each gets tokens * top_k / experts)
- `attention_prefill`: batch, seq_len, heads, kv_heads, head_dim, time_s    causal, bf16
- `attention_decode`: batch, context, heads, kv_heads, head_dim, time_s    one query per
                                          sequence over `context` cached tokens, bf16 KV

`time_s` is seconds per call. `dtype` is a weight format (bf16, fp8, fp8-block, int4, nvfp4,
mxfp4); activations are bf16. Other columns may be present (gpu, kernel, source) and are kept
as given.

`fit_curves` fits one op kind's `launch_s` and its compute and memory efficiency curves (at
knots log-spaced over the measured sizes) by Levenberg-Marquardt on log time, with the tile
shape given (the kernel's own configuration, not a fitted number) and a light smoothness
penalty between neighbouring knots. numpy only.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moesim.engine.kernels import attention_time, gemm_time, moe_time
from moesim.errors import ConfigError
from moesim.inputs.kernel_profile import Curve, KernelCurves
from moesim.inputs.options import WEIGHT_DTYPE_BYTES, compute_dtype
from moesim.inputs.text import read_capped, utf8_text
from moesim.inputs.topology_spec import GpuSpec

__all__ = [
    "KernelRow",
    "REQUIRED_COLUMNS",
    "read_kernel_csv",
    "read_kernel_text",
    "parse_kernel_csv",
    "write_kernel_csv",
    "row_x",
    "predict_row_s",
    "predict_rows_s",
    "fit_curves",
    "token_band",
    "TOKEN_BANDS",
]

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k", "time_s"),
    "moe": ("tokens", "experts", "top_k", "hidden", "ffn", "time_s"),
    "attention_prefill": ("batch", "seq_len", "heads", "kv_heads", "head_dim", "time_s"),
    "attention_decode": ("batch", "context", "heads", "kv_heads", "head_dim", "time_s"),
}
_ACT_BYTES = 2  # activations and KV of the measured kernels: bf16
# Token-count bands of the accuracy table (issue 12): 1-16, 32-256, 320-2048, 3072+.
TOKEN_BANDS: tuple[tuple[str, float, float], ...] = (
    ("1-16", 1, 16), ("32-256", 17, 256), ("320-2048", 257, 2048), ("3072+", 2049, math.inf))


@dataclass(frozen=True)
class KernelRow:
    """One measured op."""

    op: str
    values: dict[str, float]
    dtype: str = "bf16"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def time_s(self) -> float:
        return self.values["time_s"]

    def get(self, name: str) -> float:
        return self.values[name]


# Columns that count things (rows, experts, heads, ...): whole numbers. `time_s` is the only
# fractional column.
_MAX_SIZE = 2**53  # sizes beyond this are not exact in float64 (and no kernel is that large)
MAX_KERNEL_TABLE_BYTES = 256 << 20  # the shipped tables are a few kB


def parse_kernel_csv(text: str, source: str = "kernel table") -> list[KernelRow]:
    """Rows of a measured kernel table; each error names the line, the row and the column.

    Sizes must be whole numbers in 1..2**53, `time_s` a finite number > 0, a MoE row's `top_k`
    at most its `experts`, an attention row's `kv_heads` at most its `heads`."""
    numbered = [(number, line) for number, line in enumerate(text.splitlines(), start=1)
                if line.strip() and not line.startswith("#")]
    if not numbered:
        raise ConfigError(f"{source} has no rows (expected a header with op,...,time_s)")
    header_line = numbered[0][0]
    reader = csv.DictReader(io.StringIO("\n".join(line for _, line in numbered)))
    rows: list[KernelRow] = []
    try:
        for index, raw in enumerate(reader, start=1):
            number = numbered[min(reader.line_num, len(numbered)) - 1][0]
            rows.append(_kernel_row(raw, f"{source} line {number}, row {index}"))
    except csv.Error as exc:
        raise ConfigError(f"{source} is not a readable CSV table: {exc}") from None
    if not rows:
        raise ConfigError(f"{source} has a header (line {header_line}) but no rows; add one "
                          "measured op a line")
    return rows


def _kernel_row(raw: dict[str | Any, str | Any], where: str) -> KernelRow:
    """One table row, checked; `where` names its line and row."""
    op = str(raw.get("op") or "").strip()
    if op not in REQUIRED_COLUMNS:
        raise ConfigError(f"{where}: op '{op}' is not one of {', '.join(REQUIRED_COLUMNS)}")
    values: dict[str, float] = {}
    for column in REQUIRED_COLUMNS[op]:
        cell = raw.get(column)
        text_value = cell.strip() if isinstance(cell, str) else ""
        try:
            value = float(text_value)
        except ValueError:
            raise ConfigError(f"{where}: column '{column}' needs a number for op {op}, "
                              f"got '{text_value[:40]}'") from None
        if not value > 0 or not math.isfinite(value):
            raise ConfigError(f"{where}: column '{column}' must be a finite number > 0, got "
                              f"{text_value[:40]}")
        if column != "time_s" and (value != int(value) or value > _MAX_SIZE):
            raise ConfigError(f"{where}: column '{column}' counts something: it must be a "
                              f"whole number in 1..2**53, got {text_value[:40]}")
        values[column] = value
    if op == "moe" and values["top_k"] > values["experts"]:
        raise ConfigError(f"{where}: top_k {values['top_k']:g} is above experts "
                          f"{values['experts']:g}; a token picks top_k of the experts")
    if op.startswith("attention") and values["kv_heads"] > values["heads"]:
        raise ConfigError(f"{where}: kv_heads {values['kv_heads']:g} is above heads "
                          f"{values['heads']:g}; each K/V head serves one or more query heads")
    dtype = str(raw.get("dtype") or "bf16").strip() or "bf16"
    if dtype not in WEIGHT_DTYPE_BYTES:
        raise ConfigError(f"{where}: dtype '{dtype[:40]}' is not one of "
                          f"{', '.join(WEIGHT_DTYPE_BYTES)}")
    extra = {k: v for k, v in raw.items()
             if isinstance(k, str) and k and k not in values and k not in ("op", "dtype")
             and isinstance(v, str) and v}
    return KernelRow(op, values, dtype, extra)


def read_kernel_text(path: str | Path, what: str = "kernel table") -> str:
    """A kernel table's text, or one ConfigError saying why it cannot be read: missing,
    unreadable, too large, UTF-16, binary (NUL bytes) or not UTF-8 (with the line)."""
    path = Path(path)
    raw = read_capped(path, f"{what} {path}", ConfigError, MAX_KERNEL_TABLE_BYTES,
                      "a kernel table may be")
    return utf8_text(raw, f"{what} {path}", ConfigError, kind="a CSV table")


def read_kernel_csv(path: str | Path) -> list[KernelRow]:
    """Read a measured kernel table (see the module docstring for the format)."""
    return parse_kernel_csv(read_kernel_text(path), f"kernel table {path}")


def write_kernel_csv(rows: Sequence[KernelRow], comments: Iterable[str] = ()) -> str:
    """A table's text in the same format (one header with every column used)."""
    columns = ["op", "dtype"] + sorted({c for r in rows for c in r.values} - {"time_s"}) \
        + ["time_s"]
    out = io.StringIO()
    for comment in comments:
        out.write(f"# {comment}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = {"op": row.op, "dtype": row.dtype, **{k: f"{v:.6g}" for k, v in row.values.items()}}
        writer.writerow([cells.get(c, "") for c in columns])
    return out.getvalue()


def _balanced(tokens: float, experts: int, top_k: int) -> np.ndarray:
    """Tokens per expert when `tokens` pick `top_k` of `experts` in perfect balance."""
    total = int(round(tokens * top_k))
    per = np.full(experts, total // experts, dtype=np.float64)
    per[: total % experts] += 1
    return per


def row_x(row: KernelRow) -> float:
    """The size a row's curves are read at (see moesim.inputs.kernel_profile)."""
    v = row.values
    if row.op == "gemm":
        return v["m"]
    if row.op == "moe":
        per = _balanced(v["tokens"], int(v["experts"]), int(v["top_k"]))
        return float(per.sum() / max((per > 0).sum(), 1))
    if row.op == "attention_prefill":
        return (v["seq_len"] + 1) / 2
    return v["context"]


def row_tokens(row: KernelRow) -> float:
    """The token count a row's accuracy band is read at (rows for GEMMs, tokens for MoE)."""
    v = row.values
    return v["m"] if row.op == "gemm" else v.get("tokens", v.get("batch", 1.0))


def token_band(tokens: float) -> str:
    """The accuracy band of a token count."""
    return next(name for name, lo, hi in TOKEN_BANDS if lo <= tokens <= hi)


def _attention_work(row: KernelRow) -> tuple[float, float]:
    """(flops, bytes) of an attention row: QK and PV over the keys attended, K/V read once."""
    v = row.values
    heads, kv_heads, dim, batch = v["heads"], v["kv_heads"], v["head_dim"], v["batch"]
    if row.op == "attention_prefill":
        seq = v["seq_len"]
        keys = batch * seq * (seq + 1) / 2
        moved = batch * seq * (2 * heads + 2 * kv_heads) * dim * _ACT_BYTES
    else:
        keys = batch * v["context"]
        moved = keys * 2 * kv_heads * dim * _ACT_BYTES + batch * 2 * heads * dim * _ACT_BYTES
    return 4 * heads * dim * keys, moved


def predict_row_s(row: KernelRow, curves: KernelCurves, gpu: GpuSpec,
                  warm_l2: bool = True) -> float:
    """The predicted time of one measured op on `curves` (microbenchmarks: warm L2)."""
    v = row.values
    peak = gpu.peak_flops_per_s(compute_dtype(row.dtype, gpu.formats))
    weight_bytes = WEIGHT_DTYPE_BYTES[row.dtype]
    if row.op == "gemm":
        return float(gemm_time(curves, gpu, m=v["m"], n=int(v["n"]), k=int(v["k"]),
                               weight_bytes=weight_bytes, act_bytes=_ACT_BYTES,
                               peak_flops_per_s=peak, warm_l2=warm_l2))
    if row.op == "moe":
        per = _balanced(v["tokens"], int(v["experts"]), int(v["top_k"]))
        return float(moe_time(curves, gpu, tokens_per_expert=per, hidden=int(v["hidden"]),
                              ffn=int(v["ffn"]), weight_bytes=weight_bytes,
                              act_bytes=_ACT_BYTES, peak_flops_per_s=peak, warm_l2=warm_l2))
    flops, moved = _attention_work(row)
    return float(attention_time(curves, gpu, flops=flops, bytes_moved=moved, x=row_x(row),
                                peak_flops_per_s=gpu.peak_bf16_flops_per_s))


def predict_rows_s(rows: Sequence[KernelRow], curves: KernelCurves, gpu: GpuSpec,
                   warm_l2: bool = True) -> np.ndarray:
    """Predicted seconds of every row."""
    return np.array([predict_row_s(r, curves, gpu, warm_l2) for r in rows])


# ---- the fit -----------------------------------------------------------------------------

_MIN_FRACTION, _MAX_FRACTION = 0.005, 1.0


def _knots(xs: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` knots log-spaced over the measured sizes (each distinct size if fewer)."""
    distinct = np.unique(xs)
    if len(distinct) <= count:
        return distinct
    return np.exp(np.linspace(np.log(distinct[0]), np.log(distinct[-1]), count))


def _fraction(theta: np.ndarray) -> np.ndarray:
    return _MIN_FRACTION + (_MAX_FRACTION - _MIN_FRACTION) / (1 + np.exp(-theta))


def _theta(fraction: float) -> float:
    f = (fraction - _MIN_FRACTION) / (_MAX_FRACTION - _MIN_FRACTION)
    f = min(max(f, 1e-6), 1 - 1e-6)
    return math.log(f / (1 - f))


def _curves_of(params: np.ndarray, knots: np.ndarray, template: dict[str, Any]) -> KernelCurves:
    count = len(knots)
    compute = _fraction(params[1:1 + count])
    memory = _fraction(params[1 + count:])
    return KernelCurves(
        **template, launch_s=float(math.exp(params[0])),
        compute=Curve(points=tuple((float(x), float(f)) for x, f in zip(knots, compute,
                                                                            strict=True))),
        memory=Curve(points=tuple((float(x), float(f)) for x, f in zip(knots, memory,
                                                                           strict=True))))


def fit_curves(
    rows: Sequence[KernelRow],
    gpu: GpuSpec,
    *,
    family: str,
    tile_m: tuple[tuple[float, int], ...] = ((1.0, 1),),
    tile_n: int = 1,
    grouped: bool = True,
    knots: int = 6,
    smoothness: float = 0.002,
    sources: tuple[str, ...] = (),
    iterations: int = 60,
    launch_s: float | None = None,
) -> KernelCurves:
    """Fit one op kind's launch and efficiency curves to measured rows of that kind; a given
    `launch_s` is held (for tables whose smallest op is too long to show it)."""
    kinds = {r.op for r in rows}
    if len(kinds) != 1 or not rows:
        raise ConfigError(f"fit_curves needs rows of one op kind, got {sorted(kinds) or 'none'}")
    xs = np.array([row_x(r) for r in rows])
    knot_x = _knots(xs, knots)
    measured = np.log(np.array([r.time_s for r in rows]))
    template = {"family": family, "tile_m": tile_m, "tile_n": tile_n, "grouped": grouped,
                "sources": sources}
    count = len(knot_x)
    start = np.concatenate([[math.log(max(min(r.time_s for r in rows) * 0.3, 1e-7))],
                            np.full(count, _theta(0.6)), np.full(count, _theta(0.8))])

    if launch_s is not None:
        start[0] = math.log(max(launch_s, 1e-12))

    def residuals(params: np.ndarray) -> np.ndarray:
        if launch_s is not None:
            params = params.copy()
            params[0] = math.log(max(launch_s, 1e-12))
        predicted = predict_rows_s(rows, _curves_of(params, knot_x, template), gpu)
        smooth = [np.diff(params[1:1 + count]), np.diff(params[1 + count:])]
        return np.concatenate([np.log(predicted) - measured,
                               math.sqrt(smoothness) * np.concatenate(smooth)])

    params = _levenberg_marquardt(residuals, start, iterations)
    if launch_s is not None:
        params[0] = math.log(max(launch_s, 1e-12))
    return _curves_of(params, knot_x, template)


def _levenberg_marquardt(residuals: Any, start: np.ndarray, iterations: int) -> np.ndarray:
    """Minimise the squared residuals from `start` (finite-difference Jacobian)."""
    params, damping = start.astype(np.float64), 1e-2
    current = residuals(params)
    cost = float(current @ current)
    for _ in range(iterations):
        step = 1e-4
        jacobian = np.empty((len(current), len(params)))
        for i in range(len(params)):
            moved = params.copy()
            moved[i] += step
            jacobian[:, i] = (residuals(moved) - current) / step
        normal = jacobian.T @ jacobian
        gradient = jacobian.T @ current
        improved = False
        for _ in range(8):
            try:
                delta = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-9),
                                        -gradient)
            except np.linalg.LinAlgError:
                damping *= 10
                continue
            trial = params + delta
            trial_res = residuals(trial)
            trial_cost = float(trial_res @ trial_res)
            if trial_cost < cost:
                params, current, cost = trial, trial_res, trial_cost
                damping = max(damping / 3, 1e-7)
                improved = True
                break
            damping *= 10
        if not improved or cost < 1e-14:
            break
    return params


def accuracy_table(profile_name: str) -> list[dict[str, Any]]:
    """Median predicted/measured of a shipped profile against every shipped table of a GPU it
    covers, per op and token band (attention: one band, `all`). Tables are named
    `<gpu key>_<kernel>...csv` (moesim/presets/kernels/measurements)."""
    from moesim.inputs.kernel_profile import PROFILE_DIR, load_kernel_profile
    from moesim.inputs.topology_spec import load_gpu

    profile = load_kernel_profile(profile_name)
    out: list[dict[str, Any]] = []
    for path in sorted((PROFILE_DIR / "measurements").glob("*.csv")):
        key = path.stem.split("_", 1)[0]
        entry = profile.for_gpu(key)
        if entry is None:
            continue
        gpu = load_gpu(key)
        groups: dict[tuple[str, str], list[float]] = {}
        for row in read_kernel_csv(path):
            curves = entry.curves(row.op)
            if curves is None:
                continue
            band = token_band(row_tokens(row)) if row.op in ("gemm", "moe") else "all"
            ratio = predict_row_s(row, curves, gpu) / row.time_s
            groups.setdefault((row.op, band), []).append(ratio)
        for (op, band), ratios in groups.items():
            out.append({"profile": profile.name, "gpu": key, "table": path.stem, "op": op,
                        "band": band, "rows": len(ratios),
                        "median_ratio": float(np.median(ratios))})
    return out
