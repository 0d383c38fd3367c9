"""Compare: every parallel layout on every topology for one workload, side by side and ranked.

A comparison evaluates one scenario (model, trace, phase, context, dtypes) for each layout x
topology x batch with `moesim.planning.evaluate` (one cache for all points). A point that
cannot run is listed as infeasible with its reason, and not simulated: a layout needing more
GPUs than the topology has, a layout the model does not divide into (experts over EP, heads
over TP), or one whose rank does not fit in GPU memory (`moesim.traffic.memory.memory_fit`).

Ranking (`RANKING_RULE`): within each workload (batch, context), feasible points are ranked by
decode tokens/s per GPU, highest first, ties broken by lower TPOT. With a TPOT or TTFT target
points meeting every target rank above points missing one. Cost:
`usd_per_million_tokens = world * gpu_price_per_hour_usd / 3600 / tokens_per_s * 1e6`
(decode output tokens; None where the topology has no price).

Variants (`parse_variants`, `moesim compare --variants`): the same layouts evaluated once per
set of MoE-engine overrides of the scenario (`VARIANT_FIELDS`: EPLB, overlap, all-to-all, MTP),
e.g. `base,eplb=deepseek+redundant_experts=8,overlap=tbo`. Each row carries its variant's label
(`variant`) and every variant of every layout ranks in the one table of its workload.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from pydantic import ValidationError

from moesim.errors import ConfigError, MoesimError
from moesim.inputs.config import Scenario
from moesim.output.result import RunResult
from moesim.output.serve_result import ServeResult
from moesim.planning.deployment import UNCALIBRATED, topology_calibration
from moesim.planning.evaluate import DoesNotFit, EvaluationCache, Infeasible, evaluate, try_evaluate
from moesim.planning.serving import serve
from moesim.traffic.memory import DEFAULT_USABLE_FRACTION

__all__ = [
    "RANKING_RULE",
    "SERVING_RANKING_RULE",
    "DEFAULT_SWEEP_BATCHES",
    "VARIANT_FIELDS",
    "Variant",
    "parse_variants",
    "variant_scenarios",
    "row_label",
    "rank_rows",
    "serve_figures",
    "evaluate_point",
    "run_compare",
    "latency_throughput_sweep",
]

RANKING_RULE = (
    "Within each workload (batch, context), feasible layouts are ranked by decode tokens/s per "
    "GPU, highest first; ties go to the lower TPOT. With a TPOT/TTFT target, layouts meeting "
    "every target rank above those missing one. Infeasible layouts are listed with the reason."
)
SERVING_RANKING_RULE = (
    "Every layout serves the same requests (moesim serve). With a TTFT/TPOT target, layouts are "
    "ranked by goodput per GPU (requests/s meeting both targets), highest first, and those "
    "whose {p} TTFT and TPOT meet the targets rank above those missing one; without, by served "
    "output tokens/s per GPU. Ties go to the lower {p} TPOT. Infeasible layouts (including "
    "those that cannot serve: SP, no room for a KV cache) are listed with the reason."
)
DEFAULT_SWEEP_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Scenario fields a variant may override: the MoE engine's (rebalance_steps acts when serving).
VARIANT_FIELDS = ("eplb", "redundant_experts", "eplb_window", "rebalance_steps", "overlap",
                  "a2a", "dispatch_dtype", "mtp", "mtp_acceptance")
BASE_VARIANT = "base"
_VARIANT_EXAMPLE = "e.g. --variants base,eplb=deepseek+redundant_experts=8,overlap=tbo"
_LIST_FIELDS = ("mtp_acceptance",)  # values that are themselves comma-separated

Variant = tuple[str, dict[str, Any]]  # label, Scenario field overrides ({} for `base`)


def _variant_error(problem: str) -> ConfigError:
    return ConfigError(
        f"--variants: {problem}; give comma-separated variants, each 'base' or FIELD=VALUE "
        f"overrides joined by '+', FIELD among {', '.join(VARIANT_FIELDS)} ({_VARIANT_EXAMPLE})"
    )


def parse_variants(text: str | None) -> list[Variant]:
    """`--variants` as (label, overrides) pairs: comma-separated variants, each `base` (the
    scenario as given) or `FIELD=VALUE` overrides of `VARIANT_FIELDS` joined by `+`. A
    list-valued field takes its own commas (`mtp=2+mtp_acceptance=0.9,0.7`). Field names may
    be written with dashes; the label is the variant with canonical names. Values are checked
    against the scenario by `variant_scenarios`. None or '' gives no variants."""
    if not text or not text.strip():
        return []
    items: list[list[tuple[str, str]] | None] = []  # None: base
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise _variant_error(f"empty variant in '{text}'")
        last = items[-1] if items else None
        if "=" not in item and item != BASE_VARIANT and last and last[-1][0] in _LIST_FIELDS:
            last[-1] = (last[-1][0], f"{last[-1][1]},{item}")  # a list value's next item
            continue
        items.append(None if item == BASE_VARIANT else _parse_overrides(item))
    variants: list[Variant] = []
    for pairs in items:
        label = BASE_VARIANT if pairs is None else "+".join(f"{k}={v}" for k, v in pairs)
        overrides = {} if pairs is None else {k: _value(k, v) for k, v in pairs}
        if any(label == seen for seen, _ in variants):
            raise _variant_error(f"variant '{label}' is given twice")
        variants.append((label, overrides))
    return variants


def _parse_overrides(item: str) -> list[tuple[str, str]]:
    """`a=1+b=2` as [(a, "1"), (b, "2")], field names checked."""
    pairs: list[tuple[str, str]] = []
    for part in item.split("+"):
        field, sep, value = part.partition("=")
        field = field.strip().replace("-", "_")
        if not sep or not field or not value.strip():
            raise _variant_error(f"cannot read '{part.strip()}' in '{item}' (write FIELD=VALUE)")
        if field not in VARIANT_FIELDS:
            raise _variant_error(f"unknown field '{field}' in '{item}'")
        if any(field == seen for seen, _ in pairs):
            raise _variant_error(f"field '{field}' is given twice in '{item}'")
        pairs.append((field, value.strip()))
    return pairs


def _value(field: str, value: str) -> Any:
    """A variant's value as Scenario takes it: `none`/`default` of an optional field is None."""
    if Scenario.model_fields[field].default is None and value.lower() in ("none", "default"):
        return None
    return value


