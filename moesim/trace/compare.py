"""Comparing two router traces: their statistics side by side and distances between them.

Distances (B measured against A, typically synthetic against real):
- `share_max_abs_error`: max over layers and experts of |share_B - share_A|, where a share is
  the fraction of a layer's top-k assignments an expert received (0..1);
- `repeat_first_diff_pts`, `repeat_any_diff_pts`: B - A per layer, percentage points, of the
  Table-5 repetition measures of `moesim.trace.stats`;
- batch imbalance: the traces are cut into consecutive batches of `batch_tokens` tokens (in
  trace order, as a step takes them; the remainder is dropped); per batch and layer,
  max / mean tokens per expert. `batch_imbalance_ks` is the two-sample Kolmogorov-Smirnov
  statistic (max distance between the empirical CDFs, 0..1) of those values pooled over
  layers, and quantiles are given for both traces;
- cross-layer: B - A of `cross_first_in_topk_pct` and of `cross_nmi` (the plug-in NMI is
  biased upward by about (E-1)^2 / (2 T) nats of mutual information, so a short trace shows
  more than a long one with the same routing law).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.errors import TraceError
from moesim.trace.format import RouterTrace
from moesim.trace.stats import TraceStats, compute_stats, stats_to_dict

__all__ = [
    "TraceComparison",
    "QUANTILES",
    "batch_imbalance",
    "ks_statistic",
    "expert_shares",
    "compare_traces",
    "comparison_to_dict",
    "format_comparison",
]

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class TraceComparison:
    """Statistics of traces A and B and the distances of B from A."""

    name_a: str
    name_b: str
    stats_a: TraceStats
    stats_b: TraceStats
    share_abs_error: np.ndarray  # [L, E] |share_B - share_A|
    repeat_first_diff_pts: np.ndarray  # [L] B - A
    repeat_any_diff_pts: np.ndarray  # [L]
    cross_first_in_topk_diff_pts: np.ndarray  # [L-1]
    cross_nmi_diff: np.ndarray  # [L-1]
    batch_tokens: int
    batch_imbalance_a: np.ndarray  # [L, batches of A]
    batch_imbalance_b: np.ndarray  # [L, batches of B]
    batch_imbalance_ks: float  # NaN when either trace has no full batch

    @property
    def share_max_abs_error(self) -> float:
        """Largest |share_B - share_A| over layers and experts (0..1)."""
        return float(self.share_abs_error.max())


def expert_shares(stats: TraceStats) -> np.ndarray:
    """Fraction of each layer's top-k assignments per expert, [L, E]."""
    load = stats.tokens_per_expert.astype(np.float64)
    return load / np.maximum(load.sum(axis=1, keepdims=True), 1.0)


