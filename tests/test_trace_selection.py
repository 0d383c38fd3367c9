"""Selections of a validated trace skip re-checking expert ids and weights, and equal a trace
built (and validated) from the same arrays."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import TraceError
from moesim.trace.format import RouterTrace
from moesim.traffic.workload import take_tokens


def _trace() -> RouterTrace:
    rng = np.random.default_rng(3)
    experts = rng.integers(0, 8, size=(4, 50, 2))
    weights = rng.random((4, 50, 2)).astype(np.float32)
    return RouterTrace(experts=experts, seq_id=np.repeat(np.arange(5), 10),
                       pos=np.tile(np.arange(10), 5), weights=weights, metadata={"model": "m"})


def _same(a: RouterTrace, b: RouterTrace) -> None:
    for name in ("experts", "seq_id", "pos", "weights"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.metadata == b.metadata


@pytest.mark.parametrize("index", [np.array([3, 1, 1, 49]), np.arange(50) % 7 == 0,
                                   [0, 2, 4], np.array([], dtype=np.int64)])
def test_select_tokens_equals_a_validated_trace(index) -> None:  # type: ignore[no-untyped-def]
    trace = _trace()
    got = trace.select_tokens(index)
    fancy = np.asarray(index)
    expected = RouterTrace(experts=trace.experts[:, fancy, :], seq_id=trace.seq_id[fancy],
                           pos=trace.pos[fancy], weights=trace.weights[:, fancy, :],
                           metadata=trace.metadata)
    _same(got, expected)


def test_first_layers_and_take_tokens() -> None:
    trace = _trace()
    _same(trace.first_layers(2), RouterTrace(experts=trace.experts[:2], seq_id=trace.seq_id,
                                             pos=trace.pos, weights=trace.weights[:2],
                                             metadata=trace.metadata))
    index = np.array([5, 6, 7])
    got = take_tokens(trace, index, np.zeros(3, dtype=np.int64), np.arange(3))
    assert np.array_equal(got.experts, trace.experts[:, index, :])
    assert got.seq_id.dtype == np.int32 and got.pos.tolist() == [0, 1, 2]


def test_caller_made_fields_are_still_checked() -> None:
    trace = _trace()
    with pytest.raises(TraceError, match="seq_id"):
        take_tokens(trace, np.array([0, 1]), np.array([0, -1]), np.arange(2))
    with pytest.raises(TraceError, match="pos"):
        take_tokens(trace, np.array([0, 1]), np.zeros(2, int), np.arange(3))
