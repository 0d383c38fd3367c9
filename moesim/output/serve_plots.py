"""Plots of served workloads (matplotlib, Agg, imported inside the drawing functions):
- TTFT and TPOT CDFs, one line per run (layout, load level);
- running batch, waiting requests and KV-cache use over time, per run;
- latency against load (p50 and p90 of TTFT and TPOT per load level), with the SLO lines.
They draw `ServeResult.plot_data()` and load curves; they never run the engine. Each run keeps
one colour in every panel, panels of one quantity share their axis, targets are dashed black
lines labelled `target`, and legends sit outside the axes.
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


def _target(ax: Any, value_s: float | None, *, vertical: bool) -> None:
    """The dashed target line at `value_s` (drawn in ms), when a target is given."""
    if value_s is not None:
        (ax.axvline if vertical else ax.axhline)(value_s * 1e3, color="black", linestyle="--",
                                                 linewidth=1.2, label="target")


def _figure_legend(fig: Any, axes: Any, title: str | None = None) -> None:
    """One legend right of the axes with every label drawn, each once, in drawing order."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(handles=list(handles.values()), labels=list(handles), title=title,
                   loc="outside right upper", fontsize=8)


def latency_cdf_figure(runs: dict[str, dict[str, Any]], slo: dict[str, float | None]):  # type: ignore[no-untyped-def]
    fig = _figure(13, 4.5)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, label in ((axes[0], "ttft_s", "TTFT (ms)"), (axes[1], "tpot_s", "TPOT (ms)")):
        for index, (name, data) in enumerate(runs.items()):
            values = np.sort(np.asarray(data[key], dtype=float)) * 1e3
            if values.size:
                ax.step(values, np.arange(1, values.size + 1) / values.size, where="post",
                        label=name, color=f"C{index % 10}")
        _target(ax, slo.get(key), vertical=True)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("fraction of requests")
    _figure_legend(fig, axes)
    fig.suptitle("Per-request latency, cumulative distribution" + (
        "; dashed: the targets" if any(v is not None for v in slo.values()) else ""))
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


# Colours of the quantities over time (a second engine, with disaggregation, drawn thinner).
_SERIES_COLOURS = {"running": "C0", "waiting": "C1", "preempted": "C3", "kv": "C2"}


def batch_kv_figure(runs: dict[str, dict[str, Any]]):  # type: ignore[no-untyped-def]
    """Per run, at each iteration start of each engine (prefill and decode pools apart):
    running sequences, waiting requests, preemptions so far and the busiest scheduler's KV use.
    Every run on the same requests scale."""
    fig = _figure(13, 2.6 * len(runs) + 0.6)
    axes = fig.subplots(len(runs), 1, squeeze=False, sharey=True)[:, 0]
    twins = []
    for ax, (name, data) in zip(axes, runs.items(), strict=True):
        it = data["iterations"]
        start = np.asarray(it["start_s"], dtype=float)
        engines = np.asarray(it.get("engine", [""] * start.size))
        names = list(dict.fromkeys(engines.tolist()))
        preempted = np.asarray(it.get("preemptions", [0] * start.size))
        kv = ax.twinx()
        twins.append(kv)
        duration = np.asarray(it.get("duration_s", np.zeros(start.size)), dtype=float)
        for index, engine in enumerate(names):
            mine = engines == engine
            tag = f"{engine}: " if len(names) > 1 else ""
            width = 1.5 if index == 0 else 0.9
            at, running = _busy(start[mine], duration[mine], np.asarray(it["running"])[mine])
            ax.step(at, running, where="post", label=f"{tag}running sequences",
                    color=_SERIES_COLOURS["running"], linewidth=width)
            ax.step(start[mine], np.asarray(it["waiting"])[mine], where="post", linestyle=":",
                    label=f"{tag}waiting requests", color=_SERIES_COLOURS["waiting"],
                    linewidth=width)
            if preempted[mine].size and preempted[mine][-1] > 0:
                ax.step(start[mine], preempted[mine], where="post", linestyle="--",
                        label=f"{tag}preemptions so far", color=_SERIES_COLOURS["preempted"],
                        linewidth=width)
            kv.step(start[mine], 100 * np.asarray(it["kv_used_fraction"], dtype=float)[mine],
                    where="post", linestyle="-.", label=f"{tag}KV cache used (right axis)",
                    color=_SERIES_COLOURS["kv"], linewidth=width)
        ax.set_ylabel("requests")
        kv.set_ylabel("KV cache used (%)")
        kv.set_ylim(0, 105)
        ax.set_title(name, fontsize=10, loc="left")
    _integer_ticks(axes[0].yaxis)
    _figure_legend(fig, [ax for pair in zip(axes, twins, strict=True) for ax in pair])
    axes[-1].set_xlabel("time (s)")
    fig.suptitle("Batch, queue, preemptions and KV cache over time (the busiest scheduler's KV "
                 "use)")
    return fig


def _integer_ticks(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _load_figure(curves: dict[str, list[dict[str, Any]]], kind: str,
                 slo: dict[str, float | None]):  # type: ignore[no-untyped-def]
    from matplotlib.ticker import ScalarFormatter

    fig = _figure(13, 4.5)
    axes = fig.subplots(1, 2, sharex=True)
    for ax, key, label in ((axes[0], "ttft_s", "TTFT (ms)"), (axes[1], "tpot_s", "TPOT (ms)")):
        for index, (name, curve) in enumerate(curves.items()):
            levels = [p["level"] for p in curve]
            for q, style in (("p50", "-"), ("p90", ":")):
                values = [p["result"][key][q] for p in curve]
                ax.plot(levels, [np.nan if v is None else v * 1e3 for v in values], style,
                        marker="o", color=f"C{index}", label=f"{name} {q}")
        _target(ax, slo.get(key), vertical=False)
        ax.set_xlabel(kind)
        ax.set_ylabel(f"{label}, log scale")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="both", labelsize=8)
        ax.grid(True, which="both", alpha=0.3)
    _figure_legend(fig, axes)
    fig.suptitle(f"Latency against load ({kind}): solid p50, dotted p90")
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
