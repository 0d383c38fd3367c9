"""`moesim trace synth` and `moesim trace compare`: generate synthetic traces, compare traces.

The `moesim trace` group calls `add_parser`. Generators: a model fitted to a real trace
(`--fit`) or to its statistics (`--stats`), or the `--uniform` and `--zipf S` baselines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from moesim.cli.numbers import float_in, int_in, positive_int, seed_int
from moesim.errors import TraceError
from moesim.output.files import write_atomic

# a trace argument (file, NAME or bundled:NAME) resolves as everywhere else: one not found
# names the bundled traces (re-exported here for callers of moesim.cli.trace_synth)
from moesim.trace.bundled import BUNDLED_TRACES, resolve_trace_path
from moesim.trace.format import RouterTrace, load_trace, save_trace
from moesim.trace.synth import SynthParams, generate_trace, uniform_params, zipf_params

__all__ = ["add_parser", "resolve_trace_path", "build_params", "MAX_SYNTH_ENTRIES"]

# Routed entries (tokens x layers x k) of a generated trace: generating takes ~0.5 us and ~5
# bytes (int16 ids, float32 weights, int64 work arrays) an entry, measured at 1M tokens x 32
# layers x top-2 (32 s, 300 MB); 2**28 entries is a few minutes and ~1.5 GB: a 4M-token
# Mixtral-8x7B trace, 500k tokens of DeepSeek-V3. Larger requests are refused before anything
# is drawn.
MAX_SYNTH_ENTRIES = 1 << 28
# Entries of the generator's per-layer expert-to-expert transition tables (layers x E x E
# float64): 2**26 is 512 MB, e.g. 64 layers of 1024 experts (the largest MoE models route over
# 384). Expert ids are int16, so E is at most 32767 in any case.
MAX_TRANSITION_ENTRIES = 1 << 26
MAX_EXPERTS = 32767


def add_parser(trace_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `synth` and `compare` under the `moesim trace` group's subparsers."""
    _add_synth(trace_commands)
    _add_compare(trace_commands)


