"""HTML report: one self-contained page of a comparison (`moesim compare --json` output).

The page holds, under a table of contents, the ranked tables, the infeasible points with their
reasons, every plot (PNG embedded as a base64 data URI) and the assumptions the numbers rest on
(trace and its provenance, topologies and their sources, efficiencies, calibration, memory
model, notes). Topologies not calibrated on measurements are flagged at the top. To keep the
page short each plot and each topology sits in a collapsible `<details>` (the first plot open)
and plots are at most one screen high. CSS is inline and nothing is fetched: the file can be
mailed or archived as is. Short inline scripts make the contents entries jump to (and open)
their section, and write whether every plot decoded into the element `#render-check`.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from moesim.engine.plan import PHASES
from moesim.errors import ConfigError
from moesim.output.files import write_atomic
from moesim.output.report import table_cells, table_columns, uncalibrated_line

__all__ = ["render_html", "write_html_report", "check_compare_dict", "SUPPORTED_COMPARE_VERSIONS"]

_REQUIRED_KEYS = ("kind", "scenario", "groups", "assumptions", "ranking")

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.text { text-align: left; }
tr.best td { background: #e8f5e9; font-weight: 600; }
tr.miss td { color: #999; }
figure { margin: 0.5em 0 1em; }
figure img { max-width: 100%; max-height: 85vh; width: auto; height: auto;
             border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
details { margin: 0.4em 0; } details > summary { cursor: pointer; font-weight: 600; }
details.plot > summary { padding: 0.3em 0; border-bottom: 1px solid #eee; }
nav.toc { background: #f7f7f7; border: 1px solid #ddd; padding: 0.5em 1em; margin: 1em 0; }
nav.toc ul { margin: 0.2em 0; padding-left: 1.2em; } nav.toc li { margin: 0.1em 0; }
nav.toc a { color: #0645ad; cursor: pointer; text-decoration: underline; }
p.warn { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
.small { font-size: 0.85em; color: #555; } ul.sources li { font-size: 0.85em; }
#render-check { font-size: 0.85em; color: #555; }
"""

# Contents entries (`data-goto`: an element id) open every <details> around their target and
# scroll to it; the buttons open or close every plot.
_NAV_SCRIPT = """
document.querySelectorAll('[data-goto]').forEach(function (link) {
  link.addEventListener('click', function () {
    var target = document.getElementById(link.getAttribute('data-goto'));
    for (var el = target; el; el = el.parentElement) {
      if (el.tagName === 'DETAILS') { el.open = true; }
    }
    target.scrollIntoView();
  });
});
document.querySelectorAll('[data-plots]').forEach(function (button) {
  button.addEventListener('click', function () {
    var open = button.getAttribute('data-plots') === 'open';
    document.querySelectorAll('details.plot').forEach(function (d) { d.open = open; });
  });
});
"""

