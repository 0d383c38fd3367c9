"""HTML report: one self-contained page of a comparison (`moesim compare --json` output).

The page holds the ranked tables, the infeasible points with their reasons, every plot (PNG
embedded as a base64 data URI) and the assumptions the numbers rest on (trace and its
provenance, topologies and their sources, efficiencies, calibration, memory model, notes).
CSS is inline and nothing is fetched: the file can be mailed or archived as is. A short
inline script writes whether every plot decoded into the element `#render-check`.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from moesim.errors import ConfigError
from moesim.output.files import write_atomic
from moesim.output.report import table_cells, table_columns

__all__ = ["render_html", "write_html_report", "check_compare_dict"]

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
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
.small { font-size: 0.85em; color: #555; } ul.sources li { font-size: 0.85em; }
#render-check { font-size: 0.85em; color: #555; }
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


def check_compare_dict(data: dict[str, Any], source: str) -> None:
    """Raise ConfigError unless `data` is a `moesim compare --json` result."""
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing or data.get("kind") != "moesim.compare":
        lacks = ", ".join(missing) or "kind: moesim.compare"
        raise ConfigError(
            f"{source} is not a `moesim compare --json` file (missing {lacks}); write one "
            "with: moesim compare SCENARIO.yaml --json OUT"
        )


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


def _results_section(compare: dict[str, Any]) -> str:
    parts = ["<h2>Ranked layouts</h2>", f"<p class=small>{_e(compare['ranking'])}</p>"]
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
    for group in compare["groups"]:
        where = f"Batch {group['batch']}, context {group['context']}"
        if serving:
            where = f"Served; a2a, imbalance and free memory of one decode step at {where.lower()}"
        parts.append(f"<h3>{_e(where)}</h3>")
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


def _plots_section(compare: dict[str, Any], figures: list[tuple[dict[str, str], bytes]] | None
                   ) -> str:
    if figures is None:
        from moesim.output.plots import plot_pngs

        figures = plot_pngs(compare)
    if not figures:
        return ("<h2>Plots</h2><p>No plot data in this file: run moesim compare with --plot "
                "or --html to record it.</p>")
    parts = ["<h2>Plots</h2>"]
    for info, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img class="plot" alt="{_e(info["title"])}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{_e(info["title"])}.</b> '
            f'{_e(info["caption"])}</figcaption></figure>'
        )
    return "\n".join(parts)


def _dl(items: dict[str, Any]) -> str:
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items.items())
    return f"<dl>{rows}</dl>"


def _topology_block(facts: dict[str, Any]) -> str:
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
    return (f"<h3>Topology {_e(facts['name'])}</h3>{_dl(items)}"
            f"<p>Sources:</p><ul class=sources>{sources or '<li>none given</li>'}</ul>")


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
    parts = ["<h2>Assumptions</h2>", _dl(run), "<h3>Trace provenance</h3>",
             _dl(a["trace_metadata"]) if a["trace_metadata"] else "<p>No metadata.</p>"]
    parts += [_topology_block(facts) for facts in a["topologies"].values()]
    notes = "".join(f"<li>{_e(n)}</li>" for n in a["notes"])
    parts.append(f"<h3>Notes</h3><ul>{notes or '<li>none</li>'}</ul>")
    return "\n".join(parts)


def render_html(
    compare: dict[str, Any], figures: list[tuple[dict[str, str], bytes]] | None = None
) -> str:
    """The whole self-contained page as a string (`figures`: PNGs already rendered)."""
    check_compare_dict(compare, "comparison")
    a = compare["assumptions"]
    title = f"moesim: {a['model']} layouts on {', '.join(compare['topologies'])}"
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>{_e(a['phase'])} of {_e(a['model'])} replaying {_e(a['trace'])}, context "
        f"{_e(a['context'])}; every layout on every topology. Generated by moesim compare.</p>",
        _results_section(compare),
        _plots_section(compare, figures),
        _assumptions_section(compare),
        '<p id="render-check">(plot check needs JavaScript)</p>',
        f"<script>{_CHECK_SCRIPT}</script>",
        "</body></html>",
    ])


def write_html_report(
    compare: dict[str, Any],
    out: str | Path,
    figures: list[tuple[dict[str, str], bytes]] | None = None,
) -> Path:
    """Write the page to `out` (folders created); return its path."""
    return write_atomic(out, render_html(compare, figures))
