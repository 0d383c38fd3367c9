"""Workload: the tokens of one step (prefill or decode), drawn from a router trace.

The trace's sequences are its runs of equal `seq_id`. Sequence b of a step replays trace
sequence `b mod S` (S sequences in the trace), so locality within a sequence (consecutive
tokens repeating experts, Mixtral paper Table 5) is kept:
- prefill, `batch` B sequences of `context` C tokens: sequence b takes the first C tokens of its
  trace sequence; token i attends to i+1 keys;
- decode step s (0, 1, ...) of B sequences at context C: sequence b takes the token at offset
  `o_b + s` of its trace sequence and attends to C+s+1 cached keys, so consecutive decode steps
  walk along real sequences and the context grows; `o_b` spreads sequences that reuse the same
  trace sequence apart;
- no batch/context: the whole trace is one step; prefill tokens attend to pos+1 keys, decode
  tokens to pos+1 cached keys.

Prefill runs in chunks of at most `chunk_tokens` tokens, as serving engines schedule it
(`prefill_chunks`): whole prompts are packed into a chunk when they fit, a longer prompt is cut
into pieces at growing offsets (each piece attends to the cached prefix). TTFT of a batch is the
sum of its chunk steps.

A trace sequence shorter than what a step needs is tiled (wrapped), and a trace with fewer
sequences than the batch is reused; the step says so in `notes`, never silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.errors import ConfigError
from moesim.inputs.options import Phase
from moesim.trace.format import RouterTrace
from moesim.traffic.placement import block_owner, block_sizes

__all__ = ["StepWorkload", "PrefillChunk", "build_step", "prefill_chunks", "trace_sequences",
           "split_step", "take_tokens", "mtp_tokens_per_step", "mtp_rates", "check_step_size",
           "MAX_STEP_ENTRIES", "MAX_PREFILL_CHUNK_STEPS"]

# Routed entries (tokens x MoE layers x k) of one step. A step's expert ids (int16), gate
# weights (float32) and the indices and ranks computed from them take ~20 bytes an entry
# (measured: a 64M-entry Mixtral decode step peaks at 1.25 GB), so 2**28 entries is ~5 GiB:
# a 4M-token step of Mixtral-8x7B (32 layers, top-2) or a 578k-token step of DeepSeek-V3
# (58 x top-8), 10-100x the largest prefill chunk or decode batch serving engines schedule.
# Larger steps are refused before anything is allocated.
MAX_STEP_ENTRIES = 1 << 28
# Chunk steps of one prompt's prefill (ceil(context / prefill_chunk_tokens)): each is built
# and timed (~0.1 s in des) for the TTFT. 16384 covers the longest context a scenario takes
# (moesim.inputs.config.MAX_CONTEXT_TOKENS) at the default 8192-token chunk; beyond it a tiny
# chunk would build millions of steps.
MAX_PREFILL_CHUNK_STEPS = 16384


def check_step_size(tokens: int, layers: int, top_k: int, what: str, fix: str) -> None:
    """Refuse a step of `tokens` tokens routed over `layers` x `top_k` beyond MAX_STEP_ENTRIES
    (`what` describes the step, `fix` says which inputs to lower)."""
    entries = tokens * max(layers, 1) * max(top_k, 1)
    if entries > MAX_STEP_ENTRIES:
        raise ConfigError(
            f"{what} = {tokens:,} tokens x {layers} MoE layers x top-{top_k} = {entries:.3g} "
            f"routed entries, above the {MAX_STEP_ENTRIES:,} moesim builds for one step (~20 "
            f"bytes each, ~5 GiB at the limit); {fix}")


@dataclass(frozen=True)
class StepWorkload:
    """Tokens of one step and the attention keys each token attends to.

    A step that mixes prefill chunks and decodes (a continuous-batching iteration) says per
    token which attention group runs it (`token_group`, default: contiguous blocks in token
    order), how many KV-cache tokens its attention reads (`kv_read_per_token`, default from
    the phase) and whether it produces logits (`logits_per_token`, default from the phase).
    """

    phase: Phase
    trace: RouterTrace  # the step's tokens
    keys_per_token: np.ndarray  # [T] keys each token's attention reads (itself included)
    num_sequences: int
    notes: tuple[str, ...] = ()
    prefix_tokens: int = 0  # prefill: tokens each sequence already has in the KV cache
    token_group: np.ndarray | None = None  # [T] attention token group of each token
    kv_read_per_token: np.ndarray | None = None  # [T] KV-cache tokens read per token
    logits_per_token: np.ndarray | None = None  # [T] bool: the token's logits are computed

    def group_of_tokens(self, groups: int) -> np.ndarray:
        """`[T]` attention token group of each token."""
        if self.token_group is not None:
            return self.token_group
        return block_owner(self.num_tokens, groups)

    def per_group(self, values: np.ndarray, groups: int) -> np.ndarray:
        """`[groups]` sums of the per-token `values` over each attention group's tokens."""
        values = np.asarray(values, dtype=np.float64)
        if self.token_group is not None:
            return np.bincount(self.token_group, weights=values, minlength=groups)
        sizes = block_sizes(values.size, groups)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        sums = np.add.reduceat(values, starts) if values.size else np.zeros(groups)
        return np.where(sizes > 0, sums, 0)

    def group_sizes(self, groups: int) -> np.ndarray:
        """`[groups]` tokens of each attention group."""
        if self.token_group is not None:
            return np.bincount(self.token_group, minlength=groups).astype(np.int64)
        return block_sizes(self.num_tokens, groups)

    @property
    def kv_tokens_read_per_token(self) -> float:
        """Prefill: KV-cache tokens read per step token (the chunk plus its cached prefix)."""
        if self.num_tokens == 0 or self.num_sequences == 0:
            return 1.0
        length = self.num_tokens / self.num_sequences
        return (self.prefix_tokens + length) / length

    @property
    def num_tokens(self) -> int:
        """Tokens in the step."""
        return self.trace.num_tokens