# Counts decoded plots once the page has loaded and says so in #render-check.
_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img.plot'));
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var out = document.getElementById('render-check');
  out.textContent = bad.length === 0
    ? 'all ' + imgs.length + ' plots rendered'
    : bad.length + ' of ' + imgs.length + ' plots failed to render';
  out.setAttribute('data-images-ok', String(imgs.length - bad.length));
  out.setAttribute('data-images-total', String(imgs.length));
});
"""


def check_compare_dict(data: Any, source: str) -> None:
    """Raise ConfigError unless `data` is a `moesim compare --json` result that the table, the
    plots and this page can read: one error naming `source` and the first bad field's path
    (`groups[0].ranked[2].tpot_s: expected a number >= 0, got 'fast'`)."""
    missing = ([key for key in _REQUIRED_KEYS if key not in data] if isinstance(data, dict)
               else list(_REQUIRED_KEYS))
    if missing or data.get("kind") != "moesim.compare":
        lacks = ", ".join(missing) or "kind: moesim.compare"
        raise ConfigError(
            f"{source} is not a `moesim compare --json` file (missing {lacks}); write one "
            "with: moesim compare SCENARIO.yaml --json OUT"
        )
    version = data.get("version", 1)  # a file without one predates it: the same shape
    if isinstance(version, bool) or version not in SUPPORTED_COMPARE_VERSIONS:
        readable = ", ".join(str(v) for v in SUPPORTED_COMPARE_VERSIONS)
        raise ConfigError(
            f"{source}: version: expected {readable}, got {_shown(version)}: this moesim reads "
            "comparison files of version " + readable + "; read it with the moesim that wrote "
            "it, or write it again with: moesim compare SCENARIO.yaml --json OUT")
    try:
        _check_compare(data)
    except _Bad as bad:
        raise ConfigError(f"{source}: {bad}; write the comparison again with: moesim compare "
                          "SCENARIO.yaml --json OUT") from None


# ---- the comparison's shape: every key the table, the plots and this page read -------------
#
# `moesim.planning.compare.run_compare` writes the comparison; `moesim.output.report` (table),
# `moesim.output.plots` / `serve_plots` (figures) and this module (page) read it. Each check
# below names what those readers need of one key: its type, and for figures a finite number
# (times, throughputs, bytes and counts >= 0) or a rectangular array. A key read with `.get`
# is optional; one indexed is required.

# `version` values this moesim reads (moesim.planning.compare._assemble writes 1).
SUPPORTED_COMPARE_VERSIONS = (1,)
# GPUs in one layout (a row's `world`, a Gantt's ranks): the Gantt draws a lane pair per rank.
_MAX_WORLD = 4096

_MISSING: Any = object()


class _Bad(Exception):  # noqa: N818 - internal: turned into one ConfigError
    """The first field of the comparison that its readers cannot read."""

    def __init__(self, path: str, expected: str, value: Any = _MISSING) -> None:
        if value is _MISSING:
            text = f"{path}: missing (expected {expected})"
        else:
            text = f"{path}: expected {expected}, got {_shown(value)}"
        super().__init__(text)


def _shown(value: Any) -> str:
    """A value as an error message shows it: short, one line."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _at(mapping: dict[str, Any], path: str, key: str) -> tuple[Any, str]:
    """`mapping[key]` (or _MISSING) and its path."""
    return mapping.get(key, _MISSING), f"{path}.{key}" if path else key


def _mapping(value: Any, path: str, *, optional: bool = False, nullable: bool = False
             ) -> dict[str, Any]:
    """A mapping; {} for an allowed missing or null one."""
    if (value is _MISSING and optional) or (value is None and nullable):
        return {}
    if not isinstance(value, dict):
        raise _Bad(path, "a mapping" + (" or null" if nullable else ""), value)
    return value


def _list(value: Any, path: str, *, optional: bool = False, nullable: bool = False
          ) -> list[Any]:
    """A list; [] for an allowed missing or null one."""
    if (value is _MISSING and optional) or (value is None and nullable):
        return []
    if not isinstance(value, list):
        raise _Bad(path, "a list" + (" or null" if nullable else ""), value)
    return value


def _string(value: Any, path: str, *, optional: bool = False, nullable: bool = False) -> None:
    if (value is _MISSING and optional) or (value is None and nullable):
        return
    if not isinstance(value, str):
        raise _Bad(path, "a string" + (" or null" if nullable else ""), value)


def _scalar(value: Any, path: str, *, optional: bool = False) -> None:
    """A value only printed: a string, number, boolean or null."""
    if value is _MISSING and optional:
        return
    if value is _MISSING or not (value is None or isinstance(value, str | int | float)):
        raise _Bad(path, "a string or number", value)


def _flag(value: Any, path: str, *, optional: bool = False, nullable: bool = False) -> None:
    if (value is _MISSING and optional) or (value is None and nullable):
        return
    if not isinstance(value, bool):
        raise _Bad(path, "true or false" + (" or null" if nullable else ""), value)


def _number(value: Any, path: str, *, optional: bool = False, nullable: bool = False,
            signed: bool = False) -> None:
    """A finite number, >= 0 unless `signed`."""
    if (value is _MISSING and optional) or (value is None and nullable):
        return
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and math.isfinite(value) and (signed or value >= 0))
    if not ok:
        what = "a finite number" if signed else "a number >= 0"
        raise _Bad(path, what + (" or null" if nullable else ""), value)


