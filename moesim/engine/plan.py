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

What operations a step has, in which order, on which ranks and streams, depends only on its
shape (which layers' exchanges cross ranks, which collectives run, the overlap), so
`build_step_plan` writes a template once per shape and each step fills in only its seconds,
FLOPs and bytes (a serving run's thousands of iterations share a handful of templates). A plan's
structure is also kept as arrays (`PlanLayout`, `StepPlan.layout`) for the backends and the
timeline to vectorise over.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Any, Literal, cast

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
    "PlanLayout",
    "plan_layout",
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


# Operation kinds in a PlanLayout
COMPUTE, EXCHANGE, COLLECTIVE, BARRIER = 0, 1, 2, 3
_KIND = {Compute: COMPUTE, Exchange: EXCHANGE, Collective: COLLECTIVE, Barrier: BARRIER}


@dataclass(frozen=True, eq=False)
class PlanLayout:
    """A plan's structure as arrays (what backends and timelines vectorise over): per operation
    its kind (COMPUTE, EXCHANGE, COLLECTIVE, BARRIER), block, index in PHASES (-1: another
    phase, the LM head's) and ranks; and whether the plan is a chain (every operation on every
    rank, each waiting for the one before it)."""

    kind: np.ndarray  # [ops] int (-1: an operation of another class)
    block: np.ndarray  # [ops] int
    phase: np.ndarray  # [ops] int, index in PHASES or -1
    lm_head: np.ndarray  # [ops] bool: booked in the lm_head phase
    ranks: np.ndarray  # [ops, W] bool: the rank takes part
    chain: bool

    def of_kind(self, kind: int) -> np.ndarray:
        """Indices of the operations of `kind`, in plan order."""
        found = self._of_kind.get(kind)
        if found is None:
            found = self._of_kind[kind] = np.flatnonzero(self.kind == kind)
        return found

    @cached_property
    def _of_kind(self) -> dict[int, np.ndarray]:
        return {}

    @cached_property
    def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A chain's segments (a communication or barrier and the computes after it; segment
        0: the computes before the first): per operation its segment and position in it, and
        the last operation of each non-empty segment."""
        barrier = self.kind != COMPUTE
        segment = np.cumsum(barrier)
        order = np.arange(segment.size)
        first = np.r_[True, segment[1:] != segment[:-1]]
        position = order - np.maximum.accumulate(np.where(first, order, 0))
        last = np.flatnonzero(np.r_[segment[1:] != segment[:-1], True])
        for array in (segment, position, last):
            array.flags.writeable = False
        return segment, position, last


def plan_layout(world: int, ops: tuple[Operation, ...]) -> PlanLayout:
    """The layout of `ops` on `world` ranks."""
    phase_index = {name: i for i, name in enumerate(PHASES)}
    mask = np.zeros((len(ops), world), dtype=bool)
    for index, op in enumerate(ops):
        mask[index, list(op.ranks)] = True
    everyone = tuple(range(world))
    chain = all(op.ranks == everyone and op.deps == ((i - 1,) if i else ())
                for i, op in enumerate(ops))
    kinds = [next((k for cls, k in _KIND.items() if isinstance(op, cls)), -1) for op in ops]
    arrays = {
        "kind": np.array(kinds, dtype=np.int64),
        "block": np.array([op.block for op in ops], dtype=np.int64),
        "phase": np.array([phase_index.get(op.phase, -1) for op in ops], dtype=np.int64),
        "lm_head": np.array([op.phase == "lm_head" for op in ops], dtype=bool),
        "ranks": mask,
    }
    for array in arrays.values():
        array.flags.writeable = False  # shared by every plan of a template
    return PlanLayout(**arrays, chain=chain)


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

    @cached_property
    def layout(self) -> PlanLayout:
        """The plan's structure as arrays (`PlanLayout`; a templated plan shares its
        template's)."""
        return plan_layout(self.world, self.ops)

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


# ---- build_step_plan: a template per shape, filled per step ------------------------------------
#
# A plan's operations, their order, ranks, streams and dependencies depend only on the step's
# shape (`_Shape`: which exchanges cross ranks, which collectives run, the overlap); their
# seconds, FLOPs and bytes on the step. So a template of the operations is written once per
# shape, and each step only fills in its arrays (serving runs thousands of steps of one shape).
#
# Where a template operation's per-step fields come from (`_Source`): a family of values,
# worked out for every layer at once, and the operation's row in it (its layer, else 0):
#   ("cost", field, slowdown)   Compute: a StepCosts field, its seconds times `slowdown`
#   ("matrix", which)           Exchange: sp, dispatch, combine, gather, scatter
#   ("ring", op)                attention-TP Collective: its groups' buffers
#   ("group", which)            MoE-group Collective (allgather all-to-all): each replica's
#                               buffer, of dispatch or combine
_Source = tuple[tuple[Any, ...], int]


@dataclass(frozen=True)
class _Spec:
    """A template operation: its class, its fixed fields, where the others come from."""

    cls: type[Operation]
    fields: dict[str, Any]
    source: _Source


# A stage of one micro-batch's block: operations (deps filled in when written) and, per
# operation, what it waits for: "prev" (the micro-batch's previous operation) or "router".
_Stage = list[tuple[_Spec, str]]


@dataclass(frozen=True)
class _Shape:
    """What a micro-batch's operations depend on, but not their values."""

    world: int
    a2a: str
    sp_exchange: bool  # the SP exchange crosses ranks
    rings: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]  # attention TP: (op, groups)
    a2a_layers: tuple[bool, ...]  # per MoE layer: dispatch crosses ranks
    gather_layers: tuple[bool, ...]  # per MoE layer: the MoE-TP all-gather moves bytes
    shared_experts: bool  # the shared experts take time
    moe_groups: tuple[tuple[int, ...], ...]  # allgather all-to-all: ranks per MoE-DP replica


