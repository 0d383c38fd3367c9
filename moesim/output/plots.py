"""Plots of a comparison (`moesim.planning.compare.run_compare`): PNGs and the data behind them.

Figures (matplotlib, Agg, imported only inside the drawing functions):
- per-layer phase times per layout: the slowest rank's seconds per phase in every block;
- rank-by-rank dispatch traffic: bytes from each source rank to each destination rank summed
  over layers, on one colour scale for every layout (the diagonal, local copies that cross no
  link, is grey and off the scale);
- expert load per layer: tokens (top-k assignments) per expert in every MoE layer;
- a Gantt timeline of one step: every operation of every rank as a bar from when the rank was
  ready for it to when its part ended (waiting for peers counts in the communication operation
  that waits), each rank in two lanes, its compute stream above its communication stream, so
  operations that overlap show side by side; with two-batch overlap (`overlap: tbo`) the
  second micro-batch's operations are hatched, so one micro-batch's all-to-all on the
  communication lane shows beside the other's compute;
- per-EP-rank expert load before and after balancing (rows whose result has
  `moe_engine.rank_load`: EPLB): tokens per EP rank per MoE layer, and each layer's max/mean;
- latency against throughput: TPOT against decode tokens/s as the batch grows, per layout,
  from decode steps at analytic fidelity; batches that do not fit in memory are left out;
- (for `moesim sweep --plot`) `save_pareto_plot`: every feasible point of a sweep, coloured by
  topology, with the Pareto front.

Conventions: panels that are compared share their axes and colour scales; a TPOT or TTFT target
given to the comparison is drawn as a dashed line on every axis of that quantity; legends sit
outside the axes; annotations that would overlap one another are dropped; layer, block and
rank axes have integer ticks; titles name the fidelity the figure's times come from.

A row of a comparison with variants (`moesim compare --variants`) is named by its layout and
variant, `EP8 [eplb=deepseek+redundant_experts=8]`, in every figure.

The per-point data (`RunResult.plot_data`: the evaluated step's own arrays) is stored in the
comparison JSON, so `moesim report` redraws every figure from the JSON alone and no plot runs
the engine.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from moesim.engine.plan import PHASES
from moesim.output.files import write_atomic

__all__ = ["save_plots", "plot_pngs", "save_pareto_plot", "pareto_figure", "PlotInfo"]

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


# ---- figures -----------------------------------------------------------------------------


def _new_figure(width: float, height: float):  # type: ignore[no-untyped-def]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer, so overlapping labels can be measured before saving
    return fig


def _integer_ticks(axis: Any) -> None:
    """Whole-number ticks only (layers, blocks, ranks, experts)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _drop_overlapping(fig: Any, texts: list[Any]) -> None:
    """Remove every text that would overlap one kept before it (texts in priority order)."""
    if not texts:
        return
    fig.canvas.draw()  # settles the layout, so the extents are final
    renderer = fig.canvas.get_renderer()
    kept: list[Any] = []
    for text in texts:
        box = text.get_window_extent(renderer)
        if any(box.overlaps(other) for other in kept):
            text.remove()
        else:
            kept.append(box)


def _target_line(ax: Any, value_s: float | None, *, vertical: bool = False,
                 label: str = "target") -> None:
    """A dashed black line at a latency target (seconds, drawn in ms), when one is given."""
    if value_s is None:
        return
    draw = ax.axvline if vertical else ax.axhline
    draw(value_s * 1e3, color="black", linestyle="--", linewidth=1.2, label=label, zorder=1)


