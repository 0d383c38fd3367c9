"""Multi-host emulation in network namespaces: a 2 nodes x 2 ranks EP4 run over shaped veths
moves exactly the predicted bytes, its dispatch slows when the inter-node link is slowed, and
every namespace is gone afterwards, also after a failure."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from validate.measurement import PHASES, check_bytes, traffic_for_inputs
from validate.netns import SUBNET, NetnsCluster, netns_unavailable_reason, run_live_netns
from validate.predict import measured_phase_times

pytestmark = pytest.mark.live

_REASON = netns_unavailable_reason()
needs_netns = pytest.mark.skipif(_REASON is not None, reason=f"no network namespaces: {_REASON}")
RUN = {"model": "mixtral-8x7b", "trace": "bundled:mixtral8x7b_humaneval_decode",
       "placement": "EP4", "scale": 1 / 16, "layers": 2, "tokens": 333, "warmup": 1,
       "repeats": 2, "timeout_s": 60.0}


def _namespaces() -> list[str]:
    """Names of the network namespaces that exist now."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@needs_netns
def test_failure_inside_the_cluster_still_tears_it_down() -> None:
    """An exception inside the context removes every namespace the cluster created; inside,
    each node holds only its own 10.77.0.x/24 address besides loopback."""
    cluster = NetnsCluster(prefix="moesimtestf")
    with pytest.raises(RuntimeError), cluster:
        assert set(cluster.namespaces) <= set(_namespaces())
        addrs = subprocess.run(["ip", "-n", cluster.node_ns(1), "-4", "-o", "addr"],
                               capture_output=True, text=True, check=True).stdout
        assert sorted(line.split()[3] for line in addrs.splitlines()) == [
            f"{SUBNET}.2/24", "127.0.0.1/8"]
        raise RuntimeError("boom")
    assert not [ns for ns in _namespaces() if ns.startswith("moesimtestf")]


@needs_netns
def test_two_node_ep4_bytes_exact_and_dispatch_slows_with_the_link() -> None:
    """2x2 EP4 through the bridge: bytes equal the prediction exactly at both link speeds, and
    shaping the inter-node veths to 10 Mbit/s makes the slowest rank's dispatch over twice as
    slow as unshaped (each node sends 75-100 kB per layer across: ~60 ms at 10 Mbit/s, vs a
    few ms of gloo latency unshaped)."""
    before = set(_namespaces())
    dispatch = []
    for bandwidth in (None, 10e6):
        measurement = run_live_netns(bandwidth_bits_per_s=bandwidth, **RUN)
        assert check_bytes(measurement, traffic_for_inputs(measurement["inputs"])) == []
        assert measurement["inputs"]["netns"]["nodes"] == 2
        times = measured_phase_times(measurement).max(axis=1)  # [L, P]
        dispatch.append(float(np.median(times[:, PHASES.index("dispatch")])))
    assert dispatch[1] > 2 * dispatch[0], dispatch
    assert set(_namespaces()) == before
