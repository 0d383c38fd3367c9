"""Prefill/decode disaggregation: the pools, and the KV cache crossing from one to the other.

`--disagg xPyD:PREFILL_LAYOUT:DECODE_LAYOUT` runs x prefill engines of the prefill layout and y
decode engines of the decode layout on the topology's GPUs in that order (prefill engine i on
GPUs i*Wp .. i*Wp + Wp - 1, then the decode engines).

When a request's prefill is done, its prompt's KV cache moves to the decode engine: each rank
of the decode engine's attention group receives its shard (every block's K/V of the prompt
tokens at the decode layout's sharding: `ModelSpec.kv_bytes_per_token_per_layer_per_rank`) from
the prefill rank of the same TP index (mod the prefill group's TP size). The shards stream at
once over the topology's routes; the transfer takes the collective launch latency plus the
slowest shard under the bottleneck-link bound (`moesim.engine.analytic`). Concurrent transfers
of different requests do not slow each other down (not modelled).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from moesim.engine.analytic import Flow, concurrent_flow_times_s
from moesim.engine.collective_model import collective_launch_s
from moesim.engine.network import Links
from moesim.errors import ConfigError
from moesim.inputs.models import ModelSpec
from moesim.inputs.topology import Topology
from moesim.traffic.placement import Parallelism

__all__ = ["DisaggSpec", "parse_disagg", "KvTransfer"]

_DISAGG = re.compile(r"^\s*(\d+)P(\d+)D:([^:]+):([^:]+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class DisaggSpec:
    """x prefill engines of one layout, y decode engines of another."""

    prefill_engines: int
    decode_engines: int
    prefill_layout: str
    decode_layout: str


def parse_disagg(text: str) -> DisaggSpec:
    """`2P1D:TP4:EP8` -> 2 prefill engines of TP4, 1 decode engine of EP8."""
    match = _DISAGG.match(text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ConfigError(f"--disagg {text!r}: write xPyD:PREFILL_LAYOUT:DECODE_LAYOUT with x, y "
                          ">= 1, e.g. 1P1D:EP4:EP4 or 2P1D:TP2:EP4")
    return DisaggSpec(int(match[1]), int(match[2]), match[3].strip(), match[4].strip())


class KvTransfer:
    """Seconds to move a prompt's KV cache from a prefill group to a decode group (module doc)."""

    def __init__(self, topology: Topology, model: ModelSpec, prefill: Parallelism,
                 decode: Parallelism, kv_dtype_bytes: float) -> None:
        self.topology = topology
        self.links = Links.from_graph(topology.graph)
        self.prefill, self.decode = prefill, decode
        self.launch_s = collective_launch_s(topology)
        self.bytes_per_token = model.num_layers * model.kv_bytes_per_token_per_layer_per_rank(
            decode.attn_tp, kv_dtype_bytes)
        self.seconds = lru_cache(maxsize=4096)(self._seconds)

    def _seconds(self, tokens: int, src_gpu: int, src_group: int, dst_gpu: int,
                 dst_group: int) -> float:
        """Transfer of `tokens` tokens from prefill group `src_group` (its engine's first GPU
        `src_gpu`) to decode group `dst_group` (first GPU `dst_gpu`)."""
        flows: list[Flow] = []
        for index in range(self.decode.attn_tp):
            src = src_gpu + src_group * self.prefill.attn_tp + index % self.prefill.attn_tp
            dst = dst_gpu + dst_group * self.decode.attn_tp + index
            if src != dst:
                flows.append((self.topology.routes(src, dst), tokens * self.bytes_per_token))
        if not flows:
            return 0.0
        return self.launch_s + float(concurrent_flow_times_s(self.links, flows).max())
