"""Traffic: a router trace on a placement becomes exact bytes per layer, phase and rank pair.

Everything here is counting: no time, no topology beyond `gpus_per_node` for node dedup.

MoE all-to-all (DESIGN.md): per (token, selected expert) one hidden vector of
`hidden * act_bytes` goes from the token's dispatching rank to the expert's rank (dispatch)
and back (combine). Byte matrices are `[layer, src_rank, dst_rank]`; the diagonal holds local
copies (no link bytes, reported as local). Combine is the exact reverse of dispatch, so
`combine_bytes[l] == dispatch_bytes[l].T`.

Dispatch dedup:
- `none`: one vector per (token, expert) pair;
- `gpu`: one vector per (token, destination rank), as kernels that send one copy per rank;
- `node`: one vector per (token, destination node) crosses nodes, to the rank on that node with
  the sender's local index (the relay), which forwards one copy to each other destination rank
  on its node (DeepEP-style); destinations on the sender's node are served as with `gpu`.

All-to-all implementations (`a2a`, as engines run them; timing in moesim.engine.a2a):
- `direct`: pairwise sends, dedup as asked (NCCL send/recv, as vLLM's and SGLang's default);
- `allgather`: every rank's dispatched tokens go to every rank of its MoE group (an all-gather,
  vLLM's `allgather_reducescatter` backend) and the outputs come back by a reduce-scatter;
  `dispatch_bytes[s, d]` is then the tokens rank s dispatches times the vector size;
- `deepep-normal`: node-deduplicated (one copy per destination node over RDMA, forwarded over
  NVLink), fp8 dispatch by default;
- `deepep-ll`: one message per (token, expert) with a 16-byte header, fp8 dispatch by default.
Dispatch and combine may differ in vector size (fp8 dispatch, bf16 combine), so
`combine_bytes[l] == dispatch_vectors[l].T * combine_vector_bytes`.

Tensor and sequence parallel volumes are built from ring collectives (`GroupCollective`), the
algorithm NCCL uses for these sizes, so their byte matrices are exact for that algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from moesim.errors import PlacementError, TraceError
from moesim.inputs.models import ModelSpec
from moesim.inputs.options import (
    ACT_DTYPE_BYTES,
    A2aImpl,
    ActDtype,
    Dedup,
    Phase,
    SpVariant,
)
from moesim.trace.format import RouterTrace
from moesim.traffic.experts import ExpertPlacement, contiguous_placement, route_assignments
from moesim.traffic.placement import (
    Parallelism,
    block_sizes,
    check_tp_fits_model,
    moe_dp_index,
    moe_ep_index,
    moe_rank,
    token_source_rank,
)

__all__ = [
    "GroupCollective",
    "Traffic",
    "compute_traffic",
    "check_trace_fits_model",
    "ring_bytes_matrix",
    "vector_bytes",
    "a2a_dedup",
    "default_dispatch_dtype",
    "FP8_SCALE_CHANNELS",
    "DEEPEP_LL_HEADER_BYTES",
    "deepep_ll_buffer_bytes",
]

# fp8 dispatch carries one fp32 scale per 128 channels of each token: DeepSeek-V3's 1x128
# tile-wise activation quantization (arXiv 2412.19437, section 3.3.2) and DeepEP's fp8 format
# (deep_ep/buffer.py: x as (fp8 [n, hidden], fp32 scales [n, hidden / 128])).
FP8_SCALE_CHANNELS = 128
# DeepEP low-latency messages carry a 16-byte header (one int4: the token's source index), in
# csrc/config.hpp LowLatencyLayout: num_bytes_per_dispatch_msg = sizeof(int4) + ...
DEEPEP_LL_HEADER_BYTES = 16


def default_dispatch_dtype(a2a: str, act_dtype: str) -> str:
    """The dispatch dtype when none is given: fp8 for DeepEP (as DeepSeek-V3 runs it), else the
    activations'."""
    return "fp8" if a2a.startswith("deepep") else act_dtype


