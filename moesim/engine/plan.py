"""StepPlan: one step as data, a list of operations with ranks, a stream and dependencies.

Four kinds of operation (aiconfigurator's "a model is a list of operations", ASTRA-sim's
workload graph):
- `Compute`: per-rank seconds, FLOPs and bytes of one op kind (from `moesim.engine.cost`);
- `Exchange`: a `[W, W]` src -> dst byte matrix sent directly (MoE dispatch and combine, the
  MoE-TP gather/scatter, the SP attention exchange); a rank starts its sends when it is ready
  and its part ends when its sends and receives are done; the diagonal is a local copy;
- `Collective`: an all-reduce, all-gather or reduce-scatter run by each of a set of disjoint
  rank groups (attention TP: one ring per group), a group starting when all its ranks are ready;
- `Barrier`: every rank of the set waits for the last.

Every operation has a `block` (transformer block; the LM head is block `num_blocks`), the
`phase` its seconds are booked in (`PHASES`, or `lm_head`), a `stream` (`compute` or `comm`)
and `deps`: indices of earlier operations it waits for on the same rank. A rank also runs the
operations of one stream one at a time, in plan order. So an operation on the comm stream whose
deps do not include a compute operation runs beside it: the backends give `max`, not the sum.

`build_step_plan` writes the step serving engines run, in this order per block (each operation
waiting for the one before it):
SP exchange -> attention -> attention-TP reduce-scatter -> [dense block: dense FFN] or
[router -> dispatch -> MoE-TP all-gather -> experts -> shared experts -> MoE-TP reduce-scatter
-> combine] -> attention-TP all-gather; after the last block, the LM head. An exchange or
gather that moves nothing between ranks in a layer (TP's dispatch: every expert is local) is
left out, as no kernel runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from moesim.engine.cost import StepCosts
from moesim.inputs.options import AllreduceAlgorithm, Stream
from moesim.traffic.traffic import Traffic

__all__ = [
    "PHASES",
    "Operation",
    "Compute",
    "Exchange",
    "Collective",
    "Barrier",
    "StepPlan",
    "PlanBuilder",
    "build_step_plan",
    "crosses_ranks",
]

PHASES = ("attention", "attn_comm", "router", "dispatch", "experts", "combine", "moe_comm")


@dataclass(frozen=True, kw_only=True, eq=False)
class Operation:
    """What every operation has: where it is booked, who runs it, on which stream, after what."""

    name: str  # what it is: attention, router, experts, dispatch, attn_reduce_scatter, ...
    phase: str  # the phase its seconds count in (PHASES or "lm_head")
    block: int  # transformer block (the LM head: num_blocks)
    ranks: tuple[int, ...]  # ranks taking part
    stream: Stream
    deps: tuple[int, ...] = ()  # plan indices of operations it waits for (on the same rank)


@dataclass(frozen=True, kw_only=True, eq=False)
class Compute(Operation):
    """A kernel on each rank: `time_s[W]` seconds from `flops[W]` and `bytes_moved[W]`."""

    kind: str  # cost model op kind: attention, router, grouped_moe, dense_ffn, lm_head
    time_s: np.ndarray  # [W]
    flops: np.ndarray  # [W]
    bytes_moved: np.ndarray  # [W]
    stream: Stream = "compute"


@dataclass(frozen=True, kw_only=True, eq=False)
class Exchange(Operation):
    """Direct point-to-point sends of `bytes_matrix[src, dst]` (an all-to-all when dense)."""

    bytes_matrix: np.ndarray  # [W, W]; the diagonal is a local copy (no link bytes)
    stream: Stream = "comm"


@dataclass(frozen=True, kw_only=True, eq=False)
class Collective(Operation):
    """One `op` per group of ranks, `size_bytes[g]` the group's buffer (nccl-tests' size)."""

    op: Literal["allreduce", "allgather", "reducescatter"]
    groups: tuple[tuple[int, ...], ...]
    size_bytes: tuple[float, ...]
    algorithm: AllreduceAlgorithm = "auto"
    stream: Stream = "comm"


@dataclass(frozen=True, kw_only=True, eq=False)
class Barrier(Operation):
    """Every rank of `ranks` waits until the last of them is ready."""

    stream: Stream = "comm"


@dataclass(frozen=True, eq=False)
class StepPlan:
    """The operations of one step on `world` ranks, in plan order."""

    world: int
    num_blocks: int
    num_dense_blocks: int
    ops: tuple[Operation, ...]

    @property
    def num_moe_layers(self) -> int:
        """MoE blocks."""
        return self.num_blocks - self.num_dense_blocks

    def find(self, name: str) -> list[Operation]:
        """The operations called `name`, in plan order."""
        return [op for op in self.ops if op.name == name]


def crosses_ranks(matrix: np.ndarray) -> bool:
    """Whether a `[W, W]` bytes matrix sends anything between different ranks."""
    return bool(matrix.sum() - np.trace(matrix) > 0)


@dataclass
class PlanBuilder:
    """Appends operations to a plan, each waiting for the previous one unless told otherwise."""

    world: int
    ops: list[Operation] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.all_ranks: tuple[int, ...] = tuple(range(self.world))

    def _deps(self, after: tuple[int, ...] | None) -> tuple[int, ...]:
        """`after`, or by default the last operation appended."""
        if after is not None:
            return tuple(after)
        return (len(self.ops) - 1,) if self.ops else ()

    def _append(self, op: Operation) -> int:
        self.ops.append(op)
        return len(self.ops) - 1

    def add(self, op: Operation, after: tuple[int, ...] | None = None) -> int:
        """Append `op` waiting for `after` (default: the last operation); return its index."""
        return self._append(replace(op, deps=self._deps(after)))

    def compute(self, name: str, phase: str, block: int, kind: str, time_s: np.ndarray,
                flops: np.ndarray, bytes_moved: np.ndarray,
                after: tuple[int, ...] | None = None) -> int:
        """Append a Compute on every rank."""
        return self._append(Compute(
            name=name, phase=phase, block=block, ranks=self.all_ranks, deps=self._deps(after),
            kind=kind, time_s=np.asarray(time_s, dtype=np.float64),
            flops=np.asarray(flops, dtype=np.float64),
            bytes_moved=np.asarray(bytes_moved, dtype=np.float64)))

    def exchange(self, name: str, phase: str, block: int, matrix: np.ndarray,
                 after: tuple[int, ...] | None = None) -> int:
        """Append an Exchange among every rank."""
        return self._append(Exchange(name=name, phase=phase, block=block, ranks=self.all_ranks,
                                     deps=self._deps(after), bytes_matrix=matrix))

    def plan(self, num_blocks: int, num_dense_blocks: int) -> StepPlan:
        """The plan built so far."""
        return StepPlan(self.world, num_blocks, num_dense_blocks, tuple(self.ops))


def _attn_tp_collective(traffic: Traffic, op: str, phase: str, name: str, block: int
                        ) -> Collective | None:
    """The attention-TP ring of kind `op` (one per group), or None without attention TP."""
    colls = [c for c in traffic.attn_collectives if c.op == op]
    if not colls:
        return None
    ranks = tuple(sorted(r for c in colls for r in c.ranks))
    return Collective(name=name, phase=phase, block=block, ranks=ranks, op=op,  # type: ignore[arg-type]
                      groups=tuple(c.ranks for c in colls),
                      size_bytes=tuple(float(c.buffer_bytes) for c in colls))


def build_step_plan(traffic: Traffic, costs: StepCosts, num_dense_blocks: int) -> StepPlan:
    """The step serving engines run (module doc), from its traffic and per-rank compute costs."""
    b = PlanBuilder(traffic.world)
    blocks = num_dense_blocks + traffic.num_layers
    for block in range(blocks):
        layer = block - num_dense_blocks
        if crosses_ranks(traffic.sp_bytes):
            b.exchange("sp_exchange", "attn_comm", block, traffic.sp_bytes)
        b.compute("attention", "attention", block, "attention", *costs.attention.arrays())
        ring = _attn_tp_collective(traffic, "reducescatter", "attn_comm",
                                   "attn_reduce_scatter", block)
        if ring is not None:
            b.add(ring)
        if layer < 0:
            b.compute("dense_ffn", "experts", block, "dense_ffn", *costs.dense_ffn.arrays())
        else:
            _moe_block(b, traffic, costs, block, layer)
        ring = _attn_tp_collective(traffic, "allgather", "moe_comm", "attn_all_gather", block)
        if ring is not None:
            b.add(ring)
    b.compute("lm_head", "lm_head", blocks, "lm_head", *costs.lm_head.arrays())
    return b.plan(blocks, num_dense_blocks)


def _moe_block(b: PlanBuilder, traffic: Traffic, costs: StepCosts, block: int, layer: int
               ) -> None:
    """Router, dispatch, MoE-TP gather, experts, shared experts, MoE-TP scatter, combine."""
    dispatch, gather = traffic.dispatch_bytes[layer], traffic.moe_tp_gather_bytes[layer]
    a2a = crosses_ranks(dispatch)  # no kernel runs where every copy is local (TP, DP)
    b.compute("router", "router", block, "router", *costs.router.arrays())
    if a2a:
        b.exchange("dispatch", "dispatch", block, dispatch)
    if gather.any():
        b.exchange("moe_tp_gather", "moe_comm", block, gather)
    b.compute("experts", "experts", block, "grouped_moe", *costs.experts.arrays(layer))
    if costs.shared_experts.time_s.any():
        b.compute("shared_experts", "experts", block, "dense_ffn",
                  *costs.shared_experts.arrays())
    if gather.any():
        b.exchange("moe_tp_scatter", "moe_comm", block, gather.T)
    if a2a:
        b.exchange("combine", "combine", block, dispatch.T)
