"""Bad numbers (issue 15): each is refused with exit 2, named by its flag or field, fast.

Four classes, each through `moesim.cli.main` in-process:
1. work too large to do (batch, context, chunk steps, world, requests, trace tokens, GPUs):
   refused from an estimate before anything is allocated, within a few seconds;
2. non-finite or absurd topology numbers: refused by field, and the engine's guards turn a
   non-finite link or step time into a TopologyError instead of a hang, NaN or Infinity;
3. numeric flags out of range: argparse refuses them naming the flag (usage, then one
   `moesim <cmd>: error: argument --flag: ...` line, exit 2, as for any flag argparse cannot
   read); flags that are Scenario/ServeSpec fields give one `moesim: error: --flag: ...` line;
4. nccl-tests rows with a negative, zero, NaN or infinite time or bandwidth: refused naming
   the file's line.
"""

from __future__ import annotations

import json
import math
import signal
import time
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.cli import main
from moesim.cli.numbers import float_in, int_in
from moesim.errors import ConfigError, TopologyError
from moesim.inputs.topology import Topology, load_topology
from moesim.inputs.topology_spec import TopologySpec

ROOT = Path(__file__).resolve().parents[1]
NCCL_LOG = ROOT / "tests" / "data" / "nccl_tests" / "h100_8gpu_ring_allreduce_together.txt"
FAST_S = 5.0  # a refusal must come this quickly (the too-large work never starts)


@pytest.fixture(autouse=True)
def _alarm() -> Iterator[None]:
    """A hang fails the case instead of the run."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError("no answer within 30 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Run `moesim argv`: exit 2 within FAST_S, no traceback, and an error line (the last line
    of stderr) holding every needle; returns that line."""
    start = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refused a flag
        code = exc.code
    elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, captured.out[-500:], err)
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    if line.startswith("moesim: error:"):
        assert "\n" not in err  # a MoesimError: one line and nothing else
    else:  # argparse: usage, then `moesim <cmd>: error: argument --flag: ...`
        assert line.startswith("moesim ") and ": error: argument " in line, err
    for needle in needles:
        assert needle in line, (needle, line)
    assert elapsed < FAST_S, f"{argv}: refused after {elapsed:.1f} s"
    return line


def _write(path: Path, data: dict) -> str:  # type: ignore[type-arg]
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _nvswitch(tmp_path: Path, name: str = "t.yaml", *, nodes: int = 1, gpus: int = 8,
              **port: object) -> str:
    """A one-block NVSwitch topology file with the port figures overridden."""
    block = {"kind": "nvswitch", "port_bandwidth_bytes_per_s": 450e9, "latency_s": 1e-7, **port}
    fabric = [block]
    if nodes > 1:
        fabric.append({"kind": "network", "gpu_nic_bandwidth_bytes_per_s": 63e9,
                       "gpu_nic_latency_s": 1e-6, "nic_bandwidth_bytes_per_s": 50e9,
                       "nic_latency_s": 5e-7})
    return _write(tmp_path / name, {"name": "t", "gpu_spec": "h100-sxm", "nodes": nodes,
                                    "gpus_per_node": gpus, "fabric": fabric})


# ---- 1. work too large to do --------------------------------------------------------------

SMALL = ["--layers", "2", "--trace-tokens", "64", "--fidelity", "analytic"]