def vector_bytes(hidden: int, dtype: str, a2a: str = "direct", combine: bool = False) -> int:
    """Bytes of one token's hidden vector in the all-to-all: `hidden * dtype bytes`, plus for fp8
    one fp32 scale per 128 channels, plus DeepEP low-latency's header on dispatch messages."""
    size = hidden * ACT_DTYPE_BYTES[dtype]
    if dtype == "fp8":
        size += 4 * -(-hidden // FP8_SCALE_CHANNELS)
    if a2a == "deepep-ll" and not combine:
        size += DEEPEP_LL_HEADER_BYTES
    return size


# DeepEP's buffers are aligned to this many bytes (csrc/kernels/configs.cuh
# NUM_BUFFER_ALIGNMENT_BYTES, V1).
_DEEPEP_ALIGN = 128


def _align(size: int, to: int) -> int:
    return -(-size // to) * to


def deepep_ll_buffer_bytes(max_tokens_per_rank: int, hidden: int, num_experts: int) -> int:
    """Bytes of DeepEP's low-latency RDMA buffer on each rank: `get_low_latency_rdma_size_hint`
    (deep_ep/buffer.py -> csrc/config.hpp LowLatencyLayout, V1 commit 567632d), buffers sized
    by the most tokens any rank dispatches (`max_tokens_per_rank`, fixed at start-up):
    - dispatch message: int4 header + max(bf16 hidden, fp8 hidden + one fp32 scale per 128);
    - combine message: per-128-channel bf16x2 min/max + bf16 hidden;
    - send and receive buffers, each the larger of dispatch and combine, the receive side one
      slot per (expert, token) (every expert may get every rank's tokens), odd/even doubled;
    - signalling: one int per expert, aligned to 128, doubled; the hint rounds the total up
      past the next 128 bytes (`(n + 128) / 128 * 128`).
    """
    scales = hidden // 128
    dispatch_msg = 16 + max(hidden * 2, hidden + scales * 4)
    combine_msg = scales * 4 + hidden * 2
    send = max(max_tokens_per_rank * dispatch_msg,
               num_experts * max_tokens_per_rank * combine_msg)
    recv = num_experts * max_tokens_per_rank * max(dispatch_msg, combine_msg)
    signal = _align(num_experts * 4, _DEEPEP_ALIGN)
    total = 2 * send + 2 * recv + 2 * signal
    return (total + _DEEPEP_ALIGN) // _DEEPEP_ALIGN * _DEEPEP_ALIGN


def a2a_dedup(a2a: str, dedup: str) -> str:
    """The dedup an implementation runs: DeepEP normal dedups by node, low-latency sends one
    message per (token, expert); direct runs what was asked."""
    return {"deepep-normal": "node", "deepep-ll": "none"}.get(a2a, dedup)

@dataclass(frozen=True)
class GroupCollective:
    """One ring collective among `ranks`; `chunk_bytes[i]` is rank i's share of the buffer.

    For a reduce-scatter the buffer is each rank's input and rank i ends with chunk i reduced;
    for an all-gather rank i contributes chunk i and every rank ends with the whole buffer.
    """

    phase: str
    op: Literal["reducescatter", "allgather"]
    ranks: tuple[int, ...]
    chunk_bytes: tuple[int, ...]

    @property
    def buffer_bytes(self) -> int:
        """Whole buffer size, as nccl-tests counts it."""
        return int(sum(self.chunk_bytes))


def ring_bytes_matrix(coll: GroupCollective, world: int) -> np.ndarray:
    """Exact bytes `[src, dst]` a ring collective sends.

    Ring reduce-scatter: rank i sends to i+1 every chunk except its own; ring all-gather: every
    chunk except its successor's (the successor already has it).
    """
    matrix = np.zeros((world, world), dtype=np.int64)
    n = len(coll.ranks)
    if n < 2:
        return matrix
    chunks = np.asarray(coll.chunk_bytes, dtype=np.int64)
    src = np.asarray(coll.ranks)
    dst = np.roll(src, -1)
    excluded = chunks if coll.op == "reducescatter" else np.roll(chunks, -1)
    matrix[src, dst] = chunks.sum() - excluded
    return matrix


@dataclass(frozen=True)
class Traffic:
    """Exact traffic of one step of a trace on a placement."""

    parallelism: Parallelism
    num_experts: int
    top_k: int
    hidden_bytes: int  # bytes of one hidden vector: hidden * act_bytes
    dedup: str
    dispatch_bytes: np.ndarray  # [L, W, W] int64, diagonal = local copies
    moe_tp_gather_bytes: np.ndarray  # [L, W, W] int64, zero unless moe_tp > 1
    attn_collectives: tuple[GroupCollective, ...]  # attention TP, same every layer
    sp_bytes: np.ndarray  # [W, W] int64, sequence-parallel attention exchange per layer
    expert_load: np.ndarray  # [L, E] tokens per expert (top-k assignments)
    rank_expert_tokens: np.ndarray  # [L, W, S] tokens each of a rank's expert slots processes
    tokens_per_rank: np.ndarray  # [W] tokens each rank dispatches
    experts: ExpertPlacement  # which EP ranks hold which experts
    a2a: str = "direct"  # the all-to-all implementation (module doc)
    dispatch_vector_bytes: int = 0  # bytes per dispatched vector (0: hidden_bytes)
    combine_vector_bytes: int = 0  # bytes per combined vector (0: hidden_bytes)

    @property
    def dispatch_vector_size(self) -> int:
        """Bytes of one dispatched vector."""
        return self.dispatch_vector_bytes or self.hidden_bytes

    @property
    def combine_vector_size(self) -> int:
        """Bytes of one combined vector."""
        return self.combine_vector_bytes or self.hidden_bytes

    @property
    def num_layers(self) -> int:
        """MoE layers L."""
        return int(self.dispatch_bytes.shape[0])

    @property
    def world(self) -> int:
        """Ranks W."""
        return int(self.dispatch_bytes.shape[1])

    @property
    def combine_bytes(self) -> np.ndarray:
        """Combine is dispatch reversed, in the combine's vector size: `[L, W, W]`."""
        reverse = self.dispatch_bytes.transpose(0, 2, 1)
        if self.combine_vector_size == self.dispatch_vector_size:
            return reverse
        return reverse // self.dispatch_vector_size * self.combine_vector_size

    @property
    def moe_tp_scatter_bytes(self) -> np.ndarray:
        """The MoE-TP reduce-scatter returns what the all-gather brought: `[L, W, W]`."""
        return self.moe_tp_gather_bytes.transpose(0, 2, 1)

    @property
    def attn_tp_bytes(self) -> np.ndarray:
        """Bytes `[W, W]` of the attention-TP collectives of one layer."""
        total = np.zeros((self.world, self.world), dtype=np.int64)
        for coll in self.attn_collectives:
            total += ring_bytes_matrix(coll, self.world)
        return total

    def attn_collective_bytes(self, phase: str) -> int:
        """Bytes per layer of the attention-TP collectives tagged `phase`."""
        return int(
            sum(
                ring_bytes_matrix(coll, self.world).sum()
                for coll in self.attn_collectives
                if coll.phase == phase
            )
        )

    def dispatch_cross_bytes(self) -> np.ndarray:
        """Cross-rank dispatch bytes per layer `[L]`."""
        per_layer = self.dispatch_bytes.sum(axis=(1, 2))
        return per_layer - self.dispatch_local_bytes()

    def dispatch_local_bytes(self) -> np.ndarray:
        """Local (same-rank) dispatch bytes per layer `[L]`."""
        return np.trace(self.dispatch_bytes, axis1=1, axis2=2)

    def combine_cross_bytes(self) -> np.ndarray:
        """Cross-rank combine bytes per layer `[L]`."""
        vectors = self.dispatch_cross_bytes() // self.dispatch_vector_size
        return vectors * self.combine_vector_size

    def a2a_bytes_per_layer(self) -> np.ndarray:
        """Cross-rank dispatch plus combine bytes per layer `[L]`."""
        return self.dispatch_cross_bytes() + self.combine_cross_bytes()

    def local_bytes_per_layer(self) -> np.ndarray:
        """Local dispatch plus combine copies per layer `[L]`."""
        vectors = self.dispatch_local_bytes() // self.dispatch_vector_size
        return self.dispatch_local_bytes() + vectors * self.combine_vector_size

    def attn_comm_bytes_per_layer(self) -> int:
        """Attention-side collective bytes of one layer: the attention-TP reduce-scatter after
        attention plus the SP exchange (the same in every layer)."""
        return self.attn_collective_bytes("attn_comm") + int(self.sp_bytes.sum())

    def moe_comm_bytes_per_layer(self) -> np.ndarray:
        """MoE-side collective bytes per layer `[L]`: the MoE-TP all-gather and the
        reduce-scatter that returns it, plus the attention-TP all-gather after combine."""
        return (2 * self.moe_tp_gather_bytes.sum(axis=(1, 2))
                + self.attn_collective_bytes("moe_comm"))

    def rank_load(self) -> np.ndarray:
        """Token-expert pairs each rank's experts process, per layer `[L, W]`."""
        return self.rank_expert_tokens.sum(axis=2)


def check_trace_fits_model(trace: RouterTrace, model: ModelSpec) -> None:
    """Raise TraceError unless the trace's layers, k and expert ids fit `model`."""
    if trace.max_expert_id >= model.num_experts:
        raise TraceError(
            f"trace holds expert id {trace.max_expert_id} but model {model.name} has "
            f"{model.num_experts} experts (ids 0..{model.num_experts - 1}); pass the model the "
            "trace was recorded from (--model)"
        )
    if trace.num_layers != model.num_moe_layers:
        raise TraceError(
            f"trace has {trace.num_layers} MoE layers but model {model.name} has "
            f"{model.num_moe_layers}; pass the matching --model or trace"
        )
    if trace.top_k != model.top_k:
        raise TraceError(
            f"trace has top-k {trace.top_k} but model {model.name} routes to top-{model.top_k}; "
            "pass the matching --model or trace"
        )
    if trace.num_tokens == 0:
        raise TraceError("trace holds no tokens; give a trace with at least one token")


def _pair_counts(
    num_layers: int, world: int, src: np.ndarray, dst: np.ndarray, keep: np.ndarray
) -> np.ndarray:
    """Count (layer, src, dst) triples where `keep`; src/dst broadcast to `keep`'s [L, T, k]."""
    layer = np.arange(num_layers).reshape(-1, 1, 1)
    flat = (layer * world + src) * world + dst
    counts = np.bincount(flat[keep], minlength=num_layers * world * world)
    return counts.reshape(num_layers, world, world).astype(np.int64)


def _dispatch_counts(
    src: np.ndarray, dst: np.ndarray, world: int, gpus_per_node: int, dedup: str
) -> np.ndarray:
    """Vectors sent per (layer, src, dst) for dispatch; `src` [T], `dst` [L, T, k]."""
    num_layers = dst.shape[0]
    s = src.reshape(1, -1, 1)
    if dedup == "none":
        return _pair_counts(num_layers, world, s, dst, np.ones(dst.shape, dtype=bool))
    d = np.sort(dst, axis=2)
    first_rank = np.ones(d.shape, dtype=bool)
    first_rank[:, :, 1:] = d[:, :, 1:] != d[:, :, :-1]
    if dedup == "gpu":
        return _pair_counts(num_layers, world, s, d, first_rank)
    node_d, node_s = d // gpus_per_node, s // gpus_per_node
    same_node = node_d == node_s
    first_node = np.ones(d.shape, dtype=bool)
    first_node[:, :, 1:] = node_d[:, :, 1:] != node_d[:, :, :-1]
    relay = node_d * gpus_per_node + s % gpus_per_node
    direct = _pair_counts(num_layers, world, s, d, first_rank & same_node)
    to_relay = _pair_counts(num_layers, world, s, relay, first_node & ~same_node)
    forward = _pair_counts(num_layers, world, relay, d, first_rank & ~same_node & (d != relay))
    return direct + to_relay + forward


# Routed entries from which `_src_expert_counts` counts rank by rank (below, the one bincount
# is as fast).
_BLOCKED_COUNT_ENTRIES = 1 << 16


def _src_expert_counts(
    src: np.ndarray, experts: np.ndarray, world: int, num_experts: int
) -> np.ndarray:
    """Token-expert pairs per (layer, dispatching rank, expert): `[L, W, E]`. Where the tokens
    are in dispatching-rank order (a step's tokens by attention group), one bincount per rank
    over its block of tokens, with (layer, expert) keys in the smallest integers that hold
    them (blocks stay in cache; for large steps); else one bincount over (layer, rank,
    expert) keys."""
    num_layers = experts.shape[0]
    if experts.size >= _BLOCKED_COUNT_ENTRIES and bool(np.all(src[1:] >= src[:-1])):
        keys = num_layers * num_experts
        dtype = np.int16 if keys <= np.iinfo(np.int16).max else np.int64
        layer_key = (np.arange(num_layers, dtype=dtype) * dtype(num_experts)).reshape(-1, 1, 1)
        bounds = np.searchsorted(src, np.arange(world + 1))
        counts = np.zeros((num_layers, world, num_experts), dtype=np.int64)
        for rank in np.flatnonzero(np.diff(bounds)).tolist():
            block = experts[:, bounds[rank]: bounds[rank + 1], :].astype(dtype, copy=False)
            counts[:, rank, :] = np.bincount((block + layer_key).ravel(), minlength=keys
                                             ).reshape(num_layers, num_experts)
        return counts
    layer = np.arange(num_layers, dtype=np.int64).reshape(-1, 1, 1)
    flat = (layer * world + src.reshape(1, -1, 1)) * num_experts + experts
    counts = np.bincount(flat.ravel(), minlength=num_layers * world * num_experts)
    return counts.reshape(num_layers, world, num_experts).astype(np.int64)


def _dispatch_from_counts(
    par: Parallelism, placement: ExpertPlacement, counts: np.ndarray
) -> np.ndarray:
    """Dedup `none` dispatch vectors `[L, W, W]` from per-(layer, src, expert) counts, for a
    placement without replicas (each expert's one home EP index)."""
    num_layers, world, _ = counts.shape
    ranks = par.ranks()
    home = placement.holders[0][:, :, 0]  # [L, E]
    dst = moe_rank(par, ranks.reshape(1, -1, 1), home[:, None, :])  # [L, W, E]
    layer = np.arange(num_layers).reshape(-1, 1, 1)
    flat = (layer * world + ranks.reshape(1, -1, 1)) * world + dst
    out = np.bincount(flat.ravel(), weights=counts.ravel(), minlength=num_layers * world * world)
    return out.reshape(num_layers, world, world).round().astype(np.int64)


def _slot_tokens_by_rank(par: Parallelism, per_replica: np.ndarray) -> np.ndarray:
    """`[L, W, S]` from tokens per (layer, MoE-DP replica, EP index, slot): every MoE-TP rank of
    an EP index works on all of its tokens."""
    ranks = par.ranks()
    return per_replica[:, moe_dp_index(par, ranks), moe_ep_index(par, ranks), :]


def _rank_expert_tokens(
    par: Parallelism, placement: ExpertPlacement, counts: np.ndarray
) -> np.ndarray:
    """Tokens each rank's expert slots process `[L, W, S]`, no replicas: each expert's tokens
    from all dispatching ranks of the MoE-DP replica land in its one slot."""
    num_layers, world, num_experts = counts.shape
    replicas = counts.reshape(num_layers, par.moe_dp, world // par.moe_dp, num_experts).sum(axis=2)
    held = placement.slot_expert  # [L, ep, S]
    layer = np.arange(num_layers).reshape(-1, 1, 1, 1)
    replica = np.arange(par.moe_dp).reshape(1, -1, 1, 1)
    per_replica = replicas[layer, replica, np.maximum(held, 0)[:, None, :, :]]  # [L, dp, ep, S]
    per_replica = np.where(held[:, None, :, :] >= 0, per_replica, 0)
    return _slot_tokens_by_rank(par, per_replica)


def _routed_slot_tokens(
    par: Parallelism, placement: ExpertPlacement, src: np.ndarray, ep_index: np.ndarray,
    slot: np.ndarray,
) -> np.ndarray:
    """Tokens each rank's expert slots process `[L, W, S]`, from every assignment's copy."""
    num_layers = ep_index.shape[0]
    shape = (num_layers, par.moe_dp, par.moe_ep, placement.slots)
    layer = np.broadcast_to(np.arange(num_layers).reshape(-1, 1, 1), ep_index.shape)
    replica = np.broadcast_to(moe_dp_index(par, src).reshape(1, -1, 1), ep_index.shape)
    flat = np.ravel_multi_index((layer, replica, ep_index, slot), shape)
    per_replica = np.bincount(flat.ravel(), minlength=int(np.prod(shape))).reshape(shape)
    return _slot_tokens_by_rank(par, per_replica.astype(np.int64))


def _moe_tp_gather(par: Parallelism, unique_rows: np.ndarray, hidden_bytes: int) -> np.ndarray:
    """All-gather of the tokens each MoE-TP shard received: `[L, W, W]` bytes.

    `unique_rows[l, r]` is the number of distinct tokens rank r received in layer l.
    """
    num_layers, world = unique_rows.shape
    gather = np.zeros((num_layers, world, world), dtype=np.int64)
    if par.moe_tp == 1:
        return gather
    ranks = par.ranks()
    group = ranks // par.moe_tp
    same_group = (group[:, None] == group[None, :]) & (ranks[:, None] != ranks[None, :])
    gather[:] = unique_rows[:, :, None] * hidden_bytes * same_group[None, :, :]
    return gather


def _attn_collectives(
    par: Parallelism, group_tokens: np.ndarray, hidden_bytes: int
) -> tuple[GroupCollective, ...]:
    """Attention-TP reduce-scatter (after attention) and all-gather (after combine), per group."""
    if par.attn_tp == 1:
        return ()
    colls: list[GroupCollective] = []
    for group, tokens in enumerate(group_tokens):
        ranks = tuple(range(group * par.attn_tp, (group + 1) * par.attn_tp))
        chunks = tuple(int(n) * hidden_bytes for n in block_sizes(int(tokens), par.attn_tp))
        colls.append(GroupCollective("attn_comm", "reducescatter", ranks, chunks))
        colls.append(GroupCollective("moe_comm", "allgather", ranks, chunks))
    return tuple(colls)


def _sp_bytes(
    par: Parallelism,
    tokens_per_rank_group: np.ndarray,
    model: ModelSpec,
    act_bytes: int,
    phase: str,
    variant: str,
) -> np.ndarray:
    """Sequence-parallel attention exchange per layer `[W, W]`.

    Prefill: each SP rank's K/V block goes to the other SP ranks of its group (`allgather`:
    directly to each; `ring`: passed around the ring, every block except the receiver's own).
    Decode: the KV cache is sharded over SP ranks; each token's query goes to every other SP rank
    and a partial output (plus fp32 log-sum-exp per head) comes back.
    KV heads are sharded over attention TP, so per-rank sizes are divided by `attn_tp`.
    """
    world = par.world
    matrix = np.zeros((world, world), dtype=np.int64)
    if par.attn_sp == 1:
        return matrix
    ranks = par.ranks()
    sp_index = (ranks // par.attn_tp) % par.attn_sp
    # ranks of one SP group share the DP index and the TP index
    sp_group = (ranks // (par.attn_tp * par.attn_sp)) * par.attn_tp + ranks % par.attn_tp
    peers = (sp_group[:, None] == sp_group[None, :]) & (ranks[:, None] != ranks[None, :])
    tokens = tokens_per_rank_group[ranks // par.attn_tp]  # tokens of each rank's group block
    if phase == "prefill":
        block = tokens * model.kv_bytes_per_token_per_layer_per_rank(par.attn_tp, act_bytes)
        if variant == "allgather":
            return block[:, None] * peers
        # rank r = dp*(tp*sp) + sp_index*tp + tp_index; its ring successor has sp_index + 1
        successor = ranks + (((sp_index + 1) % par.attn_sp) - sp_index) * par.attn_tp
        group_total = np.bincount(sp_group, weights=block).astype(np.int64)[sp_group]
        matrix[ranks, successor] = group_total - block[successor]
        return matrix
    heads = model.heads_per_rank(par.attn_tp)
    q_bytes = heads * model.head_dim * act_bytes
    out_bytes = heads * (model.value_head_dim * act_bytes + 4)
    return tokens[:, None] * q_bytes * peers + tokens[None, :] * out_bytes * peers


def compute_traffic(
    trace: RouterTrace,
    model: ModelSpec,
    par: Parallelism,
    *,
    experts: ExpertPlacement | None = None,
    token_group: np.ndarray | None = None,
    act_dtype: ActDtype = "bf16",
    dedup: Dedup = "none",
    gpus_per_node: int | None = None,
    phase: Phase = "prefill",
    sp_variant: SpVariant = "ring",
    a2a: A2aImpl = "direct",
    dispatch_dtype: ActDtype | None = None,
) -> Traffic:
    """Exact traffic and per-rank expert work of one step that runs every token of `trace`,
    with `experts` placed as given (default: the contiguous placement) and each token run by
    the attention group `token_group` gives (default: contiguous blocks in token order)."""
    check_tp_fits_model(par, model.num_attention_heads, model.expert_ffn_size)
    check_trace_fits_model(trace, model)
    if experts is None:
        experts = contiguous_placement(model.num_experts, par.moe_ep, trace.num_layers)
    _check_placement_fits(experts, model, par, trace)
    gpus_per_node = gpus_per_node or par.world
    if par.world % gpus_per_node:
        raise PlacementError(
            f"world {par.world} is not a multiple of gpus_per_node {gpus_per_node}; use whole nodes"
        )
    act_bytes = ACT_DTYPE_BYTES[act_dtype]
    hidden_bytes = model.hidden_size * act_bytes
    dedup = a2a_dedup(a2a, dedup)  # type: ignore[assignment]
    send_dtype = dispatch_dtype or default_dispatch_dtype(a2a, act_dtype)
    dispatch_vector = vector_bytes(model.hidden_size, send_dtype, a2a)
    combine_vector = vector_bytes(model.hidden_size, act_dtype, a2a, combine=True)
    if a2a != "direct" and par.moe_tp > 1 and par.moe_ep > 1:
        raise PlacementError(f"placement {par.label}: a2a {a2a} runs with moe_tp 1 (DeepEP and "
                             "the all-gather path serve expert parallelism; MoE tensor parallel "
                             "is modelled with a2a direct); use --a2a direct or a layout without "
                             "MoE TP")
    chosen = trace.experts  # [L, T, k] int16
    src = token_source_rank(par, trace.num_tokens, token_group)  # [T]
    counts = _src_expert_counts(src, chosen, par.world, model.num_experts)  # [L, W, E]
    unique_rows = np.zeros((trace.num_layers, par.world), dtype=np.int64)
    if dedup == "none" and not experts.has_replicas:
        dispatch = _dispatch_from_counts(par, experts, counts)
        rank_tokens = _rank_expert_tokens(par, experts, counts)
    if dedup != "none" or par.moe_tp > 1 or experts.has_replicas:  # per-token destinations
        dst, ep_index, slot = route_assignments(experts, par, src, chosen, gpus_per_node)
        if dedup != "none" or experts.has_replicas:
            dispatch = _dispatch_counts(src, dst, par.world, gpus_per_node, dedup)
            rank_tokens = _routed_slot_tokens(par, experts, src, ep_index, slot)
        if par.moe_tp > 1:  # distinct tokens each rank received, for the MoE-TP all-gather
            unique_rows = _dispatch_counts(src, dst, par.world, gpus_per_node, "gpu").sum(axis=1)
    if a2a == "allgather":
        dispatch = _allgather_vectors(par, src, trace.num_layers)
    dispatch = dispatch * dispatch_vector
    if token_group is None:
        group_tokens = block_sizes(trace.num_tokens, par.token_groups)
    else:
        group_tokens = np.bincount(token_group, minlength=par.token_groups).astype(np.int64)
    return Traffic(
        parallelism=par,
        num_experts=model.num_experts,
        top_k=model.top_k,
        hidden_bytes=hidden_bytes,
        dedup=dedup,
        dispatch_bytes=dispatch,
        moe_tp_gather_bytes=_moe_tp_gather(par, unique_rows, hidden_bytes),
        attn_collectives=_attn_collectives(par, group_tokens, hidden_bytes),
        sp_bytes=_sp_bytes(par, group_tokens, model, act_bytes, phase, sp_variant),
        expert_load=counts.sum(axis=1),
        rank_expert_tokens=rank_tokens,
        tokens_per_rank=np.bincount(src, minlength=par.world).astype(np.int64),
        experts=experts,
        a2a=a2a,
        dispatch_vector_bytes=dispatch_vector,
        combine_vector_bytes=combine_vector,
    )


def _allgather_vectors(par: Parallelism, src: np.ndarray, num_layers: int) -> np.ndarray:
    """`[L, W, W]` vectors of an all-gather dispatch: every token rank s dispatches goes to every
    rank of s's MoE group (its MoE-DP replica; moe_tp is 1), the diagonal its own copy."""
    ranks = par.ranks()
    sent = np.bincount(src, minlength=par.world).astype(np.int64)
    same = moe_dp_index(par, ranks)[:, None] == moe_dp_index(par, ranks)[None, :]
    return np.broadcast_to(sent[:, None] * same, (num_layers, par.world, par.world)).copy()


def _check_placement_fits(
    experts: ExpertPlacement, model: ModelSpec, par: Parallelism, trace: RouterTrace
) -> None:
    """Raise PlacementError unless the expert placement matches the model, layout and trace."""
    if (experts.num_experts, experts.moe_ep, experts.num_layers) != (
        model.num_experts, par.moe_ep, trace.num_layers
    ):
        raise PlacementError(
            f"expert placement {experts.name} is for {experts.num_experts} experts on "
            f"{experts.moe_ep} EP ranks over {experts.num_layers} MoE layers, but the run has "
            f"{model.num_experts} experts, moe_ep={par.moe_ep} and {trace.num_layers} layers"
        )