def _integer(value: Any, path: str, *, low: int = 0, high: int | None = None,
             optional: bool = False, nullable: bool = False) -> None:
    if (value is _MISSING and optional) or (value is None and nullable):
        return
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= low
          and (high is None or value <= high))
    if not ok:
        what = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        raise _Bad(path, what + (" or null" if nullable else ""), value)


def _numbers(value: Any, path: str, *, length: int | None = None, signed: bool = False
             ) -> list[Any]:
    """A list of finite numbers (of `length` items when given)."""
    items = _list(value, path)
    if length is not None and len(items) != length:
        raise _Bad(path, f"a list of {length} numbers", value)
    for index, item in enumerate(items):
        _number(item, f"{path}[{index}]", signed=signed)
    return items


def _matrix(value: Any, path: str, *, rows: int | None = None, cols: int | None = None,
            signed: bool = False) -> tuple[int, int]:
    """A non-empty rectangular list of lists of finite numbers; its (rows, columns)."""
    items = _list(value, path)
    if not items or (rows is not None and len(items) != rows):
        raise _Bad(path, f"a list of {rows} rows" if rows is not None
                   else "a non-empty list of rows", value)
    width = len(_list(items[0], f"{path}[0]")) if cols is None else cols
    if width < 1:
        raise _Bad(f"{path}[0]", "a non-empty list of numbers", items[0])
    for index, item in enumerate(items):
        _numbers(item, f"{path}[{index}]", length=width, signed=signed)
    return len(items), width


def _check_compare(data: dict[str, Any]) -> None:
    """Raise _Bad at the first field the comparison's readers cannot read."""
    scenario = _mapping(*_at(data, "", "scenario"))
    for key in ("phase", "fidelity", "trace", "weight_dtype", "act_dtype"):
        _scalar(*_at(scenario, "scenario", key))
    topologies = _list(*_at(data, "", "topologies"))
    for index, name in enumerate(topologies):
        _string(name, f"topologies[{index}]")
    _string(*_at(data, "", "ranking"))
    serving = _mapping(*_at(data, "", "serving"), optional=True, nullable=True)
    if serving:
        _check_serving(serving)
    sweep = _mapping(*_at(data, "", "latency_throughput"), optional=True, nullable=True)
    drawn = bool(serving or sweep)  # the serving and sweep figures index `slo`
    slo = _mapping(*_at(data, "", "slo"), optional=not drawn, nullable=not drawn)
    for key in ("max_tpot_s", "max_ttft_s"):
        _number(*_at(slo, "slo", key), nullable=True, optional=not serving)
    for index, variant in enumerate(_list(*_at(data, "", "variants"), optional=True,
                                          nullable=True)):
        where = f"variants[{index}]"
        _string(*_at(_mapping(variant, where), where, "label"))
    groups = _list(*_at(data, "", "groups"))
    for index, group in enumerate(groups):
        _check_group(group, f"groups[{index}]", ordered=bool(sweep))
    if sweep:
        _check_sweep(sweep, topologies)
    _check_assumptions(_mapping(*_at(data, "", "assumptions")))


def _check_serving(serving: dict[str, Any]) -> None:
    _string(*_at(serving, "serving", "percentile"))
    workload = _mapping(*_at(serving, "serving", "workload"))
    where = "serving.workload"
    _number(*_at(workload, where, "rate"), nullable=True)
    if workload["rate"] is not None:
        _number(*_at(workload, where, "burst_cv"))
    _integer(*_at(workload, where, "concurrency"), low=1, nullable=True)
    for key in ("requests_file", "isl", "osl", "requests", "max_num_seqs",
                "max_num_batched_tokens", "block_size"):
        _scalar(*_at(workload, where, key))


def _check_group(value: Any, path: str, *, ordered: bool) -> None:
    """One workload: batch, context, its ranked rows and its infeasible ones (`ordered`: the
    latency-throughput plot orders every row by `order`)."""
    group = _mapping(value, path)
    _integer(*_at(group, path, "batch"), low=1, nullable=True)
    _integer(*_at(group, path, "context"), nullable=True)
    ranked, where = _at(group, path, "ranked")
    for index, row in enumerate(_list(ranked, where)):
        _check_ranked_row(row, f"{where}[{index}]", ordered=ordered)
    infeasible, where = _at(group, path, "infeasible")
    for index, row in enumerate(_list(infeasible, where)):
        _check_row_names(_mapping(row, f"{where}[{index}]"), f"{where}[{index}]",
                         ordered=ordered)
        _scalar(*_at(row, f"{where}[{index}]", "reason"))


