"""RunResult: what one evaluated scenario reports, typed and frozen; `to_json()` is the only
producer of the result keys documented in README ("Result JSON").

Units: seconds, bytes, FLOPs, USD; ratios are plain numbers. A scenario without a topology has
traffic and imbalance only (`latency`, `ttft_s`, `tpot_s`, ... are absent from the JSON).
`StepDetail` keeps the arrays the plots draw (rank-pair bytes, expert load, the timeline of the
scenario's own step), so a plot never runs the engine again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from moesim.engine.plan import PHASES
from moesim.engine.timeline import StepTimeline
from moesim.traffic.memory import MemoryFit
from moesim.traffic.traffic import Traffic

__all__ = [
    "IMBALANCE_METRICS",
    "LayerImbalance",
    "layer_imbalance",
    "usd_per_million_tokens",
    "MaxMean",
    "LayerResult",
    "BlockResult",
    "Latency",
    "StepDetail",
    "RunResult",
    "traffic_figures",
    "latency_of",
]

IMBALANCE_METRICS = ("expert_max_over_mean", "rank_max_over_mean", "expert_cv")


def usd_per_million_tokens(
    gpus: int, gpu_price_per_hour_usd: float | None, tokens_per_s: float | None
) -> float | None:
    """Dollars per million output tokens: gpus * price / 3600 / tokens_per_s * 1e6 (None without
    a price or a rate)."""
    if gpu_price_per_hour_usd is None or not tokens_per_s or tokens_per_s <= 0:
        return None
    return gpus * gpu_price_per_hour_usd / 3600 / tokens_per_s * 1e6


@dataclass(frozen=True)
class LayerImbalance:
    """Per-layer imbalance `[L]`: expert and rank max/mean, expert coefficient of variation."""

    expert_max_over_mean: np.ndarray
    rank_max_over_mean: np.ndarray
    expert_cv: np.ndarray


def _max_over_mean(counts: np.ndarray) -> np.ndarray:
    """max / mean along the last axis (1.0 where nothing was counted)."""
    mean = counts.mean(axis=-1)
    safe = np.where(mean > 0, mean, 1.0)
    return np.where(mean > 0, counts.max(axis=-1) / safe, 1.0)


def layer_imbalance(traffic: Traffic) -> LayerImbalance:
    """Imbalance of expert load and rank load per layer."""
    load = traffic.expert_load.astype(np.float64)
    mean = load.mean(axis=1)
    cv = np.where(mean > 0, load.std(axis=1) / np.where(mean > 0, mean, 1.0), 0.0)
    return LayerImbalance(
        expert_max_over_mean=_max_over_mean(load),
        rank_max_over_mean=_max_over_mean(traffic.rank_load().astype(np.float64)),
        expert_cv=cv,
    )


@dataclass(frozen=True)
class MaxMean:
    """The largest and the mean of a per-layer figure."""

    max: float
    mean: float


@dataclass(frozen=True)
class LayerResult:
    """One MoE layer: bytes by kind, imbalance, and (with a topology) its time per phase."""

    layer: int
    a2a_bytes: int
    dispatch_bytes: int
    combine_bytes: int
    local_bytes: int
    attn_comm_bytes: int
    moe_comm_bytes: int
    imbalance: dict[str, float]
    time_s: float | None = None
    phase_s: dict[str, float] | None = None


@dataclass(frozen=True)
class BlockResult:
    """One transformer block of the timed step: its duration and slowest rank per phase."""

    block: int
    moe: bool
    time_s: float
    phase_max_s: dict[str, float]


@dataclass(frozen=True)
class Latency:
    """The scenario's own step (first prefill chunk or first decode step), timed."""

    phase: str
    fidelity: str
    step_s: float
    per_phase_s: dict[str, float]  # critical rank's seconds per phase
    lm_head_s: float
    critical_rank: int
    rank_phase_s: dict[str, list[float]]  # per phase, each rank's total
    per_block: tuple[BlockResult, ...]


@dataclass(frozen=True, eq=False)
class StepDetail:
    """Arrays of the scenario's own step that plots draw (not part of the JSON keys)."""

    dispatch_rank_bytes: np.ndarray  # [W, W] dispatch bytes summed over layers
    expert_load: np.ndarray  # [L, E] tokens per expert
    timeline: StepTimeline | None = None


