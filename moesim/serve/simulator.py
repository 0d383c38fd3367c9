"""The serving simulation: engines run iterations back to back while they have work.

An `Engine` is one model replica: one scheduler per attention group (attention DP runs a
scheduler per DP rank, behind a load balancer: `round_robin` or `least_loaded`), and a step
timer that evaluates an iteration from the batches of all its schedulers. The groups step
together: an iteration ends when the slowest group's part of the shared MoE exchange does, so
the imbalance DP attention creates shows in every request's latency; a group with nothing to
run joins with an empty batch.

Events, in time order: a request arrives (it is queued at an engine and waits for the next
iteration to start); an engine's iteration ends (its requests advance, tokens are produced,
finished requests leave; in a closed loop the client sends its next request at once); an
idle engine with work starts its next iteration at once. With prefill/decode disaggregation a
request goes to a prefill engine, leaves it with its first token, its KV cache crosses the
topology to a decode engine (`transfer_s`; the prefill engine keeps the blocks until then), and
joins that engine's queue when it arrives; its first token reaches the client at that moment
(as SGLang and Dynamo stream it from the decode side), so TTFT includes the transfer.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from moesim.errors import ConfigError
from moesim.serve.requests import Request
from moesim.serve.scheduler import Batch, Scheduler

__all__ = ["Engine", "IterationRecord", "ServeRun", "simulate"]

StepTimer = Callable[[Sequence[Batch]], float]
Role = Literal["both", "prefill", "decode"]


@dataclass
class Engine:
    """One model replica: its attention groups' schedulers and the timer of its iterations."""

    name: str
    role: Role
    schedulers: list[Scheduler]
    step_s: StepTimer
    balance: Literal["round_robin", "least_loaded"] = "round_robin"
    first_gpu: int = 0  # where its ranks start on the topology (rank r is GPU first_gpu + r)
    world: int = 1  # GPUs it runs on
    busy: bool = False
    batches: list[Batch] = field(default_factory=list)
    _next_group: int = 0
    _incoming: dict[int, int] = field(default_factory=dict)  # reserved, still in transfer

    @property
    def load(self) -> int:
        """Requests it holds or will hold (KV transfers on their way in)."""
        return sum(s.load for s in self.schedulers) + sum(self._incoming.values())

    def next_group(self) -> int:
        """The scheduler the balancing rule gives the next request."""
        if self.balance == "least_loaded":
            return min(range(len(self.schedulers)),
                       key=lambda g: (self.schedulers[g].load + self._incoming.get(g, 0), g))
        return self._next_group

    def _take_group(self) -> int:
        group = self.next_group()
        self._next_group = (group + 1) % len(self.schedulers)
        return group

    def assign(self, request: Request) -> None:
        """Queue a new request on the scheduler the balancing rule gives it."""
        request.group = self._take_group()
        self.schedulers[request.group].add(request)

    def reserve(self) -> int:
        """Choose the scheduler of a request arriving later (its KV cache in transfer) now,
        so that requests leaving prefill together spread over the groups."""
        group = self._take_group()
        self._incoming[group] = self._incoming.get(group, 0) + 1
        return group

    def receive(self, request: Request, group: int) -> None:
        """A reserved request has arrived: queue it on its scheduler."""
        self._incoming[group] -= 1
        request.group = group
        self.schedulers[group].add(request)


@dataclass(frozen=True)
class IterationRecord:
    """One iteration of one engine: when, how long, what it ran and held."""

    engine: str
    start_s: float
    duration_s: float
    tokens: int
    prefill_tokens: int
    running: int
    waiting: int
    kv_used_fraction: float
    preemptions: int = 0  # the engine's preemptions so far (scheduling this iteration included)


@dataclass
class ServeRun:
    """Everything a simulation produced: every request, every iteration, the preemptions."""

    requests: list[Request]
    iterations: list[IterationRecord]
    preemptions: int
    kv_peak_fraction: float


