"""Serving speed: requests of Mixtral-8x7B on 8 GPUs (dgx-h100) through `moesim.serve`.

Prints, per case: layout, fidelity, requests, iterations, wall seconds, milliseconds per
iteration, the DES/analytic ratio, and the process's peak resident memory so far. Targets
on the 2-core development machine, analytic: 2,000 requests (isl 1024, osl 256, concurrency
64) in under 30 s (issue 11), 10,000 in under 60 s (issue 16: `--requests 10000
--des-requests 0`, ~40k iterations); the DES not more than 10x slower.

    python benchmarks/bench_serve.py [--requests N] [--des-requests N] [--placement EP8]

`--des-requests` runs the DES on fewer requests (the per-iteration cost is what matters for the
ratio; a full DES run takes minutes) and compares milliseconds per iteration.
"""

from __future__ import annotations

import argparse
import resource
import time

from moesim.inputs.config import Scenario, ServeSpec
from moesim.planning.evaluate import EvaluationCache
from moesim.planning.serving import serve


def run(placement: str, fidelity: str, requests: int, concurrency: int, isl: int, osl: int
        ) -> float:
    """One served run; prints its line and returns milliseconds per iteration."""
    spec = ServeSpec(concurrency=concurrency, requests=requests, isl=isl, osl=osl)
    scenario = Scenario(placement=placement, topology="dgx-h100", fidelity=fidelity,
                        trace="bundled:mixtral8x7b_humaneval_synth", serve=spec)
    began = time.perf_counter()
    result = serve(scenario, EvaluationCache())
    wall_s = time.perf_counter() - began
    iterations = len(result.iterations)
    per_ms = 1e3 * wall_s / iterations
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{placement:>8} {fidelity:>8} {requests:>6} requests {iterations:>6} iterations "
          f"{wall_s:8.1f} s {per_ms:7.2f} ms/iteration  p90 TTFT "
          f"{(result.stats.ttft_s.p90 or 0) * 1e3:7.1f} ms  p90 TPOT "
          f"{(result.stats.tpot_s.p90 or 0) * 1e3:6.2f} ms  peak RSS {rss_mb:.0f} MB", flush=True)
    return per_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--placement", default="EP8")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--des-requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--isl", type=int, default=1024)
    parser.add_argument("--osl", type=int, default=256)
    args = parser.parse_args()
    shape = (args.concurrency, args.isl, args.osl)
    analytic = run(args.placement, "analytic", args.requests, *shape)
    if args.des_requests:
        des = run(args.placement, "des", args.des_requests, *shape)
        print(f"DES / analytic per iteration: {des / analytic:.1f}x")


if __name__ == "__main__":
    main()
