"""Plan: the cheapest deployment of a model on the GPUs at hand that meets a TPOT SLO.

An inventory such as `8xH100,16xL40S` maps to topology presets (`GPU_PRESETS`); a preset of N
GPUs can run `available // N` replicas, and every replica count from 1 up is a deployment. A GPU
count that fills no preset of its GPU (`4xL40S`) runs as one replica on the first `count` GPUs of
the smallest such preset (`subset_deployments`: 4 of l40s-8x-pcie's 8). For each deployment
every layout preset of its world size is tried with the users split evenly over the replicas
(`batch = ceil(users / replicas)` sequences per replica) at the given context, in decode. A
candidate qualifies when it runs, fits memory and its TPOT meets the SLO; the cheapest qualifying
one wins, and every other candidate says why it lost. Equal costs are ties, said as such: the
tie goes to the lower TPOT, then fewer GPUs, then the label in alphabetical order (`TIE_RULE`).

Calibration (`PRESET_CALIBRATION`, `topology_calibration`): a preset whose collective costs are
fitted to published measurements is calibrated; every other one runs on nominal bandwidths and
first-guess efficiencies, and plan, compare and the HTML report flag it.

Economics of a deployment: `usd_per_hour = gpu price x world x replicas`;
`tokens_per_s = users / tpot_s` (every user gets one token per decode step);
`usd_per_million_tokens = usd_per_hour / 3600 / tokens_per_s x 1e6`.

With a served workload (`serve_spec`: `moesim plan --slo-ttft-ms`, or any serving flag) each
candidate instead serves requests (`moesim.planning.serving`): one replica runs a closed loop of
its share of the users (`ceil(users / replicas)` clients), or with a rate its share of the
arrivals (`rate / replicas`), prompts of `isl` tokens (default: the context) and outputs of
`osl`. A candidate qualifies when its TTFT and TPOT at `percentile` (p90 by default) meet the
targets; `tokens_per_s` is the served output tokens/s of all replicas and `goodput_per_s` their
requests/s meeting both targets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from moesim.errors import ConfigError, MoesimError
from moesim.inputs.config import Scenario, ServeSpec
from moesim.output.result import usd_per_million_tokens

__all__ = [
    "GPU_PRESETS",
    "PRESET_CALIBRATION",
    "TIE_RULE",
    "UNCALIBRATED",
    "Candidate",
    "PlanResult",
    "parse_inventory",
    "MAX_GPUS_OF_ONE_KIND",
    "layout_presets",
    "deployments",
    "subset_deployments",
    "topology_calibration",
    "plan_deployment",
]

# GPU name -> topology presets built from it (moesim/presets/topologies/, sources cited there).
GPU_PRESETS: dict[str, tuple[str, ...]] = {
    "H100": ("dgx-h100", "h100-2node-ib"),
    "H200": ("h200-8x",),
    "A100": ("hgx-a100",),
    "L40S": ("l40s-8x-pcie",),
    "RTX4090": ("rtx4090-4x-pcie",),
}

# Topology presets whose collective costs rest on published measurements, and how: the fits and
# their errors are in topologies/README.md ("Accuracy against published nccl-tests") and
# tests/test_presets_vs_published.py holds the fitted ones to them. Every other preset (hgx-a100,
# b200-8x, l40s-8x-pcie, rtx4090-4x-pcie, cpu-loopback) runs on nominal bandwidths and
# first-guess efficiencies. Keep this table in step with those two files.
PRESET_CALIBRATION: dict[str, str] = {
    "dgx-h100": "fitted to seven published nccl-tests logs of 2 to 8 H100s",
    "gb200-nvl72": "fitted to a published 72-GPU nccl-tests table (CoreWeave)",
    "rtx4090-8x-pcie": "fitted to a published 8x RTX 4090 nccl-tests log",
    "h100-2node-ib": "dgx-h100's fit inside each server; a published 2x8 H100 all-to-all log "
                     "checks it out of sample",
    "h100-4node-ib": "dgx-h100's fit inside each server; network at its nominal rate",
    "h200-8x": "dgx-h100's fit (the same NVLink 4 / NVSwitch fabric)",
}
# How a topology file written by `moesim calibrate` starts its last `sources` entry.
_USER_CALIBRATED = "Calibrated by `moesim calibrate"
UNCALIBRATED = ("not calibrated on measurements: nominal bandwidths and first-guess "
                "efficiencies, so treat its times as rough estimates")
TIE_RULE = "ties go to the lower TPOT, then fewer GPUs, then the label in alphabetical order"

Objective = Literal["usd_per_million_tokens", "usd_per_hour"]
Percentile = Literal["mean", "p50", "p90", "p99"]
Evaluate = Callable[[Scenario], dict[str, Any]]
# A progress line per candidate (or None for silence).
Progress = Callable[[str], None] | None


@dataclass(frozen=True)
class Candidate:
    """One deployment and layout, its figures, and the verdict (`verdict` empty for the winner)."""

    topology: str
    replicas: int
    placement: str
    gpus: int
    batch_per_replica: int
    feasible: bool
    meets_slo: bool
    tpot_s: float | None
    tokens_per_s: float | None
    usd_per_hour: float | None
    usd_per_million_tokens: float | None
    verdict: str
    ttft_s: float | None = None
    goodput_per_s: float | None = None
    calibrated: bool = True  # the topology's costs rest on measurements (topology_calibration)
    subset_of: int | None = None  # the preset's GPUs when a replica uses only its first few

    @property
    def label(self) -> str:
        """`2x l40s-8x-pcie EP8`, or on the first 4 GPUs of a preset `1x l40s-8x-pcie (4 GPUs)
        EP4`."""
        part = "" if self.subset_of is None else f" ({self.gpus // self.replicas} GPUs)"
        return f"{self.replicas}x {self.topology}{part} {self.placement}"


@dataclass(frozen=True)
class PlanResult:
    """The query, the winner (None when nothing qualifies), every candidate, best first, and
    notes a reader must see with the figures (uncalibrated presets, partial presets)."""

    query: dict[str, Any]
    chosen: Candidate | None
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (seconds, USD)."""
        return {
            "query": self.query,
            "chosen": asdict(self.chosen) if self.chosen else None,
            "candidates": [asdict(c) for c in self.candidates],
            "notes": list(self.notes),
        }


