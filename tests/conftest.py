"""Shared pytest fixtures: canonical small topologies built from explicit `links` specs.

Every fixture uses round numbers so closed forms are easy to work by hand: links of
100e9 B/s per direction (25e9 for the NIC path of `two_node`) and 1e-6 s latency, and a
GPU of 1e15 FLOP/s, 1e12 B/s, efficiencies 1 and no launch overhead.
"""

from __future__ import annotations

from typing import Any

import pytest

from moesim.inputs.topology import Topology, build_topology
from moesim.inputs.topology_spec import TopologySpec

ROUND_GPU: dict[str, Any] = {
    "name": "round-gpu",
    "peak_bf16_flops_per_s": 1e15,
    "peak_fp8_flops_per_s": 2e15,
    "memory_bandwidth_bytes_per_s": 1e12,
    "memory_bytes": 80e9,
    "compute_efficiency": 1.0,
    "memory_efficiency": 1.0,
    "kernel_launch_s": 0.0,
}


def _link(src: str, dst: str, bandwidth: float = 100e9) -> dict[str, Any]:
    return {"src": src, "dst": dst, "bandwidth_bytes_per_s": bandwidth, "latency_s": 1e-6}


def links_topology(
    name: str,
    gpus_per_node: int,
    links: list[dict[str, Any]],
    nodes: int = 1,
    extra_devices: dict[str, str] | None = None,
) -> Topology:
    """Build a topology from explicit links on the round-number GPU."""
    spec = TopologySpec.model_validate(
        {
            "name": name,
            "gpu_spec": ROUND_GPU,
            "nodes": nodes,
            "gpus_per_node": gpus_per_node,
            "extra_devices": extra_devices or {},
            "links": links,
        }
    )
    return build_topology(spec, source=f"fixture {name}")


@pytest.fixture
def two_gpu_link() -> Topology:
    """gpu0 <-> gpu1: one bidirectional link, 100e9 B/s per direction, 1e-6 s."""
    return links_topology("two_gpu_link", 2, [_link("gpu0", "gpu1")])


@pytest.fixture
def four_gpu_ring() -> Topology:
    """gpu0-gpu1-gpu2-gpu3-gpu0: bidirectional ring, 100e9 B/s per direction, 1e-6 s."""
    return links_topology(
        "four_gpu_ring", 4, [_link(f"gpu{i}", f"gpu{(i + 1) % 4}") for i in range(4)]
    )


@pytest.fixture
def eight_gpu_switch() -> Topology:
    """8 GPUs each with a 100e9 B/s (per direction), 1e-6 s port to switch `sw0`."""
    return links_topology(
        "eight_gpu_switch",
        8,
        [_link(f"gpu{i}", "sw0") for i in range(8)],
        extra_devices={"sw0": "nvswitch"},
    )


@pytest.fixture
def two_node() -> Topology:
    """2 nodes x 2 GPUs: ports of 100e9 B/s to `nvsw{n}`; per GPU a NIC, 25e9 B/s to `net0`."""
    links = [_link(f"gpu{g}", f"nvsw{g // 2}") for g in range(4)]
    links += [_link(f"gpu{g}", f"nic{g}", 25e9) for g in range(4)]
    links += [_link(f"nic{g}", "net0", 25e9) for g in range(4)]
    devices = {"nvsw0": "nvswitch", "nvsw1": "nvswitch", "net0": "net_switch"}
    devices.update({f"nic{g}": "nic" for g in range(4)})
    return links_topology("two_node", 2, links, nodes=2, extra_devices=devices)
