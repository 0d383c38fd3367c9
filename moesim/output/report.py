"""Human-readable tables of a run result (`RunResult.to_json()`) and of a comparison."""

from __future__ import annotations

from typing import Any

__all__ = ["format_run_table", "format_bytes", "format_compare_table", "table_cells",
           "table_columns", "uncalibrated_topologies", "uncalibrated_line", "TABLE_COLUMNS",
           "SERVING_COLUMNS"]


def format_bytes(num_bytes: float) -> str:
    """Bytes in the largest unit that keeps the number >= 1 (decimal units: kB, MB, GB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(num_bytes) >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes:.0f} B"


def _header(inputs: dict[str, Any]) -> list[str]:
    return [
        f"model {inputs['model']}  placement {inputs['placement']} (world {inputs['world']})  "
        f"phase {inputs['phase']}  act {inputs['act_dtype']}  dedup {inputs['dedup']}",
        f"trace {inputs['trace']}: {inputs['tokens']} tokens x {inputs['layers']} MoE layers, "
        f"top-{inputs['top_k']}"
        + (f"  topology {inputs['topology']}" if inputs.get("topology") else ""),
    ]


def format_run_table(result: dict[str, Any]) -> str:
    """Per-layer traffic and imbalance, then totals."""
    lines = _header(result["inputs"])
    lines.append("")
    lines.append(
        f"{'layer':>5} {'a2a':>11} {'local':>11} {'attn comm':>11} {'moe comm':>11} "
        f"{'expert max/mean':>15} {'rank max/mean':>13} {'expert CV':>9}"
    )
    for row in result["per_layer"]:
        imb = row["imbalance"]
        lines.append(
            f"{row['layer']:>5} {format_bytes(row['a2a_bytes']):>11} "
            f"{format_bytes(row['local_bytes']):>11} {format_bytes(row['attn_comm_bytes']):>11} "
            f"{format_bytes(row['moe_comm_bytes']):>11} {imb['expert_max_over_mean']:>15.3f} "
            f"{imb['rank_max_over_mean']:>13.3f} {imb['expert_cv']:>9.3f}"
        )
    imb = result["imbalance"]
    lines.append("")
    lines.append(
        f"all-to-all {format_bytes(result['a2a_bytes'])} cross-rank "
        f"({result['a2a_bytes']} B), local {format_bytes(result['local_bytes'])}; "
        f"attention comm {format_bytes(result['attn_comm_bytes'])}, "
        f"MoE comm {format_bytes(result['moe_comm_bytes'])}"
    )
    lines.append(
        "imbalance max/mean over layers: expert "
        f"{imb['expert_max_over_mean']['max']:.3f}/{imb['expert_max_over_mean']['mean']:.3f}, "
        f"rank {imb['rank_max_over_mean']['max']:.3f}/{imb['rank_max_over_mean']['mean']:.3f}, "
        f"expert CV {imb['expert_cv']['max']:.3f}/{imb['expert_cv']['mean']:.3f}"
    )
    lines.extend(_engine_lines(result.get("moe_engine")))
    if "latency" in result:
        lines.extend(_latency_lines(result))
    for note in result["inputs"].get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _engine_lines(engine: dict[str, Any] | None) -> list[str]:
    """What the MoE engine ran, when it is not the default (direct all-to-all, nothing else)."""
    if not engine:
        return []
    parts = []
    if engine["a2a"] != "direct" or engine["dispatch_vector_bytes"] != \
            engine["combine_vector_bytes"]:
        parts.append(f"all-to-all {engine['a2a']} (dispatch {engine['dispatch_vector_bytes']} B, "
                     f"combine {engine['combine_vector_bytes']} B per token vector)")
    if engine["overlap"] != "none":
        parts.append(f"overlap {engine['overlap']}")
    load = engine.get("rank_load")
    if load:
        before = load.get("before_max_over_mean")
        was = f"{before['mean']:.3f} -> " if before else ""
        parts.append(f"EPLB {engine['eplb']} with {engine['redundant_experts']} redundant slots, "
                     f"rank max/mean {was}{load['after_max_over_mean']['mean']:.3f} (mean over "
                     "layers)")
    mtp = engine.get("mtp")
    if mtp:
        parts.append(f"MTP {mtp['draft_tokens']} drafts at {mtp['acceptance']}: "
                     f"{mtp['tokens_per_step']:.3f} tokens per step of "
                     f"{mtp['verify_s'] * 1e3:.3f} ms verify + {mtp['draft_s'] * 1e3:.3f} ms "
                     "drafts (TPOT is the step over its tokens; the decode step below is the "
                     "verify)")
    return [f"MoE engine: {'; '.join(parts)}"] if parts else []


def _latency_lines(result: dict[str, Any]) -> list[str]:
    """Step time, its phase breakdown on the critical rank, TTFT/TPOT and throughput."""
    lat = result["latency"]
    phases = ", ".join(
        f"{name} {seconds * 1e3:.3f}" for name, seconds in lat["per_phase_s"].items() if seconds
    )
    return [
        "",
        f"{lat['phase']} step {lat['step_s'] * 1e3:.3f} ms ({lat['fidelity']}, critical rank "
        f"{lat['critical_rank']}); ms per phase: {phases}, lm_head {lat['lm_head_s'] * 1e3:.3f}",
        f"TTFT {result['ttft_s'] * 1e3:.2f} ms   TPOT {result['tpot_s'] * 1e3:.3f} ms   "
        f"decode {result['tokens_per_s']:.0f} tokens/s   "
        f"prefill {result['prefill_tokens_per_s']:.0f} tokens/s",
    ]


# ---- comparisons ---------------------------------------------------------------------------


def _cell(value: float | None, scale: float, digits: int) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


_HEAD_COLUMNS = (("rank", 4), ("layout", 9), ("topology", 14), ("GPUs", 4), ("TTFT ms", 9),
                 ("TPOT ms", 8))
_TAIL_COLUMNS = (("a2a GB", 7), ("imb e/r", 9), ("free GB", 7), ("$/M tok", 7))
TABLE_COLUMNS = _HEAD_COLUMNS + (("tok/s", 8), ("tok/s/GPU", 9)) + _TAIL_COLUMNS
SERVING_COLUMNS = _HEAD_COLUMNS + (("out tok/s/GPU", 13), ("goodput/GPU", 11)) + _TAIL_COLUMNS


def table_columns(compare: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    """The ranked table's columns: one-step figures, or served ones when the comparison
    served a workload."""
    return SERVING_COLUMNS if compare.get("serving") else TABLE_COLUMNS


def table_cells(row: dict[str, Any]) -> list[str]:
    """The ranked-table cells of one feasible row (human units: ms, GB, $); a served row shows
    TTFT and TPOT at the comparison's percentile, served throughput and goodput per GPU."""
    head = [
        str(row["rank"]) + ("" if row.get("meets_slo") is not False else "*"),
        row["placement"],
        row["topology"],
        str(row["world"]),
    ]
    if "serve" in row:
        figures = row["serve"]
        good = figures["goodput_per_s_per_gpu"]
        middle = [_cell(figures["output_tokens_per_s_per_gpu"], 1, 1),
                  "-" if good is None else f"{good:.3f}"]
    else:
        figures = row
        middle = [_cell(row["tokens_per_s"], 1, 0), _cell(row["tokens_per_s_per_gpu"], 1, 1)]
    return head + [_cell(figures["ttft_s"], 1e3, 1), _cell(figures["tpot_s"], 1e3, 2)] + middle + [
        _cell(row["a2a_bytes"], 1e-9, 3),
        f"{_cell(row.get('expert_imbalance_max'), 1, 2)}/"
        f"{_cell(row.get('rank_imbalance_max'), 1, 2)}",
        _cell(row["memory_headroom_bytes"], 1e-9, 1),
        _cell(figures["usd_per_million_tokens"], 1, 2),
    ]