def _check_row_names(row: dict[str, Any], path: str, *, ordered: bool) -> None:
    """What names a row: layout, topology (also in plot file names), variant, run order."""
    _string(*_at(row, path, "placement"))
    topology, where = _at(row, path, "topology")
    _string(topology, where)
    if "\0" in topology or ".." in topology.replace("\\", "/").split("/"):
        raise _Bad(where, "a topology name (plot files are named after it)", topology)
    _string(*_at(row, path, "variant"), optional=True, nullable=True)
    _integer(*_at(row, path, "order"), optional=not ordered)


def _check_ranked_row(value: Any, path: str, *, ordered: bool) -> None:
    """A feasible row: the table's cells, and what the figures draw from it."""
    row = _mapping(value, path)
    _integer(*_at(row, path, "rank"), low=1)
    _flag(*_at(row, path, "meets_slo"), optional=True, nullable=True)
    _check_row_names(row, path, ordered=ordered)
    _integer(*_at(row, path, "world"), low=1, high=_MAX_WORLD)
    if "serve" in row:
        serve, where = _at(row, path, "serve")
        figures = _mapping(serve, where)
        for key in ("ttft_s", "tpot_s", "output_tokens_per_s_per_gpu", "goodput_per_s_per_gpu",
                    "usd_per_million_tokens"):
            _number(*_at(figures, where, key), nullable=True)
    else:
        _number(*_at(row, path, "tpot_s"))
        for key in ("ttft_s", "tokens_per_s", "tokens_per_s_per_gpu", "usd_per_million_tokens"):
            _number(*_at(row, path, key), nullable=True)
    _number(*_at(row, path, "a2a_bytes"), nullable=True)
    _number(*_at(row, path, "expert_imbalance_max"))
    _number(*_at(row, path, "rank_imbalance_max"))
    _number(*_at(row, path, "memory_headroom_bytes"), nullable=True, signed=True)
    plotted = "plot_data" in row
    result = _mapping(*_at(row, path, "result"), optional=not plotted, nullable=not plotted)
    _check_result(result, f"{path}.result", plotted=plotted)
    if plotted:
        _check_plot_data(*_at(row, path, "plot_data"))
    if "serve_plot" in row:
        _check_serve_plot(*_at(row, path, "serve_plot"))


def _check_result(result: dict[str, Any], path: str, *, plotted: bool) -> None:
    """The parts of a row's RunResult the figures read: per-block phase times (with plot
    data) and the expert balancer's rank loads."""
    if plotted:
        latency = _mapping(*_at(result, path, "latency"))
        where = f"{path}.latency"
        _number(*_at(latency, where, "step_s"))
        _scalar(*_at(latency, where, "fidelity"), optional=True)
        blocks, where = _at(latency, where, "per_block")
        for index, block in enumerate(_list(blocks, where)):
            at = f"{where}[{index}]"
            _integer(*_at(_mapping(block, at), at, "block"))
            times = _mapping(*_at(block, at, "phase_max_s"))
            for phase in PHASES:
                _number(*_at(times, f"{at}.phase_max_s", phase))
    engine = _mapping(*_at(result, path, "moe_engine"), optional=True, nullable=True)
    where = f"{path}.moe_engine"
    _scalar(*_at(engine, where, "overlap"), optional=True)
    load = engine.get("rank_load")
    if load:
        _scalar(*_at(engine, where, "eplb"))
        _scalar(*_at(engine, where, "redundant_experts"))
        _check_rank_load(_mapping(load, f"{where}.rank_load"), f"{where}.rank_load")


def _check_rank_load(load: dict[str, Any], path: str) -> None:
    """Tokens per EP rank per MoE layer after (and before) balancing, and the max/mean."""
    layers, ranks = _matrix(*_at(load, path, "after_tokens"))
    if "before_tokens" in load:
        _matrix(*_at(load, path, "before_tokens"), cols=ranks)
    for key in ("before_max_over_mean", "after_max_over_mean"):
        if key in load:
            summary, where = _at(load, path, key)
            summary = _mapping(summary, where)
            _numbers(*_at(summary, where, "per_layer"), length=layers)
            _number(*_at(summary, where, "max"))
            _number(*_at(summary, where, "mean"))


