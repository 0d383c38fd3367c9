"""Plots of a comparison (`moesim.compare.run_compare`): PNG figures and the data behind them.

Figures (matplotlib, Agg, imported only inside the drawing functions):
- per-layer phase times per layout: the slowest rank's seconds per phase in every block;
- rank-by-rank dispatch traffic: bytes from each source rank to each destination rank summed
  over layers (the diagonal is local copies, which cross no link);
- expert load per layer: tokens (top-k assignments) per expert in every MoE layer;
- a Gantt timeline of one step: every rank's phases as coloured bars. A rank's phases run
  back to back (waits are part of the communication phase that waits); inside a block they are
  drawn in the canonical order `PHASES`, a phase that occurs twice in a block (TP/SP exchange
  before and after attention) as one bar of its total;
- latency against throughput: TPOT against decode tokens/s as the batch grows, per layout,
  from decode steps at analytic fidelity; batches that do not fit in memory are left out.

The per-point data (`point_plot_data`) is stored in the comparison JSON, so `moesim report`
redraws every figure from the JSON alone.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from moesim.engine.plan import PHASES
from moesim.inputs.config import Scenario
from moesim.planning.evaluate import step_traffic, time_step
from moesim.planning.resolve import resolve_inputs
from moesim.traffic.workload import build_step

__all__ = ["point_plot_data", "latency_throughput_sweep", "save_plots", "plot_pngs", "PlotInfo"]

PlotInfo = dict[str, str]  # name, title, caption (and path once saved)

PHASE_COLOURS = {
    "attention": "#4c72b0",
    "attn_comm": "#8172b3",
    "router": "#937860",
    "dispatch": "#dd8452",
    "experts": "#55a868",
    "combine": "#c44e52",
    "moe_comm": "#da8bc3",
    "lm_head": "#8c8c8c",
}


# ---- data --------------------------------------------------------------------------------


def point_plot_data(scenario: Scenario) -> dict[str, Any]:
    """Traffic matrix, expert load and the step timeline of one point (its own phase)."""
    inputs = resolve_inputs(scenario)
    step = build_step(inputs.trace, scenario.phase, scenario.batch, scenario.context)
    traffic = step_traffic(inputs, step)
    timeline = time_step(inputs, step, traffic)
    return {
        "phase": step.phase,
        "traffic_rank_bytes": traffic.dispatch_bytes.sum(axis=0).tolist(),  # [W, W]
        "expert_load": traffic.expert_load.tolist(),  # [L, E]
        "gantt": {
            "phases": list(PHASES),
            "phase_s": np.round(timeline.phase_s, 12).tolist(),  # [blocks, W, phases]
            "block_end_s": timeline.block_end_s.tolist(),  # [blocks, W]
            "lm_head_s": timeline.lm_head_s.tolist(),  # [W]
            "step_s": timeline.step_s,
            "fidelity": timeline.fidelity,
            "num_dense_blocks": timeline.num_dense_blocks,
        },
    }


def latency_throughput_sweep(
    base: Scenario,
    topologies: dict[str, Any],
    compare: dict[str, Any],
    batches: Sequence[int],
    *,
    progress: TextIO | None = sys.stderr,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per topology and layout: decode TPOT and tokens/s at each batch (analytic fidelity)."""
    from moesim.planning.evaluate import scenario_memory_fit

    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for spec, topology in topologies.items():
        layouts = _sweepable_layouts(compare, topology.name)
        out[topology.name] = {}
        for placement in layouts:
            points = []
            for batch in batches:
                sc = base.model_copy(update={"batch": batch, "topology": spec, "phase": "decode",
                                             "placement": placement, "fidelity": "analytic"})
                inputs = resolve_inputs(sc)
                fit = scenario_memory_fit(sc, inputs.model, inputs.parallelism, topology)
                point: dict[str, Any] = {"batch": batch, "fits": fit.fits}
                if fit.fits:
                    step = build_step(inputs.trace, "decode", batch, sc.context)
                    tpot_s = time_step(inputs, step, step_traffic(inputs, step)).step_s
                    point.update(tpot_s=tpot_s, tokens_per_s=batch / tpot_s)
                points.append(point)
            out[topology.name][placement] = points
            if progress is not None:
                print(f"sweep {placement} on {topology.name}: batches {list(batches)}",
                      file=progress)
    return out