def simulate(
    engines: Sequence[Engine],
    arrivals: Sequence[Request],
    *,
    next_request: Callable[[Request, float], Request | None] | None = None,
    decode_engines: Sequence[Engine] = (),
    transfer_s: Callable[[Request, Engine, Engine, int], float] | None = None,
    max_iterations: int = 50_000_000,
) -> ServeRun:
    """Run `arrivals` (and in a closed loop what `next_request` sends when a request finishes)
    through `engines` until every request has finished (module doc). With `decode_engines`
    the engines are prefill engines and finished prefills move there after `transfer_s`."""
    events: list[tuple[float, int, str, object]] = []
    order = [0]

    def push(time_s: float, kind: str, what: object) -> None:
        order[0] += 1
        heapq.heappush(events, (time_s, order[0], kind, what))

    for request in arrivals:
        push(request.arrival_s, "arrive", request)
    everyone: list[Request] = list(arrivals)
    records: list[IterationRecord] = []
    rotation = deque(engines)  # new requests go round robin over the (prefill) engines
    pools = {"front": list(engines), "decode": list(decode_engines)}
    iterations = 0
    while events:
        now = events[0][0]
        while events and events[0][0] == now:  # everything due now, before any engine starts
            _, _, kind, what = heapq.heappop(events)
            if kind == "arrive":
                assert isinstance(what, Request)
                rotation[0].assign(what)
                rotation.rotate(-1)
            elif kind == "transferred":
                assert isinstance(what, tuple)
                moved: Request = what[0]
                target: Engine = what[1]
                what[3].sent(moved)  # the prefill scheduler's blocks are free again
                # the first token reaches the client with the KV cache on the decode side
                moved.first_token_s = moved.token_times_s[0] = now
                target.receive(moved, int(what[2]))
            else:
                engine = what
                assert isinstance(engine, Engine)
                engine.busy = False
                for scheduler, batch in zip(engine.schedulers, engine.batches, strict=True):
                    for request in scheduler.complete(batch, now):
                        _left(request, engine, scheduler, now, pools["decode"], push,
                              transfer_s, next_request, everyone)
        for engine in pools["front"] + pools["decode"]:
            if not engine.busy and any(not s.idle for s in engine.schedulers):
                iterations += 1
                if iterations > max_iterations:
                    raise ConfigError(f"the serving run passed {max_iterations} iterations; "
                                      "send fewer requests")
                _start(engine, now, push, records)
    return ServeRun(everyone, records,
                    sum(s.preemptions for e in pools["front"] + pools["decode"]
                        for s in e.schedulers),
                    max((s.cache.peak / max(s.cache.num_blocks, 1)
                         for e in pools["front"] + pools["decode"] for s in e.schedulers),
                        default=0.0))


def _left(request: Request, engine: Engine, scheduler: Scheduler, now: float,
          decode: list[Engine],
          push: Callable[[float, str, object], None],
          transfer_s: Callable[[Request, Engine, Engine, int], float] | None,
          next_request: Callable[[Request, float], Request | None] | None,
          everyone: list[Request]) -> None:
    """A request left `engine`: on to decode after a prefill engine, else it finished."""
    if engine.role == "prefill" and not request.done:
        target = min(decode, key=lambda e: (e.load, e.name))
        group = target.reserve()
        assert transfer_s is not None
        request.handoff_s = now
        push(now + transfer_s(request, engine, target, group), "transferred",
             (request, target, group, scheduler))
        return
    if next_request is not None:
        follow = next_request(request, now)
        if follow is not None:
            everyone.append(follow)
            push(follow.arrival_s, "arrive", follow)


def _start(engine: Engine, now: float, push: Callable[[float, str, object], None],
           records: list[IterationRecord]) -> None:
    """Form the engine's next iteration from every scheduler and time it."""
    engine.batches = [s.schedule() for s in engine.schedulers]
    tokens = sum(n for batch in engine.batches for _, n in batch)
    if tokens == 0 and any(s.sending for s in engine.schedulers):
        return  # blocks still held by KV transfers: the next one to land frees some
    if tokens == 0:
        stuck = next(s for s in engine.schedulers if not s.idle)
        request = stuck.waiting[0]
        raise ConfigError(
            f"a request of {request.known} tokens cannot start on engine {engine.name}: its KV "
            f"cache holds {stuck.cache.num_blocks * stuck.cache.block_size} tokens per attention "
            "group; raise --kv-cache-tokens (or use more GPUs / fp8) or shorten the requests")
    duration = engine.step_s(engine.batches)
    engine.busy = True
    push(now + duration, "iteration", engine)
    records.append(IterationRecord(
        engine=engine.name, start_s=now, duration_s=duration, tokens=tokens,
        prefill_tokens=sum(n for batch in engine.batches for r, n in batch if not r.decoding),
        running=sum(len(s.running) for s in engine.schedulers),
        waiting=sum(len(s.waiting) for s in engine.schedulers),
        kv_used_fraction=max(s.cache.used / max(s.cache.num_blocks, 1)
                             for s in engine.schedulers),
        preemptions=sum(s.preemptions for s in engine.schedulers),
    ))