def _cross_rank_layers(matrices: np.ndarray, diagonal: bool = False) -> tuple[bool, ...]:
    """`crosses_ranks` of each `[W, W]` matrix of `[L, W, W]` (`diagonal`: whether any entry,
    the diagonal's too, is non-zero)."""
    if diagonal:
        moving = matrices.any(axis=(1, 2))
    else:
        moving = matrices.sum(axis=(1, 2)) - np.trace(matrices, axis1=1, axis2=2) > 0
    return tuple(cast(list[bool], moving.tolist()))


@lru_cache(maxsize=64)
def _replica_groups(world: int, par: Any) -> tuple[tuple[int, ...], ...]:
    """Ranks of each MoE-DP replica, in rank order."""
    ranks = par.ranks()
    replica = moe_dp_index(par, ranks)
    return tuple(tuple(int(r) for r in ranks[replica == g]) for g in range(par.moe_dp))


def _shape(traffic: Traffic, costs: StepCosts) -> _Shape:
    rings = tuple((op, tuple(c.ranks for c in traffic.attn_collectives if c.op == op))
                  for op in ("reducescatter", "allgather"))
    par = traffic.parallelism
    return _Shape(
        world=traffic.world,
        a2a=traffic.a2a,
        sp_exchange=crosses_ranks(traffic.sp_bytes),
        rings=tuple((op, groups) for op, groups in rings if groups),
        a2a_layers=_cross_rank_layers(traffic.dispatch_bytes),
        gather_layers=_cross_rank_layers(traffic.moe_tp_gather_bytes, diagonal=True),
        shared_experts=bool(np.asarray(costs.shared_experts.time_s).any()),
        moe_groups=_replica_groups(par.world, par) if traffic.a2a == "allgather" else (),
    )


def _compute(name: str, phase: str, block: int, kind: str, cost: str, layer: int | None,
             ranks: tuple[int, ...], slowdown: float = 1.0) -> _Spec:
    return _Spec(Compute, {"name": name, "phase": phase, "block": block, "ranks": ranks,
                           "stream": "compute", "kind": kind},
                 (("cost", cost, slowdown), layer or 0))


