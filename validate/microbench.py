"""Calibration microbenchmarks on the live harness's ranks: all-to-all, ring exchange, expert GEMM.

`run_microbench` spawns one process per rank exactly as a live run does (`validate.launch`:
same environment, thread count, failure handling, no orphans) running
`python -m validate.microbench PLAN_DIR RANK`. Every rank, together, after a barrier per
iteration:

- `alltoall`: `all_to_all_single` of about `size` bytes per rank (nccl-tests' `alltoall_perf`
  convention: about `size / N` to every rank, itself included) as rows of `hidden`
  activations with per-peer split sizes drawn from an even routing, as the harness's dispatch
  calls it (gloo then runs alltoallv, which costs more than an evenly split buffer);
- `allgather`: a ring all-gather of `N` chunks of `size / N` bytes built from the same
  point-to-point steps (`batch_isend_irecv` to the successor, from the predecessor) as the
  harness's attention-TP ring, so `N - 1` point-to-point exchanges per iteration;
- `gemm`: runs of `experts` SwiGLU experts (`down(silu(x W_gate) * (x W_up))`) back to back on
  `tokens` rows each, at the harness's (scaled) hidden width and each of `gemm_shapes`' FFN
  widths, every expert with its own weights, on every rank at once, so the ranks share the
  host's cores as they do in a live run; the time is per expert. `moesim calibrate live` times
  an EP rank's experts (full width) and a TP rank's (every expert, 1/N of the width): the
  harness's experts phase is such a run, and a run's later experts cost less than a lone one.
  Each run sits between two all-to-alls, back to back, as the experts phase sits between the
  dispatch and the combine: a rank computes while its peers still finish the first, and the
  second waits for the last rank's compute.

With `load_tokens > 0` (the default) each communication iteration is `op, expert GEMMs, op`,
back to back after one barrier (the first op follows the previous iteration's last, as a live
layer's dispatch follows the previous layer's combine), and both ops are timed, the GEMMs being
`load_experts` SwiGLU experts of `load_tokens` rows each, with their own weights per layer,
cycling over `load_layers` layers as a live run's experts phase does (`moesim calibrate live`
sizes them like a live run of its trace: experts per rank and rows per expert of an even
routing). A live MoE layer computes between its collectives, and on a host with fewer cores than
ranks the ranks that finished a collective compute while the others still wait to be scheduled
to finish it. That scheduling delay is part of every collective the harness times, so
calibration measures it in the same setting (`load_tokens=0`: idle collectives). Each rank
records the median, minimum and mean over repeats; a row's time is the slowest rank's (per
`statistic`), as the harness reports layers. torch is imported only in the rank processes.

Every all-to-all right after compute on every rank (the call after the load, the one after
each GEMM run) is also kept as a `sync` row of position "after": its time and the compute before
it; every one right before compute (the call before the load, the one before each GEMM run) as
one of position "before", with the compute after it. From these `fit_wait` fits the waits
around compute (`TopologySpec.straggler_wait_fraction`, `precompute_wait_fraction` and their
caps). A GEMM shape may name its own hidden width
(`gemm_shapes` of (hidden, ffn, experts)), and a row gets at most `row_budget_s` of timed
iterations (at least 20).

Fitting (`fit_live`, no torch): the communication rows become `moesim.calibrate.fit.Measurement`
objects fitted by `fit_topology` (link efficiency of the fitted media and collective launch
latency), inside a golden-section search over the loopback links' latency where the topology
has a loopback fabric (an all-to-all pays the path latency once, a ring once per step, so
the two ops separate launch from per-message latency); the GEMM rows give the GPU spec's
compute efficiency, memory efficiency and kernel launch (`fit_gemm`, the cost model's
roofline per expert).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from moesim.calibrate.cross_validation import HeldOutError
from moesim.calibrate.fit import (
    FitResult,
    Measurement,
    _golden_min,
    calibrated_spec,
    fit_topology,
    predict_times_s,
)
from moesim.calibrate.kernels import KernelRow, fit_curves, predict_rows_s
from moesim.errors import ConfigError
from moesim.inputs.kernel_profile import GpuKernels
from moesim.inputs.topology_spec import GpuSpec, TopologySpec

__all__ = [
    "BENCH_OPS",
    "DEFAULT_SIZES_BYTES",
    "DEFAULT_GEMM_TOKENS",
    "DEFAULT_LOAD_TOKENS",
    "LiveFit",
    "run_microbench",
    "bench_measurements",
    "fit_gemm",
    "with_loopback_latency",
    "fit_live",
    "check_bench",
    "main",
]

BENCH_OPS = ("alltoall", "allgather", "gemm")
STATISTICS = ("median", "min", "mean")
# Where a sync row's collective sits: right after compute on every rank, or right before it.
SYNC_POSITIONS = ("after", "before")
DEFAULT_SIZES_BYTES: tuple[int, ...] = (1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20,
                                        1 << 22)
DEFAULT_GEMM_TOKENS: tuple[int, ...] = (8, 32, 128, 512)
DEFAULT_LOAD_TOKENS = 128
DEFAULT_REPEATS = 200


def run_microbench(
    *,
    backend: str = "gloo",
    nproc: int = 4,
    sizes_bytes: tuple[int, ...] = DEFAULT_SIZES_BYTES,
    gemm_tokens: tuple[int, ...] = DEFAULT_GEMM_TOKENS,
    hidden: int = 128,
    ffn: int = 448,
    act_dtype: str = "bf16",
    load_tokens: int = DEFAULT_LOAD_TOKENS,
    load_experts: int = 1,
    load_layers: int = 1,
    gemm_shapes: tuple[tuple[int, ...], ...] | None = None,
    warmup: int = 3,
    repeats: int = DEFAULT_REPEATS,
    timeout_s: float = 300.0,
    workdir: str | Path | None = None,
    rank_commands: Any = None,
    statistic: str = "mean",
    progress: Any = None,
    row_budget_s: float = 0.0,
) -> dict[str, Any]:
    """Run the microbenchmarks on `nproc` ranks; rows of (op, ranks, size/tokens, time). One
    rank has no peer: it runs the GEMM rows only (the one-rank form, e.g. a host with one GPU).

    `row_budget_s` > 0 caps a GEMM row's timed iterations at what fits in that many seconds
    (measured on its warm-up, at least 20): wide rows of a thousand tokens are tens of
    milliseconds an iteration, and their mean settles in far fewer repeats.

    `gemm_shapes` are (FFN width, experts run back to back) or (hidden width, FFN width,
    experts) of the GEMM rows (default: `hidden` x `ffn`, one expert); each row's time is per
    expert.

    `statistic` is each rank's `mean` over repeats (default: on an oversubscribed CPU host the
    median jumps between the modes of the OS scheduler's spread), its `median` or its `min`
    (the uncontended cost).

    `progress(line)` (optional) gets a line after each benchmark: done of total, elapsed and an
    ETA. After the first one, a run whose ETA passes `timeout_s` stops at once with a
    LiveRunError saying so, instead of running into the timeout (`ProgressWatch`)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    from validate.launch import LiveRunError, _check_backend, _spawn, free_port

    if nproc < 1:
        raise LiveRunError(f"--nproc {nproc}: calibration needs at least 1 rank")
    if nproc == 1:  # one rank has no peer: its form times the expert GEMMs only
        sizes_bytes = ()
    start = time.perf_counter()
    device = _check_backend(backend, nproc)
    threads = max(1, (os.cpu_count() or 1) // nproc)
    shaped = np.array([s if len(s) == 3 else (hidden, *s) for s in gemm_shapes or ((ffn, 1),)],
                      dtype=np.int64).reshape(-1, 3)
    plan = {"backend": backend, "port": free_port(), "timeout_s": float(timeout_s),
            "world": nproc, "threads": threads, "warmup": warmup, "repeats": repeats,
            "sizes_bytes": np.asarray(sizes_bytes, dtype=np.int64),
            "gemm_tokens": np.asarray(gemm_tokens, dtype=np.int64),
            "gemm_shapes": shaped,
            "hidden": hidden, "ffn": ffn, "act_dtype": act_dtype, "load_tokens": load_tokens,
            "load_experts": load_experts, "load_layers": load_layers,
            "row_budget_s": float(row_budget_s)}
    plan_dir = Path(tempfile.mkdtemp(prefix="moesim-bench-", dir=workdir))
    progress_file = ProgressFile(plan_dir / "progress")
    plan["progress_path"] = str(progress_file.path)
    for rank in range(nproc):
        np.savez(plan_dir / f"rank{rank}.npz", **plan, rank=rank)  # type: ignore[arg-type]
    total = 2 * len(sizes_bytes) + len(shaped) * len(gemm_tokens)
    watcher = ProgressWatch(progress_file, total, timeout_s, progress)
    _spawn(plan_dir, nproc, threads, timeout_s, module="validate.microbench",
           rank_commands=rank_commands, on_poll=watcher.poll)
    medians = []
    for rank in range(nproc):
        with np.load(plan_dir / f"result{rank}.npz") as data:
            medians.append({k: data[k] for k in data.files})
    for path in plan_dir.iterdir():
        path.unlink()
    plan_dir.rmdir()
    suffix = "" if statistic == "median" else "_" + statistic
    picked = [{op: m[op + suffix] for op in (*BENCH_OPS, "sync")} | {
        key: m[key] for key in ("sync_compute", "sync_size", "sync_position")} for m in medians]
    shapes = [(int(h), int(w), int(k)) for h, w, k in shaped.tolist()]
    rows = _rows(picked, nproc, sizes_bytes, gemm_tokens, shapes)
    return {"backend": backend, "nproc": nproc, "device": device, "threads_per_rank": threads,
            "hidden": hidden, "ffn": ffn, "act_dtype": act_dtype, "load_tokens": load_tokens,
            "load_experts": load_experts, "load_layers": load_layers, "warmup": warmup,
            "statistic": statistic, "repeats": repeats, "row_budget_s": float(row_budget_s),
            "rows": rows,
            "wall_s": time.perf_counter() - start}


def _rows(medians: list[dict[str, np.ndarray]], nproc: int, sizes: tuple[int, ...],
          tokens: tuple[int, ...], shapes: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Per op and size (GEMM: per shape and token count): the slowest rank's time."""
    rows = []
    for op in ("alltoall", "allgather"):
        slowest = np.max([m[op] for m in medians], axis=0)
        rows += [{"op": op, "num_ranks": nproc, "size_bytes": int(s), "time_s": float(t)}
                 for s, t in zip(sizes, slowest, strict=True)]
    slowest = np.max([m["gemm"] for m in medians], axis=0)
    shaped = [(h, w, k, n) for h, w, k in shapes for n in tokens]
    rows += [{"op": "gemm", "num_ranks": nproc, "tokens": int(n), "hidden": h, "ffn": w,
              "experts": k, "time_s": float(t)}
             for (h, w, k, n), t in zip(shaped, slowest, strict=True)]
    # a collective right after (or before) compute on every rank: the slowest rank's time and
    # compute
    slowest, compute = (np.max([m[key] for m in medians], axis=0) for key in ("sync",
                                                                             "sync_compute"))
    rows += [{"op": "sync", "num_ranks": nproc, "size_bytes": int(s), "compute_s": float(c),
              "position": SYNC_POSITIONS[int(p)], "time_s": float(t)}
             for s, c, p, t in zip(medians[0]["sync_size"], compute,
                                   medians[0]["sync_position"], slowest, strict=True)]
    return rows


# ---- fitting (numpy) ----------------------------------------------------------------------


@dataclass(frozen=True)
class LiveFit:
    """A calibrated topology and how it was reached: the comm fit, the loopback latency
    (None: not fitted) and the GEMM rows' predicted seconds before and after."""

    spec: TopologySpec
    comm: FitResult | None  # None: no collective was timed (one rank)
    measurements: list[Measurement]
    loopback_latency_s: float | None
    gemm_tokens: np.ndarray  # [G]
    gemm_ffn: np.ndarray  # [G] FFN width of each row
    gemm_measured_s: np.ndarray  # [G]
    gemm_before_s: np.ndarray  # [G]
    gemm_after_s: np.ndarray  # [G] the expert GEMM curves (else the fitted roofline)
    gemm_hidden: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    held_out: list[HeldOutError] = field(default_factory=list)


_COMM_OPS = ("alltoall", "allgather")
_MAX_COUNT = 2**53  # counts beyond this are not exact in float64 (and no benchmark is that big)


def _show(value: Any) -> str:
    """A value as the message quotes it (cut to 40 characters)."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _count(data: dict[str, Any], key: str, where: str, low: int, required: bool = True) -> None:
    """`data[key]` must be a whole number in [low, 2**53] (absent: only when not required)."""
    if key not in data and not required:
        return
    if key not in data:
        raise ConfigError(f"{where}: field '{key}' is missing; it must be a whole number >= "
                          f"{low}")
    value = data[key]
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer())
    if not whole or not low <= value <= _MAX_COUNT:
        raise ConfigError(f"{where}: field '{key}' must be a whole number >= {low}, got "
                          f"{_show(value)}")


def _positive(data: dict[str, Any], key: str, where: str) -> None:
    """`data[key]` must be a finite number > 0."""
    if key not in data:
        raise ConfigError(f"{where}: field '{key}' is missing; it must be a finite number > 0")
    value = data[key]
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ConfigError(f"{where}: field '{key}' must be a finite number > 0, got "
                          f"{_show(value)}")


def check_bench(bench: Any, source: str = "microbenchmark results") -> None:
    """Refuse saved microbenchmark results (`--bench-json`) that `fit_live` cannot use, with one
    ConfigError naming the field: top-level `backend` (text), `nproc` (>= 2), `hidden`, `ffn`
    (>= 1), `act_dtype` (fp32, bf16, fp16, fp8) and a non-empty list `rows` of mappings, each
    with a text `op`; an all-to-all or ring row needs `num_ranks` >= 2 and finite `size_bytes`
    and `time_s` > 0, a GEMM row `tokens` >= 1, `time_s` > 0 and, when given, `ffn` and
    `experts` >= 1 and `hidden` >= 1, a sync row `num_ranks` >= 2 and `size_bytes`,
    `compute_s` and `time_s` > 0. Rows of other ops are ignored."""
    from moesim.inputs.options import ACT_DTYPE_BYTES

    if not isinstance(bench, dict):
        raise ConfigError(f"{source} must be a mapping of fields, got {type(bench).__name__}")
    if not isinstance(bench.get("backend"), str):
        raise ConfigError(f"{source}: field 'backend' must be the backend's name (gloo, nccl), "
                          f"got {_show(bench.get('backend'))}")
    _count(bench, "nproc", source, 1)
    _count(bench, "hidden", source, 1)
    _count(bench, "ffn", source, 1)
    dtype = bench.get("act_dtype")
    if not isinstance(dtype, str) or dtype not in ACT_DTYPE_BYTES:
        raise ConfigError(f"{source}: field 'act_dtype' must be one of "
                          f"{', '.join(ACT_DTYPE_BYTES)}, got {_show(dtype)}")
    rows = bench.get("rows")
    if "rows" not in bench:
        raise ConfigError(f"{source}: field 'rows' is missing; save the microbenchmarks with "
                          "`moesim calibrate live --bench-json FILE` and pass that file")
    if not isinstance(rows, list) or not rows:
        got = "an empty list" if isinstance(rows, list) else _show(rows)
        raise ConfigError(f"{source}: field 'rows' must be a non-empty list of timed ops, got "
                          f"{got}")
    for index, row in enumerate(rows):
        where = f"{source}: rows[{index}]"
        if not isinstance(row, dict):
            raise ConfigError(f"{where} must be a mapping with op, time_s, ..., got "
                              f"{type(row).__name__} {_show(row)}")
        op = row.get("op")
        if not isinstance(op, str):
            raise ConfigError(f"{where}: field 'op' must be one of {', '.join(BENCH_OPS)}, got "
                              f"{_show(op)}")
        if op in _COMM_OPS:
            _count(row, "num_ranks", where, 2)
            _positive(row, "size_bytes", where)
        elif op == "sync":
            _count(row, "num_ranks", where, 2)
            _positive(row, "size_bytes", where)
            _positive(row, "compute_s", where)
            if row.get("position", "after") not in SYNC_POSITIONS:
                raise ConfigError(f"{where}: field 'position' must be one of "
                                  f"{', '.join(SYNC_POSITIONS)}, got {_show(row['position'])}")
        elif op == "gemm":
            _count(row, "tokens", where, 1)
            _count(row, "hidden", where, 1, required=False)
            _count(row, "ffn", where, 1, required=False)
            _count(row, "experts", where, 1, required=False)
        else:
            continue
        _positive(row, "time_s", where)


def bench_measurements(bench: dict[str, Any]) -> list[Measurement]:
    """The communication rows as `Measurement`s (nccl-tests buffer-size convention)."""
    return [Measurement(row["op"], int(row["num_ranks"]), float(row["size_bytes"]),
                        float(row["time_s"]))
            for row in bench["rows"] if row["op"] in ("alltoall", "allgather")]


def _gemm_rows(bench: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                               np.ndarray]:
    """The GEMM rows as arrays: tokens, FLOPs, bytes moved (weights + activations, in the act
    dtype, as `moesim.engine.cost.experts_cost` counts them) and measured seconds per expert."""
    from moesim.inputs.options import ACT_DTYPE_BYTES

    rows = [r for r in bench["rows"] if r["op"] == "gemm"]
    act = ACT_DTYPE_BYTES[bench["act_dtype"]]
    hidden = np.array([r.get("hidden", bench["hidden"]) for r in rows], dtype=np.float64)
    tokens = np.array([r["tokens"] for r in rows], dtype=np.float64)
    ffn = np.array([r.get("ffn", bench["ffn"]) for r in rows], dtype=np.float64)
    flops = 2.0 * 3 * hidden * ffn * tokens
    moved = 3 * hidden * ffn * act + tokens * (2 * hidden + 3 * ffn) * act
    return tokens, flops, moved, np.array([r["time_s"] for r in rows], dtype=np.float64)


def _gemm_time_s(bench: dict[str, Any], gpu: GpuSpec) -> np.ndarray:
    """The roofline (moesim.engine.cost) of one expert per GEMM row, weights in the act dtype."""
    from moesim.engine.cost import roofline_time_s
    from moesim.inputs.options import ACT_DTYPE_BYTES

    act = ACT_DTYPE_BYTES[bench["act_dtype"]]
    _, flops, moved, _ = _gemm_rows(bench)
    return np.array([roofline_time_s(f, b, gpu, act) for f, b in zip(flops, moved, strict=True)])


# Grid of the roofline fit: achieved FLOP/s and bytes/s, 40 points per decade.
_FLOPS_GRID = np.logspace(7, 16, 361)
_BYTES_GRID = np.logspace(7, 14, 281)


def _best_roofline(flops: np.ndarray, moved: np.ndarray, measured: np.ndarray,
                   rates: np.ndarray, bandwidths: np.ndarray) -> tuple[float, float, float]:
    """The (rate, bandwidth) of the grids, and its launch (weighted mean residual, at least
    0), that minimise the squared relative error of `launch + max(flops/rate, moved/bw)`."""
    roof = np.maximum(flops[None, None, :] / rates[:, None, None],
                      moved[None, None, :] / bandwidths[None, :, None])  # [F, B, G]
    weight = 1.0 / measured**2
    launch = np.clip(((measured - roof) * weight).sum(axis=2) / weight.sum(), 0.0, None)
    loss = ((((launch[:, :, None] + roof) - measured) / measured) ** 2).sum(axis=2)
    f, b = np.unravel_index(int(np.argmin(loss)), loss.shape)
    return float(rates[f]), float(bandwidths[b]), float(launch[f, b])


def fit_gemm(bench: dict[str, Any], gpu: GpuSpec) -> GpuSpec:
    """`gpu` with compute efficiency, memory efficiency and kernel launch fitted to the GEMM rows
    by the cost model's own law, `launch + max(FLOPs / rate, bytes / bandwidth)` per expert
    (least squares on relative error over a log grid of rate and bandwidth, the launch solved
    for each); where a fitted rate or bandwidth beats the spec's peak, the peak is raised to it.
    Rows at two FFN widths (a TP shard reads a quarter of the weights) separate the two."""
    tokens, flops, moved, measured = _gemm_rows(bench)
    if len(set(tokens.tolist())) < 2:
        raise ConfigError("calibration needs GEMM timings at two or more token counts "
                          "(--gemm-tokens)")
    if np.ptp(measured) <= 0 or np.corrcoef(flops, measured)[0, 1] <= 0:
        raise ConfigError("GEMM times do not grow with tokens; rerun the calibration with "
                          "larger --gemm-tokens or more --repeats")
    rates, bandwidths = _FLOPS_GRID, _BYTES_GRID
    for _ in range(4):  # the best grid point, then three finer grids around it
        rate, bandwidth, launch_s = _best_roofline(flops, moved, measured, rates, bandwidths)
        step_f, step_b = rates[1] / rates[0], bandwidths[1] / bandwidths[0]
        rates = rate * np.logspace(-1, 1, 41, base=step_f)
        bandwidths = bandwidth * np.logspace(-1, 1, 41, base=step_b)
    update: dict[str, float] = {"kernel_launch_s": launch_s}
    if rate > gpu.peak_bf16_flops_per_s:
        update.update(peak_bf16_flops_per_s=rate, compute_efficiency=1.0)
    else:
        update["compute_efficiency"] = rate / gpu.peak_bf16_flops_per_s
    if bandwidth > gpu.memory_bandwidth_bytes_per_s:
        update.update(memory_bandwidth_bytes_per_s=bandwidth, memory_efficiency=1.0)
    else:
        update["memory_efficiency"] = bandwidth / gpu.memory_bandwidth_bytes_per_s
    return gpu.model_copy(update=update)


def with_loopback_latency(spec: TopologySpec, latency_s: float) -> TopologySpec:
    """`spec` with every loopback fabric block's link latency set to `latency_s`."""
    fabric = tuple(b.model_copy(update={"latency_s": latency_s}) if b.kind == "loopback" else b
                   for b in spec.fabric)
    return spec.model_copy(update={"fabric": fabric})


# Weight formats the expert GEMM curves can be fitted in: the kernel fit's rows carry 2-byte
# activations (moesim.calibrate.kernels), so fp32 and fp8 runs keep the roofline fit alone.
_CURVE_DTYPES = ("bf16", "fp16")
GEMM_FAMILY = "torch-loop"  # the harness's experts: one SwiGLU per expert, in a Python loop


def gemm_kernel_rows(bench: dict[str, Any]) -> list[KernelRow]:
    """The GEMM rows as kernel-table `moe` rows of one expert each (tokens = rows per expert,
    experts = top_k = 1), as `moesim calibrate kernels` fits them."""
    rows = []
    for r in bench["rows"]:
        if r["op"] == "gemm":
            rows.append(KernelRow("moe", {
                "tokens": float(r["tokens"]), "experts": 1.0, "top_k": 1.0,
                "hidden": float(r.get("hidden", bench["hidden"])),
                "ffn": float(r.get("ffn", bench["ffn"])), "time_s": float(r["time_s"])},
                dtype=str(bench["act_dtype"]), extra={"kernel": GEMM_FAMILY}))
    return rows


def _curve_peaks(gpu: GpuSpec, rows: list[KernelRow]) -> GpuSpec:
    """`gpu` with peaks high enough that every row's achieved rate is at most half of them
    (a curve's fraction is at most 1), the roofline efficiencies rescaled so that the roofline's
    rates stay what `fit_gemm` fitted."""
    flops = max(6 * r.get("hidden") * r.get("ffn") * r.get("tokens") / r.time_s for r in rows)
    moved = max(6 * r.get("hidden") * r.get("ffn") / r.time_s for r in rows)
    update: dict[str, float] = {}
    if 2 * flops > gpu.peak_bf16_flops_per_s:
        update.update(peak_bf16_flops_per_s=2 * flops, compute_efficiency=gpu.compute_efficiency
                      * gpu.peak_bf16_flops_per_s / (2 * flops))
    if 2 * moved > gpu.memory_bandwidth_bytes_per_s:
        update.update(memory_bandwidth_bytes_per_s=2 * moved,
                      memory_efficiency=gpu.memory_efficiency
                      * gpu.memory_bandwidth_bytes_per_s / (2 * moved))
    return gpu.model_copy(update=update)


def fit_gemm_curves(rows: list[KernelRow], gpu: GpuSpec,
                    sources: tuple[str, ...] = ()) -> GpuSpec:
    """`gpu` with `kernels.moe` curves (launch per expert, compute and memory efficiency by rows
    per expert) fitted to the one-expert GEMM rows by `fit_curves`, the fit `moesim calibrate
    kernels` runs; rows at several widths pin the curves apart from the launch."""
    gpu = _curve_peaks(gpu, rows)
    curves = fit_curves(rows, gpu, family=GEMM_FAMILY, grouped=False, sources=sources)
    return gpu.model_copy(update={"kernels": GpuKernels(moe=curves)})


def sync_rows(bench: dict[str, Any], position: str = "after") -> list[dict[str, Any]]:
    """The rows of an all-to-all timed right after compute on every rank (`position` "after";
    rows saved without a position are such) or right before it ("before"), with the
    compute's seconds (`compute_s`)."""
    return [r for r in bench["rows"] if r["op"] == "sync" and r.get("compute_s", 0) > 0
            and r.get("position", "after") == position]


def wait_per_compute_s(row: dict[str, Any]) -> float:
    """The seconds of compute a sync row's wait grows with: for a collective after compute,
    that compute x `expected_max_normal(ranks)` (`TopologySpec.straggler_wait_fraction`); before
    it, the compute itself (`TopologySpec.precompute_wait_fraction`)."""
    from validate.predict import expected_max_normal

    if row.get("position", "after") == "before":
        return float(row["compute_s"])
    return float(row["compute_s"]) * expected_max_normal(int(row["num_ranks"]))


@dataclass(frozen=True)
class WaitFit:
    """A fitted wait around compute: `fraction` per second of compute, levelling off at `cap_s`
    (None: no cap), as `validate.predict.capped_wait_s` applies it."""

    fraction: float
    cap_s: float | None

    def wait_s(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """The wait of each sync row."""
        from validate.predict import capped_wait_s

        return np.asarray(capped_wait_s(self.fraction, self.cap_s,
                                        [wait_per_compute_s(r) for r in rows]))


_MAX_WAIT_FRACTION = 10.0  # TopologySpec's bound on both fractions


def fit_wait(spec: TopologySpec, bench: dict[str, Any], fidelity: str = "analytic",
             position: str = "after") -> WaitFit | None:
    """The wait of the all-to-alls timed right after compute (`position` "after":
    `TopologySpec.straggler_wait_fraction` / `_cap_s`, growing with E[max of g normals] too) or
    right before it ("before": `precompute_wait_fraction` / `_cap_s`): their times less their
    time after a collective on `spec` (the communication fit), fitted as
    `capped_wait_s(fraction, cap, wait_per_compute_s(row))` by least squares on relative error.

    The linear wait (no cap) is fitted in closed form. A cap (a log grid, then a finer one
    around its best point) replaces it only where the rows show one (`_cap_is_shown`): a
    two-parameter curve fits noisy rows of a line a little better too, and a cap beyond the
    rows' waits would only guess how longer compute extrapolates. None without such rows."""
    rows = sync_rows(bench, position)
    if not rows:
        return None
    measured = np.array([r["time_s"] for r in rows])
    excess = measured - _plain_alltoall_s(spec, rows, fidelity)
    weight = 1.0 / measured**2
    compute = np.array([wait_per_compute_s(r) for r in rows])  # [R]

    def loss(fraction: np.ndarray, cap_s: np.ndarray) -> np.ndarray:
        wait = cap_s[..., None] * -np.expm1(-fraction[..., None] * compute / cap_s[..., None])
        return np.sum(weight * (excess - wait) ** 2, axis=-1)

    linear = float(np.sum(weight * compute * excess) / np.sum(weight * compute**2))
    linear = min(max(linear, 0.0), _MAX_WAIT_FRACTION)
    line = WaitFit(linear, None)
    if linear <= 0 or len(rows) < _MIN_CAP_ROWS:
        return line
    line_loss = float(np.sum(weight * (excess - linear * compute) ** 2))
    fractions = np.geomspace(_FRACTION_GRID[0], _FRACTION_GRID[1], 161)
    caps = np.geomspace(_CAP_GRID_S[0], _CAP_GRID_S[1], 121)
    for _ in range(2):  # a coarse grid, then a fine one around its best point
        f, c = np.meshgrid(fractions, caps, indexing="ij")
        values = loss(f, c)
        i, j = np.unravel_index(int(np.argmin(values)), values.shape)
        best, best_loss = WaitFit(float(f[i, j]), float(c[i, j])), float(values[i, j])
        fractions = np.geomspace(fractions[max(i - 1, 0)], fractions[min(i + 1, 160)], 161)
        caps = np.geomspace(caps[max(j - 1, 0)], caps[min(j + 1, 120)], 121)
    shown = _cap_is_shown(best, best_loss, line_loss, len(rows), float(np.max(excess)))
    return best if shown else line


# A cap needs this many rows, must lower the weighted squared error by the Akaike criterion
# (one more parameter: n ln(loss ratio) < -2) and by at least _CAP_GAIN, lie within
# _CAP_REACH x the largest wait measured and off the grid's edges.
_MIN_CAP_ROWS = 4
_CAP_GAIN = 0.1
_CAP_REACH = 2.0
_FRACTION_GRID = (1e-3, _MAX_WAIT_FRACTION)
_CAP_GRID_S = (1e-5, 10.0)


def _cap_is_shown(fit: WaitFit, loss: float, line_loss: float, rows: int,
                  largest_wait_s: float) -> bool:
    """Whether a capped wait fitted well enough to replace the line (`fit_wait`)."""
    if fit.cap_s is None or line_loss <= 0 or loss >= line_loss * (1 - _CAP_GAIN):
        return False
    aic_gain = rows * math.log(max(loss, 1e-300) / line_loss) + 2
    on_edge = (math.isclose(fit.fraction, _FRACTION_GRID[1], rel_tol=1e-3)
               or math.isclose(fit.fraction, _FRACTION_GRID[0], rel_tol=1e-3)
               or math.isclose(fit.cap_s, _CAP_GRID_S[0], rel_tol=1e-3)
               or math.isclose(fit.cap_s, _CAP_GRID_S[1], rel_tol=1e-3))
    return aic_gain < 0 and not on_edge and fit.cap_s <= _CAP_REACH * largest_wait_s


def _plain_alltoall_s(spec: TopologySpec, rows: list[dict[str, Any]], fidelity: str
                      ) -> np.ndarray:
    """Each sync row's all-to-all on `spec` without the straggler wait."""
    from moesim.inputs.topology import build_topology

    return predict_times_s(
        build_topology(spec),
        [Measurement("alltoall", int(r["num_ranks"]), float(r["size_bytes"]), 1.0)
         for r in rows], launch_s=spec.collective_launch_s or 0.0, fidelity=fidelity)


def _sync_group(row: dict[str, Any], position: str) -> str:
    """A sync row's held-out error group: "a2a after compute x4"."""
    return f"a2a {position} compute x{row['num_ranks']}"


# The topology fields each sync position's wait is fitted into (fraction, cap).
_WAIT_FIELDS = {"after": ("straggler_wait_fraction", "straggler_wait_cap_s"),
                "before": ("precompute_wait_fraction", "precompute_wait_cap_s")}

# Compute bands of the waits' held-out error: the compute next to the all-to-all.
COMPUTE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<1ms", 0, 1e-3), ("1-10ms", 1e-3, 1e-2), (">10ms", 1e-2, math.inf))


def compute_band(compute_s: float) -> str:
    """The held-out error band of a sync row's compute time (each band ends before `hi`)."""
    return next(name for name, _, hi in COMPUTE_BANDS if compute_s < hi)


# Size bands of the all-to-all / ring held-out errors: bytes per rank.
COMM_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<=16K", 0, 16 << 10), ("16K-256K", (16 << 10) + 1, 256 << 10),
    ("256K-4M", (256 << 10) + 1, 4 << 20), (">4M", (4 << 20) + 1, math.inf))


def comm_band(size_bytes: float) -> str:
    """The held-out error band of a collective's buffer size (each band ends at its `hi`)."""
    return next(name for name, _, hi in COMM_BANDS if size_bytes <= hi)


def fit_live(spec: TopologySpec, bench: dict[str, Any], *, media: list[str] | None = None,
             fidelity: str = "analytic", loss: str = "log",
             source: str = "microbenchmark results", folds: int = 5) -> LiveFit:
    """Fit `spec` to microbenchmark results: link efficiency, collective launch, loopback
    latency (where the spec has a loopback fabric), the GPU's roofline efficiencies and launch,
    its expert GEMM curves (`GpuSpec.kernels`, bf16/fp16 runs) and the waits around compute
    (`fit_wait`); with `folds` >= 2 the held-out error of each (k-fold: each row predicted by
    a fit made without it).
    Results `check_bench` refuses are one ConfigError naming `source` and the field."""
    from moesim.calibrate.cross_validation import cross_validate, k_fold
    from moesim.inputs.topology import build_topology

    check_bench(bench, source)
    measurements = bench_measurements(bench)
    one_rank = bench.get("nproc") == 1  # no peer: the GEMM rows only, the links as they were
    if not measurements and not one_rank:
        raise ConfigError("calibration needs all-to-all or ring timings (--sizes)")

    def fit_comm(rows: list[Measurement]) -> tuple[FitResult, float | None]:
        def comm_fit(latency_s: float | None) -> FitResult:
            base = spec if latency_s is None else with_loopback_latency(spec, latency_s)
            return fit_topology(base, rows, media=media, loss=loss, fidelity=fidelity)

        latency_s = None
        if any(b.kind == "loopback" for b in spec.fabric):
            fastest = min(m.time_s for m in rows)
            latency_s = _golden_min(lambda lat: comm_fit(lat).loss, 0.0, fastest,
                                    tol=fastest * 1e-3)
        return comm_fit(latency_s), latency_s

    def comm_spec(comm: FitResult, latency_s: float | None) -> TopologySpec:
        base = spec if latency_s is None else with_loopback_latency(spec, latency_s)
        return calibrated_spec(base, comm.efficiency_by_medium, comm.launch_s)

    comm: FitResult | None = None
    latency_s = None
    fitted = spec
    if measurements:
        comm, latency_s = fit_comm(measurements)
        fitted = comm_spec(comm, latency_s)
    for position, (fraction_key, cap_key) in _WAIT_FIELDS.items():
        # a position without rows gets no wait, not the base topology's (fitted elsewhere)
        wait = fit_wait(fitted, bench, fidelity, position) or WaitFit(0.0, None)
        fitted = fitted.model_copy(update={fraction_key: wait.fraction, cap_key: wait.cap_s})
    fitted = TopologySpec.model_validate(fitted.model_dump())
    gpu = fit_gemm(bench, spec.gpu_spec)
    kernel_rows = gemm_kernel_rows(bench)
    curves = bench["act_dtype"] in _CURVE_DTYPES and len({r.get("tokens") for r in kernel_rows}) > 1
    if curves:
        gpu = fit_gemm_curves(kernel_rows, gpu, (source,))
    fitted = fitted.model_copy(update={"gpu_spec": gpu})
    held_out: list[HeldOutError] = []
    if folds >= 2 and measurements:
        def comm_fit_predict(train: list[Measurement], held: list[Measurement]) -> np.ndarray:
            result, latency = fit_comm(train)
            topo = build_topology(comm_spec(result, latency))
            return predict_times_s(topo, held, launch_s=result.launch_s, fidelity=fidelity)

        held_out += k_fold(measurements, folds=folds, size=lambda m: m.size_bytes,
                           group=lambda m: f"{m.op} x{m.num_ranks}",
                           band=lambda m: comm_band(m.size_bytes),
                           measured_s=lambda m: m.time_s, fit_predict=comm_fit_predict,
                           band_order=lambda b: [n for n, _, _ in COMM_BANDS].index(b),
                           pooled=True)
    for position in _WAIT_FIELDS if folds >= 2 else ():
        syncs = sync_rows(bench, position)
        if len(syncs) >= 3:

            def sync_fit_predict(train: list[dict[str, Any]], held: list[dict[str, Any]],
                                 position: str = position) -> np.ndarray:
                wait = fit_wait(fitted, {"rows": train}, fidelity, position)
                plain = _plain_alltoall_s(fitted, held, fidelity)
                return plain if wait is None else plain + wait.wait_s(held)

            held_out += k_fold(syncs, folds=folds, size=lambda r: r["compute_s"],
                               group=functools.partial(_sync_group, position=position),
                               band=lambda r: compute_band(r["compute_s"]),
                               measured_s=lambda r: r["time_s"], fit_predict=sync_fit_predict,
                               band_order=lambda b: [n for n, _, _ in COMPUTE_BANDS].index(b))
    if curves and folds >= 2:
        held_out += cross_validate(kernel_rows, _curve_peaks(gpu, kernel_rows), folds=folds,
                                   group=lambda r: "expert_gemm", family=GEMM_FAMILY,
                                   grouped=False)
    tokens, _, _, measured = _gemm_rows(bench)
    after = (predict_rows_s(kernel_rows, gpu.kernels.moe, gpu) if gpu.kernels and
             gpu.kernels.moe else _gemm_time_s(bench, gpu))
    return LiveFit(
        spec=fitted, comm=comm, measurements=measurements, loopback_latency_s=latency_s,
        gemm_tokens=tokens,
        gemm_ffn=np.array([r.get("ffn", bench["ffn"]) for r in bench["rows"]
                           if r["op"] == "gemm"], dtype=np.int64),
        gemm_hidden=np.array([r.get("hidden", bench["hidden"]) for r in bench["rows"]
                              if r["op"] == "gemm"], dtype=np.int64),
        gemm_measured_s=measured,
        gemm_before_s=_gemm_time_s(bench, spec.gpu_spec),
        gemm_after_s=after,
        held_out=held_out,
    )


# ---- progress (launcher and rank 0) ---------------------------------------------------------


@dataclass(frozen=True)
class ProgressFile:
    """Benchmarks done so far, written by rank 0 (atomically) and read by the launcher."""

    path: Path

    def write(self, done: int) -> None:
        temp = self.path.with_suffix(".tmp")
        temp.write_text(f"{done}\n")
        temp.replace(self.path)

    def read(self) -> int:
        try:
            return int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0


class ProgressWatch:
    """Polled by the launcher while the ranks run: a line per finished benchmark (done of
    total, elapsed, ETA) and a LiveRunError as soon as the ETA says the run would outlive its
    timeout. The ETA is the mean time per benchmark since the first one finished (the first
    also pays the ranks' start-up: torch import, process group), times the benchmarks left;
    sizes grow along the run, so it errs short and never stops a run that would finish."""

    def __init__(self, source: ProgressFile, total: int, timeout_s: float, show: Any) -> None:
        self.source, self.total, self.timeout_s, self.show = source, total, timeout_s, show
        self.start_s = time.monotonic()
        self.done = 0
        self.first: tuple[float, int] | None = None  # (time, done) of the first report

    def poll(self) -> None:
        done = self.source.read()
        if done <= self.done:
            return
        self.done = done
        now = time.monotonic()
        elapsed_s = now - self.start_s
        if self.first is None:
            self.first = (now, done)
        first_s, first_done = self.first
        eta_s = None
        if done > first_done:
            eta_s = (now - first_s) / (done - first_done) * (self.total - done)
        if self.show is not None:
            left = "" if eta_s is None else f", about {eta_s:.0f} s to go"
            self.show(f"benchmark {done}/{self.total}: {elapsed_s:.0f} s elapsed{left}")
        if eta_s is not None and done < self.total and elapsed_s + eta_s > self.timeout_s:
            from validate.launch import LiveRunError

            raise LiveRunError(
                f"calibration would not finish within --timeout-s {self.timeout_s:g}: after "
                f"{done} of {self.total} benchmarks ({elapsed_s:.0f} s) the rest needs about "
                f"{eta_s:.0f} s more; lower --repeats or --sizes, or raise --timeout-s")


# ---- rank side (torch) ----------------------------------------------------------------------


_MIN_REPEATS = 20  # a row's timed iterations under a time budget, at least (or `repeats`)


def _affordable(warmup_s: float, warmup: int, repeats: int, budget_s: float) -> int:
    """Timed iterations a row gets: `repeats`, or fewer (at least _MIN_REPEATS) where its
    warm-up iterations say `repeats` would take more than `budget_s` (0: no budget). Every
    rank passes the same `warmup_s` (the slowest rank's), so all run the same count."""
    if budget_s <= 0 or warmup <= 0 or warmup_s <= 0:
        return repeats
    return max(min(repeats, _MIN_REPEATS), min(repeats, int(budget_s * warmup / warmup_s)))


def _slowest(seconds: float) -> float:
    """The largest of every rank's `seconds` (all-reduce max)."""
    import torch
    import torch.distributed as dist

    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value.item())


def _timed(fn: Any, warmup: int, repeats: int, load: Any = None, per_call: int = 1,
           between: Any = None, sync: list[tuple[float, float]] | None = None,
           before: list[tuple[float, float]] | None = None,
           budget_s: float = 0.0, barrier: Any = None) -> tuple[float, float, float]:
    """Median, min and mean seconds of `fn()` (divided by `per_call`) over `repeats` iterations.

    With `between` (a collective), iterations run back to back as `between, fn, between` after
    one barrier, as a live MoE layer runs dispatch, experts, combine: `fn` starts as a rank
    leaves the first collective, the second follows `fn` and precedes the next iteration's first.

    Without a `load` each iteration is `barrier, fn`. With one, iterations run back to back
    as a live run's MoE layers do, `fn, load, fn` (both calls timed) after one barrier: one
    call follows the previous iteration's and precedes the load, the other follows the load
    (both count in the statistics, as a live layer has collectives in both places).

    `sync` gets (compute seconds, collective seconds) per timed iteration of a collective that
    followed compute on every rank (the call after `load`, or `between` after `fn`), `before`
    the same of a collective that compute followed (the call before `load`, or `between` before
    `fn`, with the compute's time), except right after a barrier, where the ranks start
    aligned (a live layer's first collective follows the previous layer's last).

    With `budget_s` > 0 a row whose warm-up shows `repeats` iterations would take longer gets
    fewer (`_affordable`), so long GEMM rows do not set the calibration's time. `barrier`
    replaces `torch.distributed.barrier` (tests)."""
    if barrier is None:
        import torch.distributed as dist

        barrier = dist.barrier

    def clocked(call: Any) -> float:
        begin = time.perf_counter()
        call()
        return time.perf_counter() - begin

    times = []
    total, i, started = warmup + repeats, 0, time.perf_counter()
    while i < total:
        if i == warmup and budget_s > 0 and warmup > 0:
            warmup_s = _slowest(time.perf_counter() - started)
            total = warmup + _affordable(warmup_s, warmup, repeats, budget_s)
        aligned = (load is None and between is None) or i in (0, warmup)
        if aligned:
            barrier()
        timed = i >= warmup
        pairs: list[tuple[list[tuple[float, float]] | None, float, float]] = []
        if between is not None:
            pre_s = clocked(between)
            first_s = clocked(fn)
            pairs += [(None if aligned else before, first_s, pre_s),
                      (sync, first_s, clocked(between))]
        else:
            first_s = clocked(fn)
        if load is not None:
            load_s = clocked(load)
            second_s = clocked(fn)
            pairs += [(None if aligned else before, load_s, first_s), (sync, load_s, second_s)]
            if timed:
                times.append(second_s / per_call)
        if timed:
            times.append(first_s / per_call)
            for sink, compute_s, collective_s in pairs:
                if sink is not None:
                    sink.append((compute_s, collective_s))
        i += 1
    return float(np.median(times)), float(np.min(times)), float(np.mean(times))


_POOL_BYTES = 64 << 20  # weights a GEMM row cycles through, at most
_visits = [0]


def _expert_run(x: Any, pool: list[tuple[Any, Any, Any]], experts: int) -> None:
    """`experts` SwiGLU experts back to back on `x`, each with the next weights of `pool`."""
    import torch.nn.functional as F

    for _ in range(experts):
        gate, up, down = pool[_visits[0] % len(pool)]
        _visits[0] += 1
        _ = (F.silu(x @ gate) * (x @ up)) @ down  # [n, D]


def _bench_rank(plan: dict[str, Any]) -> dict[str, np.ndarray]:
    """This rank's median time per op and size."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from validate.harness import TORCH_DTYPES, _all_to_all, _ring

    rank, world = int(plan["rank"]), int(plan["world"])
    torch.set_num_threads(int(plan["threads"]))
    dist.init_process_group(
        plan["backend"], init_method=f"tcp://{os.environ.get('MASTER_ADDR', '127.0.0.1')}:"
        f"{plan['port']}", rank=rank, world_size=world,
        timeout=timedelta(seconds=float(plan["timeout_s"])),
    )
    warmup, repeats = int(plan["warmup"]), int(plan["repeats"])
    out: dict[str, list[tuple[float, float, float]]] = {op: [] for op in BENCH_OPS}
    dtype, hidden, ffn = TORCH_DTYPES[plan["act_dtype"]], int(plan["hidden"]), int(plan["ffn"])
    gen = torch.Generator().manual_seed(2000 + rank)

    def rand(*shape: int) -> torch.Tensor:
        return (0.02 * torch.randn(*shape, generator=gen)).to(dtype)

    load_x = rand(int(plan["load_tokens"]), hidden)  # [n, D]
    # one weight set per (layer, expert), visited layer by layer as a live run does
    layer_weights = [[(rand(hidden, ffn), rand(hidden, ffn), rand(ffn, hidden))
                      for _ in range(int(plan["load_experts"]))]
                     for _ in range(int(plan["load_layers"]))]
    visits = [0]

    def layer_load() -> None:
        visits[0] += 1
        for gate, up, down in layer_weights[visits[0] % len(layer_weights)]:
            _ = (F.silu(load_x @ gate) * (load_x @ up)) @ down  # [n, D]

    load = layer_load if int(plan["load_tokens"]) > 0 else None
    done = [0]

    def report() -> None:
        """Rank 0 tells the launcher how many benchmarks are done (`ProgressFile`)."""
        done[0] += 1
        if rank == 0 and str(plan.get("progress_path", "")):
            ProgressFile(Path(str(plan["progress_path"]))).write(done[0])

    ranks = np.arange(world)
    exchanges: list[Any] = []
    # a collective after compute (position 0) or before it (1): stats, size, position
    sync: list[tuple[float, float, float, float]] = []
    sync_sizes: list[int] = []
    sync_positions: list[int] = []

    def keep_sync(size: int, after: list[tuple[float, float]],
                  before: list[tuple[float, float]]) -> None:
        for position, pairs in enumerate((after, before)):
            if pairs:
                sync.append(_sync_stats(pairs))
                sync_sizes.append(int(size))
                sync_positions.append(position)
    for size in plan["sizes_bytes"]:
        per_peer = max(1, int(size) // world)
        # rows of `hidden` activations per (src, dst) as a MoE dispatch sends them: an even
        # routing's random counts (the same draw on every rank), through all_to_all_single
        # with split sizes as the harness calls it (gloo's alltoallv: with uneven splits it
        # costs more than an evenly split buffer)
        row_bytes = hidden * load_x.element_size()
        counts = np.random.default_rng(int(size)).multinomial(
            max(world, int(size) // row_bytes), np.full(world, 1 / world), size=world)
        send_x = rand(int(counts.sum(axis=1).max()), hidden)
        recv_x = rand(int(counts.sum(axis=0).max()), hidden)
        exchanges.append(
            lambda r=recv_x, s=send_x, c=counts: _all_to_all(r, s, c[:, rank], c[rank], rank))
        pairs: list[tuple[float, float]] = []
        pre: list[tuple[float, float]] = []
        out["alltoall"].append(_timed(exchanges[-1], warmup, repeats, load, sync=pairs,
                                      before=pre))
        keep_sync(int(size), pairs, pre)
        report()
        rows = np.full(world, per_peer)
        buf = torch.zeros(per_peer * world, 1, dtype=torch.uint8)
        out["allgather"].append(_timed(
            lambda b=buf, n=rows: _ring(b, b, ranks, n, rank, reduce=False),
            warmup, repeats, load))
        report()
    middle = len(exchanges) // 2
    # a mid-sized all-to-all before and after every GEMM run (none on one rank)
    dispatch = exchanges[middle] if exchanges else None
    for width_in, width, run in plan["gemm_shapes"]:
        # distinct weights per expert and layer, as many as a live run visits (its experts
        # times `load_layers`, within _POOL_BYTES), so they are as cold in cache as there
        d = int(width_in)
        sets = min(int(run) * int(plan["load_layers"]), _POOL_BYTES // (6 * d * int(width)))
        pool = [(rand(d, int(width)), rand(d, int(width)), rand(int(width), d))
                for _ in range(max(int(run), sets))]
        for tokens in plan["gemm_tokens"]:
            x = rand(int(tokens), d)  # [n, D]
            pairs, pre = [], []
            out["gemm"].append(_timed(lambda x=x, p=pool, k=int(run): _expert_run(x, p, k),
                                      warmup, repeats, per_call=int(run), between=dispatch,
                                      sync=pairs, before=pre,
                                      budget_s=float(plan["row_budget_s"])))
            if dispatch is not None:
                keep_sync(int(plan["sizes_bytes"][middle]), pairs, pre)
            report()
    dist.barrier()
    dist.destroy_process_group()
    result = {op: np.asarray([median for median, _, _ in times]) for op, times in out.items()}
    for i, suffix in ((1, "_min"), (2, "_mean")):
        result.update({op + suffix: np.asarray([t[i] for t in times]) for op, times in out.items()})
    stats = np.asarray(sync, dtype=np.float64).reshape(-1, 4)
    result.update(sync_compute=stats[:, 0], sync=stats[:, 1], sync_min=stats[:, 2],
                  sync_mean=stats[:, 3], sync_size=np.asarray(sync_sizes, dtype=np.int64),
                  sync_position=np.asarray(sync_positions, dtype=np.int64))
    return result


def _sync_stats(pairs: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """Mean compute, then median, min and mean collective seconds of (compute, collective)."""
    compute, collective = np.asarray(pairs, dtype=np.float64).T
    return (float(compute.mean()), float(np.median(collective)), float(collective.min()),
            float(collective.mean()))


def main(argv: list[str] | None = None) -> int:
    """Entry point of one benchmark rank; failures are filed as the harness files them."""
    from validate.harness import rank_main

    return rank_main(_bench_rank, argv)


if __name__ == "__main__":
    sys.exit(main())
