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
left out, as no kernel runs. Dispatch and combine are exchanges tagged with the all-to-all
implementation that runs them (`impl`), or with `allgather` an all-gather and a reduce-scatter
per MoE group.

Overlap (`overlap="tbo"`, two-batch overlap as SGLang and DeepSeek's decode run it): the step's
tokens are two micro-batches (each attention group's tokens halved), each with its own traffic
and costs, each a chain as above. They are written interleaved, per block: micro-batch 0's
attention and router, its dispatch; micro-batch 1's attention and router (on the compute stream
while 0's dispatch runs on the comm stream), its dispatch; 0's experts, 1's experts; 0's
combine, 1's combine. So one micro-batch's all-to-all runs beside the other's compute, and a
communication-bound block takes about max(compute, comm) plus what cannot overlap (the first
attention and the last combine) and the cost of running two smaller batches. With overlap
(`shared` or `tbo`) the shared experts wait only for the router and run beside the dispatch.
Under two-batch overlap the compute of a block with an all-to-all that holds SMs (DeepEP normal)
runs on the SMs it leaves (`compute_slowdown`); dense blocks and the LM head run at full speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from moesim.engine.cost import StepCosts
from moesim.inputs.options import A2aImpl, AllreduceAlgorithm, Overlap, Stream
from moesim.traffic.placement import moe_dp_index
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
    "MicroBatch",
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
    impl: A2aImpl = "direct"  # what runs it (moesim.engine.a2a)
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
                 after: tuple[int, ...] | None = None, impl: A2aImpl = "direct") -> int:
        """Append an Exchange among every rank."""
        return self._append(Exchange(name=name, phase=phase, block=block, ranks=self.all_ranks,
                                     deps=self._deps(after), bytes_matrix=matrix, impl=impl))

    def plan(self, num_blocks: int, num_dense_blocks: int) -> StepPlan:
        """The plan built so far."""
        return StepPlan(self.world, num_blocks, num_dense_blocks, tuple(self.ops))


@dataclass(frozen=True)
class MicroBatch:
    """One batch a step runs: its traffic and per-rank compute costs."""

    traffic: Traffic
    costs: StepCosts


# A stage of one micro-batch's block: operations (deps filled in when written) and, per
# operation, what it waits for: "prev" (the micro-batch's previous operation) or "router".
_Stage = list[tuple[Operation, str]]


def _compute(name: str, phase: str, block: int, kind: str, cost: tuple[np.ndarray, ...],
             ranks: tuple[int, ...], slowdown: float = 1.0) -> Compute:
    time_s, flops, bytes_moved = cost
    return Compute(name=name, phase=phase, block=block, ranks=ranks, kind=kind,
                   time_s=np.asarray(time_s, dtype=np.float64) * slowdown,
                   flops=np.asarray(flops, dtype=np.float64),
                   bytes_moved=np.asarray(bytes_moved, dtype=np.float64))


def _exchange(name: str, phase: str, block: int, matrix: np.ndarray, ranks: tuple[int, ...],
              impl: A2aImpl = "direct") -> Exchange:
    return Exchange(name=name, phase=phase, block=block, ranks=ranks, bytes_matrix=matrix,
                    impl=impl)


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


def _moe_group_collective(traffic: Traffic, matrix: np.ndarray, op: str, name: str,
                          phase: str, block: int) -> Collective:
    """The all-gather (dispatch) or reduce-scatter (combine) of `allgather` all-to-all: one per
    MoE-DP replica, its buffer every member's tokens (`matrix`'s diagonal: what each sends)."""
    par = traffic.parallelism
    ranks = par.ranks()
    replica = moe_dp_index(par, ranks)
    own = np.diag(matrix).astype(np.float64)
    groups = tuple(tuple(int(r) for r in ranks[replica == g]) for g in range(par.moe_dp))
    sizes = tuple(float(own[list(g)].sum()) for g in groups)
    return Collective(name=name, phase=phase, block=block, ranks=tuple(range(par.world)),
                      op=op, groups=groups, size_bytes=sizes)  # type: ignore[arg-type]


def _block_stages(traffic: Traffic, costs: StepCosts, block: int, layer: int, *,
                  shared_beside: bool, slowdown: float) -> list[_Stage]:
    """One micro-batch's block as four stages: attention (to the router), dispatch, experts,
    combine (to the attention-TP all-gather)."""
    ranks = tuple(range(traffic.world))
    dispatch, gather = (traffic.dispatch_bytes[layer], traffic.moe_tp_gather_bytes[layer]
                        ) if layer >= 0 else (None, None)
    a2a = dispatch is not None and crosses_ranks(dispatch)  # no kernel where all is local
    # only a block with an all-to-all has one beside its compute to take SMs from it
    slowdown = slowdown if a2a else 1.0
    pre: _Stage = []
    if crosses_ranks(traffic.sp_bytes):
        pre.append((_exchange("sp_exchange", "attn_comm", block, traffic.sp_bytes, ranks),
                    "prev"))
    pre.append((_compute("attention", "attention", block, "attention",
                         costs.attention.arrays(), ranks, slowdown), "prev"))
    ring = _attn_tp_collective(traffic, "reducescatter", "attn_comm", "attn_reduce_scatter",
                               block)
    if ring is not None:
        pre.append((ring, "prev"))
    post: _Stage = []
    ring = _attn_tp_collective(traffic, "allgather", "moe_comm", "attn_all_gather", block)
    if ring is not None:
        post.append((ring, "prev"))
    if dispatch is None or gather is None:
        ffn = _compute("dense_ffn", "experts", block, "dense_ffn", costs.dense_ffn.arrays(),
                       ranks, slowdown)
        return [pre, [], [(ffn, "prev")], post]
    pre.append((_compute("router", "router", block, "router", costs.router.arrays(), ranks,
                         slowdown), "prev"))
    send: _Stage = []
    back: _Stage = []
    if a2a:
        if traffic.a2a == "allgather":
            send.append((_moe_group_collective(traffic, dispatch, "allgather", "dispatch",
                                               "dispatch", block), "prev"))
            back.append((_moe_group_collective(traffic, traffic.combine_bytes[layer].T,
                                               "reducescatter", "combine", "combine", block),
                         "prev"))
        else:
            impl: A2aImpl = traffic.a2a  # type: ignore[assignment]
            send.append((_exchange("dispatch", "dispatch", block, dispatch, ranks, impl),
                         "prev"))
            back.append((_exchange("combine", "combine", block, traffic.combine_bytes[layer],
                                   ranks, impl), "prev"))
    if gather.any():
        send.append((_exchange("moe_tp_gather", "moe_comm", block, gather, ranks), "prev"))
        back.insert(0, (_exchange("moe_tp_scatter", "moe_comm", block, gather.T, ranks),
                        "prev"))
    work: _Stage = [(_compute("experts", "experts", block, "grouped_moe",
                              costs.experts.arrays(layer), ranks, slowdown), "prev")]
    if costs.shared_experts.time_s.any():
        shared = _compute("shared_experts", "experts", block, "dense_ffn",
                          costs.shared_experts.arrays(), ranks, slowdown)
        if shared_beside:
            work.insert(0, (shared, "router"))
        else:
            work.append((shared, "prev"))
    return [pre, send, work, back + post]


class _Writer:
    """Writes micro-batches' stages into a plan, each operation after its micro-batch's last."""

    def __init__(self, builder: PlanBuilder, count: int) -> None:
        self.b = builder
        self.last: list[int | None] = [None] * count
        self.router: list[int | None] = [None] * count

    def write(self, mb: int, stage: _Stage) -> None:
        for op, after in stage:
            dep = self.router[mb] if after == "router" else self.last[mb]
            index = self.b.add(op, after=() if dep is None else (dep,))
            if after == "router":
                continue  # beside the chain: the next operation still waits for the chain
            self.last[mb] = index
            if op.name == "router":
                self.router[mb] = index


def build_step_plan(traffic: Traffic, costs: StepCosts, num_dense_blocks: int, *,
                    overlap: Overlap = "none", micro_batches: tuple[MicroBatch, ...] = (),
                    compute_slowdown: float = 1.0) -> StepPlan:
    """The step serving engines run (module doc), from its traffic and per-rank compute costs;
    with `overlap="tbo"` from the two `micro_batches` instead."""
    parts = micro_batches if overlap == "tbo" else (MicroBatch(traffic, costs),)
    if overlap == "tbo" and len(parts) != 2:
        raise ValueError("two-batch overlap needs two micro-batches")
    slowdown = compute_slowdown if overlap == "tbo" else 1.0
    beside = overlap in ("shared", "tbo")
    b = PlanBuilder(traffic.world)
    writer = _Writer(b, len(parts))
    blocks = num_dense_blocks + traffic.num_layers
    for block in range(blocks):
        layer = block - num_dense_blocks
        stages = [_block_stages(p.traffic, p.costs, block, layer, shared_beside=beside,
                                slowdown=slowdown) for p in parts]
        if len(parts) == 1:
            for stage in stages[0]:
                writer.write(0, stage)
            continue
        # interleaved (module doc): 0 pre, 0 send, 1 pre, 1 send, 0 work, 1 work, 0 back, 1 back
        for stage_index, mb in ((0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)):
            writer.write(mb, stages[mb][stage_index])
    for mb, part in enumerate(parts):
        head = _compute("lm_head", "lm_head", blocks, "lm_head", part.costs.lm_head.arrays(),
                        tuple(range(traffic.world)))
        writer.write(mb, [(head, "prev")])
    return b.plan(blocks, num_dense_blocks)