def variant_scenarios(base: Scenario, variants: Sequence[Variant]) -> list[tuple[str, Scenario]]:
    """Each variant's scenario: `base` with its overrides, validated (ConfigError naming
    --variants and the variant on a refused value)."""
    out = []
    for label, overrides in variants:
        if not overrides:
            out.append((label, base))
            continue
        try:
            scenario = Scenario.model_validate({**base.model_dump(), **overrides})
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                field = str(err["loc"][0]) if err["loc"] else ""
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{field}: {msg}" if field else msg)
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in overrides)
            raise ConfigError(
                f"--variants: variant '{label}': {'; '.join(problems)}; change its values "
                f"(each takes what its flag takes: {flags}) or its other fields") from None
        out.append((label, scenario))
    return out


def row_label(row: dict[str, Any]) -> str:
    """A row's layout as tables, plots and progress name it: `EP8`, or with a variant
    `EP8 [eplb=deepseek+redundant_experts=8]`."""
    variant = row.get("variant")
    return row["placement"] if variant is None else f"{row['placement']} [{variant}]"


def rank_rows(
    rows: Sequence[dict[str, Any]],
    *,
    max_tpot_s: float | None = None,
    max_ttft_s: float | None = None,
    serving: bool = False,
) -> list[dict[str, Any]]:
    """Feasible rows of one workload, best first, each with `rank` (1..) and `meets_slo`:
    one-step figures, or with `serving` the rows' `serve` figures (`SERVING_RANKING_RULE`)."""
    has_slo = max_tpot_s is not None or max_ttft_s is not None
    ranked = []
    for row in rows:
        if not row["feasible"]:
            continue
        figures = row["serve"] if serving else row
        meets = (max_tpot_s is None or figures["tpot_s"] <= max_tpot_s) and (
            max_ttft_s is None or figures["ttft_s"] <= max_ttft_s
        )
        ranked.append({**row, "meets_slo": meets if has_slo else None})

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        if not serving:
            return (row["meets_slo"] is False, -row["tokens_per_s_per_gpu"], row["tpot_s"])
        s = row["serve"]
        first = s["goodput_per_s_per_gpu"] if has_slo else s["output_tokens_per_s_per_gpu"]
        return (row["meets_slo"] is False, -first, s["tpot_s"])

    ranked.sort(key=key)
    for index, row in enumerate(ranked, start=1):
        row["rank"] = index
    return ranked