def _label(row: dict[str, Any]) -> str:
    """A row's layout, with its variant when the comparison ran variants."""
    variant = row.get("variant")
    return row["placement"] if variant is None else f"{row['placement']} [{variant}]"


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
        ax.set_title(f"{_label(row)}: step {row['result']['latency']['step_s'] * 1e3:.2f} "
                     "ms", fontsize=10, loc="left")
    axes[-1].set_xlabel("transformer block")
    _integer_ticks(axes[-1].xaxis)
    blocks = max(len(row["result"]["latency"]["per_block"]) for row in rows)
    axes[-1].set_xlim(-0.6, blocks - 0.4)
    from matplotlib.patches import Patch

    used = {h.get_label() for ax in axes for h in ax.containers}
    handles = [Patch(color=PHASE_COLOURS[p], label=p) for p in PHASES if p in used]
    fig.legend(handles=handles, loc="outside right upper", title="phase")
    fig.suptitle(title)
    return fig


def _traffic_figure(rows: list[dict[str, Any]], title: str):  # type: ignore[no-untyped-def]
    """Per layout the rank-pair dispatch matrix, all on one colour scale of cross-rank bytes;
    the diagonal (local copies, no link crossed) grey and off the scale."""
    import matplotlib
    from matplotlib.colors import Normalize

    cols = min(3, len(rows))
    nrows = -(-len(rows) // cols)
    fig = _new_figure(4.2 * cols + 1.4, 3.9 * nrows + 0.6)
    axes = fig.subplots(nrows, cols, squeeze=False).reshape(-1)
    matrices = [np.array(r["plot_data"]["traffic_rank_bytes"], dtype=float) / 1e6 for r in rows]
    local = [np.eye(m.shape[0], dtype=bool) for m in matrices]
    top = max((float(m[~d].max()) for m, d in zip(matrices, local, strict=True) if (~d).any()),
              default=0.0)
    norm = Normalize(0.0, top or 1.0)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d0d0d0")
    image = None
    for ax, row, matrix, diagonal in zip(axes, rows, matrices, local, strict=False):
        image = ax.imshow(np.ma.masked_array(matrix, mask=diagonal), cmap=cmap, norm=norm,
                          origin="upper", interpolation="nearest")
        if matrix.shape[0] <= 16:
            ticks = np.arange(matrix.shape[0])
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
        else:
            _integer_ticks(ax.xaxis)
            _integer_ticks(ax.yaxis)
        ax.set_xlabel("destination rank")
        ax.set_ylabel("source rank")
        own = float(np.trace(matrix))
        name = "\n".join(textwrap.wrap(_label(row), 44))
        ax.set_title(f"{name}\n{matrix.sum() - own:.1f} MB cross-rank, {own:.1f} MB local "
                     "(grey)", fontsize=9)
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[:len(rows)]), shrink=0.85,
                     label="MB dispatched to another rank (one scale for all)")
    fig.suptitle(title)
    return fig


