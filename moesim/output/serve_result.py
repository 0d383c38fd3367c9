"""ServeResult: what a served workload reports, typed and frozen; `to_json()` is the only
producer of the serving keys documented in README ("Serving JSON").

Units: seconds, tokens, requests per second, USD.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from moesim.output.result import usd_per_million_tokens
from moesim.serve.metrics import Percentiles, RequestStats
from moesim.serve.requests import Request
from moesim.serve.simulator import IterationRecord

__all__ = ["ServeResult", "REQUEST_COLUMNS"]

# Columns of the per-request table (`moesim serve --requests-out`).
REQUEST_COLUMNS = ("id", "arrival_s", "prompt_tokens", "output_tokens", "first_token_s",
                   "finish_s", "ttft_s", "tpot_s", "e2e_s", "preemptions", "engine_group",
                   "warmup")


def _percentiles(values: Percentiles) -> dict[str, float | None]:
    return asdict(values)


@dataclass(frozen=True)
class ServeResult:
    """One served workload: request statistics, engine behaviour, cost (module doc)."""

    inputs: dict[str, Any]
    gpus: int
    stats: RequestStats
    preemptions: int
    kv_cache_peak_fraction: float
    gpu_price_per_hour_usd: float | None
    requests: tuple[Request, ...] = field(repr=False, compare=False, default=())
    iterations: tuple[IterationRecord, ...] = field(repr=False, compare=False, default=())
    warmup_requests: int = 0

    @property
    def output_tokens_per_s_per_gpu(self) -> float:
        """Output tokens per second per GPU of the deployment."""
        return self.stats.output_tokens_per_s / self.gpus

    @property
    def usd_per_million_tokens(self) -> float | None:
        """Dollars per million output tokens at the measured output throughput."""
        return usd_per_million_tokens(self.gpus, self.gpu_price_per_hour_usd,
                                      self.stats.output_tokens_per_s)

    def to_json(self) -> dict[str, Any]:
        """The documented serving keys as a JSON-ready dict."""
        s = self.stats
        return {
            "inputs": self.inputs,
            "ttft_s": _percentiles(s.ttft_s),
            "tpot_s": _percentiles(s.tpot_s),
            "itl_s": _percentiles(s.itl_s),
            "e2e_s": _percentiles(s.e2e_s),
            "request_throughput_per_s": s.request_throughput_per_s,
            "output_tokens_per_s": s.output_tokens_per_s,
            "output_tokens_per_s_per_gpu": self.output_tokens_per_s_per_gpu,
            "goodput_per_s": s.goodput_per_s,
            "requests": s.requests,
            "output_tokens": s.output_tokens,
            "window_s": s.window_s,
            "preemptions": self.preemptions,
            "kv_cache_peak_fraction": self.kv_cache_peak_fraction,
            "iterations": len(self.iterations),
            "usd_per_million_tokens": self.usd_per_million_tokens,
        }

    def request_rows(self) -> list[dict[str, Any]]:
        """One row per request (`REQUEST_COLUMNS`), warm-up requests marked."""
        rows = []
        for r in self.requests:
            ttft = None if r.first_token_s is None else r.first_token_s - r.arrival_s
            tpot = None
            if r.output_tokens > 1 and r.finish_s is not None and r.first_token_s is not None:
                tpot = (r.finish_s - r.first_token_s) / (r.output_tokens - 1)
            rows.append({
                "id": r.id, "arrival_s": r.arrival_s, "prompt_tokens": r.prompt_tokens,
                "output_tokens": r.output_tokens, "first_token_s": r.first_token_s,
                "finish_s": r.finish_s, "ttft_s": ttft, "tpot_s": tpot,
                "e2e_s": None if r.finish_s is None else r.finish_s - r.arrival_s,
                "preemptions": r.preemptions, "engine_group": r.group,
                "warmup": r.id < self.warmup_requests,
            })
        return rows

    def plot_data(self) -> dict[str, Any]:
        """What the serving plots draw: per-request TTFT and TPOT, and each iteration's time,
        running batch, queue, KV-cache use and preemptions so far."""
        rows = [row for row in self.request_rows() if not row["warmup"]]
        return {
            "ttft_s": [row["ttft_s"] for row in rows if row["ttft_s"] is not None],
            "tpot_s": [row["tpot_s"] for row in rows if row["tpot_s"] is not None],
            "iterations": {
                "engine": [it.engine for it in self.iterations],
                "start_s": [it.start_s for it in self.iterations],
                "duration_s": [it.duration_s for it in self.iterations],
                "running": [it.running for it in self.iterations],
                "waiting": [it.waiting for it in self.iterations],
                "kv_used_fraction": [it.kv_used_fraction for it in self.iterations],
                "preemptions": [it.preemptions for it in self.iterations],
            },
        }
