"""Human tables of a served workload (`ServeResult.to_json()`) and of a load curve."""

from __future__ import annotations

from typing import Any

__all__ = ["format_serve_table", "format_load_curve", "saturation_level"]


def _ms(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 1e3:.{digits}f}"


def _describe(result: dict[str, Any]) -> str:
    inputs = result["inputs"]
    serve = inputs["serve"]
    if serve["rate"] is not None:
        load = f"rate {serve['rate']:g}/s (cv {serve['burst_cv']:g})"
    elif serve["concurrency"] is not None:
        load = f"concurrency {serve['concurrency']}"
    else:
        load = f"replay of {serve['requests_file']}"
    layout = inputs["placement"] or f"disagg {inputs['disagg']}"
    return (f"serve {inputs['model']} {layout} on {inputs['topology']} ({inputs['gpus']} GPUs, "
            f"{inputs['fidelity']}): {load}, isl {serve['isl']}, osl {serve['osl']}, "
            f"{result['requests']} requests measured")


def format_serve_table(result: dict[str, Any]) -> str:
    """Percentiles of TTFT, TPOT, ITL and E2E, then throughput, goodput and the engine's state."""
    lines = [_describe(result), "", f"{'':>10} {'mean':>10} {'p50':>10} {'p90':>10} {'p99':>10}"]
    for key, label in (("ttft_s", "TTFT ms"), ("tpot_s", "TPOT ms"), ("itl_s", "ITL ms"),
                       ("e2e_s", "E2E ms")):
        row = result[key]
        lines.append(f"{label:>10} " + " ".join(f"{_ms(row[q]):>10}"
                                                 for q in ("mean", "p50", "p90", "p99")))
    goodput = result["goodput_per_s"]
    lines += [
        "",
        f"{result['request_throughput_per_s']:.2f} requests/s, "
        f"{result['output_tokens_per_s']:.0f} output tokens/s "
        f"({result['output_tokens_per_s_per_gpu']:.1f} per GPU), "
        + (f"goodput {goodput:.2f} requests/s, " if goodput is not None else "")
        + f"{result['preemptions']} preemptions, KV cache peak "
        f"{100 * result['kv_cache_peak_fraction']:.1f}%, {result['iterations']} iterations"
        + (f", ${result['usd_per_million_tokens']:.3f}/M output tokens"
           if result["usd_per_million_tokens"] is not None else ""),
    ]
    lines += [f"note: {note}" for note in result["inputs"]["notes"]]
    return "\n".join(lines)


def saturation_level(curve: list[dict[str, Any]]) -> Any:
    """The load level where output throughput stops growing: the last level before one that
    adds less than 5% throughput (the last level if it still grows)."""
    for previous, current in zip(curve, curve[1:], strict=False):
        gained = current["result"]["output_tokens_per_s"]
        if gained < 1.05 * previous["result"]["output_tokens_per_s"]:
            return previous["level"]
    return curve[-1]["level"] if curve else None


def format_load_curve(curve: list[dict[str, Any]], kind: str) -> str:
    """One row per load level: throughput, TTFT and TPOT percentiles, goodput; the knee."""
    head = (f"{kind:>12} {'req/s':>8} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p90':>9} "
            f"{'TPOT p50':>9} {'TPOT p90':>9} {'goodput':>8}")
    lines = [head]
    for point in curve:
        r = point["result"]
        good = r["goodput_per_s"]
        lines.append(
            f"{point['level']:>12g} {r['request_throughput_per_s']:>8.2f} "
            f"{r['output_tokens_per_s']:>10.0f} {_ms(r['ttft_s']['p50'], 1):>9} "
            f"{_ms(r['ttft_s']['p90'], 1):>9} {_ms(r['tpot_s']['p50']):>9} "
            f"{_ms(r['tpot_s']['p90']):>9} {'-' if good is None else f'{good:.2f}':>8}")
    knee = saturation_level(curve)
    if curve and knee == curve[-1]["level"]:
        lines.append(f"saturation: not reached; output throughput still grows at {kind} {knee:g} "
                     "(try higher levels)")
    else:
        lines.append(f"saturation: output throughput stops growing beyond {kind} {knee:g} "
                     "(the next level adds under 5%)")
    lines.append("TTFT, TPOT in ms")
    return "\n".join(lines)
