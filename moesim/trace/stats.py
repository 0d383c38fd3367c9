"""Router-trace statistics: expert load imbalance, token-to-token repetition, cross-layer agreement.

Definitions (all per MoE layer, vectorised over tokens):
- tokens per expert: top-k assignments an expert received; imbalance = max / mean over
  experts, CV = population std / mean. Also first-choice counts.
- repetition (Mixtral paper, arXiv 2401.04088, Sec. 5, Table 5): over pairs of tokens at
  positions i and i+1 of the same sequence (same seq_id, pos[i+1] == pos[i] + 1; tokens dropped
  on import leave gaps that form no pair), `repeat_first` = % of pairs where token i+1's
  first choice equals token i's, `repeat_any` = % where their top-k sets share an expert.
  Random baselines with uniform independent routing: 100 / E and
  100 * (1 - C(E-k, k) / C(E, k)) (12.5 % and 46.4 % for E=8, k=2; the paper rounds to 46 %).
- cross-layer agreement, per pair (l, l+1): `cross_first_in_topk` = % of tokens whose first
  choice at layer l is among their top-k at l+1 (random: 100 * k / E), and
  `cross_nmi` = mutual information of the first choices at l and l+1 divided by the
  arithmetic mean of their entropies (0 = independent, 1 = one determines the other; 1 when
  both entropies are 0). It is the plug-in estimate, biased upward on short traces: about
  (E-1)^2 / (2 T) nats of mutual information (0.04 NMI for the bundled 333-token trace with
  its layers shuffled independently).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

import numpy as np

from moesim.errors import TraceError
from moesim.trace.format import RouterTrace

__all__ = [
    "MAX_NUM_EXPERTS",
    "TraceStats",
    "compute_stats",
    "stats_to_dict",
    "format_stats_table",
    "random_repeat_first_pct",
    "random_repeat_any_pct",
    "paper_table5",
]

# Expert ids are stored as int16 (moesim.trace.format), so no trace names more experts than
# this; the per-layer tables (load [L, E], first choices [L-1, E]) are sized by the count.
MAX_NUM_EXPERTS = int(np.iinfo(np.int16).max) + 1


@dataclass(frozen=True)
class TraceStats:
    """Per-layer load and locality statistics of one trace (percentages in 0..100)."""

    num_layers: int
    num_tokens: int
    top_k: int
    num_experts: int
    num_pairs: int  # consecutive (i, i+1) token pairs inside sequences
    tokens_per_expert: np.ndarray  # [L, E] top-k assignments
    first_choice_counts: np.ndarray  # [L, E]
    imbalance: np.ndarray  # [L] max / mean of tokens_per_expert
    cv: np.ndarray  # [L]
    imbalance_max: float
    imbalance_mean: float
    cv_max: float
    cv_mean: float
    repeat_first_pct: np.ndarray  # [L]
    repeat_any_pct: np.ndarray  # [L]
    random_repeat_first_pct: float
    random_repeat_any_pct: float
    cross_first_in_topk_pct: np.ndarray  # [L-1], layer l -> l+1
    random_cross_first_in_topk_pct: float
    cross_nmi: np.ndarray  # [L-1]


def random_repeat_first_pct(num_experts: int) -> float:
    """% of consecutive tokens sharing a first choice under uniform random routing."""
    return 100.0 / num_experts


def random_repeat_any_pct(num_experts: int, top_k: int) -> float:
    """% of consecutive tokens whose random top-k sets intersect: 1 - C(E-k,k)/C(E,k)."""
    return 100.0 * (1.0 - math.comb(num_experts - top_k, top_k) / math.comb(num_experts, top_k))


def _counts(choices: np.ndarray, num_experts: int) -> np.ndarray:
    """[L, ...] expert ids -> [L, E] counts per layer."""
    n_layers = choices.shape[0]
    offset = num_experts * np.arange(n_layers)[:, None]
    flat = choices.reshape(n_layers, -1).astype(np.int64) + offset
    return np.bincount(flat.ravel(), minlength=n_layers * num_experts).reshape(n_layers, -1)


def _pair_mask(trace: RouterTrace) -> np.ndarray:
    """[T-1] True where tokens t and t+1 are adjacent positions of one sequence."""
    return (trace.seq_id[1:] == trace.seq_id[:-1]) & (trace.pos[1:] == trace.pos[:-1] + 1)


def _pct(hits: np.ndarray) -> np.ndarray:
    """Percent of True along the last axis (NaN where there is nothing to count)."""
    if hits.shape[-1] == 0:
        return np.full(hits.shape[:-1], np.nan)
    return 100.0 * hits.mean(axis=-1)


def _nmi(first: np.ndarray, num_experts: int) -> np.ndarray:
    """Normalised mutual information of first choices at layers l and l+1, per l.

    The joint counts are kept sparse (only the (l, x, y) cells some token falls in): a dense
    [L-1, E, E] table would be 31 x 30,000^2 cells (~200 GiB) for a 30,000-expert model."""
    n_pairs, n_tokens = first.shape[0] - 1, first.shape[1]
    if n_pairs < 1 or n_tokens == 0:
        return np.full(max(n_pairs, 0), np.nan)
    first = first.astype(np.int64)
    cell = (np.arange(n_pairs, dtype=np.int64)[:, None] * num_experts + first[:-1]) \
        * num_experts + first[1:]
    codes, joint = np.unique(cell.ravel(), return_counts=True)
    layer, x, y = codes // num_experts**2, codes // num_experts % num_experts, codes % num_experts
    p_xy = joint / n_tokens
    p_x = _counts(first[:-1], num_experts) / n_tokens  # [L-1, E]
    p_y = _counts(first[1:], num_experts) / n_tokens
    terms = p_xy * np.log(p_xy / (p_x[layer, x] * p_y[layer, y]))
    mutual = np.bincount(layer, weights=terms, minlength=n_pairs)
    with np.errstate(divide="ignore", invalid="ignore"):
        h_x = -(np.where(p_x > 0, p_x * np.log(p_x), 0.0)).sum(axis=1)
        h_y = -(np.where(p_y > 0, p_y * np.log(p_y), 0.0)).sum(axis=1)
        mean_h = (h_x + h_y) / 2
        return np.where(mean_h > 0, mutual / np.where(mean_h > 0, mean_h, 1.0), 1.0)


def compute_stats(trace: RouterTrace, num_experts: int) -> TraceStats:
    """Load, repetition and cross-layer statistics of `trace` for a model with `num_experts`
    (1..MAX_NUM_EXPERTS: the per-layer tables are sized by it)."""
    if not 1 <= num_experts <= MAX_NUM_EXPERTS:
        raise TraceError(f"num_experts {num_experts} is outside 1..{MAX_NUM_EXPERTS:,} (expert "
                         "ids are int16); pass the model's expert count (--num-experts)")
    if trace.max_expert_id >= num_experts:
        raise TraceError(f"trace holds expert id {trace.max_expert_id} but num_experts is "
                         f"{num_experts}; pass the model's expert count (--num-experts)")
    if trace.top_k > num_experts:
        raise TraceError(f"trace picks top-{trace.top_k} of only {num_experts} experts")
    experts = trace.experts.astype(np.int64)  # [L, T, k]
    load = _counts(experts, num_experts)
    mean = load.mean(axis=1)
    safe = np.where(mean > 0, mean, 1.0)
    imbalance = np.where(mean > 0, load.max(axis=1) / safe, np.nan)
    cv = np.where(mean > 0, load.std(axis=1) / safe, np.nan)
    pairs = _pair_mask(trace)
    prev, nxt = experts[:, :-1][:, pairs], experts[:, 1:][:, pairs]  # [L, P, k]
    shared = (prev[:, :, :, None] == nxt[:, :, None, :]).any(axis=(2, 3))
    cross = (experts[:-1, :, :1] == experts[1:]).any(axis=2)  # [L-1, T]
    return TraceStats(
        num_layers=trace.num_layers, num_tokens=trace.num_tokens, top_k=trace.top_k,
        num_experts=num_experts, num_pairs=int(pairs.sum()),
        tokens_per_expert=load, first_choice_counts=_counts(experts[:, :, 0], num_experts),
        imbalance=imbalance, cv=cv,
        imbalance_max=float(np.nanmax(imbalance)) if trace.num_tokens else math.nan,
        imbalance_mean=float(np.nanmean(imbalance)) if trace.num_tokens else math.nan,
        cv_max=float(np.nanmax(cv)) if trace.num_tokens else math.nan,
        cv_mean=float(np.nanmean(cv)) if trace.num_tokens else math.nan,
        repeat_first_pct=_pct(prev[:, :, 0] == nxt[:, :, 0]),
        repeat_any_pct=_pct(shared),
        random_repeat_first_pct=random_repeat_first_pct(num_experts),
        random_repeat_any_pct=random_repeat_any_pct(num_experts, trace.top_k),
        cross_first_in_topk_pct=_pct(cross),
        random_cross_first_in_topk_pct=100.0 * trace.top_k / num_experts,
        cross_nmi=_nmi(experts[:, :, 0], num_experts),
    )


def _plain(value: Any) -> Any:
    """numpy -> JSON-ready Python (NaN -> None)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value.item())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def stats_to_dict(stats: TraceStats) -> dict[str, Any]:
    """JSON-ready dict of `stats` (lists, not arrays; percentages in 0..100; NaN -> null)."""
    return {f.name: _plain(getattr(stats, f.name)) for f in fields(stats)}


