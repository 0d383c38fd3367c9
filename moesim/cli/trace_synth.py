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

from moesim.errors import TraceError
from moesim.output.files import write_atomic
from moesim.trace.bundled import BUNDLED_PREFIX, BUNDLED_TRACES, bundled_trace_path
from moesim.trace.format import RouterTrace, load_trace, save_trace
from moesim.trace.synth import SynthParams, generate_trace, uniform_params, zipf_params

__all__ = ["add_parser", "resolve_trace_path", "build_params"]



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
                        help="fit to a .npz trace or bundled:NAME "
                        f"({', '.join(BUNDLED_TRACES)})")
    source.add_argument("--stats", type=Path, metavar="STATS.json",
                        help="fit to `moesim trace stats --json` output (layers independent)")
    source.add_argument("--uniform", action="store_true", help="uniform independent routing")
    source.add_argument("--zipf", type=float, metavar="S",
                        help="first choice Zipf(S) over a random expert ranking per layer")
    parser.add_argument("--tokens", type=int, required=True, help="tokens to generate")
    parser.add_argument("--sequences", type=int, default=None,
                        help="sequences (default: tokens // 256, at least 1)")
    parser.add_argument("--experts", type=int, default=8, help="baselines: experts (8)")
    parser.add_argument("--top-k", type=int, default=2, help="baselines: experts per token (2)")
    parser.add_argument("--layers", type=int, default=32, help="baselines: MoE layers (32)")
    parser.add_argument("--num-experts", type=int, default=None,
                        help="--fit: experts per layer (default: metadata, else max id + 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .npz trace")
    parser.set_defaults(handler=_run_synth)


def _add_compare(trace_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = trace_commands.add_parser(
        "compare", help="compare two traces' statistics (e.g. real vs synthetic)")
    parser.add_argument("a", help="reference trace (.npz or a bundled name)")
    parser.add_argument("b", help="trace measured against it")
    parser.add_argument("--num-experts", type=int, default=None,
                        help="experts per layer (default: metadata, else max id + 1)")
    parser.add_argument("--batch-tokens", type=int, default=64,
                        help="tokens per batch for the imbalance distribution (64)")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="write the comparison as JSON here ('-' for stdout)")
    parser.add_argument("--plot", type=Path, default=None, metavar="DIR",
                        help="write PNG figures into DIR")
    parser.set_defaults(handler=_run_compare)


def resolve_trace_path(name: str) -> Path:
    """A trace argument: a file, `bundled:NAME`, or a bare bundled name."""
    if name.startswith(BUNDLED_PREFIX):
        return bundled_trace_path(name[len(BUNDLED_PREFIX):])
    path = Path(name)
    if not path.exists() and name in BUNDLED_TRACES:
        return bundled_trace_path(name)
    return path


def _num_experts(trace: RouterTrace, given: int | None) -> int:
    from moesim.cli.trace import resolve_num_experts

    return resolve_num_experts(trace, given)[0]


def build_params(args: argparse.Namespace) -> tuple[SynthParams, dict[str, str]]:
    """The generator's parameters for the parsed `synth` flags, and metadata on their source."""
    from moesim.trace.fit import fit_synth_params, fit_synth_params_from_stats, load_stats_json

    if args.fit is not None:
        path = resolve_trace_path(args.fit)
        real = load_trace(path)
        params = fit_synth_params(real, _num_experts(real, args.num_experts),
                                  source=f"fitted to trace {args.fit}")
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
    if args.uniform:
        return uniform_params(args.experts, args.top_k, args.layers), {
            "params_source": "uniform baseline"}
    rng = np.random.default_rng([args.seed, 1])  # ranking stream, apart from the trace's
    return zipf_params(args.experts, args.top_k, args.layers, args.zipf, rng), {
        "params_source": f"zipf baseline, exponent {args.zipf:g}"}


def _run_synth(args: argparse.Namespace) -> int:
    if args.tokens < 1:
        raise TraceError(f"--tokens must be at least 1, got {args.tokens}")
    sequences = args.sequences if args.sequences is not None else max(args.tokens // 256, 1)
    params, meta = build_params(args)
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
