"""Compare: every parallel layout on every topology for one workload, side by side and ranked.

A comparison runs one scenario (model, trace, phase, context, dtypes) for each layout x
topology x batch through `moesim.simulate.run_scenario`. A point that cannot run is listed as
infeasible with its reason, and not simulated: a layout needing more GPUs than the topology
has, a layout the model does not divide into (experts over EP, heads over TP), or one whose
rank does not fit in GPU memory (`moesim.memory.memory_fit`).

Ranking (`RANKING_RULE`): within each workload (batch, context), feasible points are ranked by
decode tokens/s per GPU, highest first, ties broken by lower TPOT. With a TPOT or TTFT target
points meeting every target rank above points missing one. Cost:
`usd_per_million_tokens = world * gpu_price_per_hour_usd / 3600 / tokens_per_s * 1e6`
(decode output tokens; None where the topology has no price).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from moesim.errors import ConfigError, MoesimError
from moesim.inputs.config import Scenario
from moesim.inputs.model_files import load_model
from moesim.planning.evaluate import (
    run_scenario,
    scenario_memory_fit,
)
from moesim.planning.resolve import load_any_trace, parse_layout
from moesim.traffic.experts import contiguous_placement
from moesim.traffic.memory import (
    DEFAULT_PREFILL_CHUNK_TOKENS,
    DEFAULT_USABLE_FRACTION,
)
from moesim.traffic.placement import check_tp_fits_model

__all__ = [
    "RANKING_RULE",
    "DEFAULT_SWEEP_BATCHES",
    "usd_per_million_tokens",
    "rank_rows",
    "evaluate_point",
    "run_compare",
    "format_compare_table",
    "table_cells",
    "TABLE_COLUMNS",
]

RANKING_RULE = (
    "Within each workload (batch, context), feasible layouts are ranked by decode tokens/s per "
    "GPU, highest first; ties go to the lower TPOT. With a TPOT/TTFT target, layouts meeting "
    "every target rank above those missing one. Infeasible layouts are listed with the reason."
)
DEFAULT_SWEEP_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def usd_per_million_tokens(
    world: int, gpu_price_per_hour_usd: float | None, tokens_per_s: float
) -> float | None:
    """Dollars per million decode output tokens: world * price / 3600 / tokens_per_s * 1e6."""
    if gpu_price_per_hour_usd is None or tokens_per_s <= 0:
        return None
    return world * gpu_price_per_hour_usd / 3600 / tokens_per_s * 1e6


def rank_rows(
    rows: Sequence[dict[str, Any]],
    *,
    max_tpot_s: float | None = None,
    max_ttft_s: float | None = None,
) -> list[dict[str, Any]]:
    """Feasible rows of one workload, best first, each with `rank` (1..) and `meets_slo`."""
    ranked = []
    for row in rows:
        if not row["feasible"]:
            continue
        meets = (max_tpot_s is None or row["tpot_s"] <= max_tpot_s) and (
            max_ttft_s is None or row["ttft_s"] <= max_ttft_s
        )
        has_slo = max_tpot_s is not None or max_ttft_s is not None
        ranked.append({**row, "meets_slo": meets if has_slo else None})
    ranked.sort(key=lambda r: (r["meets_slo"] is False, -r["tokens_per_s_per_gpu"], r["tpot_s"]))
    for index, row in enumerate(ranked, start=1):
        row["rank"] = index
    return ranked


def _base_row(scenario: Scenario, topology: Any) -> dict[str, Any]:
    placement = scenario.placement
    return {
        "placement": placement if isinstance(placement, str) else str(placement),
        "topology": topology.name,
        "topology_spec": scenario.topology,
        "batch": scenario.batch,
        "context": scenario.context,
        "world": None,
        "feasible": False,
        "reason": "",
        "gpu_price_per_hour_usd": topology.spec.gpu_price_per_hour_usd,
    }


def _check_point(scenario: Scenario, topology: Any, row: dict[str, Any]) -> Any | None:
    """Fill `world` and `memory`; return the layout, or None with `reason` set."""
    try:
        par = parse_layout(scenario.placement)
        row["world"] = par.world
        if par.world > topology.num_gpus:
            row["reason"] = f"needs {par.world} GPUs but {topology.name} has {topology.num_gpus}"
            return None
        model = load_model(scenario.model)
        contiguous_placement(model.num_experts, par.moe_ep, model.num_moe_layers)
        check_tp_fits_model(par, model.num_attention_heads, model.expert_ffn_size)
    except MoesimError as exc:
        row["reason"] = str(exc)
        return None
    fit = scenario_memory_fit(scenario, model, par, topology)
    row["memory"] = fit.to_dict()
    row["memory_headroom_bytes"] = fit.headroom_bytes
    if not fit.fits:
        row["reason"] = f"out of memory: {fit.reason}"
        return None
    return par


def evaluate_point(scenario: Scenario, topology: Any) -> dict[str, Any]:
    """One comparison row: checks, then `run_scenario`; a MoesimError makes it infeasible."""
    row = _base_row(scenario, topology)
    par = _check_point(scenario, topology, row)
    if par is None:
        return row
    try:
        result = run_scenario(scenario)
    except MoesimError as exc:
        row["reason"] = str(exc)
        return row
    imbalance = result["imbalance"]
    row.update(
        feasible=True,
        ttft_s=result["ttft_s"],
        tpot_s=result["tpot_s"],
        tokens_per_s=result["tokens_per_s"],
        tokens_per_s_per_gpu=result["tokens_per_s"] / par.world,
        a2a_bytes=result["a2a_bytes"],
        expert_imbalance_max=imbalance["expert_max_over_mean"]["max"],
        rank_imbalance_max=imbalance["rank_max_over_mean"]["max"],
        usd_per_million_tokens=usd_per_million_tokens(
            par.world, row["gpu_price_per_hour_usd"], result["tokens_per_s"]
        ),
        result=result,
    )
    return row


def _describe(row: dict[str, Any]) -> str:
    """One progress line's verdict."""
    if not row["feasible"]:
        return f"infeasible: {row['reason']}"
    return (
        f"TPOT {row['tpot_s'] * 1e3:.2f} ms, {row['tokens_per_s']:.0f} tokens/s, "
        f"TTFT {row['ttft_s'] * 1e3:.0f} ms"
    )


