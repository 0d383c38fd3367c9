"""Fitting the synthetic router model (`moesim.trace.synth`) to a real trace or its statistics.

What is matched, per MoE layer l, and how:
- `p_l`: the first-choice shares (counts plus a 0.01-token floor so every expert stays drawable);
- `q_l`: solved by fixed-point iteration so that choices 2..k, drawn without replacement
  excluding the first choice, reproduce the real shares of choices 2..k (exact inclusion
  probabilities for k = 2, a fixed-seed Monte Carlo estimate for k > 2); together with `p_l`
  this matches the per-layer top-k expert shares;
- `alpha_l` (per-sequence Dirichlet concentration): method of moments on first-choice shares
  over the trace's sequences when it has at least `MIN_SEQUENCES` of `MIN_SEQUENCE_TOKENS`
  tokens, else the MMLU summary `moesim/data/mmlu_popularity_variation.json` (Mixtral-8x7B;
  other models get its median, an assumption recorded in the parameters' notes). MMLU gives
  top-2 shares only; used as the first-choice concentration it makes generated top-2 shares
  vary somewhat less than MMLU's (about 20 % higher effective alpha for near-uniform p), which
  the drift fit below partly absorbs;
- `beta_l` (within-sequence drift, one value for all layers, segments of 64 tokens): from the
  spread of top-k shares over aligned 64-token windows inside the trace's sequences, minus
  the spread the model gives without drift on the pilot (each unit of variance 1/(1+beta));
- `P_l` and `c_l`: the first-choice transition counts (l-1 -> l), smoothed with `E` pseudo
  tokens spread as the product of the marginals; `c_l` solves MI(c P + (1-c) 1 p_l) = the
  real plug-in mutual information minus its bias (E-1)^2 / (2 T) nats (Miller-Madow);
- `rho_l` / `avoid_first_l`, then `kappa_l` / `avoid_rest_l`: calibrated layer by layer on
  a fixed-seed pilot trace (128 sequences of 256 tokens, half that for the first pass of a
  drift fit) so that `repeat_first` and then `repeat_any` (Mixtral paper Table 5 measures,
  `moesim.trace.stats`) match: one signed parameter per measure, > 0 keeps (more repeats
  than independent draws give), < 0 avoids (fewer), solved by regula falsi (Illinois) on
  common random numbers. A target beyond full keeping or avoiding is recorded in the notes.
  A layer whose pilot expert shares then miss by more than 0.008 (avoiding skews them, and
  a biased layer skews the next through P) has p_l and q_l rescaled once and is redone.
Cost: about 2 x 32 layers x 2 measures x up to 6 pilot layer draws; a few seconds for
Mixtral. The fit is deterministic (fixed pilot seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import ConfigError, TraceError
from moesim.inputs.config import read_mapping
from moesim.trace.format import RouterTrace
from moesim.trace.stats import compute_stats
from moesim.trace.synth import (
    SequenceLayout,
    SynthParams,
    first_choices,
    rest_choices,
    sequence_layout,
    sequence_popularity,
)
from moesim.trace.variation import (
    MIN_SEQUENCE_TOKENS,
    MIN_SEQUENCES,
    mmlu_concentration,
    sequence_concentration,
    summarise_mmlu_fractions,
)

__all__ = [
    "FitTargets",
    "fit_synth_params",
    "fit_synth_params_from_stats",
    "fit_from_targets",
    "load_stats_json",
    "mmlu_concentration",
    "sequence_concentration",
    "summarise_mmlu_fractions",
    "MIN_SEQUENCES",
    "MIN_SEQUENCE_TOKENS",
    "SEGMENT_TOKENS",
]

SEGMENT_TOKENS = 64  # window of the within-sequence drift fit (the batch the tests compare)
_COUNT_FLOOR = 0.01  # pseudo-count per expert so no expert has probability 0
_PILOT_SEQUENCES, _PILOT_TOKENS = 128, 256  # pilot trace for the repetition calibration
_PILOT_SEED = 20240108  # fixed: fitting is deterministic (any constant would do)
_CALIBRATION_STEPS = 4
_SHARE_CHECK = 0.008  # ~3 sampling SE of a pilot share (32k tokens in 64-token segments)
_STATS_FIELDS = (
    "num_layers",
    "num_experts",
    "top_k",
    "num_tokens",
    "tokens_per_expert",
    "first_choice_counts",
    "repeat_first_pct",
    "repeat_any_pct",
)


@dataclass(frozen=True)
class FitTargets:
    """What a fit must reproduce, per layer (counts, percentages in 0..100)."""

    first_counts: np.ndarray  # [L, E]
    topk_counts: np.ndarray  # [L, E]
    repeat_first_pct: np.ndarray  # [L] NaN where no pairs
    repeat_any_pct: np.ndarray  # [L]
    num_tokens: int
    top_k: int
    concentration: np.ndarray  # [L]
    joint_first: np.ndarray | None = None  # [L-1, E, E] first choices at (l, l+1)
    window_spread: float | None = None  # within-sequence spread of 64-token windows
    source: str = ""
    notes: tuple[str, ...] = field(default=())


# ---- targets from a trace or a stats JSON -----------------------------------------------


def _joint_first(trace: RouterTrace, num_experts: int) -> np.ndarray:
    """Joint first-choice counts [L-1, E, E] of consecutive layers."""
    first = trace.experts[:, :, 0].astype(np.int64)
    n_pairs = trace.num_layers - 1
    cell = (np.arange(n_pairs)[:, None] * num_experts + first[:-1]) * num_experts + first[1:]
    counts = np.bincount(cell.ravel(), minlength=n_pairs * num_experts**2)
    return counts.reshape(n_pairs, num_experts, num_experts).astype(np.float64)


def fit_synth_params(trace: RouterTrace, num_experts: int, source: str = "") -> SynthParams:
    """Fit the synthetic model to `trace` (a model with `num_experts` experts per layer)."""
    if trace.num_tokens < 2:
        raise TraceError("fitting needs a trace of at least 2 tokens")
    stats = compute_stats(trace, num_experts)
    concentration = sequence_concentration(trace, num_experts)
    if concentration is None:
        concentration, note = mmlu_concentration(trace.num_layers, num_experts)
    else:
        note = (
            f"per-sequence concentration: from the trace's {np.unique(trace.seq_id).size} sequences"
        )
    return fit_from_targets(
        FitTargets(
            first_counts=stats.first_choice_counts.astype(np.float64),
            topk_counts=stats.tokens_per_expert.astype(np.float64),
            repeat_first_pct=stats.repeat_first_pct,
            repeat_any_pct=stats.repeat_any_pct,
            num_tokens=trace.num_tokens,
            top_k=trace.top_k,
            concentration=concentration,
            joint_first=_joint_first(trace, num_experts) if trace.num_layers > 1 else None,
            window_spread=_window_spread(trace.experts, trace.seq_id, trace.pos, num_experts),
            source=source or f"fitted to a trace of {trace.num_tokens} tokens",
            notes=(note,),
        )
    )


def load_stats_json(path: str | Path) -> dict[str, Any]:
    """Read the output of `moesim trace stats --json`, raising ConfigError on any defect."""
    data = read_mapping(path, "trace statistics")
    missing = [name for name in _STATS_FIELDS if name not in data]
    if missing:
        raise ConfigError(
            f"trace statistics file {path} lacks field(s) {', '.join(missing)}; "
            "pass the output of `moesim trace stats TRACE --json OUT.json`"
        )
    return data


def _stats_array(
    data: Mapping[str, Any], name: str, shape: tuple[int, ...], source: str
) -> np.ndarray:
    """Field `name` as a float array of `shape` (null -> NaN), or one ConfigError."""
    try:
        arr = np.array(data[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: field '{name}' must be numbers of shape {shape}") from None
    if arr.shape != shape:
        dims = " (num_layers, num_experts)" if len(shape) == 2 else ""
        raise ConfigError(
            f"{source}: field '{name}' must have shape {shape}{dims}, got {arr.shape}"
        )
    return arr


# Fields of `moesim trace stats --json` the fit does not use, checked when present (a stats
# file whose extra fields are impossible was not written by moesim or was edited): shape
# (per layer, or per consecutive layer pair) and range, null allowed (no data).
_OPTIONAL_STATS: dict[str, tuple[str, float, float, str]] = {
    "imbalance": ("layer", 0.0, math.inf, "a ratio >= 0 (max / mean)"),
    "cv": ("layer", 0.0, math.inf, "a coefficient of variation >= 0"),
    "cross_first_in_topk_pct": ("pair", 0.0, 100.0, "a percentage in 0..100"),
    "cross_nmi": ("pair", 0.0, 1.0, "a normalised mutual information in 0..1"),
}


def _first_bad(arr: np.ndarray, bad: Callable[[np.ndarray], np.ndarray]) -> str:
    """`value at index` of the first element `bad` flags."""
    index = tuple(int(i) for i in np.argwhere(bad(arr))[0])
    where = ", ".join(map(str, index))
    return f"{arr[index]:g} at [{where}]"


def _check_range(arr: np.ndarray, name: str, low: float, high: float, source: str,
                 what: str) -> None:
    """Every non-NaN value of field `name` within [low, high], or one ConfigError."""
    def bad(a: np.ndarray) -> np.ndarray:
        return np.isinf(a) | (a < low) | (a > high)
    if bad(arr).any():
        raise ConfigError(f"{source}: field '{name}' must hold {what} (null where there is no "
                          f"data), got {_first_bad(arr, bad)}")


def _check_optional(data: Mapping[str, Any], n_layers: int, source: str) -> None:
    """The unused per-layer fields, when present: shape and range (_OPTIONAL_STATS)."""
    for name, (per, low, high, what) in _OPTIONAL_STATS.items():
        if name not in data:
            continue
        length = n_layers if per == "layer" else max(n_layers - 1, 0)
        _check_range(_stats_array(data, name, (length,), source), name, low, high, source, what)


def fit_synth_params_from_stats(data: Mapping[str, Any], source: str = "stats") -> SynthParams:
    """Fit the synthetic model to a stats JSON mapping (no joint counts: layers independent)."""
    sizes: dict[str, int] = {}
    for name in ("num_layers", "num_experts", "top_k", "num_tokens"):
        value = data.get(name)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{source}: field '{name}' must be a whole number, got {value!r:.40}")
        sizes[name] = value
    n_layers, n_experts = sizes["num_layers"], sizes["num_experts"]
    top_k, n_tokens = sizes["top_k"], sizes["num_tokens"]
    if n_layers < 1 or n_tokens < 2 or not 1 <= top_k <= n_experts:
        raise ConfigError(
            f"{source}: need num_layers >= 1, num_tokens >= 2 and 1 <= top_k <= "
            f"num_experts, got {n_layers}, {n_tokens}, {top_k}, {n_experts}"
        )
    counts = {
        name: _stats_array(data, name, (n_layers, n_experts), source)
        for name in ("tokens_per_expert", "first_choice_counts")
    }
    repeats = {
        name: _stats_array(data, name, (n_layers,), source)
        for name in ("repeat_first_pct", "repeat_any_pct")
    }
    for name, arr in counts.items():
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise ConfigError(f"{source}: field '{name}' must hold finite counts >= 0, got "
                              f"{_first_bad(arr, lambda a: ~np.isfinite(a) | (a < 0))}")
    if not counts["first_choice_counts"].any():
        raise ConfigError(f"{source}: field 'first_choice_counts' is all zero; pass the stats "
                          "of a trace that routed tokens")
    for name, arr in repeats.items():  # null (NaN): a layer without consecutive pairs
        _check_range(arr, name, 0.0, 100.0, source, "a percentage in 0..100")
    _check_optional(data, n_layers, source)
    concentration, note = mmlu_concentration(n_layers, n_experts)
    return fit_from_targets(
        FitTargets(
            first_counts=counts["first_choice_counts"],
            topk_counts=counts["tokens_per_expert"],
            repeat_first_pct=repeats["repeat_first_pct"],
            repeat_any_pct=repeats["repeat_any_pct"],
            num_tokens=n_tokens,
            top_k=top_k,
            concentration=concentration,
            source=source,
            notes=(
                note,
                "cross-layer: a stats JSON holds no joint counts, layers drawn independently",
            ),
        )
    )


# ---- the fit ------------------------------------------------------------------------------


def _rest_popularity(first: np.ndarray, target: np.ndarray, top_k: int) -> np.ndarray:
    """q [L, E] whose k-1 draws without replacement (excluding the first) give `target` shares.

    Multiplicative fixed point q <- q * target / shares(q), 200 steps for k = 2 (exact
    shares), 60 for k > 2 (shares from 20000 fixed-seed Plackett-Luce samples per layer).
    """
    if top_k == 1:
        return target
    rng = np.random.default_rng(_PILOT_SEED)
    samples = (rng.gumbel(size=(20000, first.shape[1])), rng.random(20000))
    q = target.copy()
    for _ in range(200 if top_k == 2 else 60):
        q = np.maximum(
            q * target / np.maximum(_rest_shares(first, q, top_k, samples), 1e-12), 1e-12
        )
        q /= q.sum(axis=1, keepdims=True)
    return q


def _rest_shares(
    first: np.ndarray, q: np.ndarray, top_k: int, samples: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Expected share of each expert among choices 2..k: exact for k=2, Monte Carlo above."""
    if top_k == 2:
        return q * ((first / (1 - q)).sum(axis=1, keepdims=True) - first / (1 - q))
    gumbel, uniforms = samples
    n_samples, n_experts = gumbel.shape
    shares = np.empty_like(q)
    for layer in range(q.shape[0]):  # first from p, then Gumbel top-(k-1) of the others
        cum = np.cumsum(first[layer])
        chosen = np.minimum(np.searchsorted(cum, uniforms * cum[-1], side="right"), n_experts - 1)
        keys = np.log(q[layer]) + gumbel
        keys[np.arange(n_samples), chosen] = -np.inf
        top = np.argpartition(-keys, top_k - 2, axis=1)[:, : top_k - 1]
        shares[layer] = np.bincount(top.ravel(), minlength=n_experts) / top.size
    return shares