def _check_plot_data(value: Any, path: str) -> None:
    """A step's figures: rank-pair dispatch bytes, expert load and the Gantt bars."""
    data = _mapping(value, path)
    side, where = _at(data, path, "traffic_rank_bytes")
    rows, cols = _matrix(side, where)
    if rows != cols:
        raise _Bad(where, "a square matrix (source rank x destination rank)", side)
    _matrix(*_at(data, path, "expert_load"))
    gantt, where = _at(data, path, "gantt")
    gantt = _mapping(gantt, where)
    world, at = _at(gantt, where, "world")
    _integer(world, at, low=1, high=_MAX_WORLD)
    _number(*_at(gantt, where, "step_s"))
    _scalar(*_at(gantt, where, "fidelity"))
    _integer(*_at(gantt, where, "num_dense_blocks"), optional=True)
    ops, at = _at(gantt, where, "ops")
    for index, op in enumerate(_list(ops, at)):
        item = f"{at}[{index}]"
        _integer(*_at(_mapping(op, item), item, "block"))
        for key in ("name", "phase", "stream"):
            _string(*_at(op, item, key))
    for key in ("start_s", "end_s"):  # [ops][world], -1 where the op is not the rank's
        bars, at = _at(gantt, where, key)
        if ops:
            _matrix(bars, at, rows=len(ops), cols=world, signed=True)
        elif _list(bars, at):
            raise _Bad(at, "an empty list (the Gantt has no ops)", bars)


def _check_serve_plot(value: Any, path: str) -> None:
    """Served requests' TTFT and TPOT, and each iteration's batch, queue and KV use."""
    data = _mapping(value, path)
    _numbers(*_at(data, path, "ttft_s"))
    _numbers(*_at(data, path, "tpot_s"))
    iterations, where = _at(data, path, "iterations")
    iterations = _mapping(iterations, where)
    count = len(_numbers(*_at(iterations, where, "start_s")))
    for key in ("running", "waiting", "kv_used_fraction"):
        _numbers(*_at(iterations, where, key), length=count)
    for key in ("duration_s", "preemptions"):
        if key in iterations:
            _numbers(*_at(iterations, where, key), length=count)
    if "engine" in iterations:
        engines, at = _at(iterations, where, "engine")
        if len(_list(engines, at)) != count:
            raise _Bad(at, f"a list of {count} engine names", engines)
        for index, name in enumerate(engines):
            _string(name, f"{at}[{index}]")


def _check_sweep(sweep: dict[str, Any], topologies: list[Any]) -> None:
    """Per topology and layout, TPOT and tokens/s of a decode step at each batch."""
    for topology, layouts in sweep.items():
        path = f"latency_throughput[{topology!r}]"
        if topology not in topologies:
            raise _Bad(path, "one of the comparison's topologies", topology)
        for label, points in _mapping(layouts, path).items():
            where = f"{path}[{label!r}]"
            for index, point in enumerate(_list(points, where)):
                at = f"{where}[{index}]"
                fits, key = _at(_mapping(point, at), at, "fits")
                _flag(fits, key)
                _scalar(*_at(point, at, "batch"))
                if fits:
                    _number(*_at(point, at, "tpot_s"))
                    _number(*_at(point, at, "tokens_per_s"))


def _check_assumptions(a: dict[str, Any]) -> None:
    """What the numbers rest on, as the page's assumptions section prints it."""
    path = "assumptions"
    for key in ("model", "trace", "trace_tokens", "trace_layers", "phase", "context",
                "decode_steps", "act_dtype", "weight_dtype", "dedup", "sp_variant", "fidelity"):
        _scalar(*_at(a, path, key))
    memory, where = _at(a, path, "memory_model")
    memory = _mapping(memory, where)
    for key in ("doc", "usable_fraction", "prefill_chunk_tokens", "kv_dtype"):
        _scalar(*_at(memory, where, key))
    _mapping(*_at(a, path, "trace_metadata"), nullable=True)
    _list(*_at(a, path, "notes"))
    facts, where = _at(a, path, "topologies")
    for name, topology in _mapping(facts, where).items():
        at = f"{where}[{name!r}]"
        _check_topology(_mapping(topology, at), at)


