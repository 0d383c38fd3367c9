"""NCCL's tuner as moesim reproduces it, and the CLI that exposes the choice.

The expected choices and times are worked by hand from NCCL 2.30.7's src/graph/tuning.cc
(constants and formulas quoted in moesim/engine/nccl_tuner.py) for 8x H100 on NVSwitch with
NCCL's ring search result of 12 channels x 30 GB/s = 360 GB/s.
"""

from __future__ import annotations

import json

import pytest

from moesim.calibrate.nccl_tests import parse_nccl_tests
from moesim.cli import main
from moesim.engine.nccl_tuner import TunerInputs, nccl_choice, p2p_protocol, tuner_table_us
from moesim.engine.protocols import plan_call
from moesim.inputs.topology import load_topology

H100 = TunerInputs(n_ranks=8, n_nodes=1, compute_capability=9.0, intra_hw="nvlink",
                   ring_bus_bw_gbps=360.0, nvls=True)


def test_ring_ll_time_by_hand():
    """Ring LL at 64 KiB: latency 6.6 + 14 x 0.6 = 15.0 us; bandwidth min(141, 360 x .5) x
    8/14 = 80.57 GB/s; time 15.0 + 65536 / 80570 = 15.81 us."""
    table = tuner_table_us("allreduce", 65536, H100)
    assert table[("ring", "LL")] == pytest.approx(15.0 + 65536 / (1000 * 141 * 8 / 14))


@pytest.mark.parametrize("size, expected", [
    (65536, ("ring", "LL")),
    (1 << 20, ("ring", "LL")),
    (256 << 20, ("nvls", "Simple")),
])
def test_h100_choices_match_the_worked_example(size, expected):
    """64 KiB and 1 MiB on ring/LL, 256 MiB on NVLS (crossover ~1.1 MB)."""
    assert nccl_choice("allreduce", size, H100) == expected


def test_without_nvls_large_all_reduce_runs_ring_simple_and_pcie_has_no_ll128():
    """No NVLS: 64 MiB runs ring/Simple; LL128 appears only with NVLink between GPUs."""
    no_nvls = TunerInputs(8, 1, 9.0, "nvlink", 360.0, nvls=False)
    assert nccl_choice("allreduce", 64 << 20, no_nvls) == ("ring", "Simple")
    pcie = TunerInputs(8, 1, 8.9, "pci", 20.0)
    assert all(protocol != "LL128" for _, protocol in tuner_table_us("allreduce", 1e6, pcie))


def test_forcing_an_algorithm_or_protocol_restricts_the_argmin():
    """NCCL_ALGO / NCCL_PROTO: forcing ring picks ring's best protocol; forcing LL128 on a
    PCIe system where NCCL disables it is an error."""
    assert nccl_choice("allreduce", 256 << 20, H100, algorithm="ring") == ("ring", "Simple")
    with pytest.raises(ValueError, match="LL128"):
        nccl_choice("allreduce", 1e6, TunerInputs(8, 1, 8.9, "pci", 20.0), protocol="LL128")


def test_p2p_protocol_threshold():
    """Send/recv runs LL up to NCCL_P2P_LL_THRESHOLD (16 KiB), else Simple."""
    assert p2p_protocol(16384) == "LL" and p2p_protocol(16385) == "Simple"


def test_plan_call_on_dgx_h100_uses_the_preset_protocol_costs():
    """A 1 MiB 8-GPU all-reduce on dgx-h100 runs ring/LL with the preset's fitted LL launch."""
    topo = load_topology("dgx-h100")
    call = plan_call(topo, "allreduce", range(8), 1 << 20)
    assert (call.algorithm, call.protocol) == ("ring", "LL")
    assert call.launch_s == pytest.approx(topo.spec.protocols["LL"].launch_s)
    assert plan_call(topo, "allreduce", range(8), 1 << 20, gpus_per_process=8).launch_s == (
        pytest.approx(call.launch_s + 7 * topo.spec.multi_gpu_launch_s))


def test_cli_sweep_prints_an_nccl_tests_table(capsys):
    """`--sweep 1K:1M:4` prints 6 rows (1K, 4K, ..., 1M) with time, algbw, busbw and what ran."""
    assert main(["collective", "--topology", "dgx-h100", "--op", "allreduce",
                 "--sweep", "1K:1M:4"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert [int(line.split()[0]) for line in rows] == [1024 * 4**k for k in range(6)]
    assert all(line.split()[-1] == "ring/LL" for line in rows)


def test_cli_forced_protocol_and_algorithm(capsys):
    """--protocol Simple --algorithm ring is what runs; LL128 for all-to-all is one error line."""
    assert main(["collective", "--topology", "dgx-h100", "--op", "allreduce", "--bytes", "1M",
                 "--algorithm", "ring", "--protocol", "Simple", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["algorithm"], report["protocol"]) == ("ring", "Simple")
    assert main(["collective", "--topology", "dgx-h100", "--op", "alltoall", "--bytes", "1M",
                 "--protocol", "LL128"]) == 2
    err = capsys.readouterr().err
    assert err.count("moesim: error:") == 1 and "LL128" in err


@pytest.mark.parametrize("sweep", ["1K", "1K:1M:1", "1M:1K", "1K:1M:x"])
def test_cli_bad_sweep_is_one_error_line(sweep, capsys):
    """A malformed --sweep names the flag and the form it wants, exit 2."""
    assert main(["collective", "--topology", "dgx-h100", "--op", "allreduce",
                 "--sweep", sweep]) == 2
    err = capsys.readouterr().err
    assert err.count("moesim: error:") == 1 and "--sweep" in err


def test_parser_reads_gpus_per_thread_and_moesim_marker():
    """`nGpus 8` in the header is 8 GPUs per thread; `# MOESIM: algorithm=ring gpus=4` sets the
    forced algorithm and the rank count."""
    text = "\n".join([
        "# MOESIM: algorithm=ring gpus=4",
        "# nThread 1 nGpus 8 minBytes 8 maxBytes 16 step: 2(factor)",
        "# Collective test starting: all_reduce_perf",
        "           8             2     float     sum      -1    35.00    0.00    0.00       0"
        "    34.52    0.00    0.00       0",
    ])
    (section,) = parse_nccl_tests(text, "gen")
    assert (section.gpus_per_thread, section.algorithm, section.num_ranks) == (8, "ring", 4)


def test_parser_rejects_an_unknown_forced_algorithm():
    """A `# MOESIM: algorithm=` the model cannot run is one ConfigError naming the line."""
    from moesim.errors import ConfigError

    with pytest.raises(ConfigError, match="line 1.*auto, ring, tree or nvls"):
        parse_nccl_tests("# MOESIM: algorithm=bogus\n", "gen")
