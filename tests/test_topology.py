"""Topologies: presets, graph construction, routing and validation errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from moesim.engine.collective_model import busbw_factor
from moesim.engine.collectives import predict_collective
from moesim.errors import ConfigError, TopologyError
from moesim.inputs.config import read_mapping
from moesim.inputs.graph import FrozenGraphError
from moesim.inputs.topology import PRESET_DIR, build_topology, list_presets, load_topology
from moesim.inputs.topology_spec import TopologySpec
from tests.conftest import ROUND_GPU, links_topology

PRESET_GPUS = {
    "dgx-h100": 8,
    "hgx-a100": 8,
    "h200-8x": 8,
    "l40s-8x-pcie": 8,
    "rtx4090-4x-pcie": 4,
    "h100-2node-ib": 16,
    "h100-4node-ib": 32,
    "cpu-loopback": 4,
    "b200-8x": 8,
    "gb200-nvl72": 72,
    "rtx4090-8x-pcie": 8,
}
NODE_KINDS = {"gpu", "nvswitch", "pcie_switch", "cpu", "hostmem", "nic", "net_switch"}


def _nodes(route: list[tuple[str, str]]) -> list[str]:
    return [route[0][0]] + [dst for _, dst in route]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topo.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _spec(preset: str, **changes: object) -> TopologySpec:
    data = read_mapping(PRESET_DIR / f"{preset}.yaml")
    data.update(changes)
    return TopologySpec.model_validate(data)


# --- presets -----------------------------------------------------------------------


def test_presets_are_the_documented_set() -> None:
    """The shipped presets are exactly the documented ten."""
    assert set(list_presets()) == set(PRESET_GPUS)


@pytest.mark.parametrize("name", sorted(PRESET_GPUS))
def test_preset_loads_with_its_gpu_count_and_sources(name: str) -> None:
    """Each preset loads by name, has the right GPU count, names itself and cites sources."""
    topo = load_topology(name)
    assert topo.name == name
    assert topo.num_gpus == PRESET_GPUS[name]
    assert topo.gpu_nodes == [f"gpu{r}" for r in range(topo.num_gpus)]
    assert topo.spec.sources
    assert "#" in (PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(PRESET_GPUS))
def test_preset_every_gpu_pair_has_contiguous_routes(name: str) -> None:
    """Every ordered GPU pair has >= 1 route; each runs src..dst over existing edges."""
    topo = load_topology(name)
    for src, dst in itertools.permutations(range(topo.num_gpus), 2):
        routes = topo.routes(src, dst)
        assert routes
        for route in routes:
            nodes = _nodes(route)
            assert nodes[0] == f"gpu{src}" and nodes[-1] == f"gpu{dst}"
            assert all(topo.graph.has_edge(*edge) for edge in route)
            assert all(a[1] == b[0] for a, b in itertools.pairwise(route))
            assert 0 < topo.path_bottleneck_bytes_per_s(route) < math.inf


@pytest.mark.parametrize("name", sorted(PRESET_GPUS))
def test_preset_graph_attributes(name: str) -> None:
    """Every node has a known kind; every edge a positive bandwidth and a latency >= 0."""
    graph = load_topology(name).graph
    assert {kind for _, kind in graph.nodes(data="kind")} <= NODE_KINDS
    for _, _, attrs in graph.edges(data=True):
        assert attrs["bandwidth_bytes_per_s"] > 0 and attrs["latency_s"] >= 0


@pytest.mark.parametrize(
    ("name", "bf16", "memory_bw", "memory_bytes"),
    [
        # NVIDIA H100 datasheet/whitepaper: 989.4 TFLOPS dense BF16, 3.35 TB/s, 80 GB.
        ("dgx-h100", 989.4e12, 3.35e12, 80e9),
        # NVIDIA A100 80GB datasheet: 312 TFLOPS BF16 dense, 2,039 GB/s, 80 GB.
        ("hgx-a100", 312e12, 2.039e12, 80e9),
        # NVIDIA H200 datasheet: 141 GB HBM3e at 4.8 TB/s; same die as H100.
        ("h200-8x", 989.4e12, 4.8e12, 141e9),
        # NVIDIA L40S datasheet: 362.05 TFLOPS BF16 dense (733 sparse), 864 GB/s, 48 GB.
        ("l40s-8x-pcie", 362.05e12, 864e9, 48e9),
        # Ada whitepaper: RTX 4090 165.2 TFLOPS BF16 dense (FP32 accumulate), 1,008 GB/s.
        ("rtx4090-4x-pcie", 165.2e12, 1008e9, 24e9),
    ],
)
def test_preset_gpu_figures_match_datasheets(
    name: str, bf16: float, memory_bw: float, memory_bytes: float
) -> None:
    """GPU specs carry the dense (not sparse) datasheet peaks cited in the test."""
    gpu = load_topology(name).gpu_spec
    assert gpu.peak_bf16_flops_per_s == pytest.approx(bf16, rel=1e-3)
    assert gpu.memory_bandwidth_bytes_per_s == pytest.approx(memory_bw, rel=1e-3)
    assert gpu.memory_bytes == pytest.approx(memory_bytes, rel=1e-3)


def test_dgx_h100_route_is_through_the_nvswitch() -> None:
    """DGX H100 gpu0->gpu1 is gpu0->nvswitch0->gpu1: a 450e9 B/s port (900 GB/s bidir / 2)
    derated by the nvlink efficiency calibrated against published nccl-tests (0.753)."""
    topo = load_topology("dgx-h100")
    assert topo.routes(0, 1) == [[("gpu0", "nvswitch0"), ("nvswitch0", "gpu1")]]
    assert topo.graph.edges["gpu0", "nvswitch0"]["nominal_bandwidth_bytes_per_s"] == 450e9
    bottleneck = topo.path_bottleneck_bytes_per_s(topo.routes(0, 1)[0])
    assert bottleneck == pytest.approx(450e9 * 0.753)
    assert topo.path_latency_s(topo.routes(0, 1)[0]) == pytest.approx(2 * 0.1e-6)


def test_two_node_ib_route_crosses_nics_and_rail() -> None:
    """Same-rail cross-node traffic goes NIC -> rail switch -> NIC at 50e9 B/s (400 Gb/s)."""
    topo = load_topology("h100-2node-ib")
    assert topo.node_of(7) == 0 and topo.node_of(8) == 1
    assert topo.routes(0, 8) == [
        [("gpu0", "nic0"), ("nic0", "rail0"), ("rail0", "nic8"), ("nic8", "gpu8")]
    ]
    assert topo.path_bottleneck_bytes_per_s(topo.routes(0, 8)[0]) == 50e9


def test_two_node_ib_cross_rail_uses_nvlink_then_a_rail() -> None:
    """gpu0->gpu9 (rail 1) has two 6-hop routes: via rail0 then NVLink, or NVLink then rail1."""
    routes = load_topology("h100-2node-ib").routes(0, 9)
    assert len(routes) == 2
    rails = {node for route in routes for node in _nodes(route) if node.startswith("rail")}
    assert rails == {"rail0", "rail1"}
    assert all(len(route) == 6 for route in routes)


def test_spines_add_equal_cost_paths() -> None:
    """With 2 spines, gpu0->gpu9 has 4 six-hop routes: 2 through NVLink + 2 through spines."""
    spec = _spec("h100-2node-ib")
    network = spec.fabric[1].model_copy(update={"spines": 2, "spine_bandwidth_bytes_per_s": 50e9})
    topo = build_topology(spec.model_copy(update={"fabric": (spec.fabric[0], network)}))
    routes = topo.routes(0, 9)
    assert len(routes) == 4
    spines = {n for route in routes for n in _nodes(route) if n.startswith("spine")}
    assert spines == {"spine0", "spine1"}


def test_no_p2p_route_stages_through_host_memory() -> None:
    """RTX 4090 (no P2P): gpu0->gpu1 goes GPU->CPU->hostmem->CPU->GPU, not CPU->GPU directly."""
    topo = load_topology("rtx4090-4x-pcie")
    assert not topo.p2p(0)
    route = topo.routes(0, 1)
    assert route == [
        [("gpu0", "cpu0"), ("cpu0", "hostmem0"), ("hostmem0", "cpu0"), ("cpu0", "gpu1")]
    ]
    assert topo.path_bottleneck_bytes_per_s(route[0]) == 25e9


def test_l40s_uses_p2p_only_under_one_switch_as_nccl_does_on_intel() -> None:
    """L40S (Intel, NCCL's default P2P level PXB): gpu0 -> gpu1 (one switch) is direct P2P;
    gpu0 -> gpu2 (another switch, same CPU: PHB) and gpu0 -> gpu7 (across sockets: SYS) go
    through host memory (NCCL's SHM transport), the latter over cpu0 -> cpu1."""
    topo = load_topology("l40s-8x-pcie")
    assert topo.p2p(0)
    assert topo.routes(0, 1) == [[("gpu0", "pcie_sw0_0"), ("pcie_sw0_0", "gpu1")]]
    (same_socket,) = topo.routes(0, 2)
    assert ("cpu0", "hostmem0") in same_socket and ("hostmem0", "cpu0") in same_socket
    (route,) = topo.routes(0, 7)
    assert ("cpu0", "hostmem0") in route and ("cpu0", "cpu1") in route
    assert topo.graph.edges["cpu0", "cpu1"]["medium"] == "socket_link"


def test_l40s_eight_gpus_fall_to_the_socket_link_two_under_a_switch_do_not() -> None:
    """One topology file, two behaviours: a 512 MiB all-reduce on 2 GPUs under one switch runs
    P2P at the PCIe link (25 GB/s busbw), on all 8 its ring crosses the sockets through host
    memory and runs at the socket link's 10 GB/s (NCCL's own rating of an Intel socket link)."""
    topo = load_topology("l40s-8x-pcie")
    size = 512 * 2**20
    two = predict_collective(topo, "allreduce", range(2), size_bytes=size)
    eight = predict_collective(topo, "allreduce", range(8), size_bytes=size)
    busbw_two = size / two.time_s * busbw_factor("allreduce", 2)
    busbw_eight = size / eight.time_s * busbw_factor("allreduce", 8)
    assert busbw_two == pytest.approx(25e9, rel=0.02)
    assert busbw_eight == pytest.approx(10e9, rel=0.02)


def test_amd_allows_p2p_across_sockets_for_two_gpus_only() -> None:
    """NCCL on AMD: "Allow P2P between pairs of GPU devices" (SYS with <= 2 GPUs), else PXB."""
    def spec(gpus: int) -> TopologySpec:
        return TopologySpec.model_validate({
            "name": "amd", "gpu_spec": ROUND_GPU, "gpus_per_node": gpus, "fabric": [{
                "kind": "pcie_tree", "sockets": 2, "gpu_link_bandwidth_bytes_per_s": 25e9,
                "pcie_latency_s": 1e-6, "socket_link_bandwidth_bytes_per_s": 16e9,
                "hostmem_bandwidth_bytes_per_s": 200e9, "cpu_vendor": "amd"}]})
    two, four = build_topology(spec(2)), build_topology(spec(4))
    assert not any(edge[1].startswith("hostmem") for edge in two.routes(0, 1)[0])
    assert any(edge[1].startswith("hostmem") for edge in four.routes(0, 2)[0])


# --- canonical fixtures ------------------------------------------------------------


def test_two_gpu_link_fixture(two_gpu_link) -> None:
    """One link each way: route is the single edge, 100e9 B/s, 1e-6 s."""
    assert two_gpu_link.routes(0, 1) == [[("gpu0", "gpu1")]]
    assert two_gpu_link.routes(1, 0) == [[("gpu1", "gpu0")]]
    assert two_gpu_link.path_bottleneck_bytes_per_s([("gpu0", "gpu1")]) == 100e9
    assert two_gpu_link.path_latency_s([("gpu0", "gpu1")]) == 1e-6


def test_ring_opposite_gpus_have_two_equal_cost_paths(four_gpu_ring) -> None:
    """In a 4-ring, gpu0->gpu2 goes either way round (2 paths); neighbours have one."""
    routes = four_gpu_ring.routes(0, 2)
    assert sorted(_nodes(r)[1] for r in routes) == ["gpu1", "gpu3"]
    assert four_gpu_ring.routes(0, 1) == [[("gpu0", "gpu1")]]


def test_eight_gpu_switch_fixture(eight_gpu_switch) -> None:
    """Every pair on the switch is two hops at 100e9 B/s and 2e-6 s."""
    for src, dst in itertools.permutations(range(8), 2):
        (route,) = eight_gpu_switch.routes(src, dst)
        assert route == [(f"gpu{src}", "sw0"), ("sw0", f"gpu{dst}")]
        assert eight_gpu_switch.path_latency_s(route) == pytest.approx(2e-6)


def test_two_node_fixture_crosses_the_network(two_node) -> None:
    """two_node: gpu0->gpu2 goes over NICs and net0 at 25e9 B/s; gpu0->gpu1 over nvsw0."""
    assert two_node.routes(0, 2) == [
        [("gpu0", "nic0"), ("nic0", "net0"), ("net0", "nic2"), ("nic2", "gpu2")]
    ]
    assert two_node.path_bottleneck_bytes_per_s(two_node.routes(0, 2)[0]) == 25e9
    assert two_node.routes(0, 1) == [[("gpu0", "nvsw0"), ("nvsw0", "gpu1")]]
    assert [two_node.node_of(r) for r in range(4)] == [0, 0, 1, 1]


def test_hand_made_diamond_has_two_paths() -> None:
    """gpu0 -> {a, b} -> gpu1 gives two equal-cost routes, each with its own bottleneck."""
    links = [
        {"src": "gpu0", "dst": "a", "bandwidth_bytes_per_s": 10e9, "latency_s": 1e-6},
        {"src": "a", "dst": "gpu1", "bandwidth_bytes_per_s": 10e9, "latency_s": 1e-6},
        {"src": "gpu0", "dst": "b", "bandwidth_bytes_per_s": 30e9, "latency_s": 2e-6},
        {"src": "b", "dst": "gpu1", "bandwidth_bytes_per_s": 20e9, "latency_s": 2e-6},
    ]
    topo = links_topology("diamond", 2, links, extra_devices={"a": "nvswitch", "b": "nvswitch"})
    routes = topo.routes(0, 1)
    assert [_nodes(r)[1] for r in routes] == ["a", "b"]
    assert [topo.path_bottleneck_bytes_per_s(r) for r in routes] == [10e9, 20e9]
    assert [topo.path_latency_s(r) for r in routes] == pytest.approx([2e-6, 4e-6])


def test_one_way_links_route_the_long_way_back() -> None:
    """A directed ring (bidirectional: false) sends gpu1->gpu0 round through gpu2."""
    links = [
        {
            "src": f"gpu{i}",
            "dst": f"gpu{(i + 1) % 3}",
            "bandwidth_bytes_per_s": 1e9,
            "latency_s": 0.0,
            "bidirectional": False,
        }
        for i in range(3)
    ]
    topo = links_topology("directed", 3, links)
    assert topo.routes(1, 0) == [[("gpu1", "gpu2"), ("gpu2", "gpu0")]]
    assert topo.routes(0, 1) == [[("gpu0", "gpu1")]]


def test_self_route_is_one_empty_path(two_gpu_link) -> None:
    """A GPU to itself crosses no link: one empty route, zero latency, infinite bandwidth."""
    assert two_gpu_link.routes(1, 1) == [[]]
    assert two_gpu_link.path_latency_s([]) == 0.0
    assert two_gpu_link.path_bottleneck_bytes_per_s([]) == math.inf


def test_routes_are_cached_and_callers_cannot_corrupt_them(four_gpu_ring) -> None:
    """Routes come from the cache, but mutating a returned list leaves the cache intact."""
    first = four_gpu_ring.routes(0, 2)
    first[0].clear()
    first.clear()
    assert len(four_gpu_ring.routes(0, 2)) == 2
    assert four_gpu_ring._cached_routes.cache_info().hits >= 1


def test_graph_is_frozen(two_gpu_link) -> None:
    """The built graph cannot be modified (routes are cached against it)."""
    with pytest.raises(FrozenGraphError):
        two_gpu_link.graph.add_edge("gpu0", "gpu9")
    with pytest.raises(FrozenGraphError):
        two_gpu_link.graph.add_node("cpu9", kind="cpu")
    assert "gpu9" not in two_gpu_link.graph and "cpu9" not in two_gpu_link.graph


# --- errors ------------------------------------------------------------------------

MINIMAL = """
name: t
gpu_spec: {name: g, peak_bf16_flops_per_s: 1e15, memory_bandwidth_bytes_per_s: 1e12,
           memory_bytes: 1e9, compute_efficiency: 1, memory_efficiency: 1, kernel_launch_s: 0}
"""


def test_topology_file_by_path_loads(tmp_path: Path) -> None:
    """A YAML file given by path loads like a preset (numbers like 1e15 are accepted)."""
    text = MINIMAL + "gpus_per_node: 2\nlinks: [{src: gpu0, dst: gpu1, "
    text += "bandwidth_bytes_per_s: 5e9, latency_s: 1.0e-6}]\n"
    topo = load_topology(_write(tmp_path, text))
    assert topo.path_bottleneck_bytes_per_s(topo.routes(1, 0)[0]) == 5e9


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    """Broken YAML raises one ConfigError naming the file and line."""
    path = _write(tmp_path, "name: [unclosed\ngpus_per_node: 2\n")
    with pytest.raises(ConfigError, match=r"topo\.yaml is not valid YAML at line"):
        load_topology(path)


def test_unknown_field_and_bad_bandwidth_are_config_errors(tmp_path: Path) -> None:
    """A misspelt field or a non-positive bandwidth names the offending field."""
    with pytest.raises(ConfigError, match="field 'gpus_per_nod'"):
        load_topology(_write(tmp_path, MINIMAL + "gpus_per_node: 2\ngpus_per_nod: 2\n"))
    text = MINIMAL + "gpus_per_node: 2\nlinks: [{src: gpu0, dst: gpu1, "
    text += "bandwidth_bytes_per_s: 0, latency_s: 0}]\n"
    with pytest.raises(ConfigError, match=r"field 'links\.0\.bandwidth_bytes_per_s'"):
        load_topology(_write(tmp_path, text))


def test_unknown_device_in_link_names_the_field(tmp_path: Path) -> None:
    """A link to an undeclared device raises TopologyError naming links[i].dst and the fix."""
    text = MINIMAL + "gpus_per_node: 2\nlinks: [{src: gpu0, dst: gpu1, "
    text += "bandwidth_bytes_per_s: 1e9, latency_s: 0}, {src: gpu0, dst: sw9, "
    text += "bandwidth_bytes_per_s: 1e9, latency_s: 0}]\n"
    with pytest.raises(
        TopologyError,
        match=r"field 'links\[1\]\.dst': unknown device 'sw9'.*"
        r"extra_devices",
    ):
        load_topology(_write(tmp_path, text))


def test_disconnected_gpus_name_the_pair() -> None:
    """Two servers with NVSwitch but no network: gpu0 cannot reach gpu8, said so."""
    spec = _spec("dgx-h100", nodes=2)
    with pytest.raises(TopologyError, match="gpu0 cannot reach gpu8"):
        build_topology(spec)


def test_one_way_disconnection_is_reported_in_its_direction() -> None:
    """gpu0 -> gpu1 only: gpu1 cannot reach gpu0."""
    links = [
        {
            "src": "gpu0",
            "dst": "gpu1",
            "bandwidth_bytes_per_s": 1e9,
            "latency_s": 0,
            "bidirectional": False,
        }
    ]
    with pytest.raises(TopologyError, match="gpu1 cannot reach gpu0"):
        links_topology("oneway", 2, links)


def test_pcie_tree_gpu_count_mismatch_names_the_field() -> None:
    """8 GPUs on 2 sockets x 3 switches do not split evenly: error names switches_per_socket."""
    spec = _spec("l40s-8x-pcie")
    tree = spec.fabric[0].model_copy(update={"switches_per_socket": 3})
    with pytest.raises(TopologyError, match=r"fabric\[0\]\.switches_per_socket.*split evenly"):
        build_topology(spec.model_copy(update={"fabric": (tree,)}))


def test_p2p_flag_count_mismatch_names_the_field() -> None:
    """A p2p list with the wrong length names fabric[0].p2p and gpus_per_node."""
    spec = _spec("rtx4090-4x-pcie")
    tree = spec.fabric[0].model_copy(update={"p2p": (False, False)})
    with pytest.raises(TopologyError, match=r"fabric\[0\]\.p2p.*gpus_per_node is 4"):
        build_topology(spec.model_copy(update={"fabric": (tree,)}))


def test_duplicate_link_names_both_fields() -> None:
    """Defining gpu0->gpu1 twice names the second field and the first one's origin."""
    link = {"src": "gpu0", "dst": "gpu1", "bandwidth_bytes_per_s": 1e9, "latency_s": 0}
    with pytest.raises(TopologyError, match=r"links\[1\].*already defined by 'links\[0\]'"):
        links_topology("dup", 2, [link, link])


def test_extra_device_cannot_shadow_a_gpu() -> None:
    """Declaring gpu1 as a switch is rejected, naming extra_devices.gpu1."""
    link = {"src": "gpu0", "dst": "gpu1", "bandwidth_bytes_per_s": 1e9, "latency_s": 0}
    with pytest.raises(TopologyError, match=r"extra_devices\.gpu1.*is a gpu"):
        links_topology("shadow", 2, [link], extra_devices={"gpu1": "nvswitch"})


def test_unknown_preset_and_bad_rank_are_topology_errors() -> None:
    """An unknown preset lists the presets; a rank past the last GPU says how many exist."""
    with pytest.raises(TopologyError, match="dgx-h100"):
        load_topology("dgx-h999")
    with pytest.raises(TopologyError, match="has 8 GPUs"):
        load_topology("dgx-h100").routes(0, 8)


def test_fixture_gpu_spec_is_valid() -> None:
    """The round-number GPU used by the fixtures validates as a GpuSpec with no FP8 gaps."""
    spec = TopologySpec.model_validate({"name": "x", "gpu_spec": ROUND_GPU, "gpus_per_node": 1})
    assert spec.gpu_spec.peak_fp8_flops_per_s == 2e15
    assert build_topology(spec).routes(0, 0) == [[]]
