"""`moesim run [SCENARIO.yaml] [flags]`: one scenario to a Result (table and JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from moesim.inputs.config import Scenario, load_scenario, parse_model

__all__ = ["add_parser", "scenario_from_args", "write_json"]

# flag name -> Scenario field, applied over the scenario file when given
_OVERRIDES = {
    "model": "model",
    "trace": "trace",
    "placement": "placement",
    "topology": "topology",
    "phase": "phase",
    "batch": "batch",
    "context": "context",
    "act_dtype": "act_dtype",
    "dedup": "dedup",
    "sp_variant": "sp_variant",
    "weight_dtype": "weight_dtype",
    "fidelity": "fidelity",
    "decode_steps": "decode_steps",
}


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim run`."""
    parser = commands.add_parser(
        "run",
        help="run one scenario: traffic, imbalance (and latency where a topology is given)",
        description="Run one scenario. Flags override the scenario file; with no file the "
        "defaults are Mixtral-8x7B, the bundled real HumanEval trace and EP8.",
    )
    parser.add_argument("scenario", nargs="?", help="scenario YAML (see scenarios/)")
    parser.add_argument("--model", help="preset name, HF config.json or ModelSpec YAML")
    parser.add_argument("--trace", help="trace .npz or bundled:NAME")
    parser.add_argument("--placement", help="TP8, EP8, EP4xDP2, SP8, TP2xEP4, ...")
    parser.add_argument("--topology", help="topology preset name or YAML")
    parser.add_argument("--phase", choices=["prefill", "decode"])
    parser.add_argument("--batch", type=int, help="sequences in the batch")
    parser.add_argument("--context", type=int, help="prompt tokens per sequence")
    parser.add_argument("--act-dtype", dest="act_dtype", choices=["fp32", "bf16", "fp16", "fp8"])
    parser.add_argument("--dedup", choices=["none", "gpu", "node"])
    parser.add_argument("--sp-variant", dest="sp_variant", choices=["ring", "allgather"])
    parser.add_argument(
        "--decode-steps", dest="decode_steps", type=int, help="average TPOT over N decode steps"
    )
    parser.add_argument("--weight-dtype", dest="weight_dtype", choices=["bf16", "fp8"])
    parser.add_argument(
        "--fidelity", choices=["des", "analytic"], help="des: flows and stragglers; analytic: fast"
    )
    parser.add_argument("--json", metavar="OUT", help="write the Result JSON here ('-' for stdout)")
    parser.add_argument("--quiet", action="store_true", help="no table")
    parser.set_defaults(handler=_run)


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """The scenario file (or defaults) with the given flags applied on top."""
    base = load_scenario(args.scenario) if args.scenario else Scenario()
    data = base.model_dump()
    for flag, field in _OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            data[field] = value
    return parse_model(Scenario, data, "command-line flags")


def write_json(result: dict[str, Any], out: str) -> None:
    """Write a Result dict as JSON to a path or stdout ('-')."""
    text = json.dumps(result, indent=2)
    if out == "-":
        sys.stdout.write(text + "\n")
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


def _run(args: argparse.Namespace) -> int:
    from moesim.output.report import format_run_table
    from moesim.planning.evaluate import run_scenario

    result = run_scenario(scenario_from_args(args))
    if not args.quiet and args.json != "-":
        print(format_run_table(result))
    if args.json:
        write_json(result, args.json)
        if args.json != "-" and not args.quiet:
            print(f"wrote {args.json}")
    return 0