def _gpu_key(name: str) -> str:
    return re.sub(r"[\s_-]", "", name).upper()


# GPUs of one kind `parse_inventory` accepts: plan tries every replica count of every preset
# they fill, so the count bounds its work (4096 H100s are ~10k candidates, ~2 minutes analytic;
# 10**9 would list 10**8 replica counts). A count is at most MAX_INVENTORY_DIGITS digits long,
# so no digit string reaches int() unbounded.
MAX_GPUS_OF_ONE_KIND = 4096
MAX_INVENTORY_DIGITS = 6


def parse_inventory(text: str) -> dict[str, int]:
    """`8xH100,16xL40S` -> {"H100": 8, "L40S": 16} (counts of one GPU name add up). ConfigError
    naming --gpus-available on an entry it cannot read, an unknown GPU, a zero count, a count
    longer than MAX_INVENTORY_DIGITS digits or more than MAX_GPUS_OF_ONE_KIND GPUs of one
    kind."""
    inventory: dict[str, int] = {}
    for raw in text.split(","):
        match = re.fullmatch(r"\s*([0-9]+)\s*[xX]\s*(.+?)\s*", raw)
        digits = match.group(1) if match else ""
        if len(digits) > MAX_INVENTORY_DIGITS:
            _too_many(f"{digits[:MAX_INVENTORY_DIGITS]}... ({len(digits)} digits)")
        gpu = _gpu_key(match.group(2)) if match else ""
        if not match or gpu not in GPU_PRESETS or int(digits) < 1:
            entry = raw.strip()
            raise ConfigError(
                f"--gpus-available entry '{entry if len(entry) <= 40 else entry[:37] + '...'}': "
                f"write COUNTxGPU such as 8xH100, with GPU one of {', '.join(GPU_PRESETS)}"
            )
        inventory[gpu] = inventory.get(gpu, 0) + int(digits)
        if inventory[gpu] > MAX_GPUS_OF_ONE_KIND:
            _too_many(f"{inventory[gpu]:,} {gpu}")
    return inventory