def _expert_figure(row: dict[str, Any], title: str):  # type: ignore[no-untyped-def]
    load = np.array(row["plot_data"]["expert_load"], dtype=float)
    fig = _new_figure(min(4 + 0.35 * load.shape[1], 14), 6.5)
    ax = fig.subplots()
    image = ax.imshow(load, aspect="auto", cmap="magma", origin="lower", interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    _integer_ticks(ax.yaxis)
    if load.shape[1] <= 32:
        ax.set_xticks(np.arange(load.shape[1]))
    else:
        _integer_ticks(ax.xaxis)
    fig.colorbar(image, ax=ax, label="tokens routed (top-k assignments)")
    fig.suptitle(title)
    return fig


def _gantt_figure(rows: list[dict[str, Any]], title: str):  # type: ignore[no-untyped-def]
    world_max = max(r["plot_data"]["gantt"]["world"] for r in rows)
    fig = _new_figure(14, 0.9 + (0.32 * world_max + 0.7) * len(rows))
    axes = fig.subplots(len(rows), 2, squeeze=False, width_ratios=[3, 1])
    overlapped = False
    for (full, zoom), row in zip(axes, rows, strict=True):
        gantt = row["plot_data"]["gantt"]
        micro = _micro_batches(gantt)
        overlapped |= micro is not None
        _draw_gantt(full, gantt, micro)
        full.set_xlim(0, max(r["plot_data"]["gantt"]["step_s"] for r in rows) * 1e3)
        full.set_title(f"{_label(row)}: whole step {gantt['step_s'] * 1e3:.2f} ms "
                       f"({gantt['fidelity']}); per rank compute above, communication below"
                       f"{_overlap_words(row, micro)}", fontsize=10 if len(rows) < 4 else 9,
                       loc="left")
        full.set_ylabel("rank")
        _draw_gantt(zoom, gantt, micro)
        zoom.set_xlim(*_zoom_window_ms(gantt))
        zoom.set_title("zoom: first two MoE blocks", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("time in the step (ms)")
    axes[-1, 1].set_xlabel("ms")
    from matplotlib.patches import Patch

    handles = [Patch(color=PHASE_COLOURS[p], label=p) for p in (*PHASES, "lm_head")]
    if overlapped:
        handles += [Patch(facecolor="white", edgecolor="black", label="micro-batch 0"),
                    Patch(facecolor="white", edgecolor="black", hatch=_MB1_HATCH,
                          label="micro-batch 1")]
    fig.legend(handles=handles, loc="outside right upper", title="phase")
    fig.suptitle(title)
    return fig


def _zoom_window_ms(gantt: dict[str, Any]) -> tuple[float, float]:
    """From the start to the end of the first two MoE blocks (slowest rank), in ms."""
    first = gantt.get("num_dense_blocks", 0)
    blocks = np.array([op["block"] for op in gantt["ops"]])
    start = np.array(gantt["start_s"]) * 1e3
    end = np.array(gantt["end_s"]) * 1e3
    shown = (blocks >= first) & (blocks <= first + 1)
    begin = start[shown][start[shown] >= 0]
    stop = end[shown][end[shown] >= 0]
    if not begin.size:
        return 0.0, float(gantt["step_s"] * 1e3)
    return float(begin.min()), float(stop.max())


_MB1_HATCH = "////"


def _micro_batches(gantt: dict[str, Any]) -> list[int] | None:
    """Each operation's micro-batch (0 or 1) when the step ran two-batch overlap, else None.
    The overlapped plan (moesim.engine.plan) writes every operation of a block once per
    micro-batch, micro-batch 0's first, so the k-th operation of a name in a block is
    micro-batch k's; a plan with no name repeated in a block has one micro-batch."""
    seen: dict[tuple[int, str], int] = {}
    micro = []
    for op in gantt["ops"]:
        key = (op["block"], op["name"])
        micro.append(seen.get(key, 0))
        seen[key] = micro[-1] + 1
    return micro if any(micro) else None


def _overlap_words(row: dict[str, Any], micro: list[int] | None) -> str:
    """What the title says of the row's overlap: nothing without `overlap: tbo`."""
    engine = row.get("result", {}).get("moe_engine") or {}
    if engine.get("overlap") != "tbo":
        return ""
    if micro is None:  # moesim.planning.evaluate.time_step: nothing to split
        return "\ntwo-batch overlap asked but not run (one token per attention group)"
    return "\ntwo-batch overlap: micro-batch 1 hatched, each all-to-all beside the other's compute"


def _draw_gantt(ax: Any, gantt: dict[str, Any], micro: list[int] | None = None) -> None:
    """Per rank two lanes (compute above, comm below): each operation as a bar, start to end;
    with two micro-batches (`micro`) the second's bars hatched."""
    start = np.array(gantt["start_s"]) * 1e3  # [ops, W] ms, negative: not the rank's op
    end = np.array(gantt["end_s"]) * 1e3
    world = gantt["world"]
    lanes = {"compute": -0.42, "comm": 0.02}
    batches = micro or [0] * len(gantt["ops"])
    for rank in range(world):
        for stream, offset in lanes.items():
            for phase in (*PHASES, "lm_head"):
                for mb in sorted(set(batches)):
                    ops = [i for i, op in enumerate(gantt["ops"]) if op["stream"] == stream
                           and op["phase"] == phase and batches[i] == mb]
                    bars = [(start[i, rank], end[i, rank] - start[i, rank]) for i in ops
                            if start[i, rank] >= 0 and end[i, rank] > start[i, rank]]
                    if not bars:
                        continue
                    style: dict[str, Any] = {"facecolors": PHASE_COLOURS[phase]}
                    if mb:
                        style.update(hatch=_MB1_HATCH, edgecolor="white", linewidth=0.0)
                    ax.broken_barh(bars, (rank + offset, 0.4), **style)
    ax.set_yticks(np.arange(world))
    ax.set_ylim(world - 0.5, -0.5)


def _rank_load_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose result balanced experts over more than one EP rank, each layout and variant
    once (the first topology's when the balance is the same on every topology)."""
    out: list[dict[str, Any]] = []
    seen: list[tuple[str, Any]] = []
    for row in sorted(rows, key=lambda r: r.get("order", 0)):
        load = ((row.get("result") or {}).get("moe_engine") or {}).get("rank_load")
        if not load or len(load["after_tokens"][0]) < 2:
            continue
        key = (_label(row), load)
        if key not in seen:
            seen.append(key)
            out.append(row)
    return out


def _rank_load_figure(rows: list[dict[str, Any]], title: str,  # type: ignore[no-untyped-def]
                      named_topology: bool):
    """Per row: tokens per EP rank (mean over MoE layers) before and after balancing, with the
    balanced mean; and each layer's max/mean rank load before and after. Shared y scales."""
    fig = _new_figure(13, 0.9 + 2.9 * len(rows))
    axes = fig.subplots(len(rows), 2, squeeze=False, width_ratios=[3, 2])
    bars_ax, lines_ax = axes[:, 0], axes[:, 1]
    for ax in bars_ax[1:]:
        ax.sharey(bars_ax[0])
    for ax in lines_ax[1:]:
        ax.sharey(lines_ax[0])
    for (left, right), row in zip(axes, rows, strict=True):
        load = row["result"]["moe_engine"]["rank_load"]
        after = np.array(load["after_tokens"], dtype=float)  # [layers, ep]
        ranks = np.arange(after.shape[1])
        if "before_tokens" in load:  # absent where experts do not split evenly over EP
            before = np.array(load["before_tokens"], dtype=float)
            left.bar(ranks - 0.2, before.mean(axis=0), width=0.4, color="#c44e52",
                     label="before")
        left.bar(ranks + 0.2, after.mean(axis=0), width=0.4, color="#55a868", label="after")
        left.axhline(after.mean(), color="black", linestyle="--", linewidth=1,
                     label="mean (perfect balance)")
        left.set_xticks(ranks)
        left.set_ylabel("tokens per layer")
        engine = row["result"]["moe_engine"]
        where = f" on {row['topology']}" if named_topology else ""
        left.set_title(f"{_label(row)}{where}: {engine['eplb']} EPLB, "
                       f"{engine['redundant_experts']} redundant experts", fontsize=10,
                       loc="left")
        layers = np.arange(after.shape[0])
        summary = []
        for key, colour, name in (("before_max_over_mean", "#c44e52", "before"),
                                  ("after_max_over_mean", "#55a868", "after")):
            if key not in load:
                continue
            right.plot(layers, load[key]["per_layer"], marker="o", markersize=3, color=colour,
                       label=name)
            summary.append(f"{name} max {load[key]['max']:.2f}, mean {load[key]['mean']:.2f}")
        right.axhline(1.0, color="black", linestyle=":", linewidth=1)
        right.set_ylabel("max / mean rank load")
        right.set_title("; ".join(summary), fontsize=9, loc="left")
        right.grid(True, alpha=0.3)
        _integer_ticks(right.xaxis)
    bars_ax[-1].set_xlabel("EP rank")
    lines_ax[-1].set_xlabel("MoE layer")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color="#c44e52", label="before"),
                        Patch(color="#55a868", label="after"),
                        Line2D([], [], color="black", linestyle="--",
                               label="mean (perfect balance)"),
                        Line2D([], [], color="black", linestyle=":", label="balanced (1.0)")],
               loc="outside right upper", fontsize=8)
    fig.suptitle(title)
    return fig


