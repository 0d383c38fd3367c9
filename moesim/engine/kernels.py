"""Kernel-level op times: one function per op kind, from the shape, the GPU and a kernel's curves.

Each GEMM of an op costs `max(compute_s, memory_s)`:

- compute_s: the FLOPs the kernel executes, not the useful ones. Rows round up to the kernel's
  tile (`tile_m`; per expert for a grouped MoE GEMM, so 3 tokens on an expert cost a 16-row
  tile), columns to `tile_n`, and tiles to whole waves of the GPU's SMs (a grid of 133 tiles on
  132 SMs takes two waves). They run at `compute(x)` of the tensor-core peak of the op's format.
- memory_s: weights read once (for a grouped GEMM, only the experts that got tokens) plus
  activations in and out, at `memory(x)` of DRAM bandwidth. With `warm_l2` (a kernel repeated on
  the same weights, as microbenchmarks run it) weights that fit in L2 are read at L2 bandwidth.

and the op adds its `launch_s` once. Functions take numbers or numpy arrays (per rank, or per
layer and rank) and broadcast; the last axis of `tokens_per_expert` is a rank's expert slots.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.inputs.kernel_profile import KernelCurves
from moesim.inputs.topology_spec import GpuSpec

__all__ = [
    "executed_flops",
    "weight_read_s",
    "gemm_time",
    "moe_time",
    "attention_time",
    "elementwise_time",
]

Number = Any


def executed_flops(tiles: Number, tile_m: Number, tile_n: int, k: Number, gpu: GpuSpec
                   ) -> np.ndarray:
    """FLOPs a grid of `tiles` (tile_m x tile_n outputs, depth k) executes, in whole waves."""
    tiles = np.asarray(tiles, dtype=np.float64)
    if gpu.sm_count:
        tiles = np.ceil(tiles / gpu.sm_count) * gpu.sm_count
    return tiles * 2.0 * np.asarray(tile_m, dtype=np.float64) * tile_n * k


def weight_read_s(weight_bytes: Number, gpu: GpuSpec, memory_fraction: Number,
                  warm_l2: bool) -> np.ndarray:
    """Seconds to read `weight_bytes`: from L2 when warm and they fit, else from DRAM."""
    weight_bytes = np.asarray(weight_bytes, dtype=np.float64)
    dram_s = weight_bytes / (gpu.memory_bandwidth_bytes_per_s * np.asarray(memory_fraction))
    if not (warm_l2 and gpu.l2_bytes and gpu.l2_bandwidth_bytes_per_s):
        return dram_s
    l2_s = weight_bytes / gpu.l2_bandwidth_bytes_per_s
    return np.where(weight_bytes <= gpu.l2_bytes, np.minimum(l2_s, dram_s), dram_s)


def gemm_time(
    curves: KernelCurves,
    gpu: GpuSpec,
    *,
    m: Number,
    n: Number,
    k: Number,
    weight_bytes: Number,
    act_bytes: float,
    peak_flops_per_s: float,
    warm_l2: bool = False,
) -> np.ndarray:
    """One dense GEMM: `m` rows (tokens) x weights [k, n]; no time where m is 0 (`n`, `k` and
    `weight_bytes` may be arrays too: several GEMMs at once)."""
    m = np.asarray(m, dtype=np.float64)
    tile_m = curves.tile_rows(m)
    tiles = np.ceil(m / tile_m) * np.ceil(n / curves.tile_n)
    compute_s = executed_flops(tiles, tile_m, curves.tile_n, k, gpu) / (
        peak_flops_per_s * curves.compute.at(m))
    memory = curves.memory.at(m)
    act_s = m * (k + n) * act_bytes / (gpu.memory_bandwidth_bytes_per_s * memory)
    memory_s = weight_read_s(n * k * weight_bytes, gpu, memory, warm_l2) + act_s
    return np.where(m > 0, curves.launch_s + np.maximum(compute_s, memory_s), 0.0)


def moe_time(
    curves: KernelCurves,
    gpu: GpuSpec,
    *,
    tokens_per_expert: np.ndarray,
    hidden: int,
    ffn: int,
    weight_bytes: float,
    act_bytes: float,
    peak_flops_per_s: float,
    warm_l2: bool = False,
) -> np.ndarray:
    """A SwiGLU expert layer on one rank: gate-up GEMM [hidden -> 2 ffn] and down GEMM
    [ffn -> hidden] over the expert slots of the last axis, as one grouped kernel each
    (`curves.grouped`) or as one GEMM per expert; the op's launch counts once."""
    tokens = np.asarray(tokens_per_expert, dtype=np.float64)
    active = tokens > 0
    experts_active = active.sum(axis=-1)
    x = tokens.sum(axis=-1) / np.maximum(experts_active, 1)  # tokens per expert that got any
    compute = curves.compute.at(x)[..., None]
    memory = curves.memory.at(x)[..., None]
    tile_m = curves.tile_rows(x)[..., None]
    # both GEMMs at once, along a leading axis: gate-up [hidden -> 2 ffn], down [ffn -> hidden]
    shape = (2,) + (1,) * tokens.ndim
    n = np.array([2 * ffn, hidden], dtype=np.int64).reshape(shape)
    k = np.array([hidden, ffn], dtype=np.int64).reshape(shape)
    tiles = np.ceil(tokens / tile_m) * np.ceil(n / curves.tile_n)
    act_s = tokens * (k + n) * act_bytes / (gpu.memory_bandwidth_bytes_per_s * memory)
    if curves.grouped:  # one grid over every expert's tiles; weights of busy experts
        flops = executed_flops(tiles.sum(axis=-1), tile_m[..., 0], curves.tile_n, k[..., 0], gpu)
        compute_s = flops / (peak_flops_per_s * compute[..., 0])
        weights_s = weight_read_s(experts_active * n[..., 0] * k[..., 0] * weight_bytes, gpu,
                                  memory[..., 0], warm_l2)
        gemm_s = np.maximum(compute_s, weights_s + act_s.sum(axis=-1))
    else:  # one GEMM per expert, each its own roofline
        compute_s = executed_flops(tiles, tile_m, curves.tile_n, k, gpu) / (
            peak_flops_per_s * compute)
        weights_s = weight_read_s(active * n * k * weight_bytes, gpu, memory, warm_l2)
        gemm_s = np.maximum(compute_s, weights_s + act_s).sum(axis=-1)
    return gemm_s[0] + gemm_s[1] + curves.launch_s


