"""Simulator speed and memory: one step of Mixtral-8x7B on 8 GPUs and DeepSeek-V3 on 64/256.

Prints, per case: fidelity, tokens, flows, wall seconds (preparation: workload, traffic, costs
and plan; route table; step), flows per second, simulated step time, and the process's peak
resident memory so far (ru_maxrss). Each case runs `--repeat` times and the fastest is printed
(the least disturbed by whatever else the host runs). Targets (issue 16): the 64-GPU DES step
under 2 s, 256 GPUs under 30 s with the DES and under 2 s analytic, memory under 2 GB, cost
growing no faster than flows x log(flows). Route tables are kept per topology, so repeats
after the first report route_s ~0 (benchmarks/suite.py runs each case in a fresh process).

    python benchmarks/bench_step.py [--skip-large] [--des-large] [--repeat N]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from moesim.engine.backends import execute
from moesim.engine.cost import step_costs
from moesim.engine.plan import build_step_plan
from moesim.engine.routes import build_route_table
from moesim.inputs.config import load_model_file
from moesim.inputs.models import get_model
from moesim.inputs.topology import build_topology, load_topology, resolve_topology_path
from moesim.inputs.topology_spec import TopologySpec
from moesim.trace.format import RouterTrace
from moesim.traffic.placement import parse_placement
from moesim.traffic.traffic import compute_traffic
from moesim.traffic.workload import build_step


def random_trace(layers: int, tokens: int, experts: int, k: int, seed: int = 0) -> RouterTrace:
    """Uniform top-k routing (the benchmark measures the simulator, not the routing)."""
    rng = np.random.default_rng(seed)
    choice = np.argsort(rng.random((layers, tokens, experts), dtype=np.float32), axis=2)[:, :, :k]
    return RouterTrace(experts=choice, seq_id=np.zeros(tokens), pos=np.arange(tokens))


def multinode(nodes: int):  # type: ignore[no-untyped-def]
    """The h100-2node-ib preset widened to `nodes` DGX H100 servers on 8 rails."""
    spec = load_model_file(TopologySpec, resolve_topology_path("h100-2node-ib"), "topology")
    return build_topology(spec.model_copy(update={"nodes": nodes}), source=f"{nodes}x DGX H100")


def timed_step(model, topo, par, trace, phase: str, batch: int, context: int,  # type: ignore[no-untyped-def]
               fidelity: str):
    """One step: workload, traffic, costs and plan; route table; execution. Returns the
    traffic, the timeline, the seconds of those three parts and the flow parts sent."""
    start = time.perf_counter()
    step = build_step(trace, phase, batch, context)
    traffic = compute_traffic(
        step.trace, model, par, phase=phase, gpus_per_node=min(topo.gpus_per_node, par.world)
    )
    plan = build_step_plan(traffic, step_costs(step, traffic, model, topo.gpu_spec),
                           model.first_dense_layers)
    prepared = time.perf_counter()
    routes = build_route_table(topo, par.world)
    routed = time.perf_counter()
    timeline = execute(plan, topo, fidelity, routes=routes)
    done = time.perf_counter()
    flows = 2 * int((traffic.dispatch_bytes > 0).sum()
                    - (np.einsum("lii->li", traffic.dispatch_bytes) > 0).sum())
    return traffic, timeline, (prepared - start, routed - prepared, done - routed), flows


def case(
    label: str,
    model_name: str,
    topo,
    placement: str,
    phase: str,
    batch: int,  # type: ignore[no-untyped-def]
    context: int,
    fidelity: str,
    repeat: int = 1,
) -> None:
    model = get_model(model_name)
    par = parse_placement(placement)
    tokens = batch * context if phase == "prefill" else batch
    trace = random_trace(model.num_moe_layers, tokens, model.num_experts, model.top_k)
    best = [float("inf")] * 3
    for _ in range(repeat):
        _, timeline, times, flows = timed_step(model, topo, par, trace, phase, batch, context,
                                               fidelity)
        best = [min(a, b) for a, b in zip(best, times, strict=True)]
    prep_s, route_s, sim_s = best
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(
        f"{label:<34} {fidelity:>8} {tokens:>7} {flows:>9} "
        f"{prep_s:>8.3f} {route_s:>7.3f} {sim_s:>8.3f} {prep_s + route_s + sim_s:>8.3f} "
        f"{flows / sim_s:>10.0f} {timeline.step_s * 1e3:>9.3f} {peak / 2**20:>10.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-large", action="store_true", help="only the 8-GPU cases")
    parser.add_argument("--des-large", action="store_true", help="also DES for 64 GPUs (slow)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per small case (fastest "
                        "printed); large cases run once")
    args = parser.parse_args()
    print(
        f"{'case':<34} {'fidelity':>8} {'tokens':>7} {'flows':>9} {'prep_s':>8} {'route_s':>7} "
        f"{'sim_s':>8} {'total_s':>8} {'flows/s':>10} {'step_ms':>9} {'maxrss_MiB':>10}"
    )
    dgx = load_topology("dgx-h100")
    for fidelity in ("des", "analytic"):
        case(
            "Mixtral-8x7B EP8 prefill 16k tok",
            "mixtral-8x7b",
            dgx,
            "EP8",
            "prefill",
            8,
            2048,
            fidelity,
            args.repeat,
        )
        case(
            "Mixtral-8x7B EP8 decode 256 seq",
            "mixtral-8x7b",
            dgx,
            "EP8",
            "decode",
            256,
            4096,
            fidelity,
            args.repeat,
        )
    if args.skip_large:
        return
    for nodes, batch in ((8, 2048), (32, 8192)):
        topo = multinode(nodes)
        world = nodes * 8
        fidelities = ("analytic", "des") if (args.des_large and nodes == 8) else ("analytic",)
        for fidelity in fidelities:
            case(
                f"DeepSeek-V3 EP{world} decode {batch} seq",
                "deepseek-v3",
                topo,
                f"EP{world}",
                "decode",
                batch,
                4096,
                fidelity,
            )


if __name__ == "__main__":
    main()