def serve_figures(result: ServeResult, percentile: str) -> dict[str, Any]:
    """A comparison row's serving figures: TTFT and TPOT at `percentile`, throughput and
    goodput per GPU, cost, and the whole result."""
    data = result.to_json()
    goodput = data["goodput_per_s"]
    return {
        "percentile": percentile,
        "ttft_s": data["ttft_s"][percentile],
        "tpot_s": data["tpot_s"][percentile],
        "output_tokens_per_s_per_gpu": data["output_tokens_per_s_per_gpu"],
        "goodput_per_s": goodput,
        "goodput_per_s_per_gpu": None if goodput is None else goodput / result.gpus,
        "usd_per_million_tokens": data["usd_per_million_tokens"],
        "result": data,
    }


def evaluate_point(
    scenario: Scenario, topology: Any, cache: EvaluationCache | None = None
) -> tuple[dict[str, Any], RunResult | None]:
    """One comparison row (and its RunResult when it ran): `try_evaluate`, so a point that
    cannot run (too many GPUs, not dividing, out of memory) is a row with the reason and is
    never simulated."""
    placement = scenario.placement
    outcome = try_evaluate(scenario, cache=cache)
    row: dict[str, Any] = {
        "placement": placement if isinstance(placement, str) else str(placement),
        "topology": topology.name,
        "topology_spec": scenario.topology,
        "batch": scenario.batch,
        "context": scenario.context,
        "world": outcome.world,
        "feasible": isinstance(outcome, RunResult),
        "reason": "",
        "gpu_price_per_hour_usd": topology.spec.gpu_price_per_hour_usd,
    }
    if isinstance(outcome, Infeasible):
        row["reason"] = outcome.reason
        if outcome.memory is not None:
            row["memory"] = outcome.memory.to_dict()
            row["memory_headroom_bytes"] = outcome.memory.headroom_bytes
        return row, None
    assert outcome.memory is not None and outcome.tpot_s is not None
    imbalance = outcome.imbalance
    row.update(
        memory=outcome.memory.to_dict(),
        memory_headroom_bytes=outcome.memory.headroom_bytes,
        ttft_s=outcome.ttft_s,
        tpot_s=outcome.tpot_s,
        tokens_per_s=outcome.tokens_per_s,
        tokens_per_s_per_gpu=outcome.tokens_per_s_per_gpu,
        a2a_bytes=outcome.a2a_bytes,
        expert_imbalance_max=imbalance["expert_max_over_mean"].max,
        rank_imbalance_max=imbalance["rank_max_over_mean"].max,
        usd_per_million_tokens=outcome.usd_per_million_tokens,
        result=outcome.to_json(),
    )
    return row, outcome


def _describe(row: dict[str, Any]) -> str:
    """One progress line's verdict."""
    if not row["feasible"]:
        return f"infeasible: {row['reason']}"
    if "serve" in row:
        s = row["serve"]
        p = s["percentile"]
        return (f"served: {p} TTFT {s['ttft_s'] * 1e3:.1f} ms, {p} TPOT "
                f"{s['tpot_s'] * 1e3:.2f} ms, {s['output_tokens_per_s_per_gpu']:.0f} output "
                "tokens/s/GPU")
    return (
        f"TPOT {row['tpot_s'] * 1e3:.2f} ms, {row['tokens_per_s']:.0f} tokens/s, "
        f"TTFT {row['ttft_s'] * 1e3:.0f} ms"
    )


def _assumptions(base: Scenario, topologies: dict[str, Any], rows: list[dict[str, Any]],
                 cache: EvaluationCache) -> dict[str, Any]:
    """What every number rests on: trace, model, dtypes, topologies and their sources."""
    trace, source = cache.resolver.trace(base.trace)
    notes = sorted({n for r in rows if r["feasible"] for n in r["result"]["inputs"]["notes"]})
    return {
        "model": cache.resolver.model(base.model).name,
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
            "prefill_chunk_tokens": base.prefill_chunk_tokens,
            "kv_dtype": base.act_dtype,
            "doc": "see moesim/traffic/memory.py: per-rank weights, KV cache of the rank's "
            "sequences, activation peak of a chunked-prefill step, all-to-all buffers, and a "
            "runtime reserve of (1 - usable_fraction) of the GPU",
        },
        "topologies": {name: _topology_facts(topo) for name, topo in topologies.items()},
        "notes": notes,
    }


