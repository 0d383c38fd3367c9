"""`moesim trace`: convert router logs into trace files and print trace statistics.

Other command modules join the group without editing this file: when `moesim.cli.trace_capture`
or `moesim.cli.trace_synth` exists, its `add_parser(trace_commands)` is called here.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from moesim.cli.commands import command_help
from moesim.cli.numbers import int_in
from moesim.cli.outputs import TRACE_OUTPUT, check_output
from moesim.errors import TraceError
from moesim.output.files import atomic_path, write_atomic
from moesim.trace.bundled import BUNDLED_TRACES, resolve_trace_path
from moesim.trace.convert import FORMATS, convert_file
from moesim.trace.format import RouterTrace, load_trace
from moesim.trace.stats import MAX_NUM_EXPERTS, compute_stats, format_stats_table, stats_to_dict

__all__ = ["add_parser", "resolve_num_experts"]

_EXTENSIONS = ("moesim.cli.trace_capture", "moesim.cli.trace_synth")
# Expert ids are int16 in a trace, so a model has at most MAX_NUM_EXPERTS (32,768) experts per
# layer and picks at most that many; the statistics' tables are sized by the count.
_EXPERT_COUNT = int_in(1, MAX_NUM_EXPERTS)


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim trace convert|stats` (and capture/synth/compare when present)."""
    parser = commands.add_parser("trace", help=command_help("trace"))
    trace_commands = parser.add_subparsers(dest="trace_command", metavar="SUBCOMMAND",
                                           required=True)
    _add_convert(trace_commands)
    _add_stats(trace_commands)
    for module_name in _EXTENSIONS:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).add_parser(trace_commands)


def _add_convert(trace_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = trace_commands.add_parser("convert", help="convert a routing log into a .npz trace")
    parser.add_argument("--from", dest="fmt", required=True, choices=FORMATS,
                        help="input format")
    parser.add_argument("input", type=Path, help="routing log (.jsonl, .npz, .pt, .npy)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output .npz trace (written exactly there; its folder must exist)")
    parser.add_argument("--top-k", type=_EXPERT_COUNT, default=None,
                        help="experts per token (needed for hf-router-logits)")
    parser.add_argument("--model", default=None, help="model name stored in the metadata")
    parser.add_argument("--dataset", default=None, help="dataset name stored in the metadata")
    parser.add_argument("--num-experts", type=_EXPERT_COUNT, default=None,
                        help=f"experts per layer (1..{MAX_NUM_EXPERTS}), stored in the metadata")
    parser.add_argument("--provenance", default="", help="provenance text for the metadata")
    parser.set_defaults(handler=_run_convert)


def _add_stats(trace_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = trace_commands.add_parser("stats", help="load imbalance and routing locality")
    names = ", ".join(BUNDLED_TRACES)
    parser.add_argument("trace", help=f"a .npz trace, or a bundled trace as NAME or "
                        f"bundled:NAME ({names})")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="write the statistics as JSON to this file ('-' for stdout)")
    parser.add_argument("--num-experts", type=_EXPERT_COUNT, default=None,
                        help=f"experts per layer, 1..{MAX_NUM_EXPERTS} (default: metadata, else "
                        "max id + 1)")
    parser.set_defaults(handler=_run_stats)


def _run_convert(args: argparse.Namespace) -> int:
    check_output(args.output, TRACE_OUTPUT.flag, suffixes=TRACE_OUTPUT.suffixes,
                 folder_must_exist=True)
    with atomic_path(args.output) as tmp:  # whole or not at all, at exactly the path given
        report = convert_file(args.input, args.fmt, tmp, top_k=args.top_k, model=args.model,
                              dataset=args.dataset, provenance=args.provenance,
                              num_experts=args.num_experts)
    print(dataclasses.replace(report, output=str(args.output)).summary())
    return 0


def resolve_num_experts(trace: RouterTrace, given: int | None) -> tuple[int, str]:
    """Experts per layer: the flag, else metadata `num_experts`, else max id + 1 (with origin)."""
    if given is not None:
        return given, "--num-experts"
    meta = trace.metadata.get("num_experts", "")
    if meta.isdigit():
        return int(meta), "trace metadata"
    return trace.max_expert_id + 1, "largest expert id + 1"


def _run_stats(args: argparse.Namespace) -> int:
    path = resolve_trace_path(args.trace)  # a file, NAME or bundled:NAME
    trace = load_trace(path)
    num_experts, origin = resolve_num_experts(trace, args.num_experts)
    stats = compute_stats(trace, num_experts)
    if args.json_out is None:
        print(f"trace {path} (model {trace.metadata.get('model', 'unknown')}; "
              f"num_experts {num_experts} from {origin})")
        print(format_stats_table(stats))
        return 0
    payload = {"trace": str(path), "metadata": trace.metadata, **stats_to_dict(stats)}
    text = json.dumps(payload, indent=1)
    if args.json_out == "-":
        sys.stdout.write(text + "\n")
    else:
        try:
            write_atomic(args.json_out, text + "\n")
        except OSError as exc:
            raise TraceError(f"cannot write {args.json_out}: {exc.strerror}") from None
        print(f"wrote {args.json_out}")
    return 0
