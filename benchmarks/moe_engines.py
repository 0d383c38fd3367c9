"""What MoE engines run, on the closing note's cases: step time and per-rank expert load with
and without EPLB, with and without two-batch overlap, for each all-to-all implementation.

Cases: DeepSeek-V3 (fp8-block weights, fp8 KV) decode on h100-2node-ib (EP16) and h100-4node-ib
(EP32, a wide-EP unit), Mixtral-8x7B decode on dgx-h100 (EP8). Prints one row per variant: the
decode step, TPOT, the rank max/mean of expert load (mean over layers) and the wall time of the
evaluation (decode only, no TTFT).

    python benchmarks/moe_engines.py [--fidelity des|analytic] [--case NAME]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from moesim.inputs.config import Scenario
from moesim.planning.evaluate import EvaluationCache, evaluate

CASES: dict[str, dict[str, Any]] = {
    "deepseek-v3-ep16": dict(model="deepseek-v3", placement="EP16", topology="h100-2node-ib",
                             batch=512, context=2048, weight_dtype="fp8-block", kv_dtype="fp8",
                             redundant=16),
    "deepseek-v3-ep32": dict(model="deepseek-v3", placement="EP32", topology="h100-4node-ib",
                             batch=1024, context=2048, weight_dtype="fp8-block", kv_dtype="fp8",
                             redundant=32),
    "mixtral-ep8": dict(model="mixtral-8x7b", placement="EP8", topology="dgx-h100", batch=256,
                        context=1024, redundant=8),
}
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("direct", {}),
    ("direct+eplb", {"eplb": "deepseek"}),
    ("direct+tbo", {"overlap": "tbo"}),
    ("allgather", {"a2a": "allgather"}),
    ("deepep-normal", {"a2a": "deepep-normal"}),
    ("deepep-normal+tbo", {"a2a": "deepep-normal", "overlap": "tbo"}),
    ("deepep-ll", {"a2a": "deepep-ll"}),
    ("deepep-ll+eplb", {"a2a": "deepep-ll", "eplb": "deepseek"}),
    ("deepep-ll+tbo", {"a2a": "deepep-ll", "overlap": "tbo"}),
    ("deepep-ll+eplb+tbo", {"a2a": "deepep-ll", "eplb": "deepseek", "overlap": "tbo"}),
]


def _imbalance(result: Any, key: str) -> str:
    load = (result.moe_engine or {}).get("rank_load")
    if load and key in load:
        return f"{load[key]['mean']:.3f}"
    value = result.imbalance.get("rank_max_over_mean")
    return f"{value.mean:.3f}" if key.startswith("after") and value else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fidelity", choices=["des", "analytic"], default="des")
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    args = parser.parse_args()
    print(f"{'case':18} {'variant':20} {'step ms':>8} {'TPOT ms':>8} {'load before':>11} "
          f"{'load after':>10} {'a2a GB':>7} {'wall s':>7}")
    for name in args.case or list(CASES):
        case = dict(CASES[name])
        redundant = case.pop("redundant")
        cache = EvaluationCache()
        for label, update in VARIANTS:
            fields = {**case, **update, "phase": "decode", "fidelity": args.fidelity,
                      "name": name}
            if update.get("eplb"):
                fields["redundant_experts"] = redundant
            start = time.perf_counter()
            result = evaluate(Scenario(**fields), with_ttft=False, cache=cache)
            wall = time.perf_counter() - start
            step = result.latency.step_s if result.latency else float("nan")
            print(f"{name:18} {label:20} {step * 1e3:8.3f} {result.tpot_s * 1e3:8.3f} "
                  f"{_imbalance(result, 'before_max_over_mean'):>11} "
                  f"{_imbalance(result, 'after_max_over_mean'):>10} "
                  f"{result.a2a_bytes / 1e9:7.2f} {wall:7.2f}")
    print(f"\n(load: tokens per EP rank max/mean, mean over layers; numpy {np.__version__})")


if __name__ == "__main__":
    main()