def _exchange(name: str, phase: str, block: int, which: str, layer: int | None,
              ranks: tuple[int, ...], impl: A2aImpl = "direct") -> _Spec:
    return _Spec(Exchange, {"name": name, "phase": phase, "block": block, "ranks": ranks,
                            "stream": "comm", "impl": impl}, (("matrix", which), layer or 0))


def _attn_tp_collective(shape: _Shape, op: str, phase: str, name: str, block: int
                        ) -> _Spec | None:
    """The attention-TP ring of kind `op` (one per group), or None without attention TP."""
    groups = dict(shape.rings).get(op)
    if not groups:
        return None
    ranks = tuple(sorted(r for g in groups for r in g))
    return _Spec(Collective, {"name": name, "phase": phase, "block": block, "ranks": ranks,
                              "stream": "comm", "op": op, "groups": groups,
                              "algorithm": "auto"}, (("ring", op), 0))


def _moe_group_collective(shape: _Shape, which: str, layer: int, op: str, name: str,
                          phase: str, block: int) -> _Spec:
    """The all-gather (dispatch) or reduce-scatter (combine) of `allgather` all-to-all: one per
    MoE-DP replica, its buffer every member's tokens (the matrix's diagonal: what each sends)."""
    return _Spec(Collective, {"name": name, "phase": phase, "block": block,
                              "ranks": tuple(range(shape.world)), "stream": "comm", "op": op,
                              "groups": shape.moe_groups, "algorithm": "auto"},
                 (("group", which), layer))


def _block_stages(shape: _Shape, block: int, layer: int, *, shared_beside: bool,
                  slowdown: float) -> list[_Stage]:
    """One micro-batch's block as four stages: attention (to the router), dispatch, experts,
    combine (to the attention-TP all-gather)."""
    ranks = tuple(range(shape.world))
    moe = layer >= 0
    a2a = moe and shape.a2a_layers[layer]  # no kernel where all is local
    # only a block with an all-to-all has one beside its compute to take SMs from it
    slowdown = slowdown if a2a else 1.0
    pre: _Stage = []
    if shape.sp_exchange:
        pre.append((_exchange("sp_exchange", "attn_comm", block, "sp", None, ranks), "prev"))
    pre.append((_compute("attention", "attention", block, "attention", "attention", None,
                         ranks, slowdown), "prev"))
    ring = _attn_tp_collective(shape, "reducescatter", "attn_comm", "attn_reduce_scatter",
                               block)
    if ring is not None:
        pre.append((ring, "prev"))
    post: _Stage = []
    ring = _attn_tp_collective(shape, "allgather", "moe_comm", "attn_all_gather", block)
    if ring is not None:
        post.append((ring, "prev"))
    if not moe:
        ffn = _compute("dense_ffn", "experts", block, "dense_ffn", "dense_ffn", None, ranks,
                       slowdown)
        return [pre, [], [(ffn, "prev")], post]
    pre.append((_compute("router", "router", block, "router", "router", None, ranks,
                         slowdown), "prev"))
    send: _Stage = []
    back: _Stage = []
    if a2a:
        if shape.a2a == "allgather":
            send.append((_moe_group_collective(shape, "dispatch", layer, "allgather",
                                               "dispatch", "dispatch", block), "prev"))
            back.append((_moe_group_collective(shape, "combine", layer, "reducescatter",
                                               "combine", "combine", block), "prev"))
        else:
            impl: A2aImpl = shape.a2a  # type: ignore[assignment]
            send.append((_exchange("dispatch", "dispatch", block, "dispatch", layer, ranks,
                                   impl), "prev"))
            back.append((_exchange("combine", "combine", block, "combine", layer, ranks,
                                   impl), "prev"))
    if shape.gather_layers[layer]:
        send.append((_exchange("moe_tp_gather", "moe_comm", block, "gather", layer, ranks),
                     "prev"))
        back.insert(0, (_exchange("moe_tp_scatter", "moe_comm", block, "scatter", layer,
                                  ranks), "prev"))
    work: _Stage = [(_compute("experts", "experts", block, "grouped_moe", "experts", layer,
                              ranks, slowdown), "prev")]
    if shape.shared_experts:
        shared = _compute("shared_experts", "experts", block, "dense_ffn", "shared_experts",
                          None, ranks, slowdown)
        if shared_beside:
            work.insert(0, (shared, "router"))
        else:
            work.append((shared, "prev"))
    return [pre, send, work, back + post]


