"""Kernel-level compute: each regime against a hand-worked case, the fit, profiles, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from moesim.calibrate.kernels import (
    KernelRow,
    accuracy_table,
    fit_curves,
    parse_kernel_csv,
    predict_rows_s,
)
from moesim.cli import main
from moesim.engine.kernels import gemm_time, moe_time
from moesim.errors import ConfigError
from moesim.inputs.kernel_profile import Curve, KernelCurves, list_kernel_profiles
from moesim.inputs.options import WEIGHT_DTYPE_BYTES, compute_dtype
from moesim.inputs.topology_spec import GpuSpec, load_gpu

# A round GPU for hand-worked cases: 1e15 FLOP/s, 1e12 B/s, 100 SMs, 10 MB of L2 at 1e13 B/s.
GPU = GpuSpec(name="round", peak_bf16_flops_per_s=1e15, memory_bandwidth_bytes_per_s=1e12,
              memory_bytes=1e11, compute_efficiency=1, memory_efficiency=1, kernel_launch_s=0,
              sm_count=100, l2_bytes=10e6, l2_bandwidth_bytes_per_s=1e13)


def curves(tile_m: int = 1, tile_n: int = 1, launch_s: float = 0.0) -> KernelCurves:
    return KernelCurves(family="test", launch_s=launch_s, tile_m=((1.0, tile_m),),
                        tile_n=tile_n, compute=Curve(points=((1.0, 1.0),)),
                        memory=Curve(points=((1.0, 1.0),)))


def test_memory_bound_decode_gemm() -> None:
    """M=1 on a 4096x4096 bf16 weight: 33.6 MB read at 1 TB/s = 33.6 us, compute negligible."""
    time_s = gemm_time(curves(), GPU, m=1, n=4096, k=4096, weight_bytes=2, act_bytes=2,
                       peak_flops_per_s=1e15)
    moved = 4096 * 4096 * 2 + 1 * (4096 + 4096) * 2
    assert float(time_s) == pytest.approx(moved / 1e12, rel=1e-12)


def test_compute_bound_prefill_gemm() -> None:
    """M=N=K=8192 with 128x128 tiles: 4096 tiles = 41 waves of 100 SMs (4100 tile slots), each
    2*128*128*8192 FLOPs, at 1e15 FLOP/s."""
    time_s = gemm_time(curves(128, 128), GPU, m=8192, n=8192, k=8192, weight_bytes=2,
                       act_bytes=2, peak_flops_per_s=1e15)
    assert float(time_s) == pytest.approx(4100 * 2 * 128 * 128 * 8192 / 1e15, rel=1e-12)
    assert float(time_s) > 2 * 8192**3 / 1e15  # the partial 41st wave costs a whole one


def test_tile_padding_doubles_a_grouped_gemm() -> None:
    """Compute-bound grouped GEMM with 64-row tiles: 8 experts with 65 tokens each take two
    tiles each, twice the tiles (and the time) of 64 tokens each."""
    fat = curves(64, 128)
    slow = GpuSpec(**{**GPU.model_dump(), "memory_bandwidth_bytes_per_s": 1e18})  # compute-bound
    t64, t65 = (moe_time(fat, slow, tokens_per_expert=np.full(8, t, float), hidden=4096,
                         ffn=14336, weight_bytes=2, act_bytes=2, peak_flops_per_s=1e15)
                for t in (64, 65))
    assert float(t65) / float(t64) == pytest.approx(2.0, rel=1e-9)


def test_l2_resident_shard_reads_at_l2_bandwidth() -> None:
    """A 4 MB weight fits the 10 MB L2: warm, it is read at 1e13 B/s; cold, at DRAM's 1e12."""
    kwargs = {"m": 1, "n": 1024, "k": 2048, "weight_bytes": 2, "act_bytes": 0,
              "peak_flops_per_s": 1e15}
    warm = gemm_time(curves(), GPU, warm_l2=True, **kwargs)
    cold = gemm_time(curves(), GPU, warm_l2=False, **kwargs)
    assert float(cold) == pytest.approx(1024 * 2048 * 2 / 1e12)
    assert float(warm) == pytest.approx(1024 * 2048 * 2 / 1e13)
    big = gemm_time(curves(), GPU, warm_l2=True, **{**kwargs, "n": 4096, "k": 4096})
    assert float(big) == pytest.approx(4096 * 4096 * 2 / 1e12)  # 33.6 MB: no longer fits