def trace_sequences(trace: RouterTrace) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of each run of equal `seq_id` in trace order."""
    starts = np.flatnonzero(np.r_[True, trace.seq_id[1:] != trace.seq_id[:-1]])
    lengths = np.diff(np.r_[starts, trace.num_tokens])
    return starts, lengths


def take_tokens(
    trace: RouterTrace, index: np.ndarray, seq_id: np.ndarray, pos: np.ndarray
) -> RouterTrace:
    """The trace's tokens at `index` (integers), renumbered as sequences `seq_id` at positions
    `pos` (`np.take` along the token axis: ~10x faster than fancy indexing of the middle axis)."""
    index = np.asarray(index, dtype=np.int64)
    return trace.derived(
        np.take(trace.experts, index, axis=1), seq_id, pos,
        None if trace.weights is None else np.take(trace.weights, index, axis=1))



def _reuse_notes(
    batch: int, lengths: np.ndarray, wrapped: np.ndarray, needed: int
) -> tuple[str, ...]:
    """Say when trace sequences are reused (batch > sequences) or wrapped (`wrapped` per b)."""
    notes = []
    if batch > lengths.size:
        notes.append(
            f"the trace has {lengths.size} sequences but the batch has {batch}: trace sequences "
            "are reused (same routing for several sequences); capture or synthesise more "
            "sequences (`moesim trace synth`) for independent ones"
        )
    if np.any(wrapped):
        used = lengths[np.arange(batch) % lengths.size]
        notes.append(
            f"trace sequences of {int(used.min())}..{int(used.max())} tokens were tiled to the "
            f"{needed} tokens a sequence needs (routing repeats); use a longer trace"
        )
    return tuple(notes)


@dataclass(frozen=True)
class PrefillChunk:
    """`repeats` identical prefill steps of `sequences` prompts, tokens offset..offset+length."""

    sequences: int
    offset: int
    length: int
    repeats: int


def prefill_chunks(batch: int, context: int, chunk_tokens: int) -> list[PrefillChunk]:
    """The chunk steps that prefill `batch` prompts of `context` tokens, `chunk_tokens` at most.

    Prompts that fit are packed whole (`chunk_tokens // context` per step, the rest in one
    smaller step); a longer prompt is cut into `ceil(context / chunk_tokens)` pieces, each run
    for every prompt of the batch. More than MAX_PREFILL_CHUNK_STEPS pieces is a ConfigError.
    """
    pieces = -(-context // chunk_tokens)
    if pieces > MAX_PREFILL_CHUNK_STEPS:
        raise ConfigError(
            f"context {context:,} tokens in prefill chunks of {chunk_tokens:,} "
            f"(prefill_chunk_tokens) is {pieces:,} chunk steps, above the "
            f"{MAX_PREFILL_CHUNK_STEPS:,} moesim builds and times for one prefill; raise "
            "prefill_chunk_tokens (--prefill-chunk-tokens) or lower context (--context)")
    if context <= chunk_tokens:
        per_step = min(batch, chunk_tokens // context)
        chunks = [PrefillChunk(per_step, 0, context, batch // per_step)]
        if batch % per_step:
            chunks.append(PrefillChunk(batch % per_step, 0, context, 1))
        return chunks
    return [
        PrefillChunk(1, offset, min(chunk_tokens, context - offset), batch)
        for offset in range(0, context, chunk_tokens)
    ]


def build_step(
    trace: RouterTrace,
    phase: Phase,
    batch: int | None = None,
    context: int | None = None,
    decode_step: int = 0,
    offset: int = 0,
    tokens_per_sequence: int = 1,
) -> StepWorkload:
    """The step of `phase` for `batch` sequences at `context` tokens, drawn from `trace`.

    A prefill step with `offset` holds tokens offset..offset+context-1 of each prompt (a piece of
    a chunked prefill); they attend to the cached prefix too. A decode step with
    `tokens_per_sequence` n > 1 (multi-token prediction's verify step) runs each sequence's next
    n trace tokens at positions C+s .. C+s+n-1.
    """
    if batch is None and context is None:
        keys = trace.pos.astype(np.int64) + 1
        return StepWorkload(phase, trace, keys, int(np.unique(trace.seq_id).size))
    batch = batch or 1
    last = (context or 0) + offset + decode_step + tokens_per_sequence
    if last > np.iinfo(np.int32).max:  # a trace's positions are int32: never wrap silently
        raise ConfigError(f"context {context}: token positions up to {last:,} do not fit the "
                          "trace's int32 positions; lower context (--context)")
    starts, lengths = trace_sequences(trace)
    if phase == "prefill":
        length = context or int(lengths.max())
        check_step_size(batch * length, trace.num_layers, trace.top_k,
                        f"a prefill step of {batch:,} sequences x {length:,} tokens",
                        "lower batch (--batch), context (--context) or prefill_chunk_tokens "
                        "(--prefill-chunk-tokens)")
    else:
        check_step_size(batch * tokens_per_sequence, trace.num_layers, trace.top_k,
                        f"a decode step of {batch:,} sequences x {tokens_per_sequence} tokens",
                        "lower batch (--batch) or mtp (--mtp)")
    seq = np.arange(batch) % starts.size  # trace sequence replayed by each step sequence
    if phase == "prefill":
        context = context or int(lengths.max())
        positions = offset + np.arange(context)
        wrapped = positions[None, :] % lengths[seq][:, None]  # [B, C]
        index = (starts[seq][:, None] + wrapped).reshape(-1)
        pos = np.tile(positions, batch)
        step = take_tokens(trace, index, np.repeat(np.arange(batch), context), pos)
        notes = _reuse_notes(batch, lengths, lengths[seq] < offset + context, offset + context)
        return StepWorkload(phase, step, pos.astype(np.int64) + 1, batch, notes, offset)
    context = context if context is not None else int(trace.pos.max()) + 1
    reuse = np.arange(batch) // starts.size  # how many times this trace sequence was used before
    spread = (reuse * lengths[seq]) // max(int(np.ceil(batch / starts.size)), 1)
    n = tokens_per_sequence
    ahead = spread[:, None] + decode_step + np.arange(n)  # [B, n]
    index = (starts[seq][:, None] + ahead % lengths[seq][:, None]).reshape(-1)
    pos = np.tile(context + decode_step + np.arange(n), batch)
    step = take_tokens(trace, index, np.repeat(np.arange(batch), n), pos)
    keys = pos.astype(np.int64) + 1
    wrapped = ahead[:, -1] >= lengths[seq]
    notes = _reuse_notes(batch, lengths, wrapped, int(ahead.max()) + 1)
    # a sequence's n query tokens read its KV cache once (the last one's keys), as decode
    # attention kernels do for several queries per sequence (FlashMLA, FlashInfer)
    kv_read = np.full(batch * n, (context + decode_step + n) / n)
    return StepWorkload(phase, step, keys, batch, notes,
                        kv_read_per_token=kv_read if n > 1 else None)


def mtp_rates(mtp: int, acceptance: list[float]) -> list[float]:
    """The acceptance rate of each of `mtp` draft positions (one rate: every position)."""
    return list(acceptance) * mtp if len(acceptance) == 1 else list(acceptance[:mtp])


def mtp_tokens_per_step(mtp: int, acceptance: list[float]) -> float:
    """Expected tokens a sequence gains per decode step with `mtp` draft tokens: 1 plus, per
    draft position, the chance it and every one before it are accepted (a rejected draft
    ends the step's run): 1 + a1 + a1*a2 + ..."""
    return float(1.0 + np.cumprod(mtp_rates(mtp, acceptance)).sum()) if mtp else 1.0


def split_step(step: StepWorkload, groups: int) -> tuple[StepWorkload, StepWorkload]:
    """Two micro-batches of a step (two-batch overlap): each attention group's tokens cut in
    two, the first ceil(n / 2) (in token order) to micro-batch 0, the rest to 1 (a prefill
    sequence may be cut: its second half attends to the first as to a cached prefix, as
    SGLang's two-batch overlap splits a single long prompt)."""
    group = step.group_of_tokens(groups)
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group, minlength=groups)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank_in_group = np.empty(step.num_tokens, dtype=np.int64)
    rank_in_group[order] = np.arange(step.num_tokens) - starts[group[order]]
    seq = step.trace.seq_id
    first = rank_in_group < ((sizes + 1) // 2)[group]
    # what each token reads and whether it makes logits, as in the whole step
    kv_read = step.kv_read_per_token
    if kv_read is None:
        kv_read = (step.keys_per_token.astype(np.float64) if step.phase == "decode"
                   else np.full(step.num_tokens, step.kv_tokens_read_per_token))
    logits_of = step.logits_per_token
    if logits_of is None:
        logits_of = (np.ones(step.num_tokens, dtype=bool) if step.phase == "decode"
                     else np.r_[seq[1:] != seq[:-1], True])
    parts = []
    for keep in (first, ~first):
        index = np.flatnonzero(keep)
        kv, logits = kv_read[index], logits_of[index]
        parts.append(StepWorkload(
            phase=step.phase,
            trace=step.trace.select_tokens(index),
            keys_per_token=step.keys_per_token[index],
            num_sequences=int(np.unique(seq[index]).size),
            notes=step.notes,
            prefix_tokens=step.prefix_tokens,
            token_group=group[index],
            kv_read_per_token=kv,
            logits_per_token=logits,
        ))
    return parts[0], parts[1]