def _sweep_figure(sweep: dict[str, Any], title: str, order: list[str],  # type: ignore[no-untyped-def]
                  max_tpot_s: float | None = None):
    """TPOT against decode tokens/s per layout, one panel per topology on shared log axes;
    each layout keeps its colour and marker in every panel; the TPOT target dashed."""
    from matplotlib.ticker import ScalarFormatter

    fig = _new_figure(5.6 * len(sweep) + 3.0, 5.2)
    axes = fig.subplots(1, len(sweep), squeeze=False, sharex=True, sharey=True)[0]
    order = order + [p for layouts in sweep.values() for p in layouts if p not in order]
    styles = {p: {"color": f"C{i % 10}", "marker": "osD^v<>ph*"[i % 10]}
              for i, p in enumerate(order)}
    handles: dict[str, Any] = {}
    labels: list[Any] = []
    for ax, (topology, layouts) in zip(axes, sweep.items(), strict=True):
        for placement in sorted(layouts, key=order.index):
            ran = [p for p in layouts[placement] if p["fits"]]
            if not ran:
                continue
            x = [p["tokens_per_s"] for p in ran]
            y = [p["tpot_s"] * 1e3 for p in ran]
            (line,) = ax.plot(x, y, label=placement, markersize=5, **styles[placement])
            handles.setdefault(placement, line)
            for p, xi, yi in ((ran[-1], x[-1], y[-1]), (ran[0], x[0], y[0]))[:len(ran)]:
                labels.append(ax.annotate(f"b={p['batch']}", (xi, yi), textcoords="offset "
                                          "points", xytext=(5, 3), fontsize=7,
                                          color=line.get_color()))
        _target_line(ax, max_tpot_s, label="TPOT target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="both", labelsize=8)
        ax.set_xlabel("decode throughput (tokens/s, log scale)")
        ax.set_title(topology, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("TPOT (ms per output token, log scale)")
    legend = list(handles.values())
    if max_tpot_s is not None:
        legend.append(next(h for h in axes[0].get_lines() if h.get_label() == "TPOT target"))
    fig.legend(handles=legend, title="layout", loc="outside right upper", fontsize=8)
    fig.suptitle(title)
    _drop_overlapping(fig, labels)
    return fig


def _figures(compare: dict[str, Any]) -> Iterator[tuple[PlotInfo, Any]]:
    """Every figure of a comparison with its file name, title and caption."""
    phase = compare["scenario"]["phase"]
    for group in compare["groups"]:
        work = f"batch {group['batch']}, context {group['context']}"
        tag = f"b{group['batch']}"
        per_topology = _by_topology(group)
        for topology, rows in per_topology.items():
            fidelity = _fidelity(rows)
            title = (f"Per-block phase times (slowest rank per phase), {topology}, {work}, "
                     f"{fidelity}")
            yield ({"name": f"phases_{topology}_{tag}.png", "title": title,
                    "caption": f"One {phase} step at {fidelity}; bars stack the slowest "
                    "rank's time in each phase, so they can exceed the block time when different "
                    "ranks are slowest. Every layout on the same time axis."},
                   _phase_figure(rows, title))
            title = f"Gantt timeline of one {phase} step, {topology}, {work}, {fidelity}"
            tbo = any(_micro_batches(r["plot_data"]["gantt"]) for r in rows)
            yield ({"name": f"gantt_{topology}_{tag}.png", "title": title,
                    "caption": "Each rank's phases back to back; waiting for peers counts in "
                    "the communication phase that waits. Phases drawn in canonical order "
                    "within a block." + (" With two-batch overlap the second micro-batch's "
                    "operations are hatched: one micro-batch's dispatch and combine run on "
                    "the communication lane beside the other's attention and experts."
                    if tbo else "")}, _gantt_figure(rows, title))
        if per_topology:
            rows = next(iter(per_topology.values()))
            title = f"Dispatch bytes per rank pair, summed over layers, {work}"
            yield ({"name": f"traffic_{tag}.png", "title": title,
                    "caption": "The combine sends the same bytes back (transpose). One colour "
                    "scale for every layout; the diagonal (grey) is local copies, which cross no "
                    "link. Independent of the topology."},
                   _traffic_figure(rows, title))
            title = f"Expert load per MoE layer (tokens per expert), {work}"
            yield ({"name": f"expert_load_{tag}.png", "title": title,
                    "caption": "From the replayed router trace; the same for every layout."},
                   _expert_figure(rows[0], title))
        balanced = _rank_load_rows(group["ranked"])
        if balanced:
            title = f"Tokens per EP rank before and after expert balancing, {work}"
            named = len({r["topology"] for r in balanced}) > 1
            yield ({"name": f"rank_load_{tag}.png", "title": title,
                    "caption": "Left: tokens (top-k assignments) each EP rank serves, mean over "
                    "MoE layers, with the experts on their default ranks (before) and as the "
                    "balancer placed them and their copies (after); dashed: the mean, what "
                    "perfect balance gives every rank. Right: each layer's busiest rank over "
                    "the mean (1 is perfect balance). Same scales in every row."},
                   _rank_load_figure(balanced, title, named))
    if compare.get("serving"):
        yield from _serving_figures(compare)
    if compare.get("latency_throughput"):
        title = "Latency vs throughput as the decode batch grows (analytic fidelity)"
        ran = compare["scenario"].get("fidelity")
        yield ({"name": "latency_throughput.png", "title": title,
                "caption": "Each point is one decode step of a batch size, timed at analytic "
                "fidelity" + (f" (the tables above ran {ran})" if ran and ran != "analytic"
                              else "") + "; batches that do not fit in memory are left out; "
                "the first and last batch are labelled. Lower and further right is better."
                + (" Dashed: the TPOT target." if compare["slo"].get("max_tpot_s") else "")},
               _sweep_figure(compare["latency_throughput"], title, _layout_order(compare),
                             compare["slo"].get("max_tpot_s")))


def _serving_figures(compare: dict[str, Any]) -> Iterator[tuple[PlotInfo, Any]]:
    """TTFT/TPOT CDFs and batch/KV over time of the served layouts, per workload."""
    from moesim.output.serve_plots import batch_kv_figure, latency_cdf_figure

    slo = {"ttft_s": compare["slo"]["max_ttft_s"], "tpot_s": compare["slo"]["max_tpot_s"]}
    fidelity = compare["scenario"].get("fidelity", "des")
    for group in compare["groups"]:
        runs = {f"{_label(r)} on {r['topology']}": r["serve_plot"]
                for r in sorted(group["ranked"], key=lambda r: r.get("order", 0))
                if "serve_plot" in r}
        if not runs:
            continue
        tag = f"b{group['batch']}"
        title = f"Served requests: TTFT and TPOT distributions, {fidelity} fidelity"
        yield ({"name": f"serve_latency_cdf_{tag}.png", "title": title,
                "caption": "Cumulative distribution over the served requests, per layout; "
                "dashed: the targets."}, latency_cdf_figure(runs, slo))
        title = (f"Served requests: running batch, queue and KV cache over time, {fidelity} "
                 "fidelity")
        yield ({"name": f"serve_batch_kv_{tag}.png", "title": title,
                "caption": "Per layout, at each iteration start: running sequences, waiting "
                "requests and the busiest scheduler's KV-cache use."}, batch_kv_figure(runs))


def _fidelity(rows: list[dict[str, Any]]) -> str:
    """The fidelity the rows' step times come from (`analytic`, `des`, or both named)."""
    names = dict.fromkeys(str(r["result"]["latency"].get("fidelity")) for r in rows)
    return " and ".join(names) + " fidelity"


def _layout_order(compare: dict[str, Any]) -> list[str]:
    """Layouts in the order the comparison ran them."""
    rows = [r for g in compare["groups"] for r in g["ranked"] + g["infeasible"]]
    return list(dict.fromkeys(_label(r) for r in sorted(rows, key=lambda r: r["order"])))


def pareto_figure(rows: list[dict[str, Any]], front: list[dict[str, Any]],  # type: ignore[no-untyped-def]
                  max_tpot_s: float | None = None):
    """A sweep's feasible points (typed rows of `moesim sweep`), throughput per GPU against
    TPOT, coloured by topology, with the Pareto `front` (from `pareto_front`) joined and
    labelled. Served rows (a grid with a `serve` block) plot p90 TPOT and served output
    tokens/s per GPU."""
    served = any(r.get("served_tpot_p90_s") is not None for r in rows)
    x, y = (("served_tpot_p90_s", "served_output_tokens_per_s_per_gpu") if served
            else ("tpot_s", "tokens_per_s_per_gpu"))
    timed = [r for r in rows if r.get("feasible") and r.get(x) is not None]
    fig = _new_figure(10.5, 5.8)
    ax = fig.subplots()
    topologies = list(dict.fromkeys(str(r["topology"]) for r in timed))
    for index, topology in enumerate(topologies):
        mine = [r for r in timed if str(r["topology"]) == topology]
        ax.scatter([r[x] * 1e3 for r in mine], [r[y] for r in mine], s=14, alpha=0.75,
                   color=f"C{index % 10}", label=topology, zorder=2)
    ax.plot([r[x] * 1e3 for r in front], [r[y] for r in front], "-", color="black",
            linewidth=1.2, label="Pareto front", zorder=3)
    colour = {t: f"C{i % 10}" for i, t in enumerate(topologies)}
    ax.scatter([r[x] * 1e3 for r in front], [r[y] for r in front], s=46, zorder=4,
               color=[colour[str(r["topology"])] for r in front], edgecolors="black")
    labels = [ax.annotate(f"{r['placement']} b{r['batch']}", (r[x] * 1e3, r[y]),
                          textcoords="offset points", xytext=(-7, 0), fontsize=7,
                          ha="right", va="center", color=colour[str(r["topology"])],
                          zorder=5)  # left of the front: nothing is drawn there
              for r in sorted(front, key=lambda r: -r[y])]
    _target_line(ax, max_tpot_s, vertical=True, label="TPOT target")
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="both", labelsize=8)
    which = "served p90 " if served else ""
    ax.set_xlabel(f"{which}time per output token, TPOT (ms, log scale)")
    ax.set_ylabel("served output tokens/s per GPU" if served
                  else "decode throughput per GPU (tokens/s/GPU)")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="outside right upper", title="topology", fontsize=8)
    fig.suptitle(f"Sweep{' (served)' if served else ''}: throughput per GPU against "
                 f"{which}TPOT, {len(timed)} feasible points; labels: the front's layout and "
                 "batch", fontsize=11)
    _drop_overlapping(fig, labels)
    return fig


def save_pareto_plot(rows: list[dict[str, Any]], front: list[dict[str, Any]],
                     out_dir: str | Path, max_tpot_s: float | None = None) -> Path:
    """`pareto_figure` written as `pareto.png` under `out_dir`; returns its path."""
    buffer = io.BytesIO()
    pareto_figure(rows, front, max_tpot_s).savefig(buffer, format="png", dpi=120)
    return write_atomic(Path(out_dir) / "pareto.png", buffer.getvalue())


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
        write_atomic(path, png)
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
