"""A drifting trace and a stale expert placement, served: what rebalancing buys and costs.

Builds a DeepSeek-V3-shaped synthetic trace (58 MoE layers, 256 experts, top-8) whose hot experts
change half way: the first half of its sequences draw Zipf(1.2) over one random expert ranking
per layer, the second half over another. Requests replay sequence i in arrival order, so the
load drifts in time. Serves DeepSeek-V3 (fp8-block) EP16 on h100-2node-ib, DeepEP low-latency,
four ways: no balancing; EPLB fitted on the first half only (stale after the drift); the same
rebalanced every N iterations; EPLB fitted on the whole trace (an oracle).

    python benchmarks/eplb_drift.py [--requests 64] [--rebalance-steps 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from moesim.inputs.config import Scenario, ServeSpec
from moesim.planning.serving import serve
from moesim.trace.format import RouterTrace, save_trace
from moesim.trace.synth import generate_trace, zipf_params


def drifting_trace(path: Path, sequences: int, length: int) -> int:
    """Write the trace; return the tokens of its first (pre-drift) half."""
    half = sequences // 2
    parts = [generate_trace(zipf_params(256, 8, 58, 1.2, np.random.default_rng(seed)),
                            half * length, half, np.random.default_rng(seed)) for seed in (1, 2)]
    experts = np.concatenate([p.experts for p in parts], axis=1)
    tokens = experts.shape[1]
    save_trace(RouterTrace(experts=experts, seq_id=np.arange(tokens) // length,
                pos=np.arange(tokens) % length,
                metadata={"source": "benchmarks/eplb_drift.py: Zipf(1.2), ranking changes at "
                          "the middle"}), path)
    return half * length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rebalance-steps", type=int, default=32)
    args = parser.parse_args()
    isl, osl = 256, 64
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "drift.npz"
        first_half = drifting_trace(path, args.requests, isl + osl)
        base = dict(model="deepseek-v3", trace=str(path), placement="EP16",
                    topology="h100-2node-ib", weight_dtype="fp8-block", kv_dtype="fp8",
                    a2a="deepep-ll", fidelity="analytic",
                    serve=ServeSpec(concurrency=args.concurrency, requests=args.requests,
                                    isl=isl, osl=osl))
        eplb = dict(eplb="deepseek", redundant_experts=16)
        variants = [
            ("no balancing", {}),
            ("EPLB fitted before the drift", {**eplb, "eplb_window": first_half}),
            (f"... rebalanced every {args.rebalance_steps}",
             {**eplb, "eplb_window": first_half, "rebalance_steps": args.rebalance_steps}),
            ("EPLB fitted on all (oracle)", eplb),
        ]
        print(f"{'variant':34} {'TTFT p50':>9} {'TPOT p50':>9} {'TPOT p90':>9} "
              f"{'tok/s':>8} {'rebal':>5} {'moved GB':>9} {'rebal s':>8} {'wall s':>7}")
        for label, update in variants:
            start = time.perf_counter()
            result = serve(Scenario(**base, **update))  # type: ignore[arg-type]
            wall = time.perf_counter() - start
            stats, moe = result.stats, result.inputs["moe_engine"]
            print(f"{label:34} {stats.ttft_s.p50 * 1e3:9.1f} {stats.tpot_s.p50 * 1e3:9.2f} "
                  f"{stats.tpot_s.p90 * 1e3:9.2f} {stats.output_tokens_per_s:8.0f} "
                  f"{moe['rebalances']:>5} {moe['rebalance_moved_bytes'] / 1e9:9.1f} "
                  f"{moe['rebalance_s']:8.3f} {wall:7.1f}")


if __name__ == "__main__":
    main()
