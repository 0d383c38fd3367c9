"""How the shipped kernel profiles are made: fits to the published tables, and what is derived.

`python -m moesim.calibrate.profile_build` rewrites moesim/presets/kernels/{vllm,sglang,trtllm}.yaml
from the measured tables in moesim/presets/kernels/measurements/ (each cites its source). Per
profile and GPU, an op kind is either FITTED (`fit_curves` on a table of that GPU and kernel) or
DERIVED, and says so in its `sources`:

- a GPU without small-size tables of its own takes the curves of the nearest fitted GPU of the
  same kernel family, with the compute curve scaled so its large-size end matches that GPU's own
  large-GEMM measurement (H200, A100, L40S: from H100's cuBLAS fit);
- MoE (vLLM/SGLang's Triton fused_moe, TensorRT-LLM's CUTLASS grouped GEMM) takes its GPU's
  GEMM curves with the kernel's own tile table (vLLM's tuned config files for Mixtral) and the
  launch of its five kernels (align, two GEMMs, activation, sum): no published kernel time of the
  Mixtral expert shape on these GPUs was found (see topologies/README.md);
- elementwise kernels: the GPU's measured launch overhead and streaming fraction.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from moesim.calibrate.kernels import KernelRow, fit_curves, read_kernel_csv, read_kernel_text
from moesim.inputs.kernel_profile import (
    PROFILE_DIR,
    Curve,
    GpuKernels,
    KernelCurves,
    KernelProfile,
)
from moesim.inputs.topology_spec import GpuSpec, load_gpu

__all__ = ["MEASUREMENTS", "build_profiles", "measurement_tables", "profile_yaml"]

MEASUREMENTS = PROFILE_DIR / "measurements"

# vLLM's tuned Triton fused_moe configs for Mixtral on H100 (E=8,N=7168,device_name=
# NVIDIA_H100_80GB_HBM3.json, vllm commit 02ba322d): BLOCK_SIZE_M 16 up to M=32 tokens, 32 for
# 48-96, 64 for 128-512, 128 from 1024; BLOCK_SIZE_N 128 (256 from M=512). As tokens per expert
# (x = M * top_k / E = M / 4): 16 below 12, 32 from 12, 64 from 32, 128 from 256.
TRITON_MOE_TILES = ((1.0, 16), (12.0, 32), (32.0, 64), (256.0, 128))
# cuBLAS/CUTLASS pick their tiles by heuristics; 16-row tiles for skinny GEMMs, 64 and 128
# above (CUTLASS 3 Hopper kernels' tile shapes). An ASSUMPTION, not a published choice.
GEMM_TILES = ((1.0, 16), (64.0, 64), (256.0, 128))
FUSED_MOE_KERNELS = 5  # moe_align_block_size, two grouped GEMMs, silu_and_mul, moe_sum


def measurement_tables() -> dict[str, list[KernelRow]]:
    """Every shipped measured table by file stem."""
    return {p.stem: read_kernel_csv(p) for p in sorted(MEASUREMENTS.glob("*.csv"))}


def _sources(stem: str) -> tuple[str, ...]:
    """The `#` comment lines (sources) of a measured table, read as UTF-8 (one ConfigError
    naming the file when it cannot be)."""
    text = read_kernel_text(MEASUREMENTS / f"{stem}.csv", "measured kernel table")
    lines = [ln[2:].strip() for ln in text.splitlines() if ln.startswith("#")]
    return (f"FITTED to measurements/{stem}.csv: " + " ".join(lines),)


def _fit(stem: str, gpu: GpuSpec, family: str, tiles: Any = ((1.0, 1),), tile_n: int = 1,
         op: str | None = None, launch_s: float | None = None) -> KernelCurves:
    rows = [r for r in read_kernel_csv(MEASUREMENTS / f"{stem}.csv")
            if op is None or r.op == op]
    if op is None:
        rows = [r for r in rows if r.dtype in ("bf16", "fp16")] or rows
    sources = _sources(stem)
    if launch_s is not None:
        sources = (f"launch_s held at the GPU's measured launch overhead ({launch_s * 1e6:g} "
                   "us): the table's shortest op is too long to show it", *sources)
    return fit_curves(rows, gpu, family=family, tile_m=tiles, tile_n=tile_n,
                      sources=sources, launch_s=launch_s)


def _scaled(curves: KernelCurves, gpu: GpuSpec, stem: str, note: str) -> KernelCurves:
    """`curves` with the compute curve scaled so the GPU's own large-GEMM rows agree (median)."""
    from moesim.calibrate.kernels import predict_rows_s

    rows = read_kernel_csv(MEASUREMENTS / f"{stem}.csv")
    ratios = sorted(float(p) / r.time_s for p, r in zip(predict_rows_s(rows, curves, gpu), rows,
                                                         strict=True))
    scale = ratios[len(ratios) // 2]
    compute = Curve(points=tuple((x, min(1.0, f * scale)) for x, f in curves.compute.points))
    return curves.model_copy(update={
        "compute": compute,
        "sources": (f"DERIVED: {note}; compute scaled by {scale:.3f} to measurements/{stem}.csv",
                    *curves.sources)})


def _moe(gemm: KernelCurves, gpu: GpuSpec, family: str, tiles: Any) -> KernelCurves:
    return gemm.model_copy(update={
        "family": family, "tile_m": tiles, "tile_n": 128, "grouped": True,
        "launch_s": FUSED_MOE_KERNELS * gpu.kernel_launch_s,
        "sources": (f"DERIVED: the GEMM curves of this GPU with the kernel's tiles {tiles} and "
                    f"{FUSED_MOE_KERNELS} launches of the GPU's measured overhead; no published "
                    "kernel time of this MoE kernel on this GPU was found", *gemm.sources)})


def _elementwise(gpu: GpuSpec) -> KernelCurves:
    return KernelCurves(
        family="elementwise", launch_s=gpu.kernel_launch_s,
        compute=Curve(points=((1.0, 1.0),)),
        memory=Curve(points=((1e3, 0.05), (1e6, gpu.memory_efficiency * 0.6),
                             (1e8, gpu.memory_efficiency))),
        sources=("DERIVED: the GPU's measured launch overhead and streaming fraction "
                 "(moesim/presets/gpus.yaml); small kernels stream slower (te42kyfo/gpu-benches: "
                 "bandwidth falls with bytes in flight, 3% occupancy reaches ~5% of peak)",))


def _gpu_entries(moe_family: str, moe_tiles: Any, sglang: bool = False,
                 trtllm: bool = False) -> dict[str, GpuKernels]:
    h100 = load_gpu("h100-sxm")
    gemm_h100 = _fit("h100-sxm_cublas_bf16", h100, "cublas", GEMM_TILES, 128)
    prefill = _fit("h100-sxm_fa3_prefill", h100, "flash-attn-3",
                   launch_s=h100.kernel_launch_s)
    decode = _fit("h100-sxm_fa3_decode", h100, "flash-attn-3-paged-decode")
    entries: dict[str, GpuKernels] = {}
    for key in ("h100-sxm", "h200", "a100-sxm", "l40s", "b200"):
        gpu = load_gpu(key)
        if key == "h100-sxm":
            gemm = gemm_h100
        elif key == "b200":
            gemm = _fit("b200_cublas_bf16", gpu, "cublas", GEMM_TILES, 128)
        else:
            stem = {"h200": "h200_cublas", "a100-sxm": "a100-sxm_cublas_bf16",
                    "l40s": "l40s_cublas_bf16"}[key]
            gemm = _scaled(gemm_h100, gpu, stem, "H100's cuBLAS curves")
        moe = _moe(gemm, gpu, moe_family, moe_tiles)
        if sglang and key in ("h100-sxm", "h200"):
            moe = _fit("h100-sxm_deepgemm_fp8", h100, "deepgemm-grouped", ((1.0, 64),), 128,
                       op="moe").model_copy(update={"grouped": True})
        entry: dict[str, KernelCurves] = {
            "gemm": gemm, "moe": moe, "elementwise": _elementwise(gpu),
            "attention_prefill": prefill if key == "h100-sxm" else _derived(prefill, key),
            "attention_decode": decode if key == "h100-sxm" else _derived(decode, key),
        }
        if trtllm and key == "b200":
            entry["attention_decode"] = _fit("b200_trtllm-gen_decode", gpu, "trtllm-gen-decode")
        entries[key] = GpuKernels(**entry)
    return entries


def _derived(curves: KernelCurves, key: str) -> KernelCurves:
    return curves.model_copy(update={"sources": (
        f"DERIVED: H100's fractions of peak used on {key} (no published table of this kernel "
        "there)", *curves.sources)})


PROFILES: dict[str, dict[str, Any]] = {
    "vllm": {"description": "vLLM: cuBLAS GEMMs, Triton fused_moe, FlashAttention-3 prefill "
             "and paged decode on Hopper", "moe_family": "triton-fused-moe"},
    "sglang": {"description": "SGLang: cuBLAS GEMMs, Triton fused_moe (bf16) and DeepGEMM "
               "grouped GEMMs for fp8-block MoE on Hopper (the DeepSeek path), FlashInfer/FA3 "
               "attention", "moe_family": "triton-fused-moe", "sglang": True},
    "trtllm": {"description": "TensorRT-LLM: cuBLAS/CUTLASS GEMMs, CUTLASS grouped MoE GEMM, "
               "trtllm-gen attention on Blackwell", "moe_family": "cutlass-grouped-moe",
               "trtllm": True},
}


def build_profiles(out_dir: Path = PROFILE_DIR) -> list[Path]:
    """Fit and write every shipped profile; returns the files written."""
    from moesim.output.files import write_atomic

    written = []
    for name, spec in PROFILES.items():
        tiles = TRITON_MOE_TILES if spec["moe_family"] == "triton-fused-moe" else GEMM_TILES
        gpus = _gpu_entries(spec["moe_family"], tiles, spec.get("sglang", False),
                            spec.get("trtllm", False))
        profile = KernelProfile(
            name=name, description=spec["description"], gpus=gpus,
            sources=("Built by python -m moesim.calibrate.profile_build from "
                     "moesim/presets/kernels/measurements/*.csv; each op says FITTED or DERIVED "
                     "and from what",))
        path = out_dir / f"{name}.yaml"
        text = profile_yaml(profile, "# GENERATED by python -m moesim.calibrate.profile_build; "
                            "edit the tables.\n")
        write_atomic(path, text)
        written.append(path)
    return written


def profile_yaml(profile: KernelProfile, header: str = "") -> str:
    """A profile as YAML text (tuples as lists, floats to 5 significant digits)."""
    return header + yaml.safe_dump(_plain(profile.model_dump()), sort_keys=False, width=100)


def _plain(value: Any) -> Any:
    """Tuples to lists and floats rounded for a readable YAML file."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.5g}")
    return value


def main() -> int:
    """`python -m moesim.calibrate.profile_build`: rewrite the shipped profiles, print their
    paths; a table that cannot be read is one `moesim: error:` line and exit status 2."""
    from moesim.errors import MoesimError

    try:
        written = build_profiles()
    except MoesimError as exc:
        print(f"moesim: error: {exc}", file=sys.stderr)
        return 2
    for written_path in written:
        print(written_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