def _check_topology(facts: dict[str, Any], path: str) -> None:
    for key in ("name", "description", "gpus", "calibration"):
        _scalar(*_at(facts, path, key))
    _list(*_at(facts, path, "sources"))
    _flag(*_at(facts, path, "calibrated"), optional=True)
    _number(*_at(facts, path, "gpu_price_per_hour_usd"), nullable=True)
    _number(*_at(facts, path, "collective_launch_s"), nullable=True)
    _mapping(*_at(facts, path, "link_efficiency"))
    gpu, where = _at(facts, path, "gpu_spec")
    gpu = _mapping(gpu, where)
    _scalar(*_at(gpu, where, "name"))
    for key in ("memory_bytes", "memory_bandwidth_bytes_per_s", "peak_bf16_flops_per_s",
                "compute_efficiency", "memory_efficiency", "kernel_launch_s"):
        _number(*_at(gpu, where, key))


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(group: dict[str, Any], columns: tuple[tuple[str, int], ...],
           variants: bool = False) -> str:
    """The ranked rows; with `variants` (compare --variants) a variant column after the
    layout."""
    names = [name for name, _ in columns]
    if variants:
        names.insert(2, "variant")
    head = "".join(f"<th>{_e(name)}</th>" for name in names)
    body = []
    for row in group["ranked"]:
        cls = "best" if row["rank"] == 1 else ("miss" if row.get("meets_slo") is False else "")
        values = table_cells(row)
        if variants:
            values.insert(2, row.get("variant") or "")
        text = (1, 2, 3) if variants else (1, 2)
        cells = "".join(
            f'<td class="text">{_e(c)}</td>' if i in text else f"<td>{_e(c)}</td>"
            for i, c in enumerate(values)
        )
        body.append(f'<tr class="{cls}">{cells}</tr>')
    if not body:
        body.append(f'<tr><td colspan="{len(names)}" class="text">no feasible layout'
                    "</td></tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _infeasible(group: dict[str, Any]) -> str:
    if not group["infeasible"]:
        return '<p class="small">Every layout was feasible.</p>'
    items = "".join(
        f"<li><b>{_e(r['placement'])}</b>"
        + (f" [{_e(r['variant'])}]" if r.get("variant") else "")
        + f" on {_e(r['topology'])}: {_e(r['reason'])}</li>"
        for r in group["infeasible"]
    )
    return f"<p>Infeasible (not simulated):</p><ul>{items}</ul>"


def _group_heading(compare: dict[str, Any], group: dict[str, Any]) -> str:
    where = f"Batch {group['batch']}, context {group['context']}"
    if compare.get("serving"):
        return f"Served; a2a, imbalance and free memory of one decode step at {where.lower()}"
    return where


def _results_section(compare: dict[str, Any]) -> str:
    parts = ['<h2 id="ranked">Ranked layouts</h2>',
             f"<p class=small>{_e(compare['ranking'])}</p>"]
    slo = compare.get("slo") or {}
    targets = [f"{name} {value * 1e3:g} ms" for name, value in
               (("TPOT", slo.get("max_tpot_s")), ("TTFT", slo.get("max_ttft_s"))) if value]
    if targets:
        parts.append(f"<p>Targets: {_e(', '.join(targets))}; rows marked * miss one.</p>")
    if compare.get("variants"):
        labels = ", ".join(v["label"] for v in compare["variants"])
        parts.append(f"<p>Every layout ran once per variant (overrides of the scenario's MoE "
                     f"engine, ranked together): {_e(labels)}.</p>")
    serving = compare.get("serving")
    if serving:
        parts.append(_serving_paragraph(serving))
    for index, group in enumerate(compare["groups"]):
        parts.append(f'<h3 id="group-{index}">{_e(_group_heading(compare, group))}</h3>')
        parts.append(_table(group, table_columns(compare), bool(compare.get("variants"))))
        parts.append(_infeasible(group))
    first = ("TTFT, TPOT: the percentile over the served requests (arrival to first token, "
             "queueing included; per output token after the first); out tok/s/GPU: served "
             "output tokens per second per GPU; goodput/GPU: requests per second meeting both "
             "targets, per GPU" if serving else
             "TTFT: prefill of the batch; TPOT: one decode step; tok/s: decode output tokens "
             "per second")
    parts.append(
        f'<p class="small">{_e(first)}; a2a GB: cross-rank all-to-all bytes of one step over '
        "all layers; imb e/r: max over layers of expert and rank max/mean load; free GB: "
        "memory headroom per GPU; $/M tok = GPUs x price per GPU-hour / 3600 / tok/s x 1e6.</p>"
    )
    return "\n".join(parts)


def _serving_paragraph(serving: dict[str, Any]) -> str:
    """What was served: the arrival process, lengths, scheduler knobs, the percentile."""
    w = serving["workload"]
    load = (f"open loop at {w['rate']:g} requests/s (inter-arrival CV {w['burst_cv']:g})"
            if w["rate"] is not None else
            f"closed loop of {w['concurrency']} clients" if w["concurrency"] is not None
            else f"replay of {w['requests_file']}")
    return (f"<h3>Served workload</h3><p>{_e(load)}; prompts of {_e(w['isl'])} tokens, "
            f"outputs of {_e(w['osl'])}; {_e(w['requests'] or 'default')} requests; scheduler "
            f"max_num_seqs {_e(w['max_num_seqs'])}, max_num_batched_tokens "
            f"{_e(w['max_num_batched_tokens'])}, KV block {_e(w['block_size'])} tokens. TTFT "
            f"and TPOT are the {_e(serving['percentile'])} over the requests.</p>")


def _plots_section(compare: dict[str, Any], figures: list[tuple[dict[str, str], bytes]]
                   ) -> str:
    if not figures:
        return ('<h2 id="plots">Plots</h2><p>No plot data in this file: run moesim compare '
                "with --plot or --html to record it.</p>")
    parts = ['<h2 id="plots">Plots</h2>',
             '<p class="small">Each plot opens on a click on its title. '
             '<button type="button" data-plots="open">open all</button> '
             '<button type="button" data-plots="close">close all</button></p>']
    for index, (info, png) in enumerate(figures):
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<details class="plot" id="plot-{index}"{" open" if index == 0 else ""}>'
            f'<summary>{_e(info["title"])}</summary>'
            f'<figure><img class="plot" alt="{_e(info["title"])}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_e(info["caption"])}'
            "</figcaption></figure></details>"
        )
    return "\n".join(parts)