def batch_imbalance(trace: RouterTrace, num_experts: int, batch_tokens: int = 64) -> np.ndarray:
    """Max / mean tokens per expert for each layer and consecutive batch, [L, batches]."""
    if batch_tokens < 1:
        raise TraceError(f"batch size must be at least 1 token, got {batch_tokens}")
    n_batches = trace.num_tokens // batch_tokens
    n_layers, k = trace.num_layers, trace.top_k
    experts = trace.experts[:, : n_batches * batch_tokens].astype(np.int64)
    experts = experts.reshape(n_layers, n_batches, batch_tokens * k)
    cell = (np.arange(n_layers)[:, None, None] * n_batches
            + np.arange(n_batches)[None, :, None]) * num_experts + experts
    counts = np.bincount(cell.ravel(), minlength=n_layers * n_batches * num_experts)
    counts = counts.reshape(n_layers, n_batches, num_experts)
    return counts.max(axis=2) / (batch_tokens * k / num_experts)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: max |F_a(x) - F_b(x)| (NaN if one is empty)."""
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    if a.size == 0 or b.size == 0:
        return float("nan")
    points = np.union1d(a, b)
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


def compare_traces(a: RouterTrace, b: RouterTrace, num_experts: int, batch_tokens: int = 64,
                   names: tuple[str, str] = ("A", "B")) -> TraceComparison:
    """Statistics of both traces and the distances of `b` from `a`."""
    if (a.num_layers, a.top_k) != (b.num_layers, b.top_k):
        raise TraceError(f"cannot compare a trace of {a.num_layers} layers, top-{a.top_k} with "
                         f"one of {b.num_layers} layers, top-{b.top_k}; both must route the "
                         "same model")
    stats_a, stats_b = compute_stats(a, num_experts), compute_stats(b, num_experts)
    imb_a = batch_imbalance(a, num_experts, batch_tokens)
    imb_b = batch_imbalance(b, num_experts, batch_tokens)
    return TraceComparison(
        name_a=names[0], name_b=names[1], stats_a=stats_a, stats_b=stats_b,
        share_abs_error=np.abs(expert_shares(stats_b) - expert_shares(stats_a)),
        repeat_first_diff_pts=stats_b.repeat_first_pct - stats_a.repeat_first_pct,
        repeat_any_diff_pts=stats_b.repeat_any_pct - stats_a.repeat_any_pct,
        cross_first_in_topk_diff_pts=stats_b.cross_first_in_topk_pct
        - stats_a.cross_first_in_topk_pct,
        cross_nmi_diff=stats_b.cross_nmi - stats_a.cross_nmi,
        batch_tokens=batch_tokens, batch_imbalance_a=imb_a, batch_imbalance_b=imb_b,
        batch_imbalance_ks=ks_statistic(imb_a, imb_b))


def _quantiles(values: np.ndarray) -> dict[str, float | None]:
    """Quantiles of pooled values, keyed 'q10', 'q50'... (None when empty)."""
    flat = np.ravel(values)
    return {f"q{round(q * 100)}": (float(np.quantile(flat, q)) if flat.size else None)
            for q in QUANTILES}


def _mean(values: np.ndarray) -> float | None:
    """Mean ignoring NaN (None when nothing is left)."""
    finite = np.ravel(values)[np.isfinite(np.ravel(values))]
    return float(finite.mean()) if finite.size else None


def _max_abs(values: np.ndarray) -> float | None:
    """Largest absolute value ignoring NaN (None when nothing is left)."""
    finite = np.ravel(values)[np.isfinite(np.ravel(values))]
    return float(np.abs(finite).max()) if finite.size else None


def comparison_to_dict(comp: TraceComparison) -> dict[str, Any]:
    """JSON-ready comparison: both traces' statistics, per-layer differences, summary."""
    ks = comp.batch_imbalance_ks
    return {
        "a": comp.name_a, "b": comp.name_b, "batch_tokens": comp.batch_tokens,
        "summary": {
            "share_max_abs_error": comp.share_max_abs_error,
            "share_mean_abs_error": float(comp.share_abs_error.mean()),
            "repeat_first_max_abs_diff_pts": _max_abs(comp.repeat_first_diff_pts),
            "repeat_any_max_abs_diff_pts": _max_abs(comp.repeat_any_diff_pts),
            "cross_first_in_topk_max_abs_diff_pts": _max_abs(comp.cross_first_in_topk_diff_pts),
            "batch_imbalance_ks": None if np.isnan(ks) else ks,
            "batch_imbalance_mean_a": _mean(comp.batch_imbalance_a),
            "batch_imbalance_mean_b": _mean(comp.batch_imbalance_b),
            "batch_imbalance_quantiles_a": _quantiles(comp.batch_imbalance_a),
            "batch_imbalance_quantiles_b": _quantiles(comp.batch_imbalance_b),
        },
        "per_layer": {
            "share_max_abs_error": comp.share_abs_error.max(axis=1).tolist(),
            "repeat_first_diff_pts": _nullable(comp.repeat_first_diff_pts),
            "repeat_any_diff_pts": _nullable(comp.repeat_any_diff_pts),
            "cross_first_in_topk_diff_pts": _nullable(
                comp.cross_first_in_topk_diff_pts),
            "cross_nmi_diff": _nullable(comp.cross_nmi_diff),
            "batch_imbalance_mean_a": [_mean(row) for row in comp.batch_imbalance_a],
            "batch_imbalance_mean_b": [_mean(row) for row in comp.batch_imbalance_b],
        },
        "stats_a": stats_to_dict(comp.stats_a),
        "stats_b": stats_to_dict(comp.stats_b),
    }


def _nullable(values: np.ndarray) -> list[float | None]:
    """Floats with NaN as None."""
    return [None if not np.isfinite(v) else float(v) for v in values]


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None or not np.isfinite(value) else format(value, spec)


def format_comparison(comp: TraceComparison) -> str:
    """Human table: per layer A | B for imbalance and repetition, then the distances."""
    sa, sb = comp.stats_a, comp.stats_b
    data = comparison_to_dict(comp)["summary"]
    qa, qb = data["batch_imbalance_quantiles_a"], data["batch_imbalance_quantiles_b"]
    lines = [
        f"A = {comp.name_a}: {sa.num_tokens} tokens; B = {comp.name_b}: {sb.num_tokens} tokens; "
        f"{sa.num_layers} layers, top-{sa.top_k} of {sa.num_experts} experts",
        f"{'layer':>5} {'max/mean A|B':>13} {'rep 1st % A|B':>13} {'rep any % A|B':>13} "
        f"{'share err':>9} {'NMI A|B':>11}",
    ]
    for layer in range(sa.num_layers):
        nmi = (f"{_cell(sa.cross_nmi[layer], '.3f')}|{_cell(sb.cross_nmi[layer], '.3f')}"
               if layer < sa.num_layers - 1 else "-")
        pairs = [f"{_cell(x[layer], spec):>6}|{_cell(y[layer], spec):<6}" for x, y, spec in (
            (sa.imbalance, sb.imbalance, ".2f"),
            (sa.repeat_first_pct, sb.repeat_first_pct, ".1f"),
            (sa.repeat_any_pct, sb.repeat_any_pct, ".1f"))]
        lines.append(f"{layer:>5} {' '.join(pairs)} {comp.share_abs_error[layer].max():>9.4f} "
                     f"{nmi:>11}")
    lines += [
        "",
        f"expert share max abs error: {data['share_max_abs_error']:.4f} "
        f"(mean {data['share_mean_abs_error']:.4f})",
        f"repetition max |B - A|: first {_cell(data['repeat_first_max_abs_diff_pts'], '.1f')} "
        f"pts, any {_cell(data['repeat_any_max_abs_diff_pts'], '.1f')} pts",
        f"batch imbalance ({comp.batch_tokens} tokens/batch, max/mean): KS "
        f"{_cell(comp.batch_imbalance_ks, '.3f')}; A " + _format_quantiles(qa)
        + "; B " + _format_quantiles(qb),
    ]
    return "\n".join(lines)


def _format_quantiles(quantiles: dict[str, float | None]) -> str:
    return " ".join(f"{name} {_cell(value, '.3f')}" for name, value in quantiles.items())