def _cell(value: float, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def format_stats_table(stats: TraceStats) -> str:
    """A human table, one row per layer, with the random baselines in the header."""
    lines = [
        f"{stats.num_tokens} tokens x {stats.num_layers} layers, top-{stats.top_k} of "
        f"{stats.num_experts} experts, {stats.num_pairs} consecutive pairs",
        f"imbalance (max/mean): max {stats.imbalance_max:.3f}, mean {stats.imbalance_mean:.3f}; "
        f"CV: max {stats.cv_max:.3f}, mean {stats.cv_mean:.3f}",
        f"random baselines: repeat first {stats.random_repeat_first_pct:.1f} %, "
        f"repeat any {stats.random_repeat_any_pct:.1f} %, "
        f"first in next top-k {stats.random_cross_first_in_topk_pct:.1f} %",
        "",
        f"{'layer':>5} {'max/mean':>8} {'CV':>6} {'rep 1st %':>9} {'rep any %':>9} "
        f"{'1st in l+1 %':>12} {'NMI l,l+1':>9}",
    ]
    for layer in range(stats.num_layers):
        has_next = layer < stats.num_layers - 1
        lines.append(
            f"{layer:>5} {_cell(stats.imbalance[layer], '.3f'):>8} "
            f"{_cell(stats.cv[layer], '.3f'):>6} "
            f"{_cell(stats.repeat_first_pct[layer], '.1f'):>9} "
            f"{_cell(stats.repeat_any_pct[layer], '.1f'):>9} "
            f"{_cell(stats.cross_first_in_topk_pct[layer], '.1f') if has_next else '-':>12} "
            f"{_cell(stats.cross_nmi[layer], '.3f') if has_next else '-':>9}"
        )
    return "\n".join(lines)


def paper_table5() -> dict[str, Any]:
    """The Mixtral paper's Table 5 repetition percentages (bundled copy with its source line)."""
    text = (resources.files("moesim") / "data" / "paper_table5_repetition.json").read_text(
        encoding="utf-8")
    return json.loads(text)