def test_grouped_moe_reads_only_busy_experts_and_launches_once() -> None:
    """Two of eight experts got tokens: their weights are read, plus one launch."""
    per = np.array([1, 0, 0, 0, 0, 0, 1, 0], float)
    time_s = moe_time(curves(launch_s=7e-6), GPU, tokens_per_expert=per, hidden=1024, ffn=2048,
                      weight_bytes=2, act_bytes=0, peak_flops_per_s=1e15)
    assert float(time_s) == pytest.approx(7e-6 + 2 * 3 * 1024 * 2048 * 2 / 1e12, rel=1e-9)


def test_weight_formats_carry_their_scales_and_peaks() -> None:
    """mxfp4: 4.25 bits per weight; nvfp4 4.5; fp8 runs at the fp8 peak where the GPU has it,
    fp4 formats at fp4 only on Blackwell, and weight-only int4 at bf16."""
    assert WEIGHT_DTYPE_BYTES["mxfp4"] * 8 == 4.25
    assert WEIGHT_DTYPE_BYTES["nvfp4"] * 8 == 4.5
    h100, b200, a100 = load_gpu("h100-sxm"), load_gpu("b200"), load_gpu("a100-sxm")
    assert compute_dtype("fp8", h100.formats) == "fp8"
    assert compute_dtype("fp8", a100.formats) == "bf16"
    assert compute_dtype("nvfp4", b200.formats) == "fp4"
    assert compute_dtype("mxfp4", h100.formats) == "bf16"
    assert compute_dtype("int4", b200.formats) == "bf16"


def test_fit_recovers_known_curves() -> None:
    """Synthetic GEMM times from known curves (knots at the measured sizes): the fit finds the
    launch and every efficiency the data can see, and reproduces every time."""
    gpu = load_gpu("h100-sxm")
    sizes = [1, 4, 16, 64, 256, 1024, 4096]
    truth = KernelCurves(
        family="t", launch_s=8e-6, tile_m=((1.0, 16), (64.0, 64), (512.0, 128)), tile_n=128,
        compute=Curve(points=tuple(zip(sizes, [0.15, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8],
                                       strict=True))),
        memory=Curve(points=tuple(zip(sizes, [0.5, 0.6, 0.7, 0.8, 0.85, 0.85, 0.85],
                                      strict=True))))
    shapes = [(8192, 4096), (14336, 4096), (4096, 14336), (28672, 4096)]
    rows = [KernelRow("gemm", {"m": m, "n": n, "k": k, "time_s": 1.0})
            for m in sizes for n, k in shapes]
    times = predict_rows_s(rows, truth, gpu)
    rows = [KernelRow("gemm", {**r.values, "time_s": float(t)}) for r, t in
            zip(rows, times, strict=True)]
    fit = fit_curves(rows, gpu, family="t", tile_m=truth.tile_m, tile_n=128, knots=8,
                     iterations=200)
    assert fit.launch_s == pytest.approx(8e-6, rel=0.05)
    assert np.max(np.abs(predict_rows_s(rows, fit, gpu) / times - 1)) < 0.01
    for x in (256, 1024, 4096):  # compute-bound sizes
        assert float(fit.compute.at(x)) == pytest.approx(float(truth.compute.at(x)), rel=0.02)
    for x in (1, 4, 16):  # memory-bound sizes
        assert float(fit.memory.at(x)) == pytest.approx(float(truth.memory.at(x)), rel=0.02)


@pytest.mark.parametrize("profile", list_kernel_profiles())
def test_shipped_profiles_agree_with_the_tables_they_were_fitted_to(profile: str) -> None:
    """Every table a profile's curves were FITTED to: median predicted/measured within
    0.85-1.15 in every token band (the issue's bar); derived ones are reported, not held."""
    fitted = {"vllm": ("h100-sxm_cublas_bf16", "b200_cublas_bf16", "h100-sxm_fa3_prefill",
                       "h100-sxm_fa3_decode"),
              "sglang": ("h100-sxm_cublas_bf16", "b200_cublas_bf16", "h100-sxm_fa3_prefill",
                         "h100-sxm_fa3_decode")}
    fitted["trtllm"] = (*fitted["vllm"], "b200_trtllm-gen_decode")
    table = accuracy_table(profile)
    held = [r for r in table if r["table"] in fitted[profile]
            or (profile == "sglang" and r["op"] == "moe")]
    assert held and all(0.85 <= r["median_ratio"] <= 1.15 for r in held), held


