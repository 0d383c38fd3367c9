"""Speed of the synthetic router-trace generator: fit time and generated tokens/s.

Fits the generator to the bundled Mixtral-8x7B trace (32 layers, top-2 of 8), then generates
N tokens x 32 layers in sequences of 256 tokens, fitted and uniform, and prints tokens/s
(a token = one position routed at every layer). Cost is one vectorised pass per layer
(no loop over tokens or positions).

Run: python benchmarks/bench_synth.py [--tokens 1000000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from moesim.trace.bundled import load_bundled_trace
from moesim.trace.fit import fit_synth_params
from moesim.trace.synth import SynthParams, generate_trace, uniform_params


def _time_generation(name: str, params: SynthParams, tokens: int, seed: int) -> None:
    sequences = max(tokens // 256, 1)
    start = time.perf_counter()
    trace = generate_trace(params, tokens, sequences, np.random.default_rng(seed))
    elapsed_s = time.perf_counter() - start
    print(f"{name:>8}: {tokens} tokens x {trace.num_layers} layers ({sequences} sequences) in "
          f"{elapsed_s:.2f} s = {tokens / elapsed_s:,.0f} tokens/s, "
          f"{tokens * trace.num_layers / elapsed_s:,.0f} token-layers/s")


def main() -> None:
    """Fit once, then time generation of the requested number of tokens."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    fitted = fit_synth_params(load_bundled_trace(), 8)
    print(f"fit to the bundled trace: {time.perf_counter() - start:.2f} s")
    _time_generation("fitted", fitted, args.tokens, args.seed)
    _time_generation("uniform", uniform_params(8, 2, 32), args.tokens, args.seed)


if __name__ == "__main__":
    main()
