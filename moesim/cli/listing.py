"""`moesim list [models|topologies|traces|kernels] [--json]`: what ships inside the package.

One line per item, by the name the other commands take: model presets (`--model`), topology
presets (`--topology`) with their GPUs and whether their costs are calibrated on published
measurements (`moesim.planning.deployment.topology_calibration`), bundled router traces
(`--trace NAME` or `bundled:NAME`) with their size, and kernel profiles (`--kernels`) with the
GPUs they hold tables for.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from moesim.cli.commands import command_help

__all__ = ["add_parser", "KINDS", "list_items", "format_items"]

KINDS = ("models", "topologies", "traces", "kernels")


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim list`."""
    parser = commands.add_parser(
        "list",
        help=command_help("list"),
        description="Print what ships with moesim, one line each, by the name other commands "
        "take: model presets (--model), topology presets (--topology: GPUs, calibrated or "
        "not), bundled router traces (--trace NAME or bundled:NAME) and kernel profiles "
        "(--kernels). With no KIND, all four.",
    )
    parser.add_argument("kind", nargs="?", choices=KINDS, metavar="KIND",
                        help=f"one of {', '.join(KINDS)} (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    parser.set_defaults(handler=_run)


def _models() -> list[dict[str, Any]]:
    from moesim.inputs.models import PRESETS

    out = []
    for name, spec in PRESETS.items():
        out.append({
            "name": name.lower(),
            "model": spec.name,
            "total_params": spec.total_params,
            "active_params": spec.active_params,
            "layers": spec.num_layers,
            "moe_layers": spec.num_moe_layers,
            "experts": spec.num_experts,
            "top_k": spec.top_k,
            "summary": f"{spec.name}: {spec.total_params / 1e9:.1f}B params "
            f"({spec.active_params / 1e9:.1f}B active), {spec.num_moe_layers} MoE layers of "
            f"{spec.num_experts} experts, top-{spec.top_k}",
        })
    return out


def _topologies() -> list[dict[str, Any]]:
    from moesim.inputs.topology import list_presets, load_topology
    from moesim.planning.deployment import topology_calibration

    out = []
    for name in list_presets():
        topology = load_topology(name)
        spec = topology.spec
        calibration = topology_calibration(spec.name, spec.sources)
        servers = f" in {spec.nodes} servers" if spec.nodes > 1 else ""
        price = spec.gpu_price_per_hour_usd
        priced = "" if price is None else f", ${price:g}/GPU-hour"
        out.append({
            "name": name,
            "gpus": topology.num_gpus,
            "gpu": spec.gpu_spec.name,
            "gpu_price_per_hour_usd": spec.gpu_price_per_hour_usd,
            "calibrated": calibration is not None,
            "calibration": calibration,
            "summary": f"{topology.num_gpus}x {spec.gpu_spec.name}{servers}{priced}; "
            + (f"calibrated: {calibration}" if calibration else "NOT calibrated on "
               "measurements (nominal bandwidths, first-guess efficiencies)"),
        })
    return out


def _traces() -> list[dict[str, Any]]:
    from moesim.cli.trace import resolve_num_experts
    from moesim.trace.bundled import BUNDLED_PREFIX, BUNDLED_TRACES, load_bundled_trace

    out = []
    for name, description in BUNDLED_TRACES.items():
        trace = load_bundled_trace(name)
        experts = resolve_num_experts(trace, None)[0]
        out.append({
            "name": name,
            "spec": f"{BUNDLED_PREFIX}{name}",
            "tokens": trace.num_tokens,
            "layers": trace.num_layers,
            "experts": experts,
            "top_k": trace.top_k,
            "model": trace.metadata.get("model", ""),
            "summary": f"{trace.num_tokens} tokens x {trace.num_layers} layers, top-"
            f"{trace.top_k} of {experts} experts; {description.split(':')[0]}",
        })
    return out


def _kernels() -> list[dict[str, Any]]:
    from moesim.inputs.kernel_profile import list_kernel_profiles, load_kernel_profile

    out = []
    for name in list_kernel_profiles():
        profile = load_kernel_profile(name)
        gpus = list(profile.gpus)
        out.append({
            "name": name,
            "gpus": gpus,
            "description": profile.description,
            "summary": f"GPUs {', '.join(gpus) or 'none'}; {profile.description}",
        })
    return out


_LISTERS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "models": _models, "topologies": _topologies, "traces": _traces, "kernels": _kernels,
}


def list_items(kind: str) -> list[dict[str, Any]]:
    """The bundled items of `kind` (one of KINDS), each with `name` and a one-line `summary`."""
    return _LISTERS[kind]()


def format_items(kind: str, items: list[dict[str, Any]]) -> str:
    """`kind:` then one `  NAME  summary` line per item, names aligned."""
    width = max((len(item["name"]) for item in items), default=0)
    return "\n".join([f"{kind}:", *(f"  {item['name']:<{width}}  {item['summary']}"
                                    for item in items)])


def _run(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(KINDS)
    listed = {kind: list_items(kind) for kind in kinds}
    if args.json:
        data: Any = listed[args.kind] if args.kind else listed
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
        return 0
    print("\n\n".join(format_items(kind, items) for kind, items in listed.items()))
    return 0
