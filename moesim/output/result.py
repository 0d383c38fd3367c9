"""Result: what a run reports, as a JSON-ready dict with stable keys (documented in README).

Keys: `a2a_bytes` (all layers, dispatch plus combine, cross-rank only), `local_bytes`,
`per_layer` (list of {`layer`, `a2a_bytes`, `dispatch_bytes`, `combine_bytes`, `local_bytes`,
`attn_comm_bytes`, `moe_comm_bytes`, `imbalance`}), `imbalance` ({metric: {`max`, `mean`}} over
layers), plus `inputs` describing what was run. Units: bytes; ratios are plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.traffic.traffic import Traffic

__all__ = [
    "LayerImbalance",
    "layer_imbalance",
    "traffic_result",
    "latency_result",
    "merge_layer_times",
]

IMBALANCE_METRICS = ("expert_max_over_mean", "rank_max_over_mean", "expert_cv")


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


def traffic_result(traffic: Traffic, inputs: dict[str, Any]) -> dict[str, Any]:
    """The traffic part of a run's Result as a JSON-ready dict."""
    imb = layer_imbalance(traffic)
    dispatch_cross = traffic.dispatch_cross_bytes()
    local = traffic.local_bytes_per_layer()
    # attention comm: TP reduce-scatter after attention plus the SP exchange
    attn_comm = traffic.attn_collective_bytes("attn_comm") + int(traffic.sp_bytes.sum())
    # MoE comm: MoE-TP all-gather + reduce-scatter, and the attention-TP all-gather after combine
    moe_comm = traffic.moe_tp_gather_bytes.sum(axis=(1, 2)) * 2
    moe_comm = moe_comm + traffic.attn_collective_bytes("moe_comm")
    per_layer = []
    for layer in range(traffic.num_layers):
        per_layer.append(
            {
                "layer": layer,
                "a2a_bytes": int(2 * dispatch_cross[layer]),
                "dispatch_bytes": int(dispatch_cross[layer]),
                "combine_bytes": int(dispatch_cross[layer]),
                "local_bytes": int(local[layer]),
                "attn_comm_bytes": attn_comm,
                "moe_comm_bytes": int(moe_comm[layer]),
                "imbalance": {
                    metric: float(getattr(imb, metric)[layer]) for metric in IMBALANCE_METRICS
                },
            }
        )
    return {
        "inputs": inputs,
        "a2a_bytes": int(2 * dispatch_cross.sum()),
        "local_bytes": int(local.sum()),
        "attn_comm_bytes": attn_comm * traffic.num_layers,
        "moe_comm_bytes": int(moe_comm.sum()),
        "per_layer": per_layer,
        "imbalance": {
            metric: {
                "max": float(getattr(imb, metric).max()),
                "mean": float(getattr(imb, metric).mean()),
            }
            for metric in IMBALANCE_METRICS
        },
        "tokens_per_rank": traffic.tokens_per_rank.tolist(),
    }


def latency_result(
    main: Any,
    main_phase: str,
    *,
    ttft_s: float,
    tpot_s: float,
    decode_sequences: int,
    prefill_tokens: int,
) -> dict[str, Any]:
    """Latency keys of a Result: `latency` of the scenario's own step, and the serving figures.

    `latency` describes the scenario's own phase (its first step): `step_s`, `per_phase_s` (the
    critical rank's seconds per phase; with `lm_head_s` they sum to `step_s`),
    `critical_rank`, `per_block` (every transformer block's duration and slowest-rank phase
    times) and `rank_phase_s` (per phase, each rank's total: the hot rank's longer `experts`
    shows here). `ttft_s` is the chunked prefill of the batch, `tpot_s` the mean decode step,
    `tokens_per_s` decode output tokens per second, `prefill_tokens_per_s` prompt tokens per
    second of TTFT.
    """
    from moesim.engine.plan import PHASES

    rank_totals = main.phase_s.sum(axis=0)  # [W, phases]
    return {
        "latency": {
            "phase": main_phase,
            "fidelity": main.fidelity,
            "step_s": main.step_s,
            "per_phase_s": main.phase_totals_s(),
            "lm_head_s": float(main.lm_head_s[main.critical_rank]),
            "critical_rank": main.critical_rank,
            "rank_phase_s": {name: rank_totals[:, i].tolist() for i, name in enumerate(PHASES)},
            "per_block": main.per_layer(),
        },
        "ttft_s": ttft_s,
        "tpot_s": tpot_s,
        "tokens_per_s": decode_sequences / tpot_s,
        "prefill_tokens_per_s": prefill_tokens / ttft_s,
    }


def merge_layer_times(result: dict[str, Any], first_dense_layers: int) -> None:
    """Copy each MoE layer's block time and phase maxima into `per_layer` (in place)."""
    blocks = result["latency"]["per_block"]
    for row in result["per_layer"]:
        block = blocks[first_dense_layers + row["layer"]]
        row["time_s"] = block["time_s"]
        row["phase_s"] = block["phase_max_s"]
