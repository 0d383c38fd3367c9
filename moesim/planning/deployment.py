"""Plan: the cheapest deployment of a model on the GPUs at hand that meets a TPOT SLO.

An inventory such as `8xH100,16xL40S` maps to topology presets (`GPU_PRESETS`); a preset of N
GPUs can run `available // N` replicas, and every replica count from 1 up is a deployment. For
each deployment every layout preset of the preset's world size is tried with the users split
evenly over the replicas (`batch = ceil(users / replicas)` sequences per replica) at the given
context, in decode. A candidate qualifies when it runs, fits memory and its TPOT meets the SLO;
the cheapest qualifying one wins, and every other candidate says why it lost.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import ValidationError

from moesim.errors import ConfigError, MoesimError
from moesim.inputs.config import Scenario, ServeSpec
from moesim.output.result import usd_per_million_tokens

__all__ = [
    "GPU_PRESETS",
    "Candidate",
    "PlanResult",
    "parse_inventory",
    "layout_presets",
    "deployments",
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

    @property
    def label(self) -> str:
        """`2x l40s-8x-pcie EP8`."""
        return f"{self.replicas}x {self.topology} {self.placement}"


@dataclass(frozen=True)
class PlanResult:
    """The query, the winner (None when nothing qualifies) and every candidate, best first."""

    query: dict[str, Any]
    chosen: Candidate | None
    candidates: list[Candidate]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (seconds, USD)."""
        return {
            "query": self.query,
            "chosen": asdict(self.chosen) if self.chosen else None,
            "candidates": [asdict(c) for c in self.candidates],
        }


def _gpu_key(name: str) -> str:
    return re.sub(r"[\s_-]", "", name).upper()


def parse_inventory(text: str) -> dict[str, int]:
    """`8xH100,16xL40S` -> {"H100": 8, "L40S": 16} (counts of one GPU name add up)."""
    inventory: dict[str, int] = {}
    for raw in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(.+?)\s*", raw)
        gpu = _gpu_key(match.group(2)) if match else ""
        if not match or gpu not in GPU_PRESETS or int(match.group(1)) < 1:
            raise ConfigError(
                f"--gpus-available entry '{raw.strip()}': write COUNTxGPU such as 8xH100, with "
                f"GPU one of {', '.join(GPU_PRESETS)}"
            )
        inventory[gpu] = inventory.get(gpu, 0) + int(match.group(1))
    return inventory


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
    row: dict[str, Any], preset: str, replicas: int, users: int, batch: int, targets: _Targets
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
        cost, best_cost = getattr(c, objective), getattr(best, objective)
        extra = 100 * (cost / best_cost - 1) if best_cost else math.inf
        costs = f"{_usd(cost, objective)} vs {_usd(best_cost, objective)}"
        ordered.append(_with(c, f"more expensive by {extra:.1f}% ({costs})"))
    ordered += [_with(c, targets.miss(c)) for c in slow]
    ordered += [_with(c, f"no GPU price in topology {c.topology}") for c in unpriced]
    return best, ([best] if best else []) + ordered + broken


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
    base: dict[str, Any] = {"model": model, "phase": "decode", "context": context}
    base.update(fidelity=fidelity, **({"trace": trace} if trace else {}), **(engine or {}))
    try:
        Scenario(**base)
    except ValidationError as exc:
        raise ConfigError("; ".join(
            ("--" + str(err["loc"][0]).replace("_", "-") + ": " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ") for err in exc.errors())) from None
    targets = _Targets(slo_tpot_s, slo_ttft_s, percentile if serving else None)
    points = [(preset, replicas, layout) for preset, replicas in deployments(inventory, sizes)
              for layout in layout_presets(sizes[preset])]
    if not points:
        raise ConfigError(
            f"--gpus-available {gpus_available} fills no topology preset: "
            + ", ".join(f"{p} needs {n} GPUs" for p, n in sizes.items())
        )
    candidates = []
    for index, (preset, replicas, layout) in enumerate(points, start=1):
        batch = math.ceil(users / replicas) if users is not None else 0
        sc = Scenario(**base, topology=preset, placement=layout, batch=max(batch, 1))
        if serving:
            row = serve(sc.model_copy(update={"serve": _replica_workload(
                spec, batch, replicas, slo_ttft_s, slo_tpot_s)}), percentile)
        else:
            row = evaluate(sc)
        candidate = _measure(row, preset, replicas, users or 0, batch, targets)
        candidates.append(candidate)
        if progress is not None:
            progress(f"[{index}/{len(points)}] {candidate.label}: " + (
                _figures(candidate, targets) if candidate.feasible else candidate.verdict))
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
    return PlanResult(query, best, ordered)


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
