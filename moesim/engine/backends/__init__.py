"""Backends: one interface that executes a step plan on a topology, two implementations.

`execute(plan, topology, fidelity)` runs a `StepPlan` and returns its `StepTimeline`:
- `analytic` (`moesim.engine.backends.analytic`): congestion-unaware closed forms. A compute
  operation takes its seconds; an exchange or collective starts when every rank taking part is
  ready (a barrier over its ranks) and ends for a rank after the bottleneck-link bound of its
  sends and receives (exchanges) or the algorithm's closed form (collectives). No simpy: for
  sweeps of thousands of points.
- `des` (`moesim.engine.backends.des`): discrete events (simpy) with max-min fair flows. An
  exchange starts each rank's sends when that rank is ready and ends for it when its sends and
  receives are done, so a rank waiting on a straggler's combine (a hot expert) waits in the
  combine; a collective's group starts when its last member is ready; flows share links.
Both honour the plan's dependencies and run each rank's two streams (compute, comm) side by
side, so an exchange beside an independent compute costs the longer of the two; on
uncontended, balanced steps they agree (tested).
"""

from __future__ import annotations

from typing import Protocol

from moesim.engine.network import Routing
from moesim.engine.plan import StepPlan
from moesim.engine.routes import RouteTable, build_route_table
from moesim.engine.timeline import StepTimeline
from moesim.inputs.options import Fidelity

__all__ = ["Backend", "BACKENDS", "backend", "execute"]


class Backend(Protocol):
    """Runs a step plan on a topology."""

    name: str

    def execute(self, plan: StepPlan, topo: Routing, routes: RouteTable,
                launch_s: float | None = None) -> StepTimeline:
        """The plan's timeline: every operation's start and end on every rank."""
        ...


def backend(fidelity: Fidelity) -> Backend:
    """The backend of a fidelity (`des` or `analytic`)."""
    if fidelity == "analytic":
        from moesim.engine.backends.analytic import AnalyticBackend

        return AnalyticBackend()
    if fidelity == "des":
        from moesim.engine.backends.des import DesBackend

        return DesBackend()
    raise ValueError(f"fidelity must be one of {BACKENDS}, got {fidelity!r}")


BACKENDS: tuple[str, ...] = ("des", "analytic")


def execute(
    plan: StepPlan,
    topo: Routing,
    fidelity: Fidelity = "des",
    *,
    routes: RouteTable | None = None,
    launch_s: float | None = None,
) -> StepTimeline:
    """Run `plan` on `topo` at `fidelity`; each collective's launch from its protocol on the
    topology (`moesim.engine.protocols`) unless `launch_s` overrides every one."""
    runner = backend(fidelity)
    return runner.execute(plan, topo, routes or build_route_table(topo, plan.world), launch_s)
