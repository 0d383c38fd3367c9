"""Plots of a trace comparison (`moesim trace compare --plot DIR`), matplotlib with Agg.

Three PNG figures: per-layer expert load shares of both traces side by side (heatmaps, %),
Table-5 repetition by layer (%, with the uniform random baselines) and the distribution of
per-batch max/mean expert load (empirical CDFs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moesim.errors import TraceError
from moesim.output.files import write_atomic_with
from moesim.trace.compare import TraceComparison, expert_shares

__all__ = ["plot_comparison"]


def plot_comparison(comp: TraceComparison, directory: str | Path) -> list[Path]:
    """Write the comparison's figures into `directory` and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TraceError(f"cannot create plot folder {out}: {exc.strerror}") from None
    paths = [_plot_shares(plt, comp, out / "expert_load_heatmaps.png"),
             _plot_repetition(plt, comp, out / "repetition_by_layer.png"),
             _plot_batch_imbalance(plt, comp, out / "batch_imbalance_cdf.png")]
    return paths


def _plot_shares(plt: object, comp: TraceComparison, path: Path) -> Path:
    """Heatmaps: layer x expert share of top-k assignments (%), A and B on one colour scale."""
    shares = [100 * expert_shares(comp.stats_a), 100 * expert_shares(comp.stats_b)]
    top = max(float(s.max()) for s in shares)
    fig, axes = plt.subplots(1, 2, figsize=(10, 6), sharey=True)  # type: ignore[attr-defined]
    for ax, share, name in zip(axes, shares, (comp.name_a, comp.name_b), strict=True):
        image = ax.imshow(share, aspect="auto", vmin=0, vmax=top, cmap="viridis",
                          origin="lower")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("expert id")
    axes[0].set_ylabel("MoE layer")
    fig.colorbar(image, ax=list(axes), label="share of the layer's top-k assignments (%)")
    fig.suptitle("Expert load per layer")
    write_atomic_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)  # type: ignore[attr-defined]
    return path


def _plot_repetition(plt: object, comp: TraceComparison, path: Path) -> Path:
    """Lines: repeat_first and repeat_any (%) per layer for A and B, random baselines dashed."""
    fig, ax = plt.subplots(figsize=(9, 4.5))  # type: ignore[attr-defined]
    layers = np.arange(comp.stats_a.num_layers)
    for stats, name, style in ((comp.stats_a, comp.name_a, "-o"),
                               (comp.stats_b, comp.name_b, "--s")):
        ax.plot(layers, stats.repeat_first_pct, style, color="tab:blue", markersize=3,
                label=f"first choice repeated: {name}")
        ax.plot(layers, stats.repeat_any_pct, style, color="tab:orange", markersize=3,
                label=f"any of top-k shared: {name}")
    ax.axhline(comp.stats_a.random_repeat_first_pct, color="tab:blue", linestyle=":",
               label="uniform random, first")
    ax.axhline(comp.stats_a.random_repeat_any_pct, color="tab:orange", linestyle=":",
               label="uniform random, any")
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("consecutive token pairs (%)")
    ax.set_title("Expert repetition between tokens i and i+1 (Mixtral paper, Table 5)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    write_atomic_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)  # type: ignore[attr-defined]
    return path


def _plot_batch_imbalance(plt: object, comp: TraceComparison, path: Path) -> Path:
    """Empirical CDFs of per-batch, per-layer max/mean expert load for A and B."""
    fig, ax = plt.subplots(figsize=(6, 4.5))  # type: ignore[attr-defined]
    for values, name in ((comp.batch_imbalance_a, comp.name_a),
                         (comp.batch_imbalance_b, comp.name_b)):
        flat = np.sort(np.ravel(values))
        if flat.size:
            ax.step(flat, np.arange(1, flat.size + 1) / flat.size, where="post",
                    label=f"{name} ({flat.size} batch-layers)")
    ax.set_xlabel(f"max / mean tokens per expert in a batch of {comp.batch_tokens} tokens")
    ax.set_ylabel("cumulative fraction of (batch, layer)")
    ax.set_title(f"Per-batch load imbalance (KS {comp.batch_imbalance_ks:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)  # type: ignore[attr-defined]
    return path