def _assumptions(base: Scenario, topologies: dict[str, Any], rows: list[dict[str, Any]]) -> dict:
    """What every number rests on: trace, model, dtypes, topologies and their sources."""
    trace, source = load_any_trace(base.trace)
    notes = sorted({n for r in rows if r["feasible"] for n in r["result"]["inputs"]["notes"]})
    return {
        "model": load_model(base.model).name,
        "trace": source,
        "trace_tokens": trace.num_tokens,
        "trace_layers": trace.num_layers,
        "trace_metadata": {k: str(v) for k, v in trace.metadata.items()},
        "phase": base.phase,
        "context": base.context,
        "decode_steps": base.decode_steps,
        "act_dtype": base.act_dtype,
        "weight_dtype": base.weight_dtype,
        "dedup": base.dedup,
        "sp_variant": base.sp_variant,
        "fidelity": base.fidelity,
        "memory_model": {
            "usable_fraction": DEFAULT_USABLE_FRACTION,
            "prefill_chunk_tokens": DEFAULT_PREFILL_CHUNK_TOKENS,
            "kv_dtype": base.act_dtype,
            "doc": "see moesim/memory.py: per-rank weights, KV cache of the rank's sequences, "
            "activation peak of a chunked-prefill step, all-to-all buffers, and a runtime "
            "reserve of (1 - usable_fraction) of the GPU",
        },
        "topologies": {name: _topology_facts(topo) for name, topo in topologies.items()},
        "notes": notes,
    }


def _topology_facts(topology: Any) -> dict[str, Any]:
    spec = topology.spec
    calibrated = bool(spec.link_efficiency) or spec.collective_launch_s is not None
    return {
        "name": spec.name,
        "description": spec.description,
        "sources": list(spec.sources),
        "gpus": topology.num_gpus,
        "gpu_spec": spec.gpu_spec.model_dump(),
        "gpu_price_per_hour_usd": spec.gpu_price_per_hour_usd,
        "link_efficiency": dict(spec.link_efficiency),
        "collective_launch_s": spec.collective_launch_s,
        "calibration": (
            "link efficiency / collective launch calibrated (moesim calibrate; see the "
            "topology file's comments)"
            if calibrated
            else "not calibrated: nominal link bandwidths, GPU efficiencies are first guesses"
        ),
    }


def _load_topologies(names: Sequence[str]) -> dict[str, Any]:
    from moesim.inputs.topology import load_topology

    return {name: load_topology(name) for name in names}