def _mutual_information(joint: np.ndarray) -> float:
    """Mutual information (nats) of a joint probability table."""
    px, py = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (px @ py)[nz])).sum())


def _cross_layer(
    joint: np.ndarray | None, n_layers: int, n_experts: int, n_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Transition matrices [L, E, E] and follow probabilities c [L] from joint counts."""
    transition = np.ones((n_layers, n_experts, n_experts))
    cross = np.zeros(n_layers)
    if joint is None:
        return transition, cross
    bias = (n_experts - 1) ** 2 / (2 * n_tokens)  # Miller-Madow bias of plug-in MI, nats
    for layer in range(1, n_layers):
        counts = joint[layer - 1]
        prior = np.outer(counts.sum(axis=1), counts.sum(axis=0)) / max(counts.sum(), 1) ** 2
        smooth = counts + n_experts * prior + _COUNT_FLOOR
        transition[layer] = smooth / smooth.sum(axis=1, keepdims=True)
        target = max(_mutual_information(counts / max(counts.sum(), 1)) - bias, 0.0)
        cross[layer] = _solve_cross(transition[layer], smooth.sum(axis=1), target)
    return transition, cross


def _solve_cross(transition: np.ndarray, prev_counts: np.ndarray, target_nats: float) -> float:
    """c in [0, 1] with MI of the channel c P + (1-c) 1 p' equal to `target_nats` (bisection)."""
    prev = prev_counts / prev_counts.sum()
    marginal = prev @ transition

    def mi(c: float) -> float:
        return _mutual_information(prev[:, None] * (c * transition + (1 - c) * marginal))

    if target_nats <= 0:
        return 0.0
    if mi(1.0) <= target_nats:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(40):  # MI is convex in c with MI(0) = 0, so increasing on [0, 1]
        mid = (low + high) / 2
        low, high = (mid, high) if mi(mid) < target_nats else (low, mid)
    return (low + high) / 2


def _repeat_rates(layout: SequenceLayout, choices: np.ndarray) -> tuple[float, float]:
    """(% first-choice repeats, % top-k overlaps) over consecutive pairs; choices [T, k]."""
    pairs = layout.continues[1:]
    prev, nxt = choices[:-1][pairs], choices[1:][pairs]
    any_shared = (prev[:, :, None] == nxt[:, None, :]).any(axis=(1, 2))
    return 100.0 * float((prev[:, 0] == nxt[:, 0]).mean()), 100.0 * float(any_shared.mean())


def _calibrate(rate: Callable[[float], float], target: float) -> tuple[float, float | None]:
    """theta in [-1, 1] with rate(theta) ~= target: > 0 keeps, < 0 avoids repeats.

    `rate` increases with theta. Regula falsi (Illinois) between 0 and the end on the
    target's side; returns theta and, when the target is out of reach, the end's rate.
    """
    floor = rate(0.0)
    if not math.isfinite(target) or abs(target - floor) < 0.05:
        return 0.0, None
    end = 1.0 if target > floor else -1.0
    extreme = rate(end)
    if (target - extreme) * end >= 0:
        return end, extreme
    low, f_low, high, f_high = 0.0, floor - target, end, extreme - target
    side = 0
    for _ in range(_CALIBRATION_STEPS):
        theta = high - f_high * (high - low) / (f_high - f_low)
        f_theta = rate(theta) - target
        if f_theta * f_high > 0:
            high, f_high = theta, f_theta
            f_low = f_low / 2 if side == -1 else f_low
            side = -1
        else:
            low, f_low = theta, f_theta
            f_high = f_high / 2 if side == 1 else f_high
            side = 1
    return (low if abs(f_low) < abs(f_high) else high), None


def _window_spread(
    experts: np.ndarray, seq: np.ndarray, pos: np.ndarray, num_experts: int
) -> float | None:
    """Within-sequence spread of top-k shares over aligned windows, pooled over layers.

    Windows are `SEGMENT_TOKENS` consecutive positions of one sequence (full windows only).
    Per layer sum_e sum_w (f_we - mean_s(w),e)^2 / (windows - sequences), divided by
    1 - sum_e p_e^2; mean over layers. None when there are fewer than 2 degrees of freedom.
    """
    window_key = seq.astype(np.int64) * (int(pos.max()) + 1) + pos // SEGMENT_TOKENS
    keys, window, sizes = np.unique(window_key, return_inverse=True, return_counts=True)
    full = sizes == SEGMENT_TOKENS
    window_seq = keys // (int(pos.max()) + 1)
    dof = int(full.sum()) - np.unique(window_seq[full]).size
    if dof < 2:
        return None
    n_layers, _, top_k = experts.shape
    cell = (
        window[None, :, None] * n_layers + np.arange(n_layers)[:, None, None]
    ) * num_experts + experts.astype(np.int64)
    counts = np.bincount(cell.ravel(), minlength=keys.size * n_layers * num_experts)
    shares = counts.reshape(keys.size, n_layers, num_experts)[full] / (SEGMENT_TOKENS * top_k)
    owner = np.unique(window_seq[full], return_inverse=True)[1]  # window -> its sequence
    width = n_layers * num_experts
    sums = np.bincount(
        (owner[:, None] * width + np.arange(width)).ravel(),
        weights=shares.reshape(owner.size, width).ravel(),
        minlength=(int(owner.max()) + 1) * width,
    )
    seq_mean = sums.reshape(-1, n_layers, num_experts) / np.bincount(owner)[:, None, None]
    deviation = ((shares - seq_mean[owner]) ** 2).sum(axis=(0, 2)) / dof  # [L]
    mean = shares.mean(axis=0)
    return float((deviation / np.maximum(1 - (mean**2).sum(axis=1), 1e-12)).mean())


def fit_from_targets(targets: FitTargets) -> SynthParams:
    """Fit every parameter to `targets` (see the module docstring)."""
    n_layers, n_experts = targets.first_counts.shape
    first = targets.first_counts + _COUNT_FLOOR
    first /= first.sum(axis=1, keepdims=True)
    rest = np.maximum(targets.topk_counts - targets.first_counts, 0) + _COUNT_FLOOR
    rest = _rest_popularity(first, rest / rest.sum(axis=1, keepdims=True), targets.top_k)
    transition, cross = _cross_layer(targets.joint_first, n_layers, n_experts, targets.num_tokens)
    params = SynthParams(
        first_popularity=first,
        rest_popularity=rest,
        concentration=targets.concentration,
        keep_first=np.zeros(n_layers),
        keep_rest=np.zeros(n_layers),
        cross_prob=cross,
        transition=transition,
        top_k=targets.top_k,
        generator="fitted",
        source=targets.source,
        notes=targets.notes,
    )
    params, pilot, notes = _calibrate_repetition(
        params, targets, _PILOT_SEQUENCES // (1 if targets.window_spread is None else 2)
    )
    if targets.window_spread is None:
        return replace(
            params,
            notes=params.notes
            + tuple(notes)
            + (
                "within-sequence drift: not fitted (needs 2+ windows of 64 tokens beyond one per "
                "sequence); none",
            ),
        )
    spread_no_drift = _window_spread(pilot.experts, pilot.seq_id, pilot.pos, n_experts) or 0.0
    excess = targets.window_spread - spread_no_drift
    if excess <= 0:
        return replace(
            params,
            notes=params.notes
            + tuple(notes)
            + (
                f"within-sequence drift: none (window spread {targets.window_spread:.4f} within "
                f"the model's {spread_no_drift:.4f})",
            ),
        )
    drift = replace(
        params,
        segment_tokens=SEGMENT_TOKENS,
        segment_concentration=np.full(n_layers, max(1.0 / excess - 1.0, 1e-3)),
    )
    params, pilot, notes = _calibrate_repetition(drift, targets, _PILOT_SEQUENCES)
    spread = _window_spread(pilot.experts, pilot.seq_id, pilot.pos, n_experts) or 0.0
    return replace(
        params,
        notes=params.notes
        + tuple(notes)
        + (
            f"within-sequence drift: every {SEGMENT_TOKENS} tokens, concentration "
            f"{params.segment_concentration[0]:.0f}; window spread real "
            f"{targets.window_spread:.4f}, pilot {spread:.4f}",
        ),
    )


def _calibrate_repetition(
    params: SynthParams, targets: FitTargets, pilot_sequences: int
) -> tuple[SynthParams, RouterTrace, list[str]]:
    """keep/avoid probabilities per layer on a fixed-seed pilot, layer after layer.

    A layer whose pilot shares miss the targets by more than _SHARE_CHECK (avoided repeats
    and the tilts bias them) gets its p_l and q_l rescaled by target / pilot once and is
    calibrated again. Returns the parameters, their pilot trace and notes on targets the
    model cannot reach.
    """
    layout = sequence_layout(
        pilot_sequences * _PILOT_TOKENS, pilot_sequences, params.segment_tokens
    )
    probs = {
        name: np.zeros(params.num_layers)
        for name in ("keep_first", "avoid_first", "keep_rest", "avoid_rest")
    }
    experts = np.empty((params.num_layers, layout.seq.size, params.top_k), dtype=np.int16)
    notes: list[str] = []
    prev: np.ndarray | None = None
    for layer in range(params.num_layers):
        for attempt in range(2):
            choices, thetas, reached = _calibrate_layer(params, targets, layout, layer, prev)
            correction = _share_correction(params, targets, layer, choices)
            if attempt or correction is None:
                break
            params = replace(params, first_popularity=correction[0], rest_popularity=correction[1])
        probs["keep_first"][layer], probs["avoid_first"][layer] = _split(thetas[0])
        probs["keep_rest"][layer], probs["avoid_rest"][layer] = _split(thetas[1])
        for name, target, value in zip(
            ("repeat_first", "repeat_any"),
            (targets.repeat_first_pct[layer], targets.repeat_any_pct[layer]),
            reached,
            strict=True,
        ):
            if value is not None:
                notes.append(
                    f"layer {layer}: {name} {target:.1f} % is beyond the model's "
                    f"reach; the pilot reaches {value:.1f} %"
                )
        experts[layer] = choices
        prev = choices[:, 0].astype(np.int64)
    pilot = RouterTrace(experts=experts, seq_id=layout.seq, pos=layout.pos)
    return (
        replace(
            params,
            keep_first=probs["keep_first"],
            avoid_first=probs["avoid_first"],
            keep_rest=probs["keep_rest"],
            avoid_rest=probs["avoid_rest"],
        ),
        pilot,
        notes,
    )


def _split(theta: float) -> tuple[float, float]:
    """theta in [-1, 1] -> (keep probability, avoid probability)."""
    return max(theta, 0.0), max(-theta, 0.0)


def _calibrate_layer(
    params: SynthParams,
    targets: FitTargets,
    layout: SequenceLayout,
    layer: int,
    prev: np.ndarray | None,
) -> tuple[np.ndarray, tuple[float, float], tuple[float | None, ...]]:
    """Pilot choices [T, k] of one layer, its (first, rest) thetas and unreached rates."""
    pop_first, pop_rest, tilt = sequence_popularity(
        params, layer, layout, np.random.default_rng([_PILOT_SEED, layer, 0])
    )

    def pilot_first(theta: float) -> np.ndarray:
        rng = np.random.default_rng([_PILOT_SEED, layer, 1])
        keep, avoid = _split(theta)
        return first_choices(
            layout,
            pop_first,
            keep,
            avoid,
            params.cross_prob[layer],
            params.transition[layer],
            prev,
            rng,
            tilt,
        )

    theta_first, reached_first = _calibrate(
        lambda t: _repeat_rates(layout, pilot_first(t)[:, None])[0], targets.repeat_first_pct[layer]
    )
    first = pilot_first(theta_first)

    def pilot_all(theta: float) -> np.ndarray:
        rng = np.random.default_rng([_PILOT_SEED, layer, 2])
        keep, avoid = _split(theta)
        rest = rest_choices(layout, pop_rest, keep, avoid, first, params.top_k, rng)
        return np.concatenate([first[:, None], rest], axis=1)

    theta_rest, reached_rest = _calibrate(
        lambda t: _repeat_rates(layout, pilot_all(t))[1], targets.repeat_any_pct[layer]
    )
    return pilot_all(theta_rest), (theta_first, theta_rest), (reached_first, reached_rest)


def _share_correction(
    params: SynthParams, targets: FitTargets, layer: int, choices: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Rescaled (first, rest) popularity when the pilot's shares miss, else None."""
    n_experts = params.num_experts
    want_first = targets.first_counts[layer] / targets.first_counts[layer].sum()
    got_first = np.bincount(choices[:, 0], minlength=n_experts) / choices.shape[0]
    rest_counts = np.maximum(targets.topk_counts[layer] - targets.first_counts[layer], 0)
    want_rest = rest_counts / max(rest_counts.sum(), 1.0)
    got_rest = np.bincount(choices[:, 1:].ravel(), minlength=n_experts) / max(
        choices[:, 1:].size, 1
    )
    miss = max(
        np.abs(got_first - want_first).max(),
        np.abs(got_rest - want_rest).max() if params.top_k > 1 else 0.0,
    )
    if miss <= _SHARE_CHECK:
        return None
    first, rest = params.first_popularity.copy(), params.rest_popularity.copy()
    first[layer] *= (want_first + _COUNT_FLOOR / 100) / (got_first + _COUNT_FLOOR / 100)
    rest[layer] *= (want_rest + _COUNT_FLOOR / 100) / (got_rest + _COUNT_FLOOR / 100)
    return first, rest
