"""Speed of the flow-level network: flows/s and rate updates (events)/s.

Three workloads on N GPUs behind one switch (100e9 B/s ports, 1e-6 s per hop):
uniform all-to-all (N(N-1) flows that all end together: one water-filling over every
flow), skewed all-to-all (random per-pair sizes: flows end one by one, so the rates are
recomputed about once per flow; also with a 1 us completion quantum), and a ring all-reduce
(2(N-1) steps). "events/s" counts rate updates (one water-filling each).

Run: python benchmarks/bench_network.py [--gpus 32 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import networkx as nx
import numpy as np
import simpy

from moesim.engine.collectives import CollectiveRun, allreduce, alltoall
from moesim.engine.network import Edge, FlowNetwork

PORT_BYTES_PER_S = 100e9
HOP_LATENCY_S = 1e-6


class SwitchTopology:
    """N GPUs `gpu{i}` on one switch `sw`: the routing surface the collectives need."""

    def __init__(self, num_gpus: int) -> None:
        self.graph = nx.DiGraph()
        for i in range(num_gpus):
            for edge in ((f"gpu{i}", "sw"), ("sw", f"gpu{i}")):
                self.graph.add_edge(*edge, bandwidth_bytes_per_s=PORT_BYTES_PER_S,
                                    latency_s=HOP_LATENCY_S)

    def routes(self, src_rank: int, dst_rank: int) -> list[list[Edge]]:
        """The one two-hop route through the switch."""
        if src_rank == dst_rank:
            return [[]]
        return [[(f"gpu{src_rank}", "sw"), ("sw", f"gpu{dst_rank}")]]


Start = Callable[[FlowNetwork, SwitchTopology, range], CollectiveRun]


def _measure(label: str, num_gpus: int, start: Start, quantum_s: float = 0.0) -> None:
    topo = SwitchTopology(num_gpus)
    env = simpy.Environment()
    net = FlowNetwork(env, topo.graph, time_quantum_s=quantum_s)
    t0 = time.perf_counter()
    run = start(net, topo, range(num_gpus))
    env.run(until=run.done)
    wall_s = time.perf_counter() - t0
    print(f"{label:<22} N={num_gpus:<4} flows={net.num_flows_started:>7} "
          f"rate_updates={net.num_rate_updates:>6} wall={wall_s * 1e3:8.1f} ms  "
          f"{net.num_flows_started / wall_s:>10,.0f} flows/s  "
          f"{net.num_rate_updates / wall_s:>8,.0f} events/s  "
          f"sim_time={run.result().time_s * 1e6:.1f} us")


def main() -> None:
    """Run the three workloads for each GPU count and print throughput."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for n in args.gpus:
        uniform = np.full((n, n), 1e6)
        skewed = rng.lognormal(mean=13.0, sigma=1.0, size=(n, n))
        _measure("alltoall uniform", n, lambda net, t, r, m=uniform: alltoall(net, t, r, m))
        _measure("alltoall skewed", n, lambda net, t, r, m=skewed: alltoall(net, t, r, m))
        _measure("alltoall skewed q=1us", n, lambda net, t, r, m=skewed: alltoall(net, t, r, m),
                 quantum_s=1e-6)
        _measure("ring allreduce", n, lambda net, t, r: allreduce(net, t, r, 1e8))


if __name__ == "__main__":
    main()