def attention_time(
    curves: KernelCurves,
    gpu: GpuSpec,
    *,
    flops: Number,
    bytes_moved: Number,
    x: Number,
    peak_flops_per_s: float,
) -> np.ndarray:
    """An attention kernel of `flops` (scores and values) reading `bytes_moved` (Q, K/V cache,
    output) at size x (keys per query for prefill, KV tokens per sequence for decode)."""
    flops = np.asarray(flops, dtype=np.float64)
    compute_s = flops / (peak_flops_per_s * curves.compute.at(x))
    memory_s = np.asarray(bytes_moved) / (gpu.memory_bandwidth_bytes_per_s * curves.memory.at(x))
    return np.where(flops > 0, curves.launch_s + np.maximum(compute_s, memory_s), 0.0)


def elementwise_time(curves: KernelCurves, gpu: GpuSpec, *, bytes_moved: Number,
                     kernels: int) -> np.ndarray:
    """`kernels` memory-bound kernels (norms, rotary, residual adds, top-k) moving
    `bytes_moved` in all; nothing where there is nothing to move."""
    bytes_moved = np.asarray(bytes_moved, dtype=np.float64)
    per_kernel = bytes_moved / kernels
    time_s = kernels * (curves.launch_s + per_kernel / (
        gpu.memory_bandwidth_bytes_per_s * curves.memory.at(per_kernel)))
    return np.where(bytes_moved > 0, time_s, 0.0)