def run_compare(
    base: Scenario,
    placements: Sequence[str],
    topologies: Sequence[str] | None = None,
    batches: Sequence[int | None] | None = None,
    *,
    max_tpot_s: float | None = None,
    max_ttft_s: float | None = None,
    plot_data: bool = False,
    sweep_batches: Sequence[int] = (),
    progress: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    """Every layout on every topology (and batch): the comparison as a JSON-ready dict."""
    names = list(topologies or ([base.topology] if base.topology else []))
    if not names:
        raise ConfigError(
            "compare needs a topology: give --topology or set 'topology' in the scenario"
        )
    if not placements:
        raise ConfigError("compare needs at least one layout: --placements TP8,EP8,...")
    loaded = _load_topologies(names)
    batch_list = list(batches or [base.batch])
    points = [(b, t, p) for b in batch_list for t in names for p in placements]
    rows = []
    for index, (batch, topo, placement) in enumerate(points, start=1):
        scenario = base.model_copy(
            update={"batch": batch, "topology": topo, "placement": placement}
        )
        began = time.perf_counter()
        row = evaluate_point(scenario, loaded[topo])
        row["order"] = index
        if plot_data and row["feasible"]:
            from moesim.output.plots import point_plot_data

            row["plot_data"] = point_plot_data(scenario)
        rows.append(row)
        if progress is not None:
            print(
                f"[{index}/{len(points)}] {placement} on {loaded[topo].name}, batch {batch}: "
                f"{_describe(row)} ({time.perf_counter() - began:.1f} s)",
                file=progress,
            )
    compare = _assemble(base, names, loaded, batch_list, rows, max_tpot_s, max_ttft_s)
    if sweep_batches:
        from moesim.output.plots import latency_throughput_sweep

        compare["latency_throughput"] = latency_throughput_sweep(
            base, loaded, compare, sweep_batches, progress=progress
        )
    return compare


def _assemble(
    base: Scenario,
    names: list[str],
    loaded: dict[str, Any],
    batch_list: list[int | None],
    rows: list[dict[str, Any]],
    max_tpot_s: float | None,
    max_ttft_s: float | None,
) -> dict[str, Any]:
    """The comparison dict: ranked groups per batch, infeasible rows, assumptions."""
    groups = []
    for batch in batch_list:
        members = [r for r in rows if r["batch"] == batch]
        groups.append(
            {
                "batch": batch,
                "context": base.context,
                "ranked": rank_rows(members, max_tpot_s=max_tpot_s, max_ttft_s=max_ttft_s),
                "infeasible": [r for r in members if not r["feasible"]],
            }
        )
    return {
        "kind": "moesim.compare",
        "version": 1,
        "scenario": base.model_dump(),
        "topologies": [loaded[n].name for n in names],
        "ranking": RANKING_RULE,
        "slo": {"max_tpot_s": max_tpot_s, "max_ttft_s": max_ttft_s},
        "groups": groups,
        "assumptions": _assumptions(base, {loaded[n].name: loaded[n] for n in names}, rows),
    }


def _cell(value: float | None, scale: float, digits: int) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


TABLE_COLUMNS = (
    ("rank", 4),
    ("layout", 9),
    ("topology", 14),
    ("GPUs", 4),
    ("TTFT ms", 9),
    ("TPOT ms", 8),
    ("tok/s", 8),
    ("tok/s/GPU", 9),
    ("a2a GB", 7),
    ("imb e/r", 9),
    ("free GB", 7),
    ("$/M tok", 7),
)


def table_cells(row: dict[str, Any]) -> list[str]:
    """The ranked-table cells of one feasible row (human units: ms, GB, $)."""
    return [
        str(row["rank"]) + ("" if row.get("meets_slo") is not False else "*"),
        row["placement"],
        row["topology"],
        str(row["world"]),
        _cell(row["ttft_s"], 1e3, 1),
        _cell(row["tpot_s"], 1e3, 2),
        _cell(row["tokens_per_s"], 1, 0),
        _cell(row["tokens_per_s_per_gpu"], 1, 1),
        _cell(row["a2a_bytes"], 1e-9, 3),
        f"{row['expert_imbalance_max']:.2f}/{row['rank_imbalance_max']:.2f}",
        _cell(row["memory_headroom_bytes"], 1e-9, 1),
        _cell(row["usd_per_million_tokens"], 1, 2),
    ]


def format_compare_table(compare: dict[str, Any]) -> str:
    """The ranked tables (one per workload) and the infeasible points with their reasons."""
    sc = compare["scenario"]
    lines = [
        f"model {compare['assumptions']['model']}  trace {sc['trace']}  phase {sc['phase']}"
        f"  {sc['fidelity']}  weights {sc['weight_dtype']}  act {sc['act_dtype']}"
    ]
    header = " ".join(f"{name:>{width}}" for name, width in TABLE_COLUMNS)
    for group in compare["groups"]:
        lines += ["", f"batch {group['batch']}, context {group['context']}:", header]
        for row in group["ranked"]:
            cells = table_cells(row)
            lines.append(
                " ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, TABLE_COLUMNS, strict=True))
            )
        for row in group["infeasible"]:
            lines.append(f"  infeasible {row['placement']} on {row['topology']}: {row['reason']}")
    lines += [
        "",
        "imb e/r: max over layers of expert and rank max/mean load; free GB: memory "
        "headroom per GPU; $/M tok: per million output tokens; * misses the target",
        f"ranking: {compare['ranking']}",
    ]
    return "\n".join(lines)