def _topology_facts(topology: Any) -> dict[str, Any]:
    """A topology's figures, sources and whether its costs are calibrated on measurements
    (`moesim.planning.deployment.topology_calibration`)."""
    spec = topology.spec
    calibration = topology_calibration(spec.name, spec.sources)
    return {
        "name": spec.name,
        "description": spec.description,
        "sources": list(spec.sources),
        "gpus": topology.num_gpus,
        "gpu_spec": spec.gpu_spec.model_dump(),
        "gpu_price_per_hour_usd": spec.gpu_price_per_hour_usd,
        "link_efficiency": dict(spec.link_efficiency),
        "collective_launch_s": spec.collective_launch_s,
        "calibrated": calibration is not None,
        "calibration": (
            f"calibrated on measurements: {calibration} (link efficiency / collective launch "
            "calibrated; see the topology file's comments)"
            if calibration is not None else UNCALIBRATED
        ),
    }


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
    percentile: str = "p90",
    progress: TextIO | None = sys.stderr,
    variants: Sequence[Variant] = (),
) -> dict[str, Any]:
    """Every layout on every topology (and batch): the comparison as a JSON-ready dict. With a
    served workload (`base.serve`) every feasible layout also serves it and the ranking is by
    serving figures at `percentile` (`SERVING_RANKING_RULE`). With `variants` (`parse_variants`)
    every point runs once per variant, its rows labelled `variant`, all ranked together."""
    names = list(topologies or ([base.topology] if base.topology else []))
    if not names:
        raise ConfigError(
            "compare needs a topology: give --topology or set 'topology' in the scenario"
        )
    if not placements:
        raise ConfigError("compare needs at least one layout: --placements TP8,EP8,...")
    serving = base.serve is not None and bool(base.serve.arrival)
    if serving:
        base, max_ttft_s, max_tpot_s = _serving_targets(base, max_ttft_s, max_tpot_s)
    labelled: list[tuple[str | None, Scenario]] = (
        list(variant_scenarios(base, variants)) if variants else [(None, base)])
    cache = EvaluationCache()
    loaded = {name: cache.resolver.topology(name) for name in names}
    batch_list = list(batches or [base.batch])
    points = [(b, t, p, v) for b in batch_list for t in names for p in placements
              for v in range(len(labelled))]
    rows = []
    for index, (batch, topo, placement, v) in enumerate(points, start=1):
        variant, variant_base = labelled[v]
        scenario = variant_base.model_copy(
            update={"batch": batch, "topology": topo, "placement": placement}
        )
        began = time.perf_counter()
        row, result = evaluate_point(scenario, loaded[topo], cache)
        if variant is not None:
            row["variant"] = variant
        row["order"] = index
        if plot_data and result is not None:
            row["plot_data"] = result.plot_data()
        if serving and result is not None:
            _serve_point(scenario, row, cache, percentile, plot_data)
        rows.append(row)
        if progress is not None:
            print(
                f"[{index}/{len(points)}] {row_label(row)} on {loaded[topo].name}, "
                f"batch {batch}: "
                f"{_describe(row)} ({time.perf_counter() - began:.1f} s)",
                file=progress,
            )
    compare = _assemble(base, names, loaded, batch_list, rows, max_tpot_s, max_ttft_s, cache,
                        percentile if serving else None)
    if variants:
        compare["variants"] = [
            {"label": label, "overrides": {k: getattr(sc, k) for k in overrides}}
            for (label, overrides), (_, sc) in zip(variants, labelled, strict=True)]
    if sweep_batches:
        compare["latency_throughput"] = latency_throughput_sweep(
            base, loaded, compare, sweep_batches, cache=cache, progress=progress,
            variants=dict(labelled) if variants else None,
        )
    return compare


def _serving_targets(base: Scenario, max_ttft_s: float | None, max_tpot_s: float | None
                     ) -> tuple[Scenario, float | None, float | None]:
    """One set of targets for ranking and goodput: --max-*-ms, else the workload's SLOs."""
    spec = base.serve
    assert spec is not None
    ttft = max_ttft_s if max_ttft_s is not None else (
        None if spec.slo_ttft_ms is None else spec.slo_ttft_ms / 1e3)
    tpot = max_tpot_s if max_tpot_s is not None else (
        None if spec.slo_tpot_ms is None else spec.slo_tpot_ms / 1e3)
    spec = spec.model_copy(update={"slo_ttft_ms": None if ttft is None else ttft * 1e3,
                                   "slo_tpot_ms": None if tpot is None else tpot * 1e3})
    return base.model_copy(update={"serve": spec}), ttft, tpot


