"""`moesim plan --gpus-available 8xH100,16xL40S --slo-tpot-ms 50 ...`: the cheapest deployment."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys

from pydantic import ValidationError

from moesim.cli.commands import command_help
from moesim.cli.flags import ENGINE_FIELDS, add_model_flags, add_scenario_flags, flag_name
from moesim.cli.numbers import int_in, non_negative_int
from moesim.errors import ConfigError
from moesim.inputs.config import MAX_BATCH, MAX_CONTEXT_TOKENS, ServeSpec
from moesim.output.files import write_atomic

__all__ = ["add_parser", "format_plan_table"]

# The served-workload flags of plan: the users (or --rate) are split over the replicas, so the
# arrival process, replay, disaggregation and the targets (--slo-*-ms) are plan's own.
PLAN_SERVE_FIELDS = tuple(
    f for f in ServeSpec.model_fields
    if f not in ("concurrency", "requests_file", "field_map", "duration_s", "disagg",
                 "slo_ttft_ms", "slo_tpot_ms")
)


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim plan`."""
    parser = commands.add_parser(
        "plan",
        help=command_help("plan"),
        description="Try every topology preset the available GPUs fill (whole multiples as "
        "replicas) and every layout of its size, users split over replicas, in decode at the "
        "given context; keep those that fit memory and meet the TPOT SLO; print the cheapest "
        "and why each other candidate lost. With --slo-ttft-ms (or any serving flag) every "
        "candidate serves requests instead: each replica a closed loop of its share of the "
        "users (or of --rate), prompts of --context tokens (or --isl) and --osl outputs, and "
        "must meet both targets at --percentile.",
    )
    parser.add_argument("--model", default="mixtral-8x7b", help="model preset, HF config or YAML")
    parser.add_argument(
        "--gpus-available", required=True, help="e.g. 8xH100,16xL40S (H100 H200 A100 L40S RTX4090)"
    )
    # the SLOs are checked by the handler (`_check_slos`): a ConfigError naming the flag, as
    # plan's other serving flags (tests/test_plan.py holds it to that)
    parser.add_argument("--slo-tpot-ms", type=float, required=True, help="TPOT target (ms)")
    parser.add_argument("--slo-ttft-ms", type=float,
                        help="TTFT target (ms): serve requests and rank by served figures")
    parser.add_argument("--percentile", choices=["p50", "p90", "p99", "mean"], default="p90",
                        help="served TTFT/TPOT percentile the targets apply to (default p90)")
    parser.add_argument("--context", type=int_in(1, MAX_CONTEXT_TOKENS), required=True,
                        help="tokens per sequence")
    # users are split over the replicas; a replica's share is a batch (at most MAX_BATCH), and
    # no inventory of GPUs holds a thousand replicas of a layout
    parser.add_argument("--users", type=int_in(1, 1000 * MAX_BATCH),
                        help="concurrent sequences (closed-loop clients when serving)")
    add_model_flags(parser, ServeSpec, PLAN_SERVE_FIELDS)
    add_scenario_flags(parser, ENGINE_FIELDS)
    parser.add_argument("--trace", help="trace .npz or bundled:NAME (default: bundled decode)")
    parser.add_argument("--fidelity", choices=["analytic", "des"], default="analytic")
    parser.add_argument(
        "--objective",
        choices=["usd_per_million_tokens", "usd_per_hour"],
        default="usd_per_million_tokens",
        help="what 'cheapest' means",
    )
    parser.add_argument("--top", type=non_negative_int, default=15, help="table rows (0: all)")
    parser.add_argument("--json", metavar="OUT", help="write the plan JSON here ('-': stdout)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(handler=_run)


def _serve_spec(args: argparse.Namespace) -> ServeSpec | None:
    """The served workload from the serving flags given (None when none is and no TTFT SLO)."""
    given = {name: getattr(args, name) for name in PLAN_SERVE_FIELDS
             if getattr(args, name, None) is not None}
    if not given and args.slo_ttft_ms is None:
        return None
    try:
        return ServeSpec.model_validate(given)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        raise ConfigError(f"{flag_name(field) if field else 'serving flags'}: {err['msg']}"
                          ) from None


def _run(args: argparse.Namespace) -> int:
    from moesim.planning.deployment import plan_deployment

    _check_slos(args)
    _check_inventory(args.gpus_available)
    _check_inputs(args)
    quiet = args.quiet or args.json == "-"
    result = plan_deployment(
        args.model,
        args.gpus_available,
        slo_tpot_s=args.slo_tpot_ms / 1e3,
        slo_ttft_s=None if args.slo_ttft_ms is None else args.slo_ttft_ms / 1e3,
        context=args.context,
        users=args.users,
        trace=args.trace,
        fidelity=args.fidelity,
        objective=args.objective,
        serve_spec=_serve_spec(args),
        percentile=args.percentile,
        engine={name: getattr(args, name) for name in ENGINE_FIELDS
                if getattr(args, name, None) is not None},
        progress=None if quiet else lambda line: print(line, file=sys.stderr, flush=True),
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


def _check_slos(args: argparse.Namespace) -> None:
    """The SLO targets must be finite positive milliseconds (NaN would meet or miss every
    target silently, infinity would make every candidate meet it)."""
    for flag in ("--slo-tpot-ms", "--slo-ttft-ms"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag} must be positive and finite (milliseconds), got {value}")


# GPUs of one kind at hand: plan tries every replica count of every preset they fill (one
# candidate set per count), so the count bounds its work: 4096 H100s are ~10k candidates and
# ~2 minutes (measured, analytic); 10**9 would list 10**8 replica counts and never finish.
MAX_GPUS_AVAILABLE = 4096


def _check_inventory(text: str) -> None:
    """Refuse a count in --gpus-available above MAX_GPUS_AVAILABLE, before it is parsed into
    candidates (a 10**9 count would list ~10**8 replica counts)."""
    for count in re.findall(r"(?:^|,)\s*(\d+)\s*[xX]", text):
        if len(count) > 9 or int(count) > MAX_GPUS_AVAILABLE:
            shown = count if len(count) <= 12 else f"{count[:6]}... ({len(count)} digits)"
            raise ConfigError(f"--gpus-available: {shown} GPUs of one kind, above the "
                              f"{MAX_GPUS_AVAILABLE:,} plan considers (it tries every replica "
                              "count); give the GPUs you could deploy on, e.g. 64xH100")


def _check_inputs(args: argparse.Namespace) -> None:
    """The model and trace every candidate runs must load (else each candidate would only be
    listed as infeasible, with exit 1 and no error)."""
    from moesim.inputs.model_files import load_model
    from moesim.trace.bundled import named_trace

    load_model(args.model)
    if args.trace:
        named_trace(args.trace)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_plan_table(result, top: int = 15) -> str:  # type: ignore[no-untyped-def]
    """Human table of a PlanResult: the winner first, then runners-up with why they lost."""
    q = result.query
    serving = q.get("serving")
    who = (f"{q['users']} users" if q["users"] is not None
           else f"{serving['workload']['rate']:g} requests/s")
    slo = f"TPOT SLO {q['slo_tpot_s'] * 1e3:g} ms"
    if serving:
        w = serving["workload"]
        slo = (f"served {w['isl']}-token prompts, {w['osl']} "
               f"outputs; {serving['percentile']} " + (
                   f"TTFT SLO {q['slo_ttft_s'] * 1e3:g} ms, " if q.get("slo_ttft_s") else "")
               + slo)
    head = f"plan: {q['model']} for {who} at {q['context']} tokens, {slo}, cheapest by " \
        f"{q['objective']}"
    if result.chosen is None:
        head += "\nno candidate meets the SLO and fits; closest below"
    rows = result.candidates[:top] if top else result.candidates
    # the deployment column fits the longest label shown (`1x l40s-8x-pcie (4 GPUs) EP4`)
    width = max([len("deployment"), 34, *(len(c.label) for c in rows)])
    ttft = f"{'TTFT ms':>9} " if serving else ""
    lines = [
        head,
        f"{'#':>3} {'deployment':<{width}} {'GPUs':>4} {'batch':>5} {ttft}{'TPOT ms':>8} "
        f"{'tok/s':>8} {'$/h':>7} {'$/M tok':>8}  verdict",
    ]
    for i, c in enumerate(rows, 1):
        verdict = c.verdict or "CHOSEN: cheapest that meets the SLO"
        tpot_ms = None if c.tpot_s is None else c.tpot_s * 1e3
        ttft_ms = None if c.ttft_s is None else c.ttft_s * 1e3
        batch = str(c.batch_per_replica) if c.batch_per_replica else "-"
        ttft = f"{_num(ttft_ms, '.1f'):>9} " if serving else ""
        lines.append(
            f"{i:>3} {c.label:<{width}} {c.gpus:>4} {batch:>5} {ttft}{_num(tpot_ms, '.2f'):>8} "
            f"{_num(c.tokens_per_s, '.0f'):>8} {_num(c.usd_per_hour, '.2f'):>7} "
            f"{_num(c.usd_per_million_tokens, '.3f'):>8}  {verdict}"
        )
    if len(rows) < len(result.candidates):
        lines.append(f"... {len(result.candidates) - len(rows)} more (--top 0 or --json)")
    # what a reader must see with the figures: uncalibrated presets, GPUs planned on a subset
    lines += [f"note: {note}" for note in getattr(result, "notes", None) or []]
    return "\n".join(lines)