def _add_synth(trace_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = trace_commands.add_parser(
        "synth", help="generate a synthetic router trace (fitted or baseline)",
        description="Generate a synthetic trace: fitted to a real trace or its statistics "
        "(popularity, prompt variation, repetition, cross-layer agreement), or a baseline.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--fit", metavar="TRACE",
                        help="fit to a .npz trace, or a bundled trace as NAME or bundled:NAME "
                        f"({', '.join(BUNDLED_TRACES)})")
    source.add_argument("--stats", type=Path, metavar="STATS.json",
                        help="fit to `moesim trace stats --json` output (layers independent)")
    source.add_argument("--uniform", action="store_true", help="uniform independent routing")
    source.add_argument("--zipf", type=float_in(0.0, 100.0), metavar="S",
                        help="first choice Zipf(S) over a random expert ranking per layer")
    parser.add_argument("--tokens", type=int_in(1, MAX_SYNTH_ENTRIES), required=True,
                        help="tokens to generate")
    parser.add_argument("--sequences", type=positive_int, default=None,
                        help="sequences (default: tokens // 256, at least 1)")
    parser.add_argument("--experts", type=int_in(1, MAX_EXPERTS), default=8,
                        help="baselines: experts (8)")
    parser.add_argument("--top-k", type=int_in(1, MAX_EXPERTS), default=2,
                        help="baselines: experts per token (2)")
    parser.add_argument("--layers", type=int_in(1, MAX_SYNTH_ENTRIES), default=32,
                        help="baselines: MoE layers (32)")
    parser.add_argument("--num-experts", type=int_in(1, MAX_EXPERTS), default=None,
                        help="--fit: experts per layer (default: metadata, else max id + 1)")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .npz trace")
    parser.set_defaults(handler=_run_synth)


def _add_compare(trace_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = trace_commands.add_parser(
        "compare", help="compare two traces' statistics (e.g. real vs synthetic)")
    parser.add_argument("a", help="reference trace (.npz or a bundled name)")
    parser.add_argument("b", help="trace measured against it")
    parser.add_argument("--num-experts", type=int_in(1, MAX_EXPERTS), default=None,
                        help="experts per layer (default: metadata, else max id + 1)")
    parser.add_argument("--batch-tokens", type=positive_int, default=64,
                        help="tokens per batch for the imbalance distribution (64)")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="write the comparison as JSON here ('-' for stdout)")
    parser.add_argument("--plot", type=Path, default=None, metavar="DIR",
                        help="write PNG figures into DIR")
    parser.set_defaults(handler=_run_compare)


def _num_experts(trace: RouterTrace, given: int | None) -> int:
    from moesim.cli.trace import resolve_num_experts

    return resolve_num_experts(trace, given)[0]


def build_params(args: argparse.Namespace) -> tuple[SynthParams, dict[str, str]]:
    """The generator's parameters for the parsed `synth` flags, and metadata on their source."""
    from moesim.trace.fit import fit_synth_params, fit_synth_params_from_stats, load_stats_json

    if args.fit is not None:
        path = resolve_trace_path(args.fit)
        real = load_trace(path)
        experts = _num_experts(real, args.num_experts)
        _check_transitions(real.num_layers, experts, "--num-experts")
        params = fit_synth_params(real, experts, source=f"fitted to trace {args.fit}")
        meta = {"params_source": f"trace {args.fit}",
                "model": real.metadata.get("model", "unknown")}
        return params, meta
    if args.stats is not None:
        data = load_stats_json(args.stats)
        params = fit_synth_params_from_stats(data, source=str(args.stats))
        meta = {"params_source": f"stats {args.stats}"}
        if isinstance(data.get("metadata"), dict) and "model" in data["metadata"]:
            meta["model"] = str(data["metadata"]["model"])
        return params, meta
    _check_transitions(args.layers, args.experts, "--layers/--experts")
    if args.uniform:
        return uniform_params(args.experts, args.top_k, args.layers), {
            "params_source": "uniform baseline"}
    rng = np.random.default_rng([args.seed, 1])  # ranking stream, apart from the trace's
    return zipf_params(args.experts, args.top_k, args.layers, args.zipf, rng), {
        "params_source": f"zipf baseline, exponent {args.zipf:g}"}


def _check_transitions(layers: int, experts: int, flags: str) -> None:
    """Refuse a generator whose transition tables exceed MAX_TRANSITION_ENTRIES."""
    entries = layers * experts * experts
    if entries > MAX_TRANSITION_ENTRIES:
        raise TraceError(f"{flags}: {layers} layers x {experts} x {experts} experts = "
                         f"{entries:.3g} transition entries, above the "
                         f"{MAX_TRANSITION_ENTRIES:,} the generator holds (8 bytes each); "
                         "use fewer layers or experts")


def _check_entries(tokens: int, layers: int, top_k: int) -> None:
    """Refuse a trace of more than MAX_SYNTH_ENTRIES routed entries, before drawing it."""
    entries = tokens * layers * top_k
    if entries > MAX_SYNTH_ENTRIES:
        raise TraceError(f"--tokens {tokens:,} x {layers} layers x top-{top_k} = {entries:.3g} "
                         f"routed entries, above the {MAX_SYNTH_ENTRIES:,} moesim generates in "
                         "one trace (minutes and ~1.5 GB at the limit); lower --tokens (or "
                         "--layers / --top-k)")


def _run_synth(args: argparse.Namespace) -> int:
    if args.tokens < 1:
        raise TraceError(f"--tokens must be at least 1, got {args.tokens}")
    if args.uniform or args.zipf is not None:  # the shape is known before anything is fitted
        _check_entries(args.tokens, args.layers, args.top_k)
    sequences = args.sequences if args.sequences is not None else max(args.tokens // 256, 1)
    if sequences > args.tokens:
        raise TraceError(f"--sequences {sequences} needs at least as many tokens, got --tokens "
                         f"{args.tokens}; lower --sequences or raise --tokens")
    params, meta = build_params(args)
    _check_entries(args.tokens, params.num_layers, params.top_k)
    meta.update({"generator": params.generator, "seed": str(args.seed),
                 "synth_params": json.dumps(params.summary())})
    trace = generate_trace(params, args.tokens, sequences, np.random.default_rng(args.seed),
                           metadata=meta)
    try:
        save_trace(trace, args.output)
    except OSError as exc:
        raise TraceError(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"wrote {args.output}: {args.tokens} tokens in {sequences} sequences x "
          f"{params.num_layers} layers, top-{params.top_k} of {params.num_experts} "
          f"({params.generator}; {meta['params_source']}; seed {args.seed})")
    for note in params.notes:
        print(f"  note: {note}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from moesim.trace.compare import compare_traces, comparison_to_dict, format_comparison

    trace_a, trace_b = (load_trace(resolve_trace_path(name)) for name in (args.a, args.b))
    num_experts = args.num_experts or max(_num_experts(trace_a, None),
                                          _num_experts(trace_b, None))
    comp = compare_traces(trace_a, trace_b, num_experts, args.batch_tokens,
                          names=(args.a, args.b))
    if args.json_out is None:
        print(format_comparison(comp))
    else:
        text = json.dumps(comparison_to_dict(comp), indent=1) + "\n"
        if args.json_out == "-":
            sys.stdout.write(text)
        else:
            _write(Path(args.json_out), text)
            print(f"wrote {args.json_out}")
    if args.plot is not None:
        from moesim.output.report_trace import plot_comparison

        for path in plot_comparison(comp, args.plot):
            print(f"wrote {path}")
    return 0


def _write(path: Path, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise TraceError(f"cannot write {path}: {exc.strerror}") from None
