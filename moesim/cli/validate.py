"""`moesim validate live|compare`: run the predicted traffic live, then hold it against moesim.

`live` needs torch (`pip install 'moesim[live]'`) and writes a measurement JSON; `compare`
needs no torch: it recomputes the simulator's bytes for the measurement's recorded inputs
(exit 1 when any layer, rank or phase differs), predicts the run's times on a topology
(`validate.predict`) and shows predicted vs measured per layer and phase with the errors.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import TYPE_CHECKING, Any

from moesim.cli.commands import command_help
from moesim.cli.flags import ENGINE_FIELDS, add_scenario_flags, scenario_from_args
from moesim.cli.numbers import (
    MAX_NPROC,
    MAX_REPEATS,
    MAX_TIMEOUT_S,
    float_in,
    int_in,
    parse_scale,
    positive_int,
)
from moesim.errors import ConfigError
from validate.compare import compare_summary

if TYPE_CHECKING:
    pass

__all__ = ["add_parser", "parse_scale", "compare_summary", "MAX_NPROC", "MAX_REPEATS",
           "MAX_TIMEOUT_S"]

# Scenario fields `validate live` takes as flags, as `moesim run` does (moesim.cli.flags): EPLB
# placements run live; an all-to-all other than direct, TBO and MTP are refused.
# The MoE-engine flags live runs take: all but the served-only ones (one list: flags.py)
_ENGINE_FIELDS = tuple(f for f in ENGINE_FIELDS if f not in ("rebalance_steps", "mtp_acceptance"))
_REFUSED = {"a2a": "direct", "overlap": "none", "mtp": "0",
            "dispatch_dtype": "--act-dtype's dtype"}

def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim validate live` and `moesim validate compare`."""
    parser = commands.add_parser(
        "validate", help=command_help("validate"),
        description="Live validation: execute the exact traffic moesim predicts and compare.",
    )
    sub = parser.add_subparsers(dest="validate_command", metavar="SUBCOMMAND", required=True)
    _add_live(sub)
    _add_compare(sub)
    _add_suite(sub)


