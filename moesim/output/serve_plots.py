"""Plots of served workloads (matplotlib, Agg, imported inside the drawing functions):
- TTFT and TPOT CDFs, one line per run (layout, load level);
- running batch, waiting requests and KV-cache use over time, per run;
- latency against load (p50 and p90 of TTFT and TPOT per load level), with the SLO lines.
They draw `ServeResult.plot_data()` and load curves; they never run the engine.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from moesim.output.files import write_atomic

__all__ = ["serve_pngs", "save_serve_plots", "latency_cdf_figure", "batch_kv_figure"]


def _figure(width: float, height: float):  # type: ignore[no-untyped-def]
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def latency_cdf_figure(runs: dict[str, dict[str, Any]], slo: dict[str, float | None]):  # type: ignore[no-untyped-def]
    fig = _figure(12, 4.5)
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "ttft_s", "TTFT (ms)"), (axes[1], "tpot_s", "TPOT (ms)")):
        for name, data in runs.items():
            values = np.sort(np.asarray(data[key], dtype=float)) * 1e3
            if values.size:
                ax.step(values, np.arange(1, values.size + 1) / values.size, where="post",
                        label=name)
        if slo.get(key) is not None:
            ax.axvline(slo[key] * 1e3, color="k", linestyle="--", label="SLO")  # type: ignore[operator]
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Per-request latency, cumulative distribution")
    return fig


def _busy(start: np.ndarray, duration: np.ndarray, values: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """A step series of `values` over iterations that drops to 0 while the engine is idle."""
    end = start + duration
    idle = np.append(start[1:] > end[:-1] * (1 + 1e-12), True)
    times = np.concatenate([start, end[idle]])
    series = np.concatenate([values, np.zeros(int(idle.sum()))])
    order = np.argsort(times, kind="stable")
    return times[order], series[order]


def batch_kv_figure(runs: dict[str, dict[str, Any]]):  # type: ignore[no-untyped-def]
    """Per run, at each iteration start of each engine (prefill and decode pools apart):
    running sequences, waiting requests, preemptions so far and the busiest scheduler's KV use."""
    fig = _figure(12, 2.6 * len(runs) + 0.6)
    axes = fig.subplots(len(runs), 1, squeeze=False)[:, 0]
    for ax, (name, data) in zip(axes, runs.items(), strict=True):
        it = data["iterations"]
        start = np.asarray(it["start_s"], dtype=float)
        engines = np.asarray(it.get("engine", [""] * start.size))
        names = list(dict.fromkeys(engines.tolist()))
        preempted = np.asarray(it.get("preemptions", [0] * start.size))
        kv = ax.twinx()
        duration = np.asarray(it.get("duration_s", np.zeros(start.size)), dtype=float)
        for engine in names:
            mine = engines == engine
            tag = f"{engine}: " if len(names) > 1 else ""
            at, running = _busy(start[mine], duration[mine], np.asarray(it["running"])[mine])
            ax.step(at, running, where="post", label=f"{tag}running sequences")
            ax.step(start[mine], np.asarray(it["waiting"])[mine], where="post", linestyle=":",
                    label=f"{tag}waiting requests")
            if preempted[mine].size and preempted[mine][-1] > 0:
                ax.step(start[mine], preempted[mine], where="post", linestyle="--",
                        label=f"{tag}preemptions so far")
            kv.step(start[mine], 100 * np.asarray(it["kv_used_fraction"], dtype=float)[mine],
                    where="post", linestyle="-.", label=f"{tag}KV cache used")
        ax.set_ylabel("requests")
        kv.set_ylabel("KV cache used (%)")
        kv.set_ylim(0, 105)
        ax.set_title(name, fontsize=10, loc="left")
        handles = ax.get_legend_handles_labels()[0] + kv.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7, loc="upper right")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle("Batch, queue, preemptions and KV cache over time (the busiest scheduler's KV "
                 "use)")
    return fig


def _load_figure(curves: dict[str, list[dict[str, Any]]], kind: str,
                 slo: dict[str, float | None]):  # type: ignore[no-untyped-def]
    fig = _figure(12, 4.5)
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "ttft_s", "TTFT (ms)"), (axes[1], "tpot_s", "TPOT (ms)")):
        for index, (name, curve) in enumerate(curves.items()):
            levels = [p["level"] for p in curve]
            for q, style in (("p50", "-"), ("p90", "--")):
                values = [p["result"][key][q] for p in curve]
                ax.plot(levels, [np.nan if v is None else v * 1e3 for v in values], style,
                        marker="o", color=f"C{index}", label=f"{name} {q}")
        if slo.get(key) is not None:
            ax.axhline(slo[key] * 1e3, color="k", linestyle=":", label="SLO")  # type: ignore[operator]
        ax.set_xlabel(kind)
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Latency against load ({kind})")
    return fig


def serve_pngs(runs: dict[str, dict[str, Any]], *, curves: dict[str, list[dict[str, Any]]]
               | None = None, kind: str = "", slo: dict[str, float | None] | None = None
               ) -> list[tuple[str, bytes]]:
    """Every serving figure as (file name, PNG bytes)."""
    slo = slo or {}
    figures = [("serve_latency_cdf.png", latency_cdf_figure(runs, slo)),
               ("serve_batch_kv.png", batch_kv_figure(runs))]
    if curves:
        figures.append(("serve_latency_vs_load.png", _load_figure(curves, kind, slo)))
    out = []
    for name, fig in figures:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        out.append((name, buffer.getvalue()))
    return out


def save_serve_plots(folder: str | Path, runs: dict[str, dict[str, Any]], **kwargs: Any
                     ) -> list[Path]:
    """Write the serving figures under `folder`; return their paths."""
    return [write_atomic(Path(folder) / name, png) for name, png in serve_pngs(runs, **kwargs)]