@dataclass(frozen=True, eq=False)
class _Template:
    """A plan's operations but their per-step fields: the tables of per-step fields it reads
    (a micro-batch's family of values, `_Source`), and per operation its class, fixed fields
    (deps included), table and row."""

    world: int
    num_blocks: int
    num_dense_blocks: int
    families: tuple[tuple[int, tuple[Any, ...]], ...]  # (micro-batch, family) of each table
    entries: tuple[tuple[type[Operation], dict[str, Any], int, int], ...]  # table, row
    layout: PlanLayout


class _Writer:
    """Writes micro-batches' stages in order, each operation after its micro-batch's last."""

    def __init__(self, count: int) -> None:
        self.entries: list[tuple[type[Operation], dict[str, Any], int, _Source]] = []
        self.last: list[int | None] = [None] * count
        self.router: list[int | None] = [None] * count

    def write(self, mb: int, stage: _Stage) -> None:
        for spec, after in stage:
            dep = self.router[mb] if after == "router" else self.last[mb]
            self.entries.append((spec.cls, {**spec.fields, "deps": () if dep is None else (dep,)},
                                 mb, spec.source))
            index = len(self.entries) - 1
            if after == "router":
                continue  # beside the chain: the next operation still waits for the chain
            self.last[mb] = index
            if spec.fields["name"] == "router":
                self.router[mb] = index


def _template(shapes: tuple[_Shape, ...], num_dense_blocks: int, num_layers: int,
              beside: bool, slowdown: float) -> _Template:
    """The template of the step `build_step_plan` writes (module doc) for these shapes."""
    writer = _Writer(len(shapes))
    blocks = num_dense_blocks + num_layers
    world = shapes[0].world
    for block in range(blocks):
        layer = block - num_dense_blocks
        stages = [_block_stages(s, block, layer, shared_beside=beside, slowdown=slowdown)
                  for s in shapes]
        if len(shapes) == 1:
            for stage in stages[0]:
                writer.write(0, stage)
            continue
        # interleaved (module doc): 0 pre, 0 send, 1 pre, 1 send, 0 work, 1 work, 0 back, 1 back
        for stage_index, mb in ((0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)):
            writer.write(mb, stages[mb][stage_index])
    for mb in range(len(shapes)):
        head = _compute("lm_head", "lm_head", blocks, "lm_head", "lm_head", None,
                        tuple(range(world)))
        writer.write(mb, [(head, "prev")])
    skeleton = tuple(object.__new__(cls) for cls, _, _, _ in writer.entries)
    for op, (_, fields, _, _) in zip(skeleton, writer.entries, strict=True):
        op.__dict__.update(fields)
    families: dict[tuple[int, tuple[Any, ...]], int] = {}
    entries = []
    for cls, fields, mb, (family, row) in writer.entries:
        table = families.setdefault((mb, family), len(families))
        entries.append((cls, fields, table, row))
    return _Template(world, blocks, num_dense_blocks, tuple(families), tuple(entries),
                     plan_layout(world, skeleton))