def test_kernel_table_errors_name_row_and_column() -> None:
    with pytest.raises(ConfigError, match="row 1: column 'k'"):
        parse_kernel_csv("op,m,n,k,time_s\ngemm,1,2,x,1e-6\n")
    with pytest.raises(ConfigError, match="op 'conv'"):
        parse_kernel_csv("op,m,n,k,time_s\nconv,1,2,3,1e-6\n")


def test_kernel_command_prints_time_s(capsys: pytest.CaptureFixture[str]) -> None:
    """`moesim kernel --json` gives `time_s`; Mixtral at 1 token on H100 streams its two busy
    experts' weights (0.70 GB) at about HBM speed, so 150-400 us."""
    assert main(["kernel", "--gpu", "h100-sxm", "--op", "moe", "--tokens", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 150e-6 < out["time_s"] < 400e-6 and out["profile"] == "vllm"
    assert main(["kernel", "--gpu", "h100-sxm", "--op", "moe", "--tokens", "1",
                 "--kernels", "roofline", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kernel"] == "roofline"
    assert main(["kernel", "--gpu", "nope", "--op", "gemm", "--tokens", "1"]) == 2
    assert "unknown GPU 'nope'" in capsys.readouterr().err


def test_calibrate_kernels_from_csv_round_trips(tmp_path: object) -> None:
    """--from-csv fits a profile a run can use with --kernels PATH."""
    from pathlib import Path

    out = Path(str(tmp_path)) / "p.yaml"
    table = Path(__file__).parent.parent / "moesim/presets/kernels/measurements" / \
        "h100-sxm_cublas_bf16.csv"
    assert main(["calibrate", "kernels", "--from-csv", str(table), "--gpu", "h100-sxm",
                 "-o", str(out)]) == 0
    assert main(["kernel", "--gpu", "h100-sxm", "--op", "gemm", "--tokens", "64",
                 "--kernels", str(out)]) == 0
    assert math.isfinite(out.stat().st_size)


def test_calibrate_kernels_runs_on_cpu(tmp_path: object) -> None:
    """The microbenchmark path runs on a CPU at small sizes and writes a usable profile."""
    pytest.importorskip("torch")
    from pathlib import Path

    out = Path(str(tmp_path)) / "cpu.yaml"
    assert main(["calibrate", "kernels", "--device", "cpu", "--quick", "-o", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".csv").is_file()
    assert main(["kernel", "--topology", "cpu-loopback", "--op", "gemm", "--tokens", "16",
                 "--kernels", str(out)]) == 0


def test_bad_kernel_inputs_are_one_clear_error(tmp_path: object,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown profile, a profile without the GPU, a malformed profile file, an unknown
    catalog GPU in a topology: each one `moesim: error:` line naming the field, exit 2."""
    from pathlib import Path

    base = ["kernel", "--op", "gemm", "--tokens", "4"]
    assert main([*base, "--gpu", "h100-sxm", "--kernels", "nope"]) == 2
    assert "unknown kernel profile 'nope'" in capsys.readouterr().err
    assert main([*base, "--gpu", "rtx4090", "--kernels", "vllm"]) == 2
    assert "has no entry for GPU" in capsys.readouterr().err
    bad = Path(str(tmp_path)) / "bad.yaml"
    bad.write_text("name: x\ngpus:\n  h100-sxm:\n    gemm: {family: f, launch_s: -1}\n")
    assert main([*base, "--gpu", "h100-sxm", "--kernels", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moesim: error:") and "launch_s" in err and len(err.splitlines()) == 1
    topo = Path(str(tmp_path)) / "t.yaml"
    topo.write_text("name: t\ngpu_spec: h900\ngpus_per_node: 1\n")
    assert main([*base, "--topology", str(topo)]) == 2
    assert "gpu_spec 'h900' is not in the GPU catalog" in capsys.readouterr().err