def _sweepable_layouts(compare: dict[str, Any], topology: str) -> list[str]:
    """Layouts that ran, or failed only for memory, on `topology` in some workload."""
    rows = [r for g in compare["groups"] for r in g["ranked"] + g["infeasible"]]
    layouts: list[str] = []
    for row in sorted(rows, key=lambda r: r["order"]):
        ok = row["feasible"] or row["reason"].startswith("out of memory")
        if row["topology"] == topology and ok and row["placement"] not in layouts:
            layouts.append(row["placement"])
    return layouts


# ---- figures -----------------------------------------------------------------------------


def _new_figure(width: float, height: float):  # type: ignore[no-untyped-def]
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _by_topology(group: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The group's feasible rows with plot data, per topology, in layout order of the run."""
    out: dict[str, list[dict[str, Any]]] = {}
    rows = sorted(group["ranked"], key=lambda r: r.get("order", 0))
    for row in rows:
        if "plot_data" in row:
            out.setdefault(row["topology"], []).append(row)
    return out


def _phase_figure(rows: list[dict[str, Any]], title: str):  # type: ignore[no-untyped-def]
    fig = _new_figure(12, 1.0 + 2.0 * len(rows))
    axes = fig.subplots(len(rows), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    for ax, row in zip(axes, rows, strict=True):
        blocks = row["result"]["latency"]["per_block"]
        x = np.array([b["block"] for b in blocks])
        bottom = np.zeros(len(blocks))
        for phase in PHASES:
            ms = np.array([b["phase_max_s"][phase] for b in blocks]) * 1e3
            if ms.any():
                ax.bar(x, ms, bottom=bottom, color=PHASE_COLOURS[phase], label=phase, width=0.8)
                bottom += ms
        ax.set_ylabel("ms")
        ax.set_title(f"{row['placement']}: step {row['result']['latency']['step_s'] * 1e3:.2f} "
                     "ms", fontsize=10, loc="left")
    axes[-1].set_xlabel("transformer block")
    from matplotlib.patches import Patch

    used = {h.get_label() for ax in axes for h in ax.containers}
    handles = [Patch(color=PHASE_COLOURS[p], label=p) for p in PHASES if p in used]
    fig.legend(handles=handles, loc="outside right upper", title="phase")
    fig.suptitle(title)
    return fig


def _traffic_figure(rows: list[dict[str, Any]], title: str):  # type: ignore[no-untyped-def]
    cols = min(3, len(rows))
    nrows = -(-len(rows) // cols)
    fig = _new_figure(4.4 * cols + 0.6, 3.9 * nrows + 0.6)
    axes = fig.subplots(nrows, cols, squeeze=False).reshape(-1)
    for ax, row in zip(axes, rows, strict=False):
        matrix = np.array(row["plot_data"]["traffic_rank_bytes"], dtype=float) / 1e6
        image = ax.imshow(matrix, cmap="viridis", origin="upper")
        ticks = np.arange(matrix.shape[0])
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xlabel("destination rank")
        ax.set_ylabel("source rank")
        cross = matrix.sum() - np.trace(matrix)
        ax.set_title(f"{row['placement']}: {cross:.1f} MB cross-rank", fontsize=10)
        fig.colorbar(image, ax=ax, label="MB dispatched", shrink=0.85)
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def _expert_figure(row: dict[str, Any], title: str):  # type: ignore[no-untyped-def]
    load = np.array(row["plot_data"]["expert_load"], dtype=float)
    fig = _new_figure(min(4 + 0.35 * load.shape[1], 14), 6.5)
    ax = fig.subplots()
    image = ax.imshow(load, aspect="auto", cmap="magma", origin="lower", interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    if load.shape[1] <= 32:
        ax.set_xticks(np.arange(load.shape[1]))
    fig.colorbar(image, ax=ax, label="tokens routed (top-k assignments)")
    fig.suptitle(title)
    return fig


def _gantt_figure(rows: list[dict[str, Any]], title: str):  # type: ignore[no-untyped-def]
    world_max = max(len(r["plot_data"]["gantt"]["lm_head_s"]) for r in rows)
    fig = _new_figure(14, 0.9 + (0.32 * world_max + 0.7) * len(rows))
    axes = fig.subplots(len(rows), 2, squeeze=False, width_ratios=[3, 1])
    for (full, zoom), row in zip(axes, rows, strict=True):
        gantt = row["plot_data"]["gantt"]
        _draw_gantt(full, gantt)
        full.set_xlim(0, max(r["plot_data"]["gantt"]["step_s"] for r in rows) * 1e3)
        full.set_title(f"{row['placement']}: whole step {gantt['step_s'] * 1e3:.2f} ms "
                       f"({gantt['fidelity']})", fontsize=10, loc="left")
        full.set_ylabel("rank")
        _draw_gantt(zoom, gantt)
        zoom.set_xlim(*_zoom_window_ms(gantt))
        zoom.set_title("zoom: first two MoE blocks", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("time in the step (ms)")
    axes[-1, 1].set_xlabel("ms")
    from matplotlib.patches import Patch

    handles = [Patch(color=PHASE_COLOURS[p], label=p) for p in (*PHASES, "lm_head")]
    fig.legend(handles=handles, loc="outside right upper", title="phase")
    fig.suptitle(title)
    return fig


def _zoom_window_ms(gantt: dict[str, Any]) -> tuple[float, float]:
    """From the start to the end of the first two MoE blocks (slowest rank), in ms."""
    block_end = np.array(gantt["block_end_s"]) * 1e3
    first = gantt.get("num_dense_blocks", 0)
    start = block_end[first - 1].min() if first > 0 else 0.0
    end = block_end[min(first + 1, block_end.shape[0] - 1)].max()
    return float(start), float(end)


def _draw_gantt(ax: Any, gantt: dict[str, Any]) -> None:
    """Bars per rank: each block's phases back to back from the end of the previous block."""
    phase_s = np.array(gantt["phase_s"]) * 1e3  # [blocks, W, phases] ms
    block_end = np.array(gantt["block_end_s"]) * 1e3
    blocks, world, _ = phase_s.shape
    start = np.vstack([np.zeros((1, world)), block_end[:-1]])  # [blocks, W]
    offsets = start[:, :, None] + np.cumsum(phase_s, axis=2) - phase_s  # phase start times
    for rank in range(world):
        for i, phase in enumerate(gantt["phases"]):
            bars = [(offsets[b, rank, i], phase_s[b, rank, i]) for b in range(blocks)
                    if phase_s[b, rank, i] > 0]
            if bars:
                ax.broken_barh(bars, (rank - 0.4, 0.8), facecolors=PHASE_COLOURS[phase])
        lm = gantt["lm_head_s"][rank] * 1e3
        ax.broken_barh([(block_end[-1, rank], lm)], (rank - 0.4, 0.8),
                       facecolors=PHASE_COLOURS["lm_head"])
    ax.set_yticks(np.arange(world))
    ax.set_ylim(world - 0.5, -0.5)


def _sweep_figure(sweep: dict[str, Any], title: str, order: list[str]):  # type: ignore[no-untyped-def]
    fig = _new_figure(6.2 * len(sweep) + 1.5, 5.2)
    axes = fig.subplots(1, len(sweep), squeeze=False)[0]
    order = order + [p for layouts in sweep.values() for p in layouts if p not in order]
    colours = {p: f"C{i % 10}" for i, p in enumerate(order)}
    for ax, (topology, layouts) in zip(axes, sweep.items(), strict=True):
        for placement in sorted(layouts, key=order.index):
            ran = [p for p in layouts[placement] if p["fits"]]
            if not ran:
                continue
            x = [p["tokens_per_s"] for p in ran]
            y = [p["tpot_s"] * 1e3 for p in ran]
            (line,) = ax.plot(x, y, marker="o", label=placement, color=colours[placement])
            for p, xi, yi in zip(ran, x, y, strict=True):
                if p is ran[0] or p is ran[-1]:
                    ax.annotate(f"b={p['batch']}", (xi, yi), textcoords="offset points",
                                xytext=(4, 4), fontsize=7, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("decode throughput (tokens/s, log scale)")
        ax.set_ylabel("TPOT (ms per output token)")
        ax.set_title(topology, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="layout", fontsize=8)
    fig.suptitle(title)
    return fig


def _figures(compare: dict[str, Any]) -> Iterator[tuple[PlotInfo, Any]]:
    """Every figure of a comparison with its file name, title and caption."""
    phase = compare["scenario"]["phase"]
    for group in compare["groups"]:
        work = f"batch {group['batch']}, context {group['context']}"
        tag = f"b{group['batch']}"
        per_topology = _by_topology(group)
        for topology, rows in per_topology.items():
            title = f"Per-block phase times (slowest rank per phase), {topology}, {work}"
            yield ({"name": f"phases_{topology}_{tag}.png", "title": title,
                    "caption": f"One {phase} step; bars stack the slowest rank's time in each "
                    "phase, so they can exceed the block time when different ranks are slowest."},
                   _phase_figure(rows, title))
            title = f"Gantt timeline of one {phase} step, {topology}, {work}"
            yield ({"name": f"gantt_{topology}_{tag}.png", "title": title,
                    "caption": "Each rank's phases back to back; waiting for peers counts in "
                    "the communication phase that waits. Phases drawn in canonical order "
                    "within a block."}, _gantt_figure(rows, title))
        if per_topology:
            rows = next(iter(per_topology.values()))
            title = f"Dispatch bytes per rank pair, summed over layers, {work}"
            yield ({"name": f"traffic_{tag}.png", "title": title,
                    "caption": "The combine sends the same bytes back (transpose). The diagonal "
                    "is local copies, which cross no link. Independent of the topology."},
                   _traffic_figure(rows, title))
            title = f"Expert load per MoE layer (tokens per expert), {work}"
            yield ({"name": f"expert_load_{tag}.png", "title": title,
                    "caption": "From the replayed router trace; the same for every layout."},
                   _expert_figure(rows[0], title))
    if compare.get("latency_throughput"):
        title = "Latency vs throughput as the decode batch grows (analytic)"
        yield ({"name": "latency_throughput.png", "title": title,
                "caption": "Each point is one decode batch size; batches that do not fit in "
                "memory are left out. Lower and further right is better."},
               _sweep_figure(compare["latency_throughput"], title, _layout_order(compare)))


def _layout_order(compare: dict[str, Any]) -> list[str]:
    """Layouts in the order the comparison ran them."""
    rows = [r for g in compare["groups"] for r in g["ranked"] + g["infeasible"]]
    return list(dict.fromkeys(r["placement"] for r in sorted(rows, key=lambda r: r["order"])))


def save_plots(
    compare: dict[str, Any],
    out_dir: str | Path,
    rendered: list[tuple[PlotInfo, bytes]] | None = None,
) -> list[PlotInfo]:
    """Write every figure (or the already `rendered` ones) as PNGs under `out_dir`."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for info, png in plot_pngs(compare) if rendered is None else rendered:
        path = folder / info["name"]
        path.write_bytes(png)
        written.append({**info, "path": str(path)})
    return written


def plot_pngs(compare: dict[str, Any]) -> list[tuple[PlotInfo, bytes]]:
    """Every figure rendered to PNG bytes in memory."""
    out = []
    for info, fig in _figures(compare):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        out.append((info, buffer.getvalue()))
    return out
