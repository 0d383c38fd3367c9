"""One serving iteration as a step: the tokens every scheduler runs, evaluated like any step.

The iteration's tokens are each scheduled request's positions `computed .. computed + n - 1`,
taken from its trace sequence (`TraceSequences`), run by the request's attention group (the
DP scheduler it is on), each attending to its position + 1 keys. A decode token reads its
whole context from the KV cache; a prefill chunk (or a decode verifying draft tokens) reads the
cached prefix and its own K/V once;
logits are computed for the tokens that produce an output token. `moesim.planning.serving`
times the step like any other (traffic of exactly these tokens, costs, plan, backend).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moesim.serve.requests import TraceSequences
from moesim.serve.scheduler import Batch
from moesim.trace.format import RouterTrace
from moesim.traffic.workload import StepWorkload, take_tokens

__all__ = ["iteration_workload"]


def iteration_workload(batches: Sequence[Batch], trace: RouterTrace,
                       sequences: TraceSequences) -> StepWorkload:
    """The step of one iteration: `batches[g]` is attention group g's scheduled requests."""
    entries = [(g, request, tokens) for g, batch in enumerate(batches)
               for request, tokens in batch]
    # per entry: tokens, first position, known tokens, decoding, sequence, offset, id, group
    table = np.array([(n, r.computed, r.known, r.decoding, r.sequence, r.offset, r.id, g)
                      for g, r, n in entries], dtype=np.int64).reshape(-1, 8).T
    counts, first, known, decoding, seq, offset, ids, group = table
    decode = decoding.astype(bool)
    owner = np.repeat(np.arange(len(entries)), counts)
    positions = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    positions += first[owner]
    index = sequences.trace_index(seq[owner], offset[owner], positions)
    tokens = take_tokens(trace, index, ids[owner], positions)
    keys = positions + 1
    # a prefill chunk reads its cached prefix and its own K/V once, and so does a decode with
    # draft tokens (multi-token prediction's verify): (prefix + n) / n per token
    kv_read = ((first + counts) / np.maximum(counts, 1))[owner]
    # the last known token makes the next one; a decode's draft tokens are verified (MTP)
    last = (positions == (known[owner] - 1)) | decode[owner]
    return StepWorkload(
        phase="prefill" if (~decode).any() else "decode",
        trace=tokens,
        keys_per_token=keys,
        num_sequences=len(entries),
        token_group=group[owner],
        kv_read_per_token=kv_read.astype(np.float64),
        logits_per_token=last,
    )