def _too_many(count: str) -> None:
    raise ConfigError(f"--gpus-available: {count} GPUs of one kind, above the "
                      f"{MAX_GPUS_OF_ONE_KIND:,} plan considers (it tries every replica count); "
                      "give the GPUs you could deploy on, e.g. 64xH100")


def layout_presets(world: int) -> list[str]:
    """Every TP x EP x DP product preset of `world` GPUs, plus SP{world}: TP8, EP4xDP2, ..."""
    names = []
    for tp in _divisors(world):
        for ep in _divisors(world // tp):
            dp = world // (tp * ep)
            terms = [f"{kind}{n}" for kind, n in (("TP", tp), ("EP", ep), ("DP", dp)) if n > 1]
            names.append("x".join(terms) or "TP1")
    return names + ([f"SP{world}"] if world > 1 else [])


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def deployments(
    inventory: dict[str, int], gpus_per_preset: dict[str, int]
) -> list[tuple[str, int]]:
    """(preset, replicas) for every preset the inventory can fill once or more."""
    out = []
    for gpu, count in inventory.items():
        for preset in GPU_PRESETS[gpu]:
            out += [(preset, r) for r in range(1, count // gpus_per_preset[preset] + 1)]
    return out


def subset_deployments(
    inventory: dict[str, int], gpus_per_preset: dict[str, int]
) -> list[tuple[str, int]]:
    """(preset, gpus) for every GPU whose count fills no preset of it: one replica on the first
    `gpus` GPUs of the smallest preset of that GPU (4 L40S: 4 of l40s-8x-pcie's 8)."""
    out = []
    for gpu, count in inventory.items():
        smallest = min(GPU_PRESETS[gpu], key=lambda preset: gpus_per_preset[preset])
        if count < gpus_per_preset[smallest]:
            out.append((smallest, count))
    return out


def topology_calibration(name: str, sources: Sequence[str] = ()) -> str | None:
    """How the topology `name` (with its file's `sources`) was calibrated on measurements, or
    None when it was not: a file written by `moesim calibrate` (its `sources` say so), else the
    preset's entry in PRESET_CALIBRATION."""
    for source in reversed(sources):
        if source.startswith(_USER_CALIBRATED):
            return source.split(": ", 1)[0]
    return PRESET_CALIBRATION.get(name)


def _preset_gpus(preset: str) -> int:
    from moesim.inputs.topology import load_topology

    return load_topology(preset).num_gpus


def _evaluate(scenario: Scenario) -> dict[str, Any]:
    from moesim.planning.sweep import evaluate_point

    return evaluate_point(scenario, with_ttft=False)


def _serve(scenario: Scenario, percentile: Percentile) -> dict[str, Any]:
    """A candidate served (`moesim.planning.serving.serve`): a row like `_evaluate`'s with the
    TTFT and TPOT at `percentile`, output tokens/s and goodput of one replica."""
    from moesim.planning.evaluate import DoesNotFit
    from moesim.planning.serving import serve

    try:
        result = serve(scenario)
    except MoesimError as exc:
        kind = "does not fit" if isinstance(exc, DoesNotFit) else "cannot serve"
        return {"placement": scenario.placement, "feasible": False, "reason": str(exc),
                "verdict": f"{kind}: {exc}"}
    data = result.to_json()
    return {
        "placement": scenario.placement,
        "world": result.gpus,
        "gpu_price_per_hour_usd": result.gpu_price_per_hour_usd,
        "feasible": True,
        "reason": "",
        "ttft_s": data["ttft_s"][percentile],
        "tpot_s": data["tpot_s"][percentile],
        "output_tokens_per_s": data["output_tokens_per_s"],
        "goodput_per_s": data["goodput_per_s"],
    }


@dataclass(frozen=True)
class _Targets:
    """The SLO a candidate must meet: TPOT always, TTFT when serving."""

    tpot_s: float
    ttft_s: float | None = None
    percentile: str | None = None

    def meets(self, c: Candidate) -> bool:
        return (c.feasible and c.tpot_s is not None and c.tpot_s <= self.tpot_s
                and (self.ttft_s is None or (c.ttft_s is not None and c.ttft_s <= self.ttft_s)))

    def overshoot(self, c: Candidate) -> float:
        """How far past the targets, as the largest ratio figure / target."""
        ratios = [_tpot(c) / self.tpot_s]
        if self.ttft_s is not None:
            ratios.append((c.ttft_s if c.ttft_s is not None else math.inf) / self.ttft_s)
        return max(ratios)

    def miss(self, c: Candidate) -> str:
        """Why a feasible candidate misses."""
        tpot_ms = _tpot(c) * 1e3
        if self.percentile is None:
            over_ms = tpot_ms - self.tpot_s * 1e3
            return f"slower than the SLO by {over_ms:.2f} ms (TPOT {tpot_ms:.2f} ms)"
        p = self.percentile
        misses = []
        if self.ttft_s is not None and c.ttft_s is not None and c.ttft_s > self.ttft_s:
            misses.append(f"{p} TTFT {c.ttft_s * 1e3:.1f} ms > {self.ttft_s * 1e3:g} ms")
        if tpot_ms > self.tpot_s * 1e3:
            misses.append(f"{p} TPOT {tpot_ms:.2f} ms > {self.tpot_s * 1e3:g} ms")
        return "misses the SLO: " + ", ".join(misses)


def _measure(
    row: dict[str, Any], preset: str, replicas: int, users: int, batch: int, targets: _Targets,
    subset_of: int | None = None,
) -> Candidate:
    """A candidate's figures from its evaluated (or served) row; verdict filled in later."""
    feasible, tpot_s = bool(row["feasible"]), row.get("tpot_s")
    world = row.get("world") or 0
    price = row.get("gpu_price_per_hour_usd")
    served = row.get("output_tokens_per_s")
    if not feasible:
        tokens_per_s = None
    elif served is not None:
        tokens_per_s = served * replicas
    else:
        tokens_per_s = users / tpot_s if tpot_s else None
    goodput = row.get("goodput_per_s")
    usd_per_hour = price * world * replicas if price is not None else None
    per_million = usd_per_million_tokens(world * replicas, price, tokens_per_s)
    candidate = Candidate(
        topology=preset,
        replicas=replicas,
        placement=str(row["placement"]),
        gpus=world * replicas,
        batch_per_replica=batch,
        feasible=feasible,
        meets_slo=False,
        tpot_s=tpot_s if feasible else None,
        tokens_per_s=tokens_per_s,
        usd_per_hour=usd_per_hour if feasible else None,
        usd_per_million_tokens=per_million,
        verdict="" if feasible else row.get("verdict") or f"does not fit: {row.get('reason')}",
        ttft_s=row.get("ttft_s") if feasible else None,
        goodput_per_s=None if goodput is None or not feasible else goodput * replicas,
        calibrated=topology_calibration(preset) is not None,
        subset_of=subset_of,
    )
    return _with(candidate, candidate.verdict, targets.meets(candidate))


def _verdicts(
    candidates: list[Candidate], targets: _Targets, objective: Objective
) -> tuple[Candidate | None, list[Candidate]]:
    """Order candidates best first and say why each one lost to the winner."""
    qualify = [c for c in candidates if c.meets_slo and getattr(c, objective) is not None]
    qualify.sort(key=lambda c: (getattr(c, objective), c.tpot_s, c.gpus, c.label))
    best = qualify[0] if qualify else None
    slow = sorted((c for c in candidates if c.feasible and not c.meets_slo),
                  key=lambda c: (targets.overshoot(c), _tpot(c)))
    unpriced = [c for c in candidates if c.meets_slo and getattr(c, objective) is None]
    broken = [c for c in candidates if not c.feasible]
    ordered = []
    for c in qualify[1:]:
        assert best is not None
        ordered.append(_with(c, _dearer(c, best, objective)))
    ordered += [_with(c, targets.miss(c)) for c in slow]
    ordered += [_with(c, f"no GPU price in topology {c.topology}") for c in unpriced]
    return best, ([best] if best else []) + ordered + broken


def _dearer(c: Candidate, best: Candidate, objective: Objective) -> str:
    """Why a qualifying candidate lost to `best`: its extra cost, or on an equal cost the tie
    and the rule that broke it (`TIE_RULE`)."""
    cost, best_cost = getattr(c, objective), getattr(best, objective)
    if math.isclose(cost, best_cost, rel_tol=1e-9):
        if _tpot(c) > _tpot(best):
            why = (f"the chosen has the lower TPOT ({_tpot(best) * 1e3:.2f} vs "
                   f"{_tpot(c) * 1e3:.2f} ms)")
        elif c.gpus > best.gpus:
            why = f"the chosen uses fewer GPUs ({best.gpus} vs {c.gpus})"
        else:
            why = "the chosen's label comes first alphabetically"
        return f"ties with the chosen at {_usd(cost, objective)}; {why} ({TIE_RULE})"
    extra = 100 * (cost / best_cost - 1) if best_cost else math.inf
    share = f"{extra:.1f}%" if extra >= 0.05 else f"{extra:.2g}%"
    return f"more expensive by {share} ({_usd(cost, objective)} vs {_usd(best_cost, objective)})"


def _tpot(c: Candidate) -> float:
    return c.tpot_s if c.tpot_s is not None else math.inf


def _with(c: Candidate, verdict: str, meets_slo: bool | None = None) -> Candidate:
    meets = c.meets_slo if meets_slo is None else meets_slo
    return Candidate(**{**asdict(c), "verdict": verdict, "meets_slo": meets})


def _usd(value: float, objective: Objective) -> str:
    return f"${value:.3f}/M tok" if objective == "usd_per_million_tokens" else f"${value:.2f}/h"


def plan_deployment(
    model: str,
    gpus_available: str,
    *,
    slo_tpot_s: float,
    context: int,
    users: int | None,
    trace: str | None = None,
    fidelity: Literal["analytic", "des"] = "analytic",
    objective: Objective = "usd_per_million_tokens",
    evaluate: Evaluate = _evaluate,
    slo_ttft_s: float | None = None,
    serve_spec: ServeSpec | None = None,
    percentile: Percentile = "p90",
    serve: Callable[[Scenario, Percentile], dict[str, Any]] = _serve,
    progress: Progress = None,
    engine: dict[str, Any] | None = None,
) -> PlanResult:
    """Search deployments x layouts for the cheapest one meeting the SLO (module doc): the TPOT
    of a decode step, or with `slo_ttft_s` or `serve_spec` the served TTFT and TPOT; `engine`:
    MoE-engine scenario fields every candidate runs with (eplb, overlap, a2a, mtp, ...)."""
    serving = slo_ttft_s is not None or serve_spec is not None
    spec = serve_spec or ServeSpec()
    if "isl" not in spec.model_fields_set:  # prompts of the context's length
        spec = spec.model_copy(update={"isl": context})
    if spec.rate is None and users is None:
        raise ConfigError("plan needs --users (concurrent users), or a request --rate with "
                          "a served workload")
    if slo_tpot_s <= 0 or context < 1 or (users is not None and users < 1):
        raise ConfigError("--slo-tpot-ms, --context and --users must be positive")
    if slo_ttft_s is not None and slo_ttft_s <= 0:
        raise ConfigError("--slo-ttft-ms must be positive")
    if serving and (spec.concurrency is not None or spec.requests_file is not None
                    or spec.disagg is not None):
        raise ConfigError("plan serves --users clients (or --rate) per deployment: leave out "
                          "concurrency, requests_file and disagg")
    inventory = parse_inventory(gpus_available)
    sizes = {p: _preset_gpus(p) for gpu in inventory for p in GPU_PRESETS[gpu]}
    subsets = subset_deployments(inventory, sizes)
    base: dict[str, Any] = {"model": model, "phase": "decode", "context": context}
    base.update(fidelity=fidelity, **({"trace": trace} if trace else {}), **(engine or {}))
    try:
        Scenario(**base)
    except ValidationError as exc:
        raise ConfigError("; ".join(
            ("--" + str(err["loc"][0]).replace("_", "-") + ": " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ") for err in exc.errors())) from None
    targets = _Targets(slo_tpot_s, slo_ttft_s, percentile if serving else None)
    points = [(preset, replicas, sizes[preset], layout)
              for preset, replicas in deployments(inventory, sizes)
              for layout in layout_presets(sizes[preset])]
    points += [(preset, 1, gpus, layout) for preset, gpus in subsets
               for layout in layout_presets(gpus)]
    candidates = []
    for index, (preset, replicas, world, layout) in enumerate(points, start=1):
        batch = math.ceil(users / replicas) if users is not None else 0
        sc = Scenario(**base, topology=preset, placement=layout, batch=max(batch, 1))
        if serving:
            row = serve(sc.model_copy(update={"serve": _replica_workload(
                spec, batch, replicas, slo_ttft_s, slo_tpot_s)}), percentile)
        else:
            row = evaluate(sc)
        candidate = _measure(row, preset, replicas, users or 0, batch, targets,
                             None if world == sizes[preset] else sizes[preset])
        candidates.append(candidate)
        if progress is not None:
            flag = "" if candidate.calibrated else " [uncalibrated preset]"
            progress(f"[{index}/{len(points)}] {candidate.label}: " + (
                _figures(candidate, targets) if candidate.feasible else candidate.verdict)
                + flag)
    best, ordered = _verdicts(candidates, targets, objective)
    query = {
        "model": model,
        "gpus_available": inventory,
        "slo_tpot_s": slo_tpot_s,
        "slo_ttft_s": slo_ttft_s,
        "context": context,
        "users": users,
        "trace": trace,
        "fidelity": fidelity,
        "objective": objective,
        "serving": {"percentile": percentile, "workload": spec.model_dump()} if serving else None,
    }
    return PlanResult(query, best, ordered, _notes(inventory, sizes, subsets))


def _notes(inventory: dict[str, int], sizes: dict[str, int],
           subsets: list[tuple[str, int]]) -> list[str]:
    """What the plan's figures rest on that a reader must see: partial presets and presets not
    calibrated on measurements."""
    notes = []
    for preset, gpus in subsets:
        gpu = next(g for g in inventory if preset in GPU_PRESETS[g])
        notes.append(f"{gpus}x {gpu} fills no preset: planned on the first {gpus} GPUs of "
                     f"{preset} ({sizes[preset]} GPUs)")
    tried = dict.fromkeys([p for p, _ in subsets] + [p for p, _ in deployments(inventory, sizes)])
    notes += [f"{preset} is {UNCALIBRATED}" for preset in tried
              if topology_calibration(preset) is None]
    return notes


def _replica_workload(spec: ServeSpec, clients: int, replicas: int,
                      slo_ttft_s: float | None, slo_tpot_s: float) -> ServeSpec:
    """What one replica serves: its share of the users (or of the rate), goodput counted
    against the plan's targets."""
    share: dict[str, Any] = ({"rate": spec.rate / replicas} if spec.rate is not None
                             else {"concurrency": clients})
    return spec.model_copy(update={
        **share, "slo_tpot_ms": slo_tpot_s * 1e3,
        "slo_ttft_ms": None if slo_ttft_s is None else slo_ttft_s * 1e3})


def _figures(c: Candidate, targets: _Targets) -> str:
    """A progress line's figures."""
    if targets.percentile is None:
        return f"TPOT {_tpot(c) * 1e3:.2f} ms"
    ttft_ms = math.inf if c.ttft_s is None else c.ttft_s * 1e3
    return (f"{targets.percentile} TTFT {ttft_ms:.1f} ms, TPOT {_tpot(c) * 1e3:.2f} ms, "
            f"{c.tokens_per_s or 0:.0f} tok/s")