def _dl(items: dict[str, Any]) -> str:
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items.items())
    return f"<dl>{rows}</dl>"


def _topology_block(facts: dict[str, Any], anchor: str) -> str:
    gpu = facts["gpu_spec"]
    price = facts["gpu_price_per_hour_usd"]
    items = {
        "GPUs": facts["gpus"],
        "description": facts["description"],
        "GPU": f"{gpu['name']}: {gpu['memory_bytes'] / 1e9:g} GB, "
        f"{gpu['memory_bandwidth_bytes_per_s'] / 1e12:g} TB/s, "
        f"BF16 {gpu['peak_bf16_flops_per_s'] / 1e12:g} TFLOP/s dense",
        "GPU efficiencies": f"compute {gpu['compute_efficiency']}, memory "
        f"{gpu['memory_efficiency']}, kernel launch {gpu['kernel_launch_s'] * 1e6:g} us",
        "link efficiency": json.dumps(facts["link_efficiency"]),
        "collective launch": "NCCL default" if facts["collective_launch_s"] is None
        else f"{facts['collective_launch_s'] * 1e6:g} us",
        "calibration": facts["calibration"],
        "price": "n/a" if price is None else f"{price} USD per GPU-hour",
    }
    sources = "".join(f"<li>{_e(s)}</li>" for s in facts["sources"])
    calibrated = facts.get("calibrated", not str(facts["calibration"]).startswith("not "))
    flag = "" if calibrated else " (not calibrated on measurements)"
    return (f'<details id="{_e(anchor)}"><summary>Topology {_e(facts["name"])}{flag}</summary>'
            f"{_dl(items)}<p>Sources:</p><ul class=sources>"
            f"{sources or '<li>none given</li>'}</ul></details>")