class _Values:
    """A micro-batch's per-step fields, one family of them (`_Source`) at a time: a list of
    the fields of each of its rows."""

    def __init__(self, traffic: Traffic, costs: StepCosts, shape: _Shape) -> None:
        self.traffic, self.costs, self.shape = traffic, costs, shape
        self.tables: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    def table(self, family: tuple[Any, ...]) -> list[dict[str, Any]]:
        found = self.tables.get(family)
        if found is None:
            found = self.tables[family] = self._work_out(family)
        return found

    def _work_out(self, family: tuple[Any, ...]) -> list[dict[str, Any]]:
        kind = family[0]
        if kind == "cost":
            _, name, slowdown = family
            time_s, flops, bytes_moved = getattr(self.costs, name).arrays()
            if slowdown != 1.0:  # (times 1 is the same seconds)
                time_s = time_s * slowdown
            if time_s.ndim <= 1:  # the same in every block
                return [{"time_s": time_s, "flops": flops, "bytes_moved": bytes_moved}]
            return [{"time_s": t, "flops": f, "bytes_moved": b}
                    for t, f, b in zip(time_s, flops, bytes_moved, strict=True)]
        if kind == "matrix":
            return [{"bytes_matrix": m} for m in self._matrices(family[1])]
        if kind == "ring":
            return [{"size_bytes": tuple(float(c.buffer_bytes)
                                         for c in self.traffic.attn_collectives
                                         if c.op == family[1])}]
        groups = [list(g) for g in self.shape.moe_groups]
        out = []
        for matrix in self._matrices(family[1]):
            own = np.diag(matrix).astype(np.float64)
            out.append({"size_bytes": tuple(float(own[g].sum()) for g in groups)})
        return out

    def _matrices(self, which: str) -> Any:
        """The `[W, W]` matrices of `which`, per layer (`sp`: the one of every block)."""
        traffic = self.traffic
        if which == "sp":
            return [traffic.sp_bytes]
        if which == "dispatch":
            return traffic.dispatch_bytes
        if which == "combine":
            return traffic.combine_bytes
        if which == "gather":
            return traffic.moe_tp_gather_bytes
        return traffic.moe_tp_scatter_bytes


# Templates kept, by shape (a serving run or a sweep worker uses a handful).
_TEMPLATES: dict[tuple[Any, ...], _Template] = {}
_TEMPLATES_KEPT = 256


def build_step_plan(traffic: Traffic, costs: StepCosts, num_dense_blocks: int, *,
                    overlap: Overlap = "none", micro_batches: tuple[MicroBatch, ...] = (),
                    compute_slowdown: float = 1.0, cache: bool = True) -> StepPlan:
    """The step serving engines run (module doc), from its traffic and per-rank compute costs;
    with `overlap="tbo"` from the two `micro_batches` instead. The operations are written from
    a template kept per shape (`cache=False`: written afresh, through each operation's
    constructor; the two plans are equal field by field)."""
    parts = micro_batches if overlap == "tbo" else (MicroBatch(traffic, costs),)
    if overlap == "tbo" and len(parts) != 2:
        raise ValueError("two-batch overlap needs two micro-batches")
    slowdown = compute_slowdown if overlap == "tbo" else 1.0
    beside = overlap in ("shared", "tbo")
    shapes = tuple(_shape(p.traffic, p.costs) for p in parts)
    key = (shapes, num_dense_blocks, traffic.num_layers, beside, slowdown)
    template = _TEMPLATES.get(key) if cache else None
    if template is None:
        template = _template(shapes, num_dense_blocks, traffic.num_layers, beside, slowdown)
        if cache:
            if len(_TEMPLATES) >= _TEMPLATES_KEPT:
                _TEMPLATES.clear()
            _TEMPLATES[key] = template
    values = [_Values(p.traffic, p.costs, s) for p, s in zip(parts, shapes, strict=True)]
    tables = [values[mb].table(family) for mb, family in template.families]
    ops: list[Operation] = []
    for cls, fields, table, row in template.entries:
        filled = tables[table][row]
        if cache:  # the fields as the constructor would set them, without its per-field calls
            op = object.__new__(cls)
            op_fields = op.__dict__
            op_fields.update(fields)
            op_fields.update(filled)
        else:
            op = cls(**fields, **filled)
        ops.append(op)
    plan = StepPlan(template.world, template.num_blocks, template.num_dense_blocks, tuple(ops))
    if cache:
        plan.__dict__["layout"] = template.layout  # the cached property, shared
    return plan
