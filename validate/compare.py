"""Measured vs predicted bytes and times of one live run (`moesim validate compare`'s work).

`compare_summary` recomputes the simulator's traffic for a measurement's recorded inputs,
checks every byte (`validate.measurement.check_bytes`) and holds the predicted times
(`validate.predict`) against the measured ones per layer and phase.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moesim.inputs.options import Fidelity

if TYPE_CHECKING:
    import numpy as np

__all__ = ["compare_summary"]

_OTHER_COMM = ("sp_exchange", "attn_reduce_scatter", "moe_tp_gather", "moe_tp_scatter",
               "attn_all_gather")


def compare_summary(measurement: dict[str, Any], topology: str | None = None,
                    fidelity: Fidelity = "des", statistic: str = "mean") -> dict[str, Any]:
    """Measured vs predicted bytes and times per layer, the mismatches, and the errors:
    `bytes_match`, `a2a_mape` / `layer_mape` / `overall_mape` (percent), `phase_mape`."""
    from validate.measurement import (
        PHASES,
        check_bytes,
        expected_bytes,
        measured_bytes,
        traffic_for_inputs,
    )
    from validate.predict import predicted_times, time_comparison

    traffic = traffic_for_inputs(measurement["inputs"])
    mismatches = check_bytes(measurement, traffic)
    measured, predicted = measured_bytes(measurement), expected_bytes(traffic)
    a2a = [PHASES.index(p) for p in ("dispatch", "combine")]
    other = [PHASES.index(p) for p in _OTHER_COMM]

    def layer_bytes(counts: np.ndarray, layer: int) -> dict[str, int]:
        return {"a2a_bytes": int(counts[layer, :, a2a, 0].sum()),
                "local_bytes": int(counts[layer, :, a2a, 2].sum()),
                "other_comm_bytes": int(counts[layer, :, other, 0].sum())}

    prediction = predicted_times(measurement, traffic, topology, fidelity)
    times = time_comparison(measurement, prediction, statistic)
    per_layer = [
        {"layer": layer, "measured": layer_bytes(measured, layer),
         "predicted": layer_bytes(predicted, layer),
         "measured_time_s": _layer_time_s(measurement["per_layer"][layer]),
         "bytes_match": not any(m.layer == layer for m in mismatches),
         **{k: v for k, v in times["per_layer"][layer].items() if k != "layer"}}
        for layer in range(measured.shape[0])
    ]
    return {
        "bytes_match": not mismatches,
        "mismatches": [vars(m) for m in mismatches],
        "a2a_mape": times["a2a_mape"],
        "layer_mape": times["layer_mape"],
        "overall_mape": times["overall_mape"],
        "phase_mape": times["phase_mape"],
        "local_only_phases": times["local_only_phases"],
        "statistic": statistic,
        "topology": prediction["topology_source"],
        "per_layer": per_layer,
        "predicted_times": prediction,
    }


def _layer_time_s(layer_entry: dict[str, Any]) -> float:
    """Sum over phases of the slowest rank's median time."""
    phases = layer_entry["ranks"][0]["phases"]
    return float(sum(max(r["phases"][p]["time_s"] for r in layer_entry["ranks"]) for p in phases))