@pytest.mark.parametrize(("argv", "needles"), [
    (["run", "--batch", "1000000000"], ("--batch", "1000000")),
    (["run", "--context", "10000000000"], ("--context", "100000000")),
    (["run", "--context", "100000000", "--batch", "1", "--prefill-chunk-tokens", "1"],
     ("chunk steps", "--prefill-chunk-tokens", "16,384")),
    (["run", "--batch", "1000000", "--context", "1000", "--phase", "decode", "--mtp", "8"],
     ("routed entries", "--batch", "268,435,456")),
    (["run", "--placement", "EP8xDP100000"], ("placement EP8xDP100000", "traffic entries")),
    (["serve", "--topology", "dgx-h100", "--rate", "1", "--requests", "1000000000000"],
     ("--requests", "10000000")),
    (["serve", "--topology", "dgx-h100", "--rate", "1000000", "--duration-s", "1000000"],
     ("duration_s", "1e+12 requests")),
    (["serve", "--topology", "dgx-h100", "--rate", "1", "--requests", "5000000"],
     ("osl", "output tokens")),
    (["serve", "--topology", "dgx-h100", "--concurrency", "4", "--osl", "1000000000"],
     ("--osl", "100000000")),
    (["serve", "--topology", "dgx-h100", "--rate", "1", "--max-num-batched-tokens",
      "1000000000"], ("--max-num-batched-tokens",)),
    (["trace", "synth", "--uniform", "--tokens", "1e12", "-o", "x.npz"], ("--tokens",)),
    (["trace", "synth", "--uniform", "--tokens", "10000000", "--layers", "64", "-o", "x.npz"],
     ("--tokens", "routed entries")),
    (["trace", "synth", "--uniform", "--tokens", "10", "--experts", "30000", "-o", "x.npz"],
     ("--layers/--experts", "transition entries")),
    (["collective", "--topology", "dgx-h100", "--op", "alltoall", "--gpus", "100000",
      "--bytes", "1M"], ("--gpus", "65536")),
    (["kernel", "--gpu", "h100-sxm", "--op", "moe", "--tokens", "1000000000000"], ("--tokens",)),
    (["plan", "--gpus-available", "1000000000xH100", "--context", "512", "--users", "8",
      "--slo-tpot-ms", "50"], ("--gpus-available", "4,096")),
    (["plan", "--gpus-available", "9" * 5000 + "xH100", "--context", "512", "--users", "8",
      "--slo-tpot-ms", "50"], ("--gpus-available", "5000 digits")),
])
def test_too_large_work_is_refused_fast(argv: list[str], needles: tuple[str, ...],
                                        tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / a) if a.endswith(".npz") else a for a in argv]
    _refused(argv, capsys, *needles)
    assert not (tmp_path / "x.npz").exists()


def test_collective_among_too_many_gpus_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """4096 GPUs exist, but their all-to-all's 16.7M rank pairs are refused before the matrix."""
    topology = _nvswitch(tmp_path, nodes=512)
    _refused(["collective", "--topology", topology, "--op", "alltoall", "--bytes", "1G"],
             capsys, "--gpus 4096", "rank pairs")


def test_topology_with_too_many_gpus_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    topology = _nvswitch(tmp_path, nodes=100_000)
    _refused(["collective", "--topology", topology, "--op", "allreduce", "--bytes", "1M"],
             capsys, "nodes")


def test_steps_are_refused_before_allocation() -> None:
    """The step builder refuses from its estimate: no 8 GB index array is ever made."""
    from moesim.trace.bundled import named_trace
    from moesim.traffic.workload import build_step, prefill_chunks

    trace, _ = named_trace("bundled:mixtral8x7b_humaneval_decode")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="routed entries"):
        build_step(trace, "decode", batch=10**9, context=10)
    with pytest.raises(ConfigError, match="int32"):
        build_step(trace, "decode", batch=1, context=2**31)
    with pytest.raises(ConfigError, match="chunk steps"):
        prefill_chunks(1, 10**12, 1)
    assert time.perf_counter() - start < 1.0


# ---- 2. topology numbers ------------------------------------------------------------------

@pytest.mark.parametrize(("port", "field"), [
    ({"port_bandwidth_bytes_per_s": 1e-300}, "port_bandwidth_bytes_per_s"),
    ({"port_bandwidth_bytes_per_s": 1e300}, "port_bandwidth_bytes_per_s"),
    ({"port_bandwidth_bytes_per_s": float("inf")}, "port_bandwidth_bytes_per_s"),
    ({"port_bandwidth_bytes_per_s": float("nan")}, "port_bandwidth_bytes_per_s"),
    ({"latency_s": float("inf")}, "latency_s"),
    ({"latency_s": 1e300}, "latency_s"),
    ({"latency_s": -1e-6}, "latency_s"),
    ({"nvls": True, "nvls_efficiency": 1e-300}, "nvls_efficiency"),
])
def test_absurd_topology_numbers_are_refused_by_field(
        port: dict, field: str, tmp_path: Path,  # type: ignore[type-arg]
        capsys: pytest.CaptureFixture[str]) -> None:
    topology = _nvswitch(tmp_path, **port)
    for argv in (["collective", "--topology", topology, "--op", "alltoall", "--bytes", "1M"],
                 ["run", "--topology", topology, *SMALL, "--quiet"]):
        _refused(argv, capsys, field)