def uncalibrated_topologies(compare: dict[str, Any]) -> list[str]:
    """The comparison's topologies whose costs are not calibrated on measurements (their
    assumptions say so: `calibrated`, or in files written before it, the calibration text)."""
    facts = (compare.get("assumptions") or {}).get("topologies") or {}
    return [str(name) for name, f in facts.items() if isinstance(f, dict)
            and not f.get("calibrated", not str(f.get("calibration", "")).startswith("not "))]


def uncalibrated_line(compare: dict[str, Any]) -> str | None:
    """One warning naming the uncalibrated topologies, or None when every one is calibrated."""
    names = uncalibrated_topologies(compare)
    if not names:
        return None
    verb = "is" if len(names) == 1 else "are"
    return (f"UNCALIBRATED: {', '.join(names)} {verb} not calibrated on measurements (nominal "
            "bandwidths, first-guess efficiencies): treat those rows as rough estimates")


def format_compare_table(compare: dict[str, Any]) -> str:
    """The ranked tables (one per workload) and the infeasible points with their reasons."""
    sc = compare["scenario"]
    lines = [
        f"model {compare['assumptions']['model']}  trace {sc['trace']}  phase {sc['phase']}"
        f"  {sc['fidelity']}  weights {sc['weight_dtype']}  act {sc['act_dtype']}"
    ]
    warning = uncalibrated_line(compare)
    if warning:
        lines.append(warning)
    columns = table_columns(compare)
    serving = compare.get("serving")
    if serving:
        w = serving["workload"]
        load = (f"rate {w['rate']:g}/s" if w["rate"] is not None else
                f"concurrency {w['concurrency']}" if w["concurrency"] is not None else
                f"replay {w['requests_file']}")
        lines.append(f"served: {load}, isl {w['isl']}, osl {w['osl']}; TTFT and TPOT are "
                     f"{serving['percentile']} over the requests")
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    for group in compare["groups"]:
        where = f"batch {group['batch']}, context {group['context']}"
        if serving:  # the served columns are the workload's; the rest one step's
            where = f"served; a2a GB, imb e/r and free GB of one decode step at {where}"
        lines += ["", f"{where}:", header]
        for row in group["ranked"]:
            cells = table_cells(row)
            lines.append(
                " ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, columns, strict=True))
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