def _serve_point(scenario: Scenario, row: dict[str, Any], cache: EvaluationCache,
                 percentile: str, plot_data: bool) -> None:
    """Serve the workload on a feasible point; a layout that cannot serve becomes infeasible."""
    try:
        served = serve(scenario, cache)
    except MoesimError as exc:
        row.update(feasible=False, reason=f"cannot serve: {exc}")
        return
    row["serve"] = serve_figures(served, percentile)
    if plot_data:
        row["serve_plot"] = served.plot_data()


def latency_throughput_sweep(
    base: Scenario,
    topologies: dict[str, Any],
    compare: dict[str, Any],
    batches: Sequence[int],
    *,
    cache: EvaluationCache | None = None,
    progress: TextIO | None = sys.stderr,
    variants: dict[str | None, Scenario] | None = None,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per topology and layout: one decode step's TPOT and tokens/s at each batch (analytic
    fidelity), for the layouts that ran or failed only for memory; a batch that does not fit
    in memory is a point with `fits` false. With `variants` (label: scenario) each layout's
    variants are swept apart, keyed by `row_label`."""
    cache = cache or EvaluationCache()
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for spec, topology in topologies.items():
        out[topology.name] = {}
        for placement, variant in _sweepable_layouts(compare, topology.name):
            start = base if variants is None else variants[variant]
            label = row_label({"placement": placement, "variant": variant})
            points: list[dict[str, Any]] = []
            for batch in batches:
                sc = start.model_copy(update={"batch": batch, "topology": spec, "phase": "decode",
                                             "placement": placement, "fidelity": "analytic",
                                             "decode_steps": 1})
                try:
                    result = evaluate(sc, with_ttft=False, cache=cache)
                except DoesNotFit:
                    points.append({"batch": batch, "fits": False})
                    continue
                points.append({"batch": batch, "fits": True, "tpot_s": result.tpot_s,
                               "tokens_per_s": result.tokens_per_s})
            out[topology.name][label] = points
            if progress is not None:
                print(f"sweep {label} on {topology.name}: batches {list(batches)}",
                      file=progress)
    return out


def _sweepable_layouts(compare: dict[str, Any], topology: str
                       ) -> list[tuple[str, str | None]]:
    """(layout, variant) pairs that ran, or failed only for memory, on `topology` in some
    workload."""
    rows = [r for g in compare["groups"] for r in g["ranked"] + g["infeasible"]]
    layouts: list[tuple[str, str | None]] = []
    for row in sorted(rows, key=lambda r: r["order"]):
        ok = row["feasible"] or row["reason"].startswith("out of memory")
        key = (row["placement"], row.get("variant"))
        if row["topology"] == topology and ok and key not in layouts:
            layouts.append(key)
    return layouts


def _assemble(
    base: Scenario,
    names: list[str],
    loaded: dict[str, Any],
    batch_list: list[int | None],
    rows: list[dict[str, Any]],
    max_tpot_s: float | None,
    max_ttft_s: float | None,
    cache: EvaluationCache,
    percentile: str | None,
) -> dict[str, Any]:
    """The comparison dict: ranked groups per batch, infeasible rows, assumptions."""
    groups = []
    for batch in batch_list:
        members = [r for r in rows if r["batch"] == batch]
        groups.append(
            {
                "batch": batch,
                "context": base.context,
                "ranked": rank_rows(members, max_tpot_s=max_tpot_s, max_ttft_s=max_ttft_s,
                                    serving=percentile is not None),
                "infeasible": [r for r in members if not r["feasible"]],
            }
        )
    return {
        "kind": "moesim.compare",
        "version": 1,
        "scenario": base.model_dump(),
        "topologies": [loaded[n].name for n in names],
        "ranking": RANKING_RULE if percentile is None
        else SERVING_RANKING_RULE.format(p=percentile),
        "serving": None if percentile is None else {"percentile": percentile,
                                                    "workload": base.serve.model_dump()
                                                    if base.serve else None},
        "slo": {"max_tpot_s": max_tpot_s, "max_ttft_s": max_ttft_s},
        "groups": groups,
        "assumptions": _assumptions(base, {loaded[n].name: loaded[n] for n in names}, rows,
                                    cache),
    }
