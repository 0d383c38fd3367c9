"""Calibration: parsing nccl-tests logs, and fitting a topology recovers known parameters."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from moesim.calibrate import (
    Measurement,
    calibrated_spec,
    fit_topology,
    measurements_from_sections,
    parse_nccl_tests,
    predict_times_s,
    read_nccl_tests,
    topology_launch_s,
)
from moesim.calibrate.protocol_fit import fit_protocols, predict_rows_s
from moesim.cli import calibrate as calibrate_cli
from moesim.engine.collective_model import NCCL_LAUNCH_S, busbw_factor
from moesim.errors import ConfigError, TopologyError
from moesim.inputs.config import load_model_file
from moesim.inputs.topology import build_topology, load_topology, resolve_topology_path
from moesim.inputs.topology_spec import TopologySpec

DATA = Path(__file__).parent / "data" / "nccl_tests"
H100_LOG = DATA / "h100_8gpu_nvswitch_xxrjun.txt"
SIZES = [2**p for p in range(20, 29, 2)]  # 1 MiB .. 256 MiB


def _spec(name: str) -> TopologySpec:
    return load_model_file(TopologySpec, resolve_topology_path(name), "topology")


def _nccl_tests_text(op_binary: str, n: int, sizes: list[int], times_s: np.ndarray) -> str:
    """An nccl-tests log (current format, '#' headers, both columns) with these times."""
    head = [f"# Collective test starting: {op_binary}_perf", "#", "# Using devices"]
    head += [f"#  Rank {r:2d} Group  0 Pid 1 on host device {r:2d} [0x00] GPU" for r in range(n)]
    head += ["#       size  count  type  redop  root  time  algbw  busbw  #wrong  time ..."]
    op = {"all_reduce": "allreduce", "alltoall": "alltoall"}[op_binary]
    rows = []
    for size, t in zip(sizes, times_s, strict=True):
        algbw = size / t / 1e9
        busbw = algbw * busbw_factor(op, n)
        us = t * 1e6
        rows.append(f"{size:12d} {size // 4:12d}     float     sum      -1 {us:8.3f} "
                    f"{algbw:7.2f} {busbw:7.2f}       0 {us:8.3f} {algbw:7.2f} {busbw:7.2f}    N/A")
    return "\n".join([*head, *rows, "# Avg bus bandwidth    : 1.0", ""])


def _generated_log(spec: TopologySpec, efficiency: dict[str, float], launch_s: float) -> str:
    """alltoall and all-reduce logs that moesim itself predicts for known parameters, on the
    Simple protocol (the one calibration fits)."""
    simple = spec.model_copy(update={"protocols": {}, "multi_gpu_launch_s": None})
    truth = build_topology(calibrated_spec(simple, efficiency, launch_s))
    parts = []
    for binary, op in (("alltoall", "alltoall"), ("all_reduce", "allreduce")):
        ms = [Measurement(op, 8, float(s), 1.0) for s in SIZES]
        times = predict_times_s(truth, ms, launch_s=launch_s)
        parts.append(_nccl_tests_text(binary, 8, SIZES, times))
    return "\n".join(parts)


def test_parse_published_h100_log_sections_and_columns():
    """The 8x H100 log parses into 4 sections of 10 rows; ranks counted from '# Rank' lines."""
    sections = read_nccl_tests(H100_LOG)
    assert [s.op for s in sections] == ["alltoall", "allreduce", "allgather", "reducescatter"]
    assert all(s.num_ranks == 8 and len(s.rows) == 10 for s in sections)
    first = sections[0].rows[0]  # 33554432 524288 double none -1 125.18 268.05 234.54 0 126.30
    assert (first.size_bytes, first.count, first.dtype) == (33554432, 524288, "double")
    assert first.time_s == pytest.approx(125.18e-6)
    assert first.busbw_bytes_per_s == pytest.approx(234.54e9)
    assert first.inplace_time_s == pytest.approx(126.30e-6)
    assert first.inplace_busbw_bytes_per_s == pytest.approx(232.46e9)


def test_busbw_of_parsed_rows_matches_nccl_tests_own_busbw():
    """Our busbw (size / time x factor) reproduces the busbw column nccl-tests printed (<0.2%)."""
    ms = measurements_from_sections(read_nccl_tests(H100_LOG))
    sections = read_nccl_tests(H100_LOG)
    printed = [row.busbw_bytes_per_s for s in sections for row in s.rows]
    ours = [m.busbw_bytes_per_s for m in ms]
    np.testing.assert_allclose(ours, printed, rtol=2e-3)


def test_parse_old_format_without_root_and_blank_redop():
    """Old logs (no root column, 'error' column, blank alltoall redop) parse; op from command."""
    [allreduce] = read_nccl_tests(DATA / "v100_old_format_nccl_tests78.txt")
    [alltoall] = read_nccl_tests(DATA / "v100_old_format_alltoall_nccl_tests78.txt")
    assert (allreduce.op, alltoall.op) == ("allreduce", "alltoall")
    assert allreduce.rows[1].time_s == pytest.approx(244833e-6)
    assert alltoall.rows[0].size_bytes == 268435456
    assert alltoall.rows[0].time_s == pytest.approx(520935e-6)
    assert alltoall.rows[0].inplace_time_s == pytest.approx(519562e-6)


def test_log_without_rank_lines_needs_gpus():
    """A log listing no ranks needs --gpus; with it, its rows become measurements."""
    sections = read_nccl_tests(DATA / "v100_old_format_nccl_tests78.txt")
    with pytest.raises(ConfigError, match="--gpus"):
        measurements_from_sections(sections)
    ms = measurements_from_sections(sections, num_ranks=64)
    assert [m.num_ranks for m in ms] == [64, 64]


def test_malformed_row_is_config_error_with_line_number():
    """A row that starts like a result but does not parse names its line and the file."""
    text = (
        "# Collective test starting: all_reduce_perf\n"
        "#  Rank  0 Group 0\n"
        "  1048576  262144  float  sum  -1  46.52  22.54  39.44  0  46.44  22.58  39.51  0\n"
        "  2097152  524288  float  sum  -1  fast  49.86  87.26  0  42.95  48.82  85.44  0\n"
    )
    with pytest.raises(ConfigError, match=r"mylog\.txt: line 4: cannot read"):
        parse_nccl_tests(text, source="mylog.txt")


def test_file_without_rows_or_missing_is_config_error(tmp_path):
    """No result rows, or no file at all, is one ConfigError naming the file."""
    empty = tmp_path / "empty.txt"
    empty.write_text("# nThread 1 nGpus 8\nNCCL INFO something\n")
    with pytest.raises(ConfigError, match="no nccl-tests result rows"):
        read_nccl_tests(empty)
    with pytest.raises(ConfigError, match="does not exist"):
        read_nccl_tests(tmp_path / "absent.txt")


def test_fit_recovers_known_efficiency_and_launch():
    """Logs generated by moesim with efficiency 0.8 and every launch 12 us fit back: the
    efficiency within 2%, every row within 5% (DES)."""
    spec = _spec("dgx-h100")
    sections = parse_nccl_tests(_generated_log(spec, {"nvlink": 0.8}, 12e-6), source="gen")
    result = fit_protocols(spec, measurements_from_sections(sections), fidelity="des")
    assert result.efficiency_by_medium == {"nvlink": pytest.approx(0.8, rel=0.02)}
    np.testing.assert_allclose(result.after_s, result.measured_s, rtol=0.05)


def test_fit_one_medium_of_a_pcie_tree():
    """Fitting only `pcie` on the L40S tree with P2P everywhere (UPI and memory fixed)
    recovers 0.7 within 2% and reproduces every row within 5%."""
    spec = _spec("l40s-8x-pcie")
    open_p2p = spec.fabric[0].model_copy(update={"cpu_vendor": None,
                                                 "socket_link_bandwidth_bytes_per_s": 67.2e9})
    spec = spec.model_copy(update={"fabric": (open_p2p,)})
    sections = parse_nccl_tests(_generated_log(spec, {"pcie": 0.7}, 20e-6), source="gen")
    result = fit_protocols(spec, measurements_from_sections(sections), media=["pcie"])
    assert result.efficiency_by_medium == {"pcie": pytest.approx(0.7, rel=0.02)}
    np.testing.assert_allclose(result.after_s, result.measured_s, rtol=0.05)


def test_fixed_launch_keeps_topology_launch():
    """With fit_launch false the launch stays the topology's (NCCL's default when unset)."""
    spec = _spec("hgx-a100")
    sections = parse_nccl_tests(_generated_log(spec, {"nvlink": 0.9}, NCCL_LAUNCH_S), "gen")
    result = fit_topology(spec, measurements_from_sections(sections), fit_launch=False,
                          fidelity="analytic")
    assert result.launch_s == NCCL_LAUNCH_S == topology_launch_s(load_topology("hgx-a100"))
    assert result.efficiency_by_medium["nvlink"] == pytest.approx(0.9, rel=0.01)


def test_cli_writes_calibrated_topology(tmp_path, capsys):
    """`moesim calibrate nccl-tests` on a GPU topology fits NCCL's protocol costs over all sizes:
    a log generated with every protocol launching in 12 us and links at 0.8 comes back as
    Simple/LL launches of 12 us and efficiency 0.8, prints a row per size (with the
    algorithm/protocol it ran) and the error per band, and writes a loadable YAML."""
    log = tmp_path / "gen.txt"
    log.write_text(_generated_log(_spec("dgx-h100"), {"nvlink": 0.8}, 12e-6))
    out = tmp_path / "fitted.yaml"
    parser = argparse.ArgumentParser()
    calibrate_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["calibrate", "nccl-tests", str(log), "-t", "dgx-h100",
                              "-o", str(out), "--fidelity", "analytic"])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("alltoall")]
    assert "measured us" in printed and sum("direct/" in line for line in rows) == len(SIZES)
    assert "size band" in printed and "MAPE" in printed
    topo = load_topology(out)
    assert topo.spec.link_efficiency["nvlink"] == pytest.approx(0.8, rel=0.02)
    # every row is reproduced (the launch and one step of an all-to-all are only known as a sum)
    ms = measurements_from_sections(read_nccl_tests(log))
    predicted = predict_rows_s(topo, ms)
    np.testing.assert_allclose(predicted, [m.time_s for m in ms], rtol=0.05)
    simple = topo.spec.protocols["Simple"]
    assert simple.launch_s + simple.nvlink_step_latency_s == pytest.approx(12e-6 + 3.4e-6,
                                                                          rel=0.05)
    assert "moesim calibrate nccl-tests" in topo.spec.sources[-1]


def test_link_efficiency_for_unknown_medium_is_topology_error():
    """A `link_efficiency` key no link has (a typo) names the field and lists the media."""
    spec = calibrated_spec(_spec("dgx-h100"), {"nvlnk": 0.5}, None)
    with pytest.raises(TopologyError, match=r"link_efficiency\.nvlnk.*media: nvlink"):
        build_topology(spec)
