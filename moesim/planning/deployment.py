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
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from moesim.errors import ConfigError
from moesim.inputs.config import Scenario
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
Evaluate = Callable[[Scenario], dict[str, Any]]


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


def _measure(
    row: dict[str, Any], preset: str, replicas: int, users: int, batch: int, slo_s: float
) -> Candidate:
    """A candidate's figures from its evaluated row (verdict filled in later)."""
    feasible, tpot_s = bool(row["feasible"]), row.get("tpot_s")
    world = row.get("world") or 0
    price = row.get("gpu_price_per_hour_usd")
    tokens_per_s = users / tpot_s if feasible and tpot_s else None
    usd_per_hour = price * world * replicas if price is not None else None
    per_million = usd_per_million_tokens(world * replicas, price, tokens_per_s)
    return Candidate(
        topology=preset,
        replicas=replicas,
        placement=str(row["placement"]),
        gpus=world * replicas,
        batch_per_replica=batch,
        feasible=feasible,
        meets_slo=feasible and tpot_s is not None and tpot_s <= slo_s,
        tpot_s=tpot_s if feasible else None,
        tokens_per_s=tokens_per_s,
        usd_per_hour=usd_per_hour if feasible else None,
        usd_per_million_tokens=per_million,
        verdict="" if feasible else f"does not fit: {row.get('reason')}",
    )


def _verdicts(
    candidates: list[Candidate], slo_s: float, objective: Objective
) -> tuple[Candidate | None, list[Candidate]]:
    """Order candidates best first and say why each one lost to the winner."""
    qualify = [c for c in candidates if c.meets_slo and getattr(c, objective) is not None]
    qualify.sort(key=lambda c: (getattr(c, objective), c.tpot_s, c.gpus, c.label))
    best = qualify[0] if qualify else None
    slow = sorted((c for c in candidates if c.feasible and not c.meets_slo), key=_tpot)
    unpriced = [c for c in candidates if c.meets_slo and getattr(c, objective) is None]
    broken = [c for c in candidates if not c.feasible]
    ordered = []
    for c in qualify[1:]:
        cost, best_cost = getattr(c, objective), getattr(best, objective)
        extra = 100 * (cost / best_cost - 1) if best_cost else math.inf
        costs = f"{_usd(cost, objective)} vs {_usd(best_cost, objective)}"
        ordered.append(_with(c, f"more expensive by {extra:.1f}% ({costs})"))
    for c in slow:
        tpot_ms = _tpot(c) * 1e3
        over_ms = tpot_ms - slo_s * 1e3
        ordered.append(_with(c, f"slower than the SLO by {over_ms:.2f} ms (TPOT {tpot_ms:.2f} ms)"))
    ordered += [_with(c, f"no GPU price in topology {c.topology}") for c in unpriced]
    return best, ([best] if best else []) + ordered + broken


def _tpot(c: Candidate) -> float:
    return c.tpot_s if c.tpot_s is not None else math.inf


def _with(c: Candidate, verdict: str) -> Candidate:
    return Candidate(**{**asdict(c), "verdict": verdict})


def _usd(value: float, objective: Objective) -> str:
    return f"${value:.3f}/M tok" if objective == "usd_per_million_tokens" else f"${value:.2f}/h"


def plan_deployment(
    model: str,
    gpus_available: str,
    *,
    slo_tpot_s: float,
    context: int,
    users: int,
    trace: str | None = None,
    fidelity: Literal["analytic", "des"] = "analytic",
    objective: Objective = "usd_per_million_tokens",
    evaluate: Evaluate = _evaluate,
) -> PlanResult:
    """Search deployments x layouts for the cheapest one meeting the TPOT SLO (module doc)."""
    if slo_tpot_s <= 0 or context < 1 or users < 1:
        raise ConfigError("--slo-tpot-ms, --context and --users must be positive")
    inventory = parse_inventory(gpus_available)
    sizes = {p: _preset_gpus(p) for gpu in inventory for p in GPU_PRESETS[gpu]}
    base: dict[str, Any] = {"model": model, "phase": "decode", "context": context}
    base.update(fidelity=fidelity, **({"trace": trace} if trace else {}))
    candidates = []
    for preset, replicas in deployments(inventory, sizes):
        batch = math.ceil(users / replicas)
        for layout in layout_presets(sizes[preset]):
            sc = Scenario(**base, topology=preset, placement=layout, batch=batch)
            row = evaluate(sc)
            candidates.append(_measure(row, preset, replicas, users, batch, slo_tpot_s))
    if not candidates:
        raise ConfigError(
            f"--gpus-available {gpus_available} fills no topology preset: "
            + ", ".join(f"{p} needs {n} GPUs" for p, n in sizes.items())
        )
    best, ordered = _verdicts(candidates, slo_tpot_s, objective)
    query = {
        "model": model,
        "gpus_available": inventory,
        "slo_tpot_s": slo_tpot_s,
        "context": context,
        "users": users,
        "trace": trace,
        "fidelity": fidelity,
        "objective": objective,
    }
    return PlanResult(query, best, ordered)
