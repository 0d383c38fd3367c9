"""Multi-host without hardware: live ranks in Linux network namespaces joined by shaped veths.

A `NetnsCluster` makes `nodes` network namespaces `{prefix}n{i}` (the "nodes"), each with
loopback and one interface `eth0` holding the private address `10.77.0.{i+1}/24`, plus one
namespace `{prefix}sw` holding a bridge `br0` that joins the nodes' veth peers (the
"switch"). Nothing is created or changed in the host's own namespace, and no address other
than those 10.77.0.0/24 ones and each namespace's loopback is ever assigned. The nodes'
`eth0` egress is shaped with `tc qdisc ... tbf` (bandwidth) and, where the kernel has it,
`netem` (delay): that is the "inter-node" link; ranks of one node talk through their own
namespace's loopback path, unshaped. Ranks start as `ip netns exec NODE python -m ...` with
`MASTER_ADDR` the first node's address and `GLOO_SOCKET_IFNAME=eth0`
(`validate.launch.RankCommand`). `down()` deletes every namespace (which deletes the veths
and the bridge); the context manager and `run_live_netns` always call it, also on failure.
Needs root and iproute2 (`ip`, `tc`); see validate/NETNS.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from moesim.errors import MoesimError
from validate.launch import RankCommand

__all__ = ["SUBNET", "NetnsError", "netns_unavailable_reason", "NetnsCluster", "run_live_netns"]

SUBNET = "10.77.0"  # /24: node i gets SUBNET.{i+1}; nothing else is ever assigned
_IFACE = "eth0"


class NetnsError(MoesimError):
    """A namespace, veth, bridge or qdisc could not be set up."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; raise NetnsError with ip's message when it fails and `check`."""
    return _run(["ip", *args], check)


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; NetnsError with its stderr when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
    return done


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (not root, no iproute2, not permitted), else None."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (`ip`, `tc`) is not installed: apt-get install -y iproute2"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"moesimprobe{os.getpid()}"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"`ip netns add` is not permitted here: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class NetnsCluster:
    """`nodes` namespaces x `ranks_per_node` ranks joined by a bridge over shaped veths."""

    nodes: int = 2
    ranks_per_node: int = 2
    prefix: str = field(default_factory=lambda: f"moesim{os.getpid() % 100000}")
    namespaces: list[str] = field(default_factory=list)
    delay_applied: bool = False

    def node_ns(self, node: int) -> str:
        """Namespace name of `node`."""
        return f"{self.prefix}n{node}"

    @property
    def switch_ns(self) -> str:
        """Namespace holding the bridge."""
        return f"{self.prefix}sw"

    def address(self, node: int) -> str:
        """The private address of `node`'s eth0."""
        return f"{SUBNET}.{node + 1}"

    def __enter__(self) -> NetnsCluster:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def up(self) -> None:
        """Create the namespaces, the bridge and one veth pair per node."""
        if not 1 <= self.nodes <= 250:
            raise NetnsError(f"nodes {self.nodes} must be in 1..250 (one /24 subnet)")
        self._add_ns(self.switch_ns)
        sw = self.switch_ns
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        for node in range(self.nodes):
            ns = self.node_ns(node)
            self._add_ns(ns)
            # both ends are created directly inside the namespaces: nothing in the host's
            _ip("link", "add", _IFACE, "netns", ns, "type", "veth",  # own namespace
                "peer", "name", f"p{node}", "netns", sw)
            _ip("-n", sw, "link", "set", f"p{node}", "master", "br0")
            _ip("-n", sw, "link", "set", f"p{node}", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", _IFACE)
            _ip("-n", ns, "link", "set", _IFACE, "up")

    def shape(self, bandwidth_bits_per_s: float | None, delay_s: float | None = None) -> None:
        """Shape every node's eth0 egress: tbf at `bandwidth_bits_per_s`, netem `delay_s` where
        the kernel has netem (`delay_applied` says); None removes that shaping."""
        self.delay_applied = False
        for node in range(self.nodes):
            ns = self.node_ns(node)
            _run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", _IFACE, "root"],
                 check=False)
            parent = ["root"]
            if delay_s:
                done = _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", _IFACE,
                             "root", "handle", "1:", "netem", "delay", f"{delay_s * 1e6:.0f}us"],
                            check=False)
                if done.returncode == 0:
                    self.delay_applied, parent = True, ["parent", "1:1"]
            if bandwidth_bits_per_s:
                rate_bytes = bandwidth_bits_per_s / 8
                burst = max(64 * 1024, int(rate_bytes / 100))  # >= one GSO packet, >= 10 ms
                _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", _IFACE, *parent,
                      "handle", "10:", "tbf", "rate", f"{int(bandwidth_bits_per_s)}bit",
                      "burst", str(burst), "limit", str(max(4 << 20, 4 * burst))])

    def down(self) -> None:
        """Delete every namespace this cluster made (their veths and bridge go with them)."""
        for name in reversed(self.namespaces):
            _ip("netns", "del", name, check=False)
        self.namespaces.clear()

    def rank_commands(self, world: int) -> list[RankCommand]:
        """How each of `world` ranks starts: in node `rank // ranks_per_node`'s namespace."""
        if world != self.nodes * self.ranks_per_node:
            raise NetnsError(f"{world} ranks do not fill {self.nodes} nodes x "
                             f"{self.ranks_per_node} ranks; pick a placement of "
                             f"{self.nodes * self.ranks_per_node} ranks")
        env = {"MASTER_ADDR": self.address(0), "GLOO_SOCKET_IFNAME": _IFACE}
        return [RankCommand(("ip", "netns", "exec", self.node_ns(rank // self.ranks_per_node)),
                            dict(env))
                for rank in range(world)]


def run_live_netns(*, nodes: int = 2, ranks_per_node: int = 2,
                   bandwidth_bits_per_s: float | None = None, delay_s: float | None = None,
                   **run_live_args: Any) -> dict[str, Any]:
    """`validate.launch.run_live` with the ranks in a fresh shaped NetnsCluster, torn down after
    (also on failure); the measurement's inputs record the emulated cluster under `netns`."""
    from validate.launch import run_live

    if run_live_args.get("backend", "gloo") != "gloo":
        raise NetnsError("network namespaces emulate hosts for gloo only (--backend gloo)")
    with NetnsCluster(nodes, ranks_per_node) as cluster:
        cluster.shape(bandwidth_bits_per_s, delay_s)
        measurement = run_live(rank_commands=cluster.rank_commands(nodes * ranks_per_node),
                               **run_live_args)
        measurement["inputs"]["netns"] = {
            "nodes": nodes, "ranks_per_node": ranks_per_node,
            "bandwidth_bits_per_s": bandwidth_bits_per_s, "delay_s": delay_s,
            "delay_applied": cluster.delay_applied, "subnet": f"{SUBNET}.0/24",
        }
    return measurement
