"""Held-out error of a kernel fit: how far `fit_curves` can be trusted before any validation run.

k-fold cross-validation over one op kind's measured rows: rows are ordered by the size their
curves are read at and dealt to folds in turn (fold = rank % k), so every fold spans the
measured range and its rows are predicted by curves fitted on the others, the same fit
`moesim calibrate kernels` runs. The errors are grouped per op and size band (token bands of
`moesim.calibrate.kernels.TOKEN_BANDS` for GEMMs and MoE; one band, `all`, for attention):
mean absolute percentage error, median and worst predicted/measured ratio.

The smallest and largest sizes are predicted from curves that never saw them (extrapolation),
which is what a user running sizes beyond the calibrated ones meets too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from moesim.calibrate.kernels import (
    TOKEN_BANDS,
    KernelRow,
    fit_curves,
    predict_row_s,
    row_tokens,
    row_x,
    token_band,
)
from moesim.inputs.topology_spec import GpuSpec

__all__ = ["HeldOutError", "k_fold", "cross_validate", "held_out_table"]

T = TypeVar("T")


@dataclass(frozen=True)
class HeldOutError:
    """Held-out prediction error of one op in one size band."""

    op: str
    band: str
    rows: int
    mape: float  # mean |predicted / measured - 1| (NaN when every fit failed)
    median_ratio: float  # median predicted / measured
    worst_ratio: float  # the ratio farthest from 1 (as a factor either way)
    failed: int = 0  # rows whose fold's fit failed (degenerate times): not predicted


_BAND_ORDER = {name: index for index, (name, _, _) in enumerate(TOKEN_BANDS)}


def _band(row: KernelRow) -> str:
    return token_band(row_tokens(row)) if row.op in ("gemm", "moe") else "all"


def k_fold(items: Sequence[T], *, folds: int, size: Callable[[T], float],
           group: Callable[[T], str], band: Callable[[T], str],
           measured_s: Callable[[T], float],
           fit_predict: Callable[[list[T], list[T]], Sequence[float] | np.ndarray],
           band_order: Callable[[str], int] = lambda band: 0,
           min_items: int = 3, pooled: bool = False) -> list[HeldOutError]:
    """Held-out errors per (group, band) of any fit: items of each group are ordered by
    `size` and dealt to folds in turn; `fit_predict(train, held)` fits on `train` and returns
    the predicted seconds of `held`. A fold whose fit raises a numeric error (or a
    ConfigError: the fit refused degenerate rows) is counted per band, not dropped. Groups of
    fewer than `min_items` are skipped; `folds` is capped at a group's items. `pooled`: every
    fit also sees the other groups' items (one fit over all ops, as a topology's), else only
    its own group's."""
    from moesim.errors import ConfigError

    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    ratios: dict[tuple[str, str], list[float]] = {}
    failed: dict[tuple[str, str], int] = {}
    for name in sorted({group(item) for item in items}):
        members = sorted((item for item in items if group(item) == name), key=size)
        if len(members) < min_items:
            continue
        k = min(folds, len(members))
        fold_of = np.arange(len(members)) % k
        for fold in range(k):
            held = [r for r, f in zip(members, fold_of, strict=True) if f == fold]
            if pooled:
                train = [r for r in items if not any(r is h for h in held)]
            else:
                train = [r for r, f in zip(members, fold_of, strict=True) if f != fold]
            try:
                predicted = list(fit_predict(train, held))
            except (OverflowError, ValueError, ZeroDivisionError, np.linalg.LinAlgError,
                    ConfigError):
                for item in held:  # counted and shown, not dropped silently
                    key = (name, band(item))
                    failed[key] = failed.get(key, 0) + 1
                continue
            for item, time_s in zip(held, predicted, strict=True):
                ratios.setdefault((name, band(item)), []).append(time_s / measured_s(item))
    out = []
    for key in sorted(set(ratios) | set(failed), key=lambda k: (k[0], band_order(k[1]))):
        arr = np.asarray(ratios.get(key, []), dtype=float)
        if arr.size:
            factor = np.maximum(arr, 1.0 / arr)
            mape, median = float(np.mean(np.abs(arr - 1.0))), float(np.median(arr))
            worst = float(arr[int(np.argmax(factor))])
        else:
            mape = median = worst = float("nan")
        out.append(HeldOutError(key[0], key[1], int(arr.size), mape, median, worst,
                                failed.get(key, 0)))
    return out


def cross_validate(rows: Sequence[KernelRow], gpu: GpuSpec, *, folds: int = 5,
                   group: Callable[[KernelRow], str] | None = None,
                   **fit_options: Any) -> list[HeldOutError]:
    """Held-out errors per (op, band) of `fit_curves` on `rows` (module doc). Op kinds with
    fewer than 3 rows are skipped (nothing to fit on once one is held out); `folds` is capped
    at the rows of each kind (leave-one-out on short tables). `group` names the rows fitted
    together (default: the op kind)."""

    def fit_predict(train: list[KernelRow], held: list[KernelRow]) -> list[float]:
        curves = fit_curves(train, gpu, **fit_options)
        return [predict_row_s(row, curves, gpu) for row in held]

    return k_fold(rows, folds=folds, size=row_x, group=group or (lambda r: r.op), band=_band,
                  measured_s=lambda r: r.time_s, fit_predict=fit_predict,
                  band_order=lambda b: _BAND_ORDER.get(b, 9))


def held_out_table(errors: Sequence[HeldOutError], folds: int) -> str:
    """The errors as a plain-text table."""
    width = max([18] + [len(e.op) for e in errors])
    lines = [f"held-out error ({folds}-fold cross-validation: each row predicted by a fit "
             "made without it)",
             f"{'op':{width}} {'band':10} {'rows':>4} {'MAPE':>7} {'median':>7} {'worst':>7}"]
    for e in errors:
        if e.rows:
            line = (f"{e.op:{width}} {e.band:10} {e.rows:4d} {_number(e.mape * 100, 6, 1)}% "
                    f"{_number(e.median_ratio, 7, 3)} {_number(e.worst_ratio, 7, 3)}")
        else:
            line = f"{e.op:{width}} {e.band:10} {0:4d} {'-':>7} {'-':>7} {'-':>7}"

        if e.failed:
            line += f"  ({e.failed} rows not predicted: their fold's fit failed)"
        lines.append(line)
    return "\n".join(lines)


def _number(value: float, width: int, decimals: int) -> str:
    """`value` in `width` columns; a wild one (a fit of degenerate times) in e-notation."""
    if abs(value) < 1e4:
        return f"{value:{width}.{decimals}f}"
    return f"{value:{width}.1e}"