@dataclass(frozen=True)
class RunResult:
    """Everything one scenario reports (module doc); `to_json()` gives the documented keys."""

    inputs: dict[str, Any]
    world: int
    a2a_bytes: int
    local_bytes: int
    attn_comm_bytes: int
    moe_comm_bytes: int
    per_layer: tuple[LayerResult, ...]
    imbalance: dict[str, MaxMean]
    tokens_per_rank: tuple[int, ...]
    latency: Latency | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    tokens_per_s: float | None = None
    prefill_tokens_per_s: float | None = None
    tpot_steps_s: tuple[float, ...] = ()
    moe_engine: dict[str, Any] | None = None  # a2a implementation, overlap, EPLB, MTP
    memory: MemoryFit | None = None
    gpu_price_per_hour_usd: float | None = None
    detail: StepDetail | None = field(default=None, repr=False, compare=False)

    @property
    def timed(self) -> bool:
        """Whether the run had a topology (latency, TTFT/TPOT and memory are known)."""
        return self.latency is not None

    @property
    def tokens_per_s_per_gpu(self) -> float | None:
        """Decode output tokens per second per GPU."""
        return None if self.tokens_per_s is None else self.tokens_per_s / self.world

    @property
    def usd_per_million_tokens(self) -> float | None:
        """Dollars per million decode output tokens on this layout (None without a price)."""
        return usd_per_million_tokens(self.world, self.gpu_price_per_hour_usd, self.tokens_per_s)

    def to_json(self) -> dict[str, Any]:
        """The documented result keys (README, "Result JSON") as a JSON-ready dict."""
        out: dict[str, Any] = {
            "inputs": self.inputs,
            "a2a_bytes": self.a2a_bytes,
            "local_bytes": self.local_bytes,
            "attn_comm_bytes": self.attn_comm_bytes,
            "moe_comm_bytes": self.moe_comm_bytes,
            "per_layer": [_layer_json(row) for row in self.per_layer],
            "imbalance": {name: asdict(value) for name, value in self.imbalance.items()},
            "tokens_per_rank": list(self.tokens_per_rank),
        }
        if self.moe_engine is not None:
            out["moe_engine"] = self.moe_engine
        if self.latency is None:
            return out
        out.update(
            latency={**asdict(self.latency), "per_block": [asdict(b)
                                                           for b in self.latency.per_block]},
            ttft_s=self.ttft_s,
            tpot_s=self.tpot_s,
            tokens_per_s=self.tokens_per_s,
            prefill_tokens_per_s=self.prefill_tokens_per_s,
            tpot_steps_s=list(self.tpot_steps_s),
            memory=self.memory.to_dict() if self.memory is not None else None,
            usd_per_million_tokens=self.usd_per_million_tokens,
        )
        return out

    def plot_data(self) -> dict[str, Any]:
        """What the comparison plots draw for this point: rank-pair dispatch bytes, expert
        load and the Gantt bars of the scenario's own step."""
        if self.detail is None:
            return {}
        data: dict[str, Any] = {
            "phase": self.inputs["phase"],
            "traffic_rank_bytes": self.detail.dispatch_rank_bytes.tolist(),
            "expert_load": self.detail.expert_load.tolist(),
        }
        if self.detail.timeline is not None:
            data["gantt"] = self.detail.timeline.gantt()
        return data


def _layer_json(row: LayerResult) -> dict[str, Any]:
    """A per_layer entry; `time_s` and `phase_s` only once timed."""
    out = asdict(row)
    if row.time_s is None:
        del out["time_s"], out["phase_s"]
    return out


def traffic_figures(traffic: Traffic) -> dict[str, Any]:
    """The traffic part of a RunResult's fields, from one step's Traffic."""
    imb = layer_imbalance(traffic)
    dispatch_cross = traffic.dispatch_cross_bytes()
    combine_cross = traffic.combine_cross_bytes()
    a2a = traffic.a2a_bytes_per_layer()
    local = traffic.local_bytes_per_layer()
    attn_comm = traffic.attn_comm_bytes_per_layer()
    moe_comm = traffic.moe_comm_bytes_per_layer()
    per_layer = tuple(
        LayerResult(
            layer=layer,
            a2a_bytes=int(a2a[layer]),
            dispatch_bytes=int(dispatch_cross[layer]),
            combine_bytes=int(combine_cross[layer]),
            local_bytes=int(local[layer]),
            attn_comm_bytes=attn_comm,
            moe_comm_bytes=int(moe_comm[layer]),
            imbalance={m: float(getattr(imb, m)[layer]) for m in IMBALANCE_METRICS},
        )
        for layer in range(traffic.num_layers)
    )
    return {
        "world": traffic.world,
        "a2a_bytes": int(a2a.sum()),
        "local_bytes": int(local.sum()),
        "attn_comm_bytes": attn_comm * traffic.num_layers,
        "moe_comm_bytes": int(moe_comm.sum()),
        "per_layer": per_layer,
        "imbalance": {
            m: MaxMean(float(getattr(imb, m).max()), float(getattr(imb, m).mean()))
            for m in IMBALANCE_METRICS
        },
        "tokens_per_rank": tuple(int(n) for n in traffic.tokens_per_rank),
    }


def latency_of(main: StepTimeline, phase: str) -> Latency:
    """The `latency` of the scenario's own step: `step_s`, the critical rank's seconds per phase
    (with `lm_head_s` they sum to `step_s` where nothing overlaps), per block, per rank."""
    rank_totals = main.phase_s.sum(axis=0)  # [W, phases]
    return Latency(
        phase=phase,
        fidelity=main.fidelity,
        step_s=main.step_s,
        per_phase_s=main.phase_totals_s(),
        lm_head_s=float(main.lm_head_s[main.critical_rank]),
        critical_rank=main.critical_rank,
        rank_phase_s={name: rank_totals[:, i].tolist() for i, name in enumerate(PHASES)},
        per_block=tuple(BlockResult(**row) for row in main.per_layer()),
    )
