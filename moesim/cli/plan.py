"""`moesim plan --gpus-available 8xH100,16xL40S --slo-tpot-ms 50 ...`: the cheapest deployment."""

from __future__ import annotations

import argparse
import json
import sys

from moesim.output.files import write_atomic

__all__ = ["add_parser", "format_plan_table"]


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim plan`."""
    parser = commands.add_parser(
        "plan",
        help="cheapest deployment of a model on the GPUs at hand that meets a TPOT SLO",
        description="Try every topology preset the available GPUs fill (whole multiples as "
        "replicas) and every layout of its size, users split over replicas, in decode at the "
        "given context; keep those that fit memory and meet the TPOT SLO; print the cheapest "
        "and why each other candidate lost.",
    )
    parser.add_argument("--model", default="mixtral-8x7b", help="model preset, HF config or YAML")
    parser.add_argument(
        "--gpus-available", required=True, help="e.g. 8xH100,16xL40S (H100 H200 A100 L40S RTX4090)"
    )
    parser.add_argument("--slo-tpot-ms", type=float, required=True, help="TPOT target (ms)")
    parser.add_argument("--context", type=int, required=True, help="tokens per sequence")
    parser.add_argument("--users", type=int, required=True, help="concurrent sequences")
    parser.add_argument("--trace", help="trace .npz or bundled:NAME (default: bundled decode)")
    parser.add_argument("--fidelity", choices=["analytic", "des"], default="analytic")
    parser.add_argument(
        "--objective",
        choices=["usd_per_million_tokens", "usd_per_hour"],
        default="usd_per_million_tokens",
        help="what 'cheapest' means",
    )
    parser.add_argument("--top", type=int, default=15, help="table rows (0: all)")
    parser.add_argument("--json", metavar="OUT", help="write the plan JSON here ('-': stdout)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from moesim.planning.deployment import plan_deployment

    result = plan_deployment(
        args.model,
        args.gpus_available,
        slo_tpot_s=args.slo_tpot_ms / 1e3,
        context=args.context,
        users=args.users,
        trace=args.trace,
        fidelity=args.fidelity,
        objective=args.objective,
    )
    if args.json:
        text = json.dumps(result.to_dict(), indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            write_atomic(args.json, text)
    if args.json != "-":
        print(format_plan_table(result, top=args.top))
    return 0 if result.chosen else 1


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_plan_table(result, top: int = 15) -> str:  # type: ignore[no-untyped-def]
    """Human table of a PlanResult: the winner first, then runners-up with why they lost."""
    q = result.query
    head = (
        f"plan: {q['model']} for {q['users']} users at {q['context']} tokens, TPOT SLO "
        f"{q['slo_tpot_s'] * 1e3:g} ms, cheapest by {q['objective']}"
    )
    if result.chosen is None:
        head += "\nno candidate meets the SLO and fits; closest below"
    rows = result.candidates[:top] if top else result.candidates
    lines = [
        head,
        f"{'#':>3} {'deployment':<34} {'GPUs':>4} {'batch':>5} {'TPOT ms':>8} "
        f"{'tok/s':>8} {'$/h':>7} {'$/M tok':>8}  verdict",
    ]
    for i, c in enumerate(rows, 1):
        verdict = c.verdict or "CHOSEN: cheapest that meets the SLO"
        tpot_ms = None if c.tpot_s is None else c.tpot_s * 1e3
        lines.append(
            f"{i:>3} {c.label:<34} {c.gpus:>4} {c.batch_per_replica:>5} {_num(tpot_ms, '.2f'):>8} "
            f"{_num(c.tokens_per_s, '.0f'):>8} {_num(c.usd_per_hour, '.2f'):>7} "
            f"{_num(c.usd_per_million_tokens, '.3f'):>8}  {verdict}"
        )
    if len(rows) < len(result.candidates):
        lines.append(f"... {len(result.candidates) - len(rows)} more (--top 0 or --json)")
    return "\n".join(lines)
