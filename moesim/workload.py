"""Workload: the tokens of one step (prefill or decode), drawn from a router trace.

- prefill, `batch` B sequences of `context` C tokens: B*C consecutive trace tokens (locality
  within a sequence kept), token i of a sequence attends to i+1 keys;
- decode, B sequences at context C: B trace tokens spread evenly over the trace (different
  sequences), each attends to C+1 keys read from the KV cache;
- no batch/context: the whole trace is one step; prefill tokens attend to pos+1 keys, decode
  tokens to pos+1 cached keys.

A trace shorter than the step is tiled, and the step says so in `notes` (never silently).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.trace.format import RouterTrace

__all__ = ["StepWorkload", "build_step"]


@dataclass(frozen=True)
class StepWorkload:
    """Tokens of one step and the attention keys each token attends to."""

    phase: str
    trace: RouterTrace  # the step's tokens
    keys_per_token: np.ndarray  # [T] keys each token's attention reads (itself included)
    num_sequences: int
    notes: tuple[str, ...] = ()

    @property
    def num_tokens(self) -> int:
        """Tokens in the step."""
        return self.trace.num_tokens


def _take(
    trace: RouterTrace, index: np.ndarray, seq_id: np.ndarray, pos: np.ndarray
) -> RouterTrace:
    """The trace's tokens at `index`, renumbered as sequences `seq_id` at positions `pos`."""
    picked = trace.select_tokens(index)
    return RouterTrace(
        experts=picked.experts,
        seq_id=seq_id,
        pos=pos,
        weights=picked.weights,
        metadata=picked.metadata,
    )


def _tiling_note(needed: int, available: int) -> tuple[str, ...]:
    if needed <= available:
        return ()
    return (
        f"the trace has {available} tokens but the step needs {needed}: the trace was tiled "
        f"{needed / available:.1f}x (repeated routing); capture or synthesise a longer trace "
        "(`moesim trace synth`) for independent tokens",
    )


def build_step(
    trace: RouterTrace, phase: str, batch: int | None = None, context: int | None = None
) -> StepWorkload:
    """The step of `phase` for `batch` sequences at `context` tokens, drawn from `trace`."""
    total = trace.num_tokens
    if batch is None and context is None:
        keys = trace.pos.astype(np.int64) + 1
        sequences = int(np.unique(trace.seq_id).size)
        return StepWorkload(phase, trace, keys, sequences)
    batch = batch or 1
    if phase == "prefill":
        context = context or max(total // batch, 1)
        needed = batch * context
        index = np.arange(needed) % total
        pos = np.tile(np.arange(context), batch)
        seq_id = np.repeat(np.arange(batch), context)
        step = _take(trace, index, seq_id, pos)
        return StepWorkload(
            phase, step, pos.astype(np.int64) + 1, batch, _tiling_note(needed, total)
        )
    context = context if context is not None else int(trace.pos.max()) + 1
    if batch <= total:
        index = np.linspace(0, total - 1, batch).round().astype(np.int64)
    else:
        index = np.arange(batch) % total
    step = _take(trace, index, np.arange(batch), np.full(batch, context))
    keys = np.full(batch, context + 1, dtype=np.int64)
    return StepWorkload(phase, step, keys, batch, _tiling_note(batch, total))