def _assumptions_section(compare: dict[str, Any]) -> str:
    a = compare["assumptions"]
    run = {
        "model": a["model"],
        "trace": f"{a['trace']} ({a['trace_tokens']} tokens x {a['trace_layers']} layers)",
        "phase / context": f"{a['phase']} / {a['context']}",
        "dtypes": f"weights {a['weight_dtype']}, activations {a['act_dtype']}, "
        f"KV {a['memory_model']['kv_dtype']}",
        "dispatch dedup / SP variant": f"{a['dedup']} / {a['sp_variant']}",
        "fidelity": a["fidelity"],
        "TPOT averaged over": f"{a['decode_steps']} decode step(s)",
        "memory model": f"{a['memory_model']['doc']}; usable fraction "
        f"{a['memory_model']['usable_fraction']}, prefill chunk "
        f"{a['memory_model']['prefill_chunk_tokens']} tokens",
    }
    parts = ['<h2 id="assumptions">Assumptions</h2>', _dl(run),
             '<h3 id="trace">Trace provenance</h3>',
             _dl(a["trace_metadata"]) if a["trace_metadata"] else "<p>No metadata.</p>",
             '<h3 id="topologies">Topologies</h3>']
    parts += [_topology_block(facts, f"topology-{index}")
              for index, facts in enumerate(a["topologies"].values())]
    notes = "".join(f"<li>{_e(n)}</li>" for n in a["notes"])
    parts.append(f"<h3>Notes</h3><ul>{notes or '<li>none</li>'}</ul>")
    return "\n".join(parts)


def _toc(compare: dict[str, Any], figures: list[tuple[dict[str, str], bytes]]) -> str:
    """The table of contents: every workload's table, every plot, the assumptions."""
    def entry(target: str, text: str, children: str = "") -> str:
        return f'<li><a data-goto="{target}">{_e(text)}</a>{children}</li>'

    def sub(items: list[str]) -> str:
        return f"<ul>{''.join(items)}</ul>" if items else ""

    groups = [entry(f"group-{i}", _group_heading(compare, g))
              for i, g in enumerate(compare["groups"])]
    plots = [entry(f"plot-{i}", info["title"]) for i, (info, _) in enumerate(figures)]
    topologies = [entry(f"topology-{i}", f"Topology {name}")
                  for i, name in enumerate(compare["assumptions"]["topologies"])]
    items = [entry("ranked", "Ranked layouts", sub(groups)), entry("plots", "Plots", sub(plots)),
             entry("assumptions", "Assumptions",
                   sub([entry("trace", "Trace provenance"), *topologies]))]
    return f'<nav class="toc"><b>Contents</b><ul>{"".join(items)}</ul></nav>'


def render_html(
    compare: dict[str, Any], figures: list[tuple[dict[str, str], bytes]] | None = None
) -> str:
    """The whole self-contained page as a string (`figures`: PNGs already rendered)."""
    check_compare_dict(compare, "comparison")
    if figures is None:
        from moesim.output.plots import plot_pngs

        figures = plot_pngs(compare)
    a = compare["assumptions"]
    title = f"moesim: {a['model']} layouts on {', '.join(compare['topologies'])}"
    warning = uncalibrated_line(compare)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="warn" id="uncalibrated">{_e(warning)}</p>' if warning else "",
        f"<p>{_e(a['phase'])} of {_e(a['model'])} replaying {_e(a['trace'])}, context "
        f"{_e(a['context'])}, {_e(a['fidelity'])} fidelity; every layout on every topology. "
        "Generated by moesim compare.</p>",
        _toc(compare, figures),
        _results_section(compare),
        _plots_section(compare, figures),
        _assumptions_section(compare),
        '<p id="render-check">(plot check needs JavaScript)</p>',
        f"<script>{_NAV_SCRIPT}{_CHECK_SCRIPT}</script>",
        "</body></html>",
    ])


def write_html_report(
    compare: dict[str, Any],
    out: str | Path,
    figures: list[tuple[dict[str, str], bytes]] | None = None,
) -> Path:
    """Write the page to `out` (folders created); return its path."""
    return write_atomic(out, render_html(compare, figures))
