"""Workload: steps drawn from a trace keep sequence locality; tiling is announced."""

from __future__ import annotations

import numpy as np

from moesim.traffic.workload import PrefillChunk, build_step, prefill_chunks, trace_sequences
from tests.helpers import trace_from

# one layer, top-1; sequence 0 = tokens 0..3 (experts 0,1,2,3), sequence 1 = tokens 4..5 (4,5)
TRACE = trace_from([[[0], [1], [2], [3], [4], [5]]], seq_id=[0, 0, 0, 0, 1, 1])


def test_trace_sequences_are_runs_of_seq_id() -> None:
    """Starts and lengths of the two runs."""
    starts, lengths = trace_sequences(TRACE)
    assert starts.tolist() == [0, 4] and lengths.tolist() == [4, 2]


def test_prefill_replays_whole_sequences() -> None:
    """Prefill 2 x 3: sequence 0 takes experts 0,1,2; sequence 1 wraps its 2 tokens: 4,5,4."""
    step = build_step(TRACE, "prefill", batch=2, context=3)
    assert step.trace.experts[0, :, 0].tolist() == [0, 1, 2, 4, 5, 4]
    assert step.trace.seq_id.tolist() == [0, 0, 0, 1, 1, 1]
    assert step.keys_per_token.tolist() == [1, 2, 3, 1, 2, 3]
    assert any("tiled" in note for note in step.notes)


def test_prefill_without_tiling_has_no_notes() -> None:
    """Two sequences of 2 tokens fit: no note."""
    step = build_step(TRACE, "prefill", batch=2, context=2)
    assert step.notes == ()
    assert step.trace.experts[0, :, 0].tolist() == [0, 1, 4, 5]


def test_decode_steps_walk_along_sequences_with_growing_context() -> None:
    """Decode step s of sequence b is token s of its trace sequence; keys = context + s + 1."""
    first = build_step(TRACE, "decode", batch=2, context=100, decode_step=0)
    second = build_step(TRACE, "decode", batch=2, context=100, decode_step=1)
    assert first.trace.experts[0, :, 0].tolist() == [0, 4]
    assert second.trace.experts[0, :, 0].tolist() == [1, 5]
    assert first.keys_per_token.tolist() == [101, 101]
    assert second.keys_per_token.tolist() == [102, 102]
    assert first.notes == ()


def test_decode_batch_larger_than_trace_reuses_sequences_and_says_so() -> None:
    """Four decode sequences over two trace sequences: reuse is announced, offsets differ."""
    step = build_step(TRACE, "decode", batch=4, context=10)
    assert any("reused" in note for note in step.notes)
    experts = step.trace.experts[0, :, 0]
    assert experts[0] != experts[2]  # the reused sequence starts elsewhere
    assert np.all(step.trace.pos == 10)


def test_prefill_chunks_pack_whole_prompts_then_the_rest() -> None:
    """32 prompts of 2048 in 8192-token chunks: 8 steps of 4; 30 prompts: 7 of 4 and 1 of 2."""
    assert prefill_chunks(32, 2048, 8192) == [PrefillChunk(4, 0, 2048, 8)]
    assert prefill_chunks(30, 2048, 8192) == [
        PrefillChunk(4, 0, 2048, 7),
        PrefillChunk(2, 0, 2048, 1),
    ]


def test_long_prompts_are_cut_into_pieces_at_growing_offsets() -> None:
    """2 prompts of 20000 tokens: pieces at 0, 8192, 16384 (3616 tokens), each run twice."""
    assert prefill_chunks(2, 20000, 8192) == [
        PrefillChunk(1, 0, 8192, 2),
        PrefillChunk(1, 8192, 8192, 2),
        PrefillChunk(1, 16384, 3616, 2),
    ]


def test_a_later_piece_attends_to_its_cached_prefix() -> None:
    """Piece at offset 2 of length 2: positions 2,3 attend to 3,4 keys and read 4/2 = 2 KV
    tokens per step token (its own 2 plus the 2 cached)."""
    step = build_step(TRACE, "prefill", batch=1, context=2, offset=2)
    assert step.trace.pos.tolist() == [2, 3]
    assert step.keys_per_token.tolist() == [3, 4]
    assert step.trace.experts[0, :, 0].tolist() == [2, 3]
    assert step.kv_tokens_read_per_token == 2.0
