"""Per-sequence variation of expert popularity: Dirichlet concentration from a trace or MMLU."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import TraceError
from moesim.trace.format import RouterTrace

__all__ = [
    "MIN_SEQUENCES",
    "MIN_SEQUENCE_TOKENS",
    "sequence_concentration",
    "summarise_mmlu_fractions",
    "mmlu_concentration",
]

MIN_SEQUENCES = 8  # sequences needed to estimate the per-sequence concentration from a trace
MIN_SEQUENCE_TOKENS = 32  # tokens a sequence needs to count towards MIN_SEQUENCES

# ---- per-sequence variation ---------------------------------------------------------------


def _moment_concentration(fractions: np.ndarray, draws: np.ndarray, top_k: int) -> np.ndarray:
    """Dirichlet concentration per layer from per-group top-k shares [G, L, E], `draws` [G].

    Moments: V = sum_e Var(f_e) / (1 - sum_e p_e^2) = (1 + alpha f / N) / (1 + alpha), so
    alpha = (1 - V) / (V - f / N), inf when V <= f / N (no more spread than sampling noise).
    N is the harmonic mean of the draws (k per token) per group; f = (1 - k sum p^2) /
    (1 - sum p^2) is the noise of k draws without replacement per token relative to k
    independent ones (inclusion probability taken as k p_e).
    """
    mean = fractions.mean(axis=0)
    purity = (mean**2).sum(axis=-1)
    spread = fractions.var(axis=0, ddof=1).sum(axis=-1) / np.maximum(1 - purity, 1e-12)
    noise = (
        np.maximum(1 - top_k * purity, 0)
        / np.maximum(1 - purity, 1e-12)
        * float(np.mean(1.0 / draws))
    )
    with np.errstate(divide="ignore"):
        return np.where(spread > noise, (1 - spread) / np.maximum(spread - noise, 1e-300), np.inf)


def sequence_concentration(trace: RouterTrace, num_experts: int) -> np.ndarray | None:
    """Per-layer concentration [L] of first-choice shares across the trace's sequences.

    None when fewer than MIN_SEQUENCES sequences have MIN_SEQUENCE_TOKENS tokens. First
    choices, because the generator's Dirichlet is over first-choice popularity (top-k shares
    vary less: choices 2..k are drawn without replacement).
    """
    ids, lengths = np.unique(trace.seq_id, return_counts=True)
    usable = ids[lengths >= MIN_SEQUENCE_TOKENS]
    if usable.size < MIN_SEQUENCES:
        return None
    inside = np.isin(trace.seq_id, usable)
    which = np.searchsorted(usable, trace.seq_id[inside])
    n_layers = trace.num_layers
    cell = (which[None, :] * n_layers + np.arange(n_layers)[:, None]) * num_experts + trace.experts[
        :, inside, 0
    ].astype(np.int64)
    counts = np.bincount(cell.ravel(), minlength=usable.size * n_layers * num_experts)
    counts = counts.reshape(usable.size, n_layers, num_experts).astype(np.float64)
    draws = counts.sum(axis=2)[:, 0]
    return _moment_concentration(counts / draws[:, None, None], draws, 1)


def summarise_mmlu_fractions(directory: str | Path) -> dict[str, Any]:
    """The MMLU popularity-variation summary (the bundled JSON) from the per-prompt `.npy` files.

    Each file is float32 [questions, layers, experts]: the fraction of a question's top-2
    assignments per expert. A question's token count n is the smallest n with every
    fraction a multiple of 1 / (2 n).
    """
    files = sorted(Path(directory).glob("*.npy"))
    if not files:
        raise TraceError(f"no .npy files in {directory}")
    per_subject = [np.load(f).astype(np.float64) for f in files]
    fractions = np.concatenate(per_subject)
    draws = _draws_per_question(fractions.reshape(fractions.shape[0], -1))
    subject_means = np.stack([f.mean(axis=0) for f in per_subject])
    return {
        "num_questions": int(fractions.shape[0]),
        "num_subjects": len(files),
        "tokens_per_question_median": float(np.median(draws / 2)),
        "concentration": [round(float(a), 1) for a in _moment_concentration(fractions, draws, 2)],
        "concentration_subject_means": [
            round(float(a), 1)
            for a in _moment_concentration(subject_means, np.full(len(files), np.inf), 2)
        ],
        "mean_topk_share": np.round(fractions.mean(axis=0), 4).tolist(),
    }


def _draws_per_question(flat: np.ndarray) -> np.ndarray:
    """Smallest even D <= 8192 with every fraction * D an integer, per row (2 * tokens)."""
    found = np.zeros(flat.shape[0])
    for draws in range(2, 8193, 2):
        todo = found == 0
        if not todo.any():
            break
        scaled = flat[todo] * draws
        exact = (np.abs(scaled - np.round(scaled)) < 2e-3 * max(1.0, draws / 1000)).all(axis=1)
        found[np.flatnonzero(todo)[exact]] = draws
    return np.where(found > 0, found, np.inf)


def mmlu_concentration(num_layers: int, num_experts: int) -> tuple[np.ndarray, str]:
    """Per-layer concentration from the bundled MMLU summary, and a note on how it applies."""
    text = (resources.files("moesim") / "data" / "mmlu_popularity_variation.json").read_text(
        encoding="utf-8"
    )
    summary = json.loads(text)
    per_layer = np.asarray(summary["concentration"], dtype=np.float64)
    if num_experts == summary["num_experts"] and num_layers == per_layer.size:
        return per_layer, "per-sequence concentration: MMLU per-prompt summary (Mixtral-8x7B)"
    median = float(np.median(per_layer))
    return np.full(num_layers, median), (
        f"per-sequence concentration: assumed {median:.0f} at every layer (median of the "
        f"Mixtral-8x7B MMLU summary; this trace has {num_layers} layers of {num_experts} experts)"
    )
