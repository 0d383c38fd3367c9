"""Serving metrics with the benchmark clients' definitions (vLLM's serving benchmark, genai-perf).

Per request: TTFT = first output token - arrival (queueing included); TPOT = (last token - first
token) / (output tokens - 1), for requests of two or more output tokens; inter-token latencies
(ITL) = the gaps between consecutive output chunks (tokens produced at the same moment, as
multi-token prediction's accepted drafts are, stream as one chunk: benchmark clients record one
gap per chunk received), pooled over requests; E2E = last token -
arrival. Each is summarised by its mean, p50, p90 and p99 (linear interpolation).

Over the measured requests (the warm-up requests excluded): the window runs from the first
measured arrival to the last measured finish; request throughput = requests / window, output
throughput = output tokens / window (and per GPU), goodput = requests meeting every SLO given /
window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moesim.serve.requests import Request

__all__ = ["Percentiles", "percentiles", "RequestStats", "request_stats"]


@dataclass(frozen=True)
class Percentiles:
    """Mean, p50, p90 and p99 of a sample (seconds); all None for an empty one."""

    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None

    def get(self, name: str) -> float | None:
        """The figure called `name` (mean, p50, p90, p99)."""
        return getattr(self, name)  # type: ignore[no-any-return]


def percentiles(values: Sequence[float] | np.ndarray) -> Percentiles:
    """Mean and the 50th, 90th and 99th percentiles of `values`."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return Percentiles(None, None, None, None)
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return Percentiles(float(data.mean()), float(p50), float(p90), float(p99))


@dataclass(frozen=True)
class RequestStats:
    """The summary of a set of finished requests."""

    requests: int
    output_tokens: int
    window_s: float
    ttft_s: Percentiles
    tpot_s: Percentiles
    itl_s: Percentiles
    e2e_s: Percentiles
    request_throughput_per_s: float
    output_tokens_per_s: float
    goodput_per_s: float | None
    meeting_slo: int | None


def _tpot_s(request: Request) -> float | None:
    if request.output_tokens < 2 or request.first_token_s is None or request.finish_s is None:
        return None
    return (request.finish_s - request.first_token_s) / (request.output_tokens - 1)


def _chunk_gaps(times_s: list[float]) -> np.ndarray:
    """Gaps between a request's output chunks: tokens at the same moment are one chunk."""
    times = np.asarray(times_s, dtype=np.float64)
    return np.diff(times[np.r_[True, np.diff(times) > 0]]) if times.size else times


def request_stats(requests: Sequence[Request], *, slo_ttft_s: float | None = None,
                  slo_tpot_s: float | None = None) -> RequestStats:
    """Summarise finished `requests` (module doc); goodput only when an SLO is given."""
    done = [r for r in requests if r.finish_s is not None and r.first_token_s is not None]
    arrival = np.array([r.arrival_s for r in done], dtype=np.float64)
    first = np.array([r.first_token_s for r in done], dtype=np.float64)
    finish = np.array([r.finish_s for r in done], dtype=np.float64)
    ttft = first - arrival
    tpot_of = [_tpot_s(r) for r in done]
    tpot = np.array([t for t in tpot_of if t is not None])
    itl = np.concatenate([_chunk_gaps(r.token_times_s) for r in done]) if done else np.zeros(0)
    e2e = finish - arrival
    window = float(finish.max() - arrival.min()) if done else 0.0

    def rate(count: int) -> float:
        return count / window if window > 0 else 0.0

    meeting: int | None = None
    if slo_ttft_s is not None or slo_tpot_s is not None:
        meeting = sum(
            (slo_ttft_s is None or t <= slo_ttft_s)
            and (slo_tpot_s is None or p is None or p <= slo_tpot_s)
            for t, p in zip(ttft.tolist(), tpot_of, strict=True))
    outputs = sum(r.output_tokens for r in done)
    return RequestStats(
        requests=len(done), output_tokens=outputs, window_s=float(window),
        ttft_s=percentiles(ttft), tpot_s=percentiles(tpot), itl_s=percentiles(itl),
        e2e_s=percentiles(e2e), request_throughput_per_s=rate(len(done)),
        output_tokens_per_s=rate(outputs),
        goodput_per_s=None if meeting is None else rate(meeting), meeting_slo=meeting,
    )