@pytest.mark.parametrize(("path", "value"), [
    (("fabric", 0, "port_bandwidth_bytes_per_s"), math.inf),
    (("fabric", 0, "latency_s"), math.nan),
    (("link_efficiency", "nvlink"), 1e-300),
    (("collective_launch_s",), math.inf),
    (("gpu_spec", "peak_bf16_flops_per_s"), 1e-300),
    (("gpu_spec", "memory_bytes"), math.inf),
    (("gpu_spec", "kernel_launch_s"), math.nan),
    (("gpu_price_per_hour_usd",), math.nan),
    (("straggler_wait_cap_s",), -1e-3),
    (("precompute_wait_cap_s",), math.inf),
    (("precompute_wait_fraction",), math.nan),
    (("precompute_wait_fraction",), -0.1),
])
def test_topology_spec_refuses_non_finite_and_absurd_values(path: tuple, value: float) -> None:  # type: ignore[type-arg]
    """The schema itself refuses them (a spec built in code, not only one read from a file)."""
    data = load_topology("dgx-h100").spec.model_dump()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValueError, match=str(path[-1])):
        TopologySpec.model_validate(data)


def test_topology_at_the_bounds_gives_finite_json(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The slowest, longest links a topology may have still give finite times in the JSON."""
    topology = _nvswitch(tmp_path, port_bandwidth_bytes_per_s=1e3, latency_s=1.0)
    assert main(["collective", "--topology", topology, "--op", "alltoall", "--bytes", "1T",
                 "--json"]) == 0

    def refuse(constant: str) -> float:
        raise AssertionError(f"{constant} in the JSON")

    report = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert math.isfinite(report["time_s"]) and report["time_s"] > 1e8


@pytest.mark.parametrize("attribute", ["latency_s", "bandwidth_bytes_per_s"])
@pytest.mark.parametrize("fidelity", ["des", "analytic"])
def test_engine_refuses_non_finite_links(attribute: str, fidelity: str) -> None:
    """A graph edited in code (past the schema) with an infinite figure: a TopologyError naming
    the link, never a hang (des) or a NaN time."""
    from moesim.engine.collectives import predict_collective

    built = load_topology("dgx-h100")
    graph = built.graph.copy()
    graph.edges["gpu0", "nvswitch0"][attribute] = math.inf
    topology = Topology(built.spec, graph)
    with pytest.raises(TopologyError, match="gpu0->nvswitch0"):
        predict_collective(topology, "alltoall", list(range(8)), fidelity=fidelity,
                           bytes_matrix=np.full((8, 8), 1e6))


def test_step_time_guard_names_the_topology() -> None:
    from moesim.planning.evaluate import check_finite_times

    for step_s in (math.inf, math.nan):
        timeline = types.SimpleNamespace(step_s=step_s, end_s=np.zeros((1, 1)))
        with pytest.raises(TopologyError, match="topology 'odd'.*not a finite"):
            check_finite_times(timeline, "odd")  # type: ignore[arg-type]
    fine = types.SimpleNamespace(step_s=1.0, end_s=np.array([[1.0, np.nan]]))
    assert check_finite_times(fine, "ok") is fine  # type: ignore[arg-type]


# ---- 3. numeric flags ---------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "flag"), [
    (["validate", "live", "--placement", "EP4", "-o", "m.json", "--repeats", "0"], "--repeats"),
    (["validate", "live", "--placement", "EP4", "-o", "m.json", "--warmup", "-1"], "--warmup"),
    (["validate", "live", "--placement", "EP4", "-o", "m.json", "--timeout-s", "nan"],
     "--timeout-s"),
    (["validate", "live", "--placement", "EP4", "-o", "m.json", "--timeout-s", "inf"],
     "--timeout-s"),
    (["validate", "live", "--placement", "EP4", "-o", "m.json", "--timeout-s", "-1"],
     "--timeout-s"),
    (["validate", "live", "--placement", "EP4", "-o", "m.json", "--nproc", "0"], "--nproc"),
    (["validate", "live", "--placement", "EP4", "-o", "m.json", "--scale", "0"], "--scale"),
    (["calibrate", "live", "-o", "t.yaml", "--nproc", "0"], "--nproc"),
    (["calibrate", "live", "-o", "t.yaml", "--scale", "0"], "--scale"),
    (["calibrate", "live", "-o", "t.yaml", "--scale", "nan"], "--scale"),
    (["calibrate", "live", "-o", "t.yaml", "--repeats", "0"], "--repeats"),
    (["calibrate", "live", "-o", "t.yaml", "--timeout-s", "inf"], "--timeout-s"),
    (["calibrate", "live", "-o", "t.yaml", "--load-tokens", "-1"], "--load-tokens"),
    (["calibrate", "nccl-tests", str(NCCL_LOG), "-t", "dgx-h100", "-o", "t.yaml", "--gpus",
      "1"], "--gpus"),
    (["trace", "synth", "--uniform", "--tokens", "64", "-o", "x.npz", "--seed", "-1"],
     "--seed"),
    (["trace", "synth", "--uniform", "--tokens", "0", "-o", "x.npz"], "--tokens"),
    (["trace", "synth", "--zipf", "nan", "--tokens", "64", "-o", "x.npz"], "--zipf"),
    (["trace", "synth", "--uniform", "--tokens", "64", "--top-k", "0", "-o", "x.npz"],
     "--top-k"),
    (["plan", "--gpus-available", "8xH100", "--context", "0", "--users", "8",
      "--slo-tpot-ms", "50"], "--context"),
    (["plan", "--gpus-available", "8xH100", "--context", "512", "--users", "0",
      "--slo-tpot-ms", "50"], "--users"),
    (["plan", "--gpus-available", "8xH100", "--context", "512", "--users", "8",
      "--slo-tpot-ms", "50", "--top", "-2"], "--top"),
    (["collective", "--topology", "dgx-h100", "--op", "allreduce", "--bytes", "1M", "--gpus",
      "0"], "--gpus"),
    (["collective", "--topology", "dgx-h100", "--op", "allreduce", "--bytes", "1M",
      "--gpus-per-process", "0"], "--gpus-per-process"),
    (["kernel", "--gpu", "h100-sxm", "--op", "gemm", "--tokens", "0"], "--tokens"),
    (["kernel", "--gpu", "h100-sxm", "--op", "attention", "--tokens", "8", "--context", "-1"],
     "--context"),
    (["kernel", "--gpu", "h100-sxm", "--op", "gemm", "--tokens", "8", "--n", "0"], "--n"),
    (["kernel", "--gpu", "h100-sxm", "--op", "gemm", "--tokens", "8", "--k", "nan"], "--k"),
])
def test_argparse_refuses_out_of_range_flags(argv: list[str], flag: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / a) if a.endswith((".npz", ".json", ".yaml")) else a for a in argv]
    line = _refused(argv, capsys, f"argument {flag}")
    assert line.startswith("moesim ") and not line.startswith("moesim: ")


@pytest.mark.parametrize(("argv", "flag"), [
    (["collective", "--topology", "dgx-h100", "--op", "allreduce", "--bytes", "nan"],
     "--bytes"),
    (["collective", "--topology", "dgx-h100", "--op", "allreduce", "--bytes", "-1"], "--bytes"),
    (["collective", "--topology", "dgx-h100", "--op", "allreduce", "--bytes", "0"], "--bytes"),
    (["collective", "--topology", "dgx-h100", "--op", "allreduce", "--bytes", "1e400"],
     "--bytes"),
    (["collective", "--topology", "dgx-h100", "--op", "allreduce", "--sweep", "1K:1G:inf"],
     "--sweep"),
    (["calibrate", "nccl-tests", str(NCCL_LOG), "-t", "dgx-h100", "-o", "t.yaml",
      "--min-bytes", "-1"], "--min-bytes"),
    (["calibrate", "nccl-tests", str(NCCL_LOG), "-t", "dgx-h100", "-o", "t.yaml",
      "--max-bytes", "inf"], "--max-bytes"),
    (["calibrate", "live", "-o", "t.yaml", "--sizes", "4K,-1"], "--sizes"),
    (["serve", "--topology", "dgx-h100", "--rate", "1", "--seed", "-1"], "--seed"),
    (["serve", "--topology", "dgx-h100", "--rate", "1", "--slo-tpot-ms", "nan"],
     "--slo-tpot-ms"),
    (["serve", "--topology", "dgx-h100", "--rate", "1", "--slo-ttft-ms", "-1"],
     "--slo-ttft-ms"),
    (["serve", "--topology", "dgx-h100", "--rate", "1", "--burst-cv", "1e200"], "--burst-cv"),
    (["serve", "--topology", "dgx-h100", "--rates", "1,nan"], "--rates"),
    # plan's SLOs are checked by its handler, as its other serving flags (tests/test_plan.py)
    (["plan", "--gpus-available", "8xH100", "--context", "512", "--users", "8",
      "--slo-tpot-ms", "nan"], "--slo-tpot-ms"),
    (["plan", "--gpus-available", "8xH100", "--context", "512", "--users", "8",
      "--slo-tpot-ms", "inf"], "--slo-tpot-ms"),
    (["plan", "--gpus-available", "8xH100", "--context", "512", "--users", "8",
      "--slo-tpot-ms", "50", "--slo-ttft-ms", "-1"], "--slo-ttft-ms"),
    (["serve", "--topology", "dgx-h100", "--concurrencies", "2,0"], "--concurrencies"),
    (["validate", "live", "--placement", "EP4", "-o", "m.json", "--redundant-experts", "-3"],
     "--redundant-experts"),
    (["validate", "live", "--placement", "EP4", "-o", "m.json", "--inject-failure", "99"],
     "--inject-failure"),
    (["collective", "--topology", "dgx-h100", "--op", "allreduce", "--bytes", "1M",
      "--gpus-per-process", "64"], "--gpus-per-process"),
    (["calibrate", "live", "-t", "rtx4090-4x-pcie", "--nproc", "8", "-o", "t.yaml"], "--nproc"),
])
def test_out_of_range_values_are_one_error_line(argv: list[str], flag: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / a) if a.endswith((".json", ".yaml")) else a for a in argv]
    line = _refused(argv, capsys, flag)
    assert line.startswith("moesim: error:")
    assert not (tmp_path / "t.yaml").exists()


def test_number_types_accept_what_they_should() -> None:
    assert int_in(1)("1e6") == 1_000_000 and int_in(0)("0") == 0 and int_in(1)("1_000") == 1000
    assert float_in(0.0, low_open=True)("2.5") == 2.5
    for bad in ("1.5", "nan", "inf", "1e999", "", "x"):
        with pytest.raises(Exception, match="must be an integer"):
            int_in(1)(bad)
    for bad in ("nan", "inf", "-inf", "0", "x"):
        with pytest.raises(Exception, match="must be a"):
            float_in(0.0, low_open=True)(bad)


# ---- 4. nccl-tests logs --------------------------------------------------------------------

@pytest.mark.parametrize(("columns", "problem"), [
    ({0: "-34.98"}, "out-of-place time -34.98"),
    ({0: "0.00"}, "out-of-place time 0.00"),
    ({0: "1e999"}, "out-of-place time 1e999"),
    ({2: "-0.5"}, "out-of-place bandwidths"),
    ({1: "1e400"}, "out-of-place bandwidths"),
    ({4: "-34.52"}, "in-place time -34.52"),
    ({6: "-1.0"}, "in-place bandwidths"),
    ({0: "nan"}, "cannot read this nccl-tests row"),
    ({0: "inf"}, "cannot read this nccl-tests row"),
])
def test_nccl_tests_rows_with_bad_numbers_are_refused(columns: dict[int, str], problem: str,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    lines = NCCL_LOG.read_text().splitlines()
    number = next(i for i, text in enumerate(lines) if text.strip().startswith("8 "))
    tokens = lines[number].split()
    for index, value in columns.items():
        tokens[len(tokens) - 8 + index] = value
    lines[number] = "  ".join(tokens)
    log = tmp_path / "all_reduce.txt"
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "fitted.yaml"
    _refused(["calibrate", "nccl-tests", str(log), "-t", "dgx-h100", "-o", str(out)], capsys,
             f"line {number + 1}", problem)
    assert not out.exists()


def test_fits_refuse_bad_measurements() -> None:
    """Measurements made in code (or read from a bench JSON) are held to the same rule."""
    from moesim.calibrate.fit import Measurement, check_measurements

    check_measurements([Measurement("allreduce", 8, 1e6, 1e-4)])
    for m in (Measurement("allreduce", 8, 1e6, -1e-4), Measurement("allreduce", 8, 1e6, 0.0),
              Measurement("allreduce", 8, math.nan, 1e-4),
              Measurement("allreduce", 8, 1e6, math.inf)):
        with pytest.raises(ConfigError, match="measurement 1 \\(allreduce"):
            check_measurements([m])