def _add_live(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Flags of `moesim validate live`."""
    live = sub.add_parser(
        "live", help="spawn ranks on this host and run the trace's traffic per layer",
        description="Spawn one process per rank on this host (loopback only) and run each MoE "
        "layer's dispatch, expert GEMMs, combine and TP/SP collectives with the simulator's "
        "exact sizes; write the measured bytes and times per layer, rank and phase.",
    )
    live.add_argument("--model", default="mixtral-8x7b", help="preset name or model file")
    live.add_argument("--trace", default="bundled:mixtral8x7b_humaneval_decode",
                      help="trace .npz or bundled:NAME")
    live.add_argument("--placement", required=True, help="EP4, EP2xDP2, TP4, SP4, TP2xEP2, ...")
    live.add_argument("--backend", choices=["gloo", "nccl"], default="gloo",
                      help="gloo: CPU processes; nccl: one GPU per rank")
    live.add_argument("--nproc", type=int_in(1, MAX_NPROC),
                      help="ranks (must equal the placement's world)")
    live.add_argument("--scale", type=parse_scale,
                      help="width scale of hidden/ffn/head sizes, e.g. 1/32 "
                      "(default: 1/32 on gloo, 1 on nccl)")
    live.add_argument("--layers", type=positive_int,
                      help="run the first N MoE layers (default: all)")
    live.add_argument("--tokens", type=positive_int,
                      help="run the first N trace tokens (default: all)")
    live.add_argument("--warmup", type=int_in(0, MAX_REPEATS), default=1,
                      help="untimed passes first")
    live.add_argument("--repeats", type=int_in(1, MAX_REPEATS), default=20,
                      help="timed passes (each rank's mean, median and min are recorded; on a "
                      "CPU host with fewer cores than ranks use 100 for timing comparisons)")
    live.add_argument("--barrier", choices=["step", "layer"], default="step",
                      help="synchronise the ranks once per pass over the layers (default: "
                      "layers back to back, as served) or before every layer")
    live.add_argument("--expert-placement", dest="expert_placement", metavar="FILE",
                      help="YAML/JSON of the experts each EP rank holds (replicas allowed), as "
                      "`moesim run --expert-placement`; default: contiguous")
    add_scenario_flags(live, _ENGINE_FIELDS)
    for action in live._actions:  # say in the help which values the harness refuses
        if action.dest in _REFUSED:
            action.help = f"{action.help}. Live: only {_REFUSED[action.dest]}; others are refused"
    live.add_argument("--dedup", choices=["none", "gpu"], default="none")
    live.add_argument("--act-dtype", dest="act_dtype", choices=["fp32", "bf16", "fp16"],
                      default="bf16")
    live.add_argument("--phase", choices=["prefill", "decode"], default="prefill",
                      help="sets the SP exchange (K/V blocks or queries and partial outputs)")
    live.add_argument("--sp-variant", dest="sp_variant", choices=["ring", "allgather"],
                      default="ring")
    live.add_argument("--timeout-s", dest="timeout_s", default=300.0,
                      type=float_in(0.0, MAX_TIMEOUT_S, low_open=True),
                      help="limit for the whole run and for each collective")
    live.add_argument("--inject-failure", dest="inject_failure", metavar="RANK[:hang]",
                      help="testing the harness: make RANK raise (or hang) after joining")
    live.add_argument("-o", "--output", required=True, help="measurement JSON to write")
    live.set_defaults(handler=_live)


def _add_compare(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Flags of `moesim validate compare`."""
    compare = sub.add_parser(
        "compare", help="measured vs predicted bytes (and times) per layer",
        description="Recompute the simulator's traffic for a measurement's recorded inputs and "
        "compare every layer, rank and phase; exit 1 when bytes differ.",
    )
    compare.add_argument("measurement", help="measurement JSON from `moesim validate live`")
    compare.add_argument("--topology",
                         help="topology for time predictions: preset or YAML, e.g. the output "
                         "of `moesim calibrate live` (default: cpu-loopback, resized)")
    compare.add_argument("--fidelity", choices=["des", "analytic"], default="des")
    compare.add_argument(
        "--statistic", choices=["median", "min", "mean"], default="mean",
        help="measured time per rank over repeats: mean (default; a CPU host with fewer cores "
        "than ranks spreads one collective over 0.3-10 ms and the mean of that converges "
        "where the median jumps between modes), median, or min (the uncontended cost)",
    )
    compare.add_argument("--plot", metavar="DIR",
                         help="write pred_vs_measured.png and per_layer.png to DIR")
    compare.add_argument("--json", metavar="OUT", help="write the comparison JSON ('-': stdout)")
    compare.set_defaults(handler=_compare)


def _add_suite(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Flags of `moesim validate suite`."""
    suite = sub.add_parser(
        "suite", help="calibrate, run a matrix of live layouts and sizes, report the errors",
        description="Calibrate this host (`moesim calibrate live`) or take --topology, then run "
        "the harness over EP, EP+DP, TP, SP and TP x EP layouts, decode- and prefill-sized "
        "token counts and (on CPUs) two widths, decode also at 1/8, on traces the calibration "
        "did not use; write "
        "the error table per configuration, plots and an HTML page to DIR. Exit 1 when any "
        "run's bytes differ from the prediction.")
    suite.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    suite.add_argument("--nproc", type=int_in(1, MAX_NPROC), default=None,
                       help="ranks of every run (default: this host's cores, 4 to 8, on gloo "
                       "(EP+DP and TP x EP need 4); the GPUs on nccl; 1: the one-rank form, "
                       "EP1's expert GEMMs only)")
    suite.add_argument("--quick", action="store_true",
                       help="a shorter calibration and matrix (minutes on a 2-core host)")
    suite.add_argument("--topology", metavar="CAL.yaml",
                       help="a topology already calibrated on this host (skips calibration)")
    suite.add_argument("--base", metavar="TOPOLOGY",
                       help="base topology the calibration fits (default: cpu-loopback on "
                       "gloo; required on nccl, e.g. dgx-h100)")
    suite.add_argument("--layers", type=int_in(1, 1024), default=None,
                       help="MoE layers per run (default 4; quick 3)")
    suite.add_argument("--repeats", type=int_in(1, MAX_REPEATS), default=None,
                       help="timed passes per run (default 40; quick 25)")
    suite.add_argument("--timeout-s", dest="timeout_s", default=300.0,
                       type=float_in(0.0, MAX_TIMEOUT_S, low_open=True),
                       help="limit of each run and of the calibration; a run predicted to "
                       "take longer is not started (default 300)")
    suite.add_argument("-o", "--output", required=True, metavar="DIR",
                       help="folder for suite.json, suite.md, plots, index.html and the runs")
    suite.set_defaults(handler=_suite)


def _parse_injection(text: str | None) -> tuple[int, str] | None:
    """`RANK` or `RANK:hang` -> (rank, mode)."""
    if text is None:
        return None
    rank, _, mode = text.partition(":")
    if not rank.isdigit() or mode not in ("", "raise", "hang"):
        raise ConfigError(f"--inject-failure {text!r}: write RANK, RANK:raise or RANK:hang")
    return int(rank), mode or "raise"


def _live(args: argparse.Namespace) -> int:
    """Handler of `moesim validate live`."""
    from validate.measurement import check_replayable

    scenario = scenario_from_args(args)  # the flags a Scenario also has, held to its limits
    injection = _parse_injection(args.inject_failure)
    if injection is not None:
        from moesim.planning.resolve import parse_layout

        world = parse_layout(scenario.placement).world
        if injection[0] >= world:
            raise ConfigError(f"--inject-failure {args.inject_failure}: rank {injection[0]} is "
                              f"not one of placement {args.placement}'s ranks 0..{world - 1}")
    engine = {name: getattr(args, name) for name in _ENGINE_FIELDS
              if getattr(args, name) is not None}
    check_replayable(**{k: v for k, v in engine.items() if k in ("a2a", "overlap", "mtp",
                                                                  "dispatch_dtype")},
                     act_dtype=args.act_dtype)
    if importlib.util.find_spec("torch") is None:
        raise ConfigError("`moesim validate live` needs torch: pip install 'moesim[live]'")
    from moesim.cli.run import write_json
    from validate.launch import run_live

    scale = args.scale if args.scale is not None else (1.0 if args.backend == "nccl" else 1 / 32)
    measurement = run_live(
        model=args.model, trace=args.trace, placement=args.placement, backend=args.backend,
        scale=scale, layers=args.layers, tokens=args.tokens, act_dtype=args.act_dtype,
        dedup=args.dedup, phase=args.phase, sp_variant=args.sp_variant, warmup=args.warmup,
        repeats=args.repeats, timeout_s=args.timeout_s, nproc=args.nproc, barrier=args.barrier,
        inject_failure=injection,
        expert_placement=args.expert_placement, **engine,
    )
    write_json(measurement, args.output)
    totals = measurement["totals"]
    print(f"{measurement['inputs']['world']} ranks, {measurement['inputs']['layers']} layers: "
          f"step {measurement['step_time_s'] * 1e3:.3f} ms, a2a {totals['a2a_bytes']} B, "
          f"local {totals['local_bytes']} B, wall {measurement['wall_s']:.1f} s; "
          f"wrote {args.output}")
    return 0


def _suite(args: argparse.Namespace) -> int:
    """Handler of `moesim validate suite`."""
    from pathlib import Path

    if importlib.util.find_spec("torch") is None:
        raise ConfigError("`moesim validate suite` needs torch: pip install 'moesim[live]'")
    from validate.suite import run_suite_command

    return run_suite_command(args, Path(args.output))


def _compare(args: argparse.Namespace) -> int:
    """Handler of `moesim validate compare`."""
    from moesim.cli.run import write_json
    from validate.measurement import load_measurement

    summary = compare_summary(
        load_measurement(args.measurement), args.topology, args.fidelity, args.statistic
    )
    if args.json != "-":
        print(_format_compare(summary))
        note = _calibration_note(summary["topology"])
        if note:
            print(f"note: {note}")
    if args.plot:
        from validate.predict import plot_comparison

        title = f"{args.measurement} on {summary['topology']}"
        paths = plot_comparison({"per_layer": summary["per_layer"]}, args.plot, title)
        if args.json != "-":
            print(f"wrote {', '.join(paths)}")
    if args.json:
        write_json(summary, args.json)
    return 0 if summary["bytes_match"] else 1


def _calibration_note(topology: str) -> str | None:
    """Say so when the times were predicted on a topology not calibrated on measurements."""
    from moesim.inputs.topology import load_topology
    from moesim.planning.deployment import topology_calibration

    spec = load_topology(topology).spec
    if topology_calibration(spec.name, spec.sources) is not None:
        return None
    return (f"topology {topology} is not calibrated on measurements, so the predicted times use "
            "its stated defaults; calibrate it on this machine first (`moesim calibrate live "
            "-o CAL.yaml`) and pass --topology CAL.yaml")


def _format_compare(summary: dict[str, Any]) -> str:
    """Human table: bytes per layer measured / predicted, then the verdict."""
    lines = [f"{'layer':>5} {'a2a meas':>11} {'a2a pred':>11} {'local meas':>11} "
             f"{'local pred':>11} {'tp/sp meas':>11} {'tp/sp pred':>11} {'time ms':>9}  match"]
    for row in summary["per_layer"]:
        m, p = row["measured"], row["predicted"]
        lines.append(
            f"{row['layer']:>5} {m['a2a_bytes']:>11} {p['a2a_bytes']:>11} {m['local_bytes']:>11} "
            f"{p['local_bytes']:>11} {m['other_comm_bytes']:>11} {p['other_comm_bytes']:>11} "
            f"{row['measured_time_s'] * 1e3:>9.3f}  {'yes' if row['bytes_match'] else 'NO'}"
        )
    for mismatch in summary["mismatches"][:20]:
        lines.append("mismatch: layer {layer} rank {rank} {phase} {field}: measured {measured}, "
                     "predicted {predicted}".format(**mismatch))
    if len(summary["mismatches"]) > 20:
        lines.append(f"... {len(summary['mismatches']) - 20} more mismatches")
    lines.append(f"bytes_match: {str(summary['bytes_match']).lower()}")
    lines += _format_times(summary)
    return "\n".join(lines)


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _format_times(summary: dict[str, Any]) -> list[str]:
    """Human table: per layer and active phase, measured / predicted ms (slowest rank)."""
    rows = summary["per_layer"]
    phases = list(rows[0]["measured_s"]) if rows else []
    lines = [f"times on {summary['topology']}: measured/predicted ms, slowest rank per phase",
             f"{'layer':>5} " + " ".join(f"{p[:13]:>15}" for p in phases)
             + f" {'layer':>15} {'error':>7}"]
    for row in rows:
        cells = [f"{row['measured_s'][p] * 1e3:7.3f}/{row['predicted_s'][p] * 1e3:<7.3f}"
                 for p in phases]
        error = 100 * (row["layer_predicted_s"] / row["layer_measured_s"] - 1)
        layer = f"{row['layer_measured_s'] * 1e3:7.3f}/{row['layer_predicted_s'] * 1e3:<7.3f}"
        lines.append(f"{row['layer']:>5} " + " ".join(f"{c:>15}" for c in cells)
                     + f" {layer:>15} {error:+6.1f}%")
    local = summary["local_only_phases"]
    lines.append("MAPE per phase: " + ", ".join(
        f"{p} {'local copy' if p in local else _fmt_pct(v)}"
        for p, v in summary["phase_mape"].items()))
    a2a = _fmt_pct(summary["a2a_mape"])
    if summary["a2a_mape"] is None and "dispatch" in local:
        a2a = "n/a (no all-to-all: every token's experts are on its own rank)"
    lines.append(f"a2a_mape (dispatch+combine): {a2a}, layer_mape: "
                 f"{_fmt_pct(summary['layer_mape'])}, overall: {_fmt_pct(summary['overall_mape'])}")
    return lines
