"""`moesim calibrate nccl-tests|live`: fit a topology's collective costs to measurements.

    moesim calibrate nccl-tests LOG... -t TOPOLOGY -o OUT.yaml [--gpus N]

reads nccl-tests logs (all_reduce_perf, alltoall_perf, all_gather_perf, reduce_scatter_perf
output; several tests per file are fine), runs every row on the algorithm and protocol NCCL's
tuner picks for it (`moesim collective`'s model), and fits over all sizes at once
(`moesim.calibrate.protocol_fit`): per protocol (LL, LL128, Simple) the launch and per-step
latency, which small messages pin, and the bandwidth terms (`link_efficiency` of the chosen
media, default all; LL/LL128 bandwidth shares; NVLS efficiency and latency), which large ones
pin, plus the extra launch per GPU of logs run with `-g N`. It writes the topology with the
fitted values (and a `sources` entry naming the logs) to OUT, and prints measured vs predicted
time per row before and after, then the error per op, GPU count and size band. A log whose
run forced an algorithm says so in a line `# MOESIM: algorithm=ring` (or pass --algorithm).
Topologies without NCCL (a GPU spec with no compute_capability: gloo on CPUs) fit one link
efficiency and `collective_launch_s` on log time instead.

    moesim calibrate live --backend gloo|nccl --nproc N [--sizes 4K,16K,...] -o OUT.yaml

runs microbenchmarks on N spawned ranks exactly as `moesim validate live` spawns them
(all-to-all and ring point-to-point exchanges over message sizes, expert SwiGLU GEMMs at each
width of --scale and 1 to 1,024 rows per expert, an all-to-all right after each GEMM run; see
`validate.microbench`), fits the links' efficiency, the collective launch latency and (for a
loopback fabric) the links' latency with the same fit as nccl-tests, the expert GEMMs' kernel
curves with the fit of `calibrate kernels` (kept as the GPU spec's own `kernels`), the
roofline efficiencies, and the straggler wait of a collective after compute; prints each
fit's k-fold held-out error per op and size band; writes the topology (base: cpu-loopback for
gloo, resized to N ranks) with a `sources` entry describing the run.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from moesim.cli.collective import parse_bytes
from moesim.cli.commands import command_help
from moesim.cli.numbers import MAX_NPROC, MAX_REPEATS, MAX_TIMEOUT_S, float_in, int_in, parse_scale
from moesim.cli.outputs import rescue_output
from moesim.errors import ConfigError
from moesim.inputs.config import load_model_file
from moesim.inputs.topology_spec import MAX_TOPOLOGY_GPUS, TopologySpec
from moesim.output.files import write_atomic

if TYPE_CHECKING:  # the fits and the engine are imported by the commands that run them
    from moesim.calibrate.fit import FitResult, Measurement
    from moesim.calibrate.protocol_fit import ProtocolFit
    from moesim.inputs.models import ModelSpec

__all__ = ["add_parser", "format_table", "write_topology"]


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim calibrate` and its `nccl-tests` subcommand."""
    parser = commands.add_parser(
        "calibrate", help=command_help("calibrate"), description=__doc__.split("\n\n")[0]
    )
    sources = parser.add_subparsers(dest="calibrate_source", metavar="SOURCE", required=True)
    nccl = sources.add_parser("nccl-tests", help="fit to nccl-tests logs",
                              description=__doc__.split("\n\n")[2])
    nccl.add_argument("logs", nargs="+", metavar="LOG", help="nccl-tests output file(s)")
    nccl.add_argument("-t", "--topology", required=True, help="topology YAML or preset name")
    nccl.add_argument("-o", "--output", required=True, help="where to write the fitted YAML")
    nccl.add_argument("--gpus", type=int_in(2, MAX_TOPOLOGY_GPUS), default=None,
                      help="ranks per test (default: counted from the log's Rank lines)")
    nccl.add_argument("--min-bytes", default="1", help="ignore rows smaller than this (e.g. 1M)")
    nccl.add_argument("--max-bytes", default="1T", help="ignore rows larger than this (e.g. 1G)")
    nccl.add_argument("--ops", default=None,
                      help="only these collectives, comma-separated (e.g. alltoall,allgather; "
                           "leave out all-reduce rows that ran NVLS, which is not modelled)")
    nccl.add_argument("--medium", action="append", default=None,
                      help="link medium to fit (nvlink, pcie, network...; repeatable; "
                           "default: all)")
    nccl.add_argument("--fixed-launch", action="store_true",
                      help="(topologies without NCCL) keep the launch latency, fit only the "
                           "efficiency")
    nccl.add_argument("--loss", choices=("log", "relative"), default="log",
                      help="(topologies without NCCL) least squares on log time or on "
                           "relative error")
    nccl.add_argument("--fidelity", choices=("des", "analytic"), default="analytic",
                      help="how each row's transfer is timed while fitting (default analytic: "
                           "equal to des for one collective on an idle fabric, and faster)")
    nccl.add_argument("--algorithm", choices=("auto", "ring", "tree", "nvls"), default="auto",
                      help="the algorithm every log forced (NCCL_ALGO); default: what each "
                           "log's `# MOESIM: algorithm=` line says, else NCCL's tuner")
    nccl.set_defaults(handler=_run_nccl_tests)
    _add_live(sources)
    _add_kernels(sources)


def _add_kernels(sources: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim calibrate kernels`."""
    kernels = sources.add_parser(
        "kernels", help="fit a kernel profile to microbenchmarks or a measured table",
        description="Time GEMMs, the MoE layer and attention with torch on --device (or read "
        "--from-csv, format in moesim/calibrate/kernels.py and README) and fit a kernel "
        "profile's curves for one GPU; use it with --kernels PROFILE.yaml.")
    kernels.add_argument("--device", choices=("cpu", "cuda"), default=None,
                         help="run microbenchmarks here (needs torch)")
    kernels.add_argument("--from-csv", default=None, help="measured kernel table (CSV)")
    kernels.add_argument("--gpu", default=None,
                         help="catalog GPU the times are of (default: cpu for --device cpu)")
    kernels.add_argument("--topology", default=None, help="or: a topology whose GPU it is")
    kernels.add_argument("--model", default="mixtral-8x7b", help="shapes to benchmark")
    kernels.add_argument("--name", default="calibrated", help="profile name")
    kernels.add_argument("--quick", action="store_true", help="fewer sizes")
    kernels.add_argument("--folds", type=int_in(0, 1000), default=5,
                         help="cross-validation folds for the held-out error per op and size "
                         "band (default 5; 0 skips it)")
    kernels.add_argument("-o", "--output", required=True, help="profile YAML to write (the "
                         "measured table is written beside it as .csv)")
    kernels.set_defaults(handler=_run_kernels)


def _kernel_gpu(args: argparse.Namespace) -> tuple[str, Any]:
    """(key, GpuSpec) the measurements are fitted against."""
    from moesim.inputs.topology import load_topology
    from moesim.inputs.topology_spec import load_gpu

    if args.topology:
        gpu = load_topology(args.topology).gpu_spec
        return gpu.kernel_key or "custom", gpu
    if args.gpu:
        return args.gpu, load_gpu(args.gpu)
    if args.device == "cpu":
        gpu = load_topology("cpu-loopback").gpu_spec
        return "cpu", gpu.model_copy(update={"kernel_key": "cpu"})
    raise ConfigError("--gpu: name the GPU the times are of (catalog key, e.g. h100-sxm) or "
                      "give --topology")


def _run_kernels(args: argparse.Namespace) -> int:
    from moesim.calibrate.cross_validation import cross_validate, held_out_table
    from moesim.calibrate.kernels import fit_curves, read_kernel_csv, write_kernel_csv
    from moesim.inputs.kernel_profile import GpuKernels, KernelProfile
    from moesim.inputs.model_files import load_model

    if (args.device is None) == (args.from_csv is None):
        raise ConfigError("calibrate kernels: give --device cpu|cuda (run microbenchmarks) or "
                          "--from-csv FILE (a measured table), one of them")
    if args.folds == 1:
        raise ConfigError("--folds 1: cross-validation needs 2 or more folds (0 skips it)")
    key, gpu = _kernel_gpu(args)
    if args.from_csv:
        rows = read_kernel_csv(args.from_csv)
        source = f"measured table {args.from_csv}"
    else:
        try:
            import torch
        except ImportError:
            raise ConfigError("--device: kernel microbenchmarks need torch; pip install "
                              "'moesim[live]'") from None
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: torch sees no CUDA GPU; use --device cpu")
        from validate.kernel_bench import run_kernel_bench

        rows = run_kernel_bench(load_model(args.model), device=args.device, quick=args.quick,
                                progress=lambda line: print(f"  {line}", file=sys.stderr))
        source = f"moesim calibrate kernels --device {args.device} ({args.model} shapes)"
    fitted, held_out = {}, []
    for op in ("gemm", "moe", "attention_prefill", "attention_decode"):
        of_op = [r for r in rows if r.op == op]
        if len(of_op) >= 2:
            family = sorted({r.extra.get("kernel", "measured") for r in of_op})[0]
            options: dict[str, Any] = {"family": family, "grouped": family != "torch-loop",
                                       "sources": (source,)}
            fitted[op] = fit_curves(of_op, gpu, **options)
            if args.folds >= 2:
                held_out += cross_validate(of_op, gpu, folds=args.folds, **options)
    if not fitted:
        raise ConfigError(f"{source}: no op kind has 2 or more rows to fit")
    profile = KernelProfile(name=args.name, description=f"fitted on {gpu.name}",
                            sources=(source,), gpus={key: GpuKernels(**fitted)})
    out = Path(args.output)
    from moesim.calibrate.profile_build import profile_yaml

    _write_fitted(out.with_suffix(".csv"), write_kernel_csv(rows, [source]))
    _write_fitted(out, profile_yaml(profile))
    for op, curves in fitted.items():
        count = sum(r.op == op for r in rows)
        print(f"{op:18} {count:3d} rows  launch {curves.launch_s * 1e6:6.1f} us  compute "
              f"{curves.compute.points[-1][1]:.2f} of peak at the largest size, memory "
              f"{max(f for _, f in curves.memory.points):.2f} of bandwidth at best")
    if held_out:
        print(held_out_table(held_out, args.folds))
    print(f"wrote {out} (GPU key {key}) and {out.with_suffix('.csv')}; use --kernels {out}")
    return 0


def _add_live(sources: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Flags of `moesim calibrate live`."""
    live = sources.add_parser("live", help="fit to microbenchmarks run on live ranks",
                              description=__doc__.split("\n\n")[4])
    live.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    live.add_argument("--nproc", type=int_in(1, MAX_NPROC), default=4, help="ranks (default 4)")
    live.add_argument("-t", "--topology",
                      help="base topology (default: cpu-loopback for gloo; required for nccl)")
    live.add_argument("-o", "--output", required=True, help="where to write the fitted YAML")
    live.add_argument("--sizes", default="4K,16K,64K,256K,1M",
                      help="all-to-all / ring buffer sizes per rank (default 4K,16K,64K,256K,1M: "
                      "the range scaled live runs send, decode to prefill sized)")
    live.add_argument("--gemm-tokens", dest="gemm_tokens", default="1,4,16,64,256,1024",
                      help="rows of the timed single-expert GEMMs (default 1,4,16,64,256,1024: "
                      "cover the rows per expert of the live runs you will compare, one to the "
                      "largest batch)")
    live.add_argument("--trace", default="bundled:mixtral8x7b_humaneval_decode",
                      help="sizes the expert GEMMs run between the timed collectives like a "
                      "live run of this trace's batch (its token count, evenly routed; the "
                      "routing itself is not used)")
    live.add_argument("--load-tokens", dest="load_tokens", type=int_in(0, 1 << 24), default=None,
                      help="rows per expert of those GEMMs instead (0: idle collectives)")
    live.add_argument("--model", default="mixtral-8x7b", help="sizes the GEMMs like the harness")
    live.add_argument("--scale", type=_scale_list, default=None,
                      help="width scales of the expert GEMMs, comma-separated; the first also "
                      "sizes the collectives' rows and the load between them (default 1/32,1/16 "
                      "on gloo: the widths CPU runs use; 1 on nccl)")
    live.add_argument("--row-budget-s", dest="row_budget_s", default=DEFAULT_ROW_BUDGET_S,
                      type=float_in(0.0, MAX_TIMEOUT_S),
                      help="at most this many seconds of timed iterations per GEMM row (at "
                      "least 20 iterations; default 3; 0: always --repeats)")
    live.add_argument("--act-dtype", dest="act_dtype", choices=["fp32", "bf16", "fp16"],
                      default="bf16")
    live.add_argument("--warmup", type=int_in(0, MAX_REPEATS), default=3)
    live.add_argument("--repeats", type=int_in(1, MAX_REPEATS), default=200,
                      help="timed iterations per row (default 200: on a CPU host with fewer "
                      "cores than ranks one collective's time spreads over 0.3-10 ms)")
    live.add_argument(
        "--statistic", choices=["median", "min", "mean"], default="mean",
        help="per-rank time over repeats to fit: mean (default; compare with `validate "
        "compare --statistic mean`), median, or min (the uncontended cost)",
    )
    live.add_argument("--timeout-s", dest="timeout_s", default=300.0,
                      type=float_in(0.0, MAX_TIMEOUT_S, low_open=True),
                      help="limit for the whole run and for each collective (default 300)")
    live.add_argument("--fidelity", choices=("des", "analytic"), default="analytic")
    live.add_argument("--folds", type=int_in(0, 1000), default=5,
                      help="cross-validation folds of the held-out error per op and size band "
                      "(default 5; 0 skips it)")
    live.add_argument("--bench-json", dest="bench_json",
                      help="also write the raw microbenchmark rows here")
    live.add_argument("--from-bench", dest="from_bench",
                      help="refit rows saved with --bench-json instead of running ranks")
    live.set_defaults(handler=_run_live)


def _live_base(args: argparse.Namespace) -> tuple[TopologySpec, Path]:
    """The base topology of a live calibration, resized to the ranks where it is a preset."""
    from moesim.inputs.topology import resolve_topology_path

    if args.topology is None and args.backend == "nccl":
        raise ConfigError("--backend nccl: name the base topology with -t (e.g. dgx-h100)")
    path = resolve_topology_path(args.topology or "cpu-loopback")
    spec = load_model_file(TopologySpec, path, "topology")
    if args.topology is None:
        spec = spec.model_copy(update={"gpus_per_node": args.nproc})
    return spec, path


def _live_bench(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """Run the microbenchmarks (or read saved ones) as the flags say."""
    from moesim.cli.run import write_json
    from moesim.inputs.model_files import load_model
    from validate.measurement import scaled_model_update

    if args.from_bench:
        from moesim.inputs.config import read_mapping

        return read_mapping(args.from_bench, "microbenchmark results")
    from validate.microbench import run_microbench

    scales = args.scale or ((1.0,) if args.backend == "nccl" else DEFAULT_GLOO_SCALES)
    scale = scales[0]
    sizes = _size_list(args.sizes, "--sizes", parse_bytes)
    model = load_model(args.model)
    update = scaled_model_update(model, scale, 1)
    load = layer_load(model, update, args.nproc, args.trace, args.load_tokens, args.act_dtype)
    shapes = []
    for width in scales:
        scaled = scaled_model_update(model, width, 1)
        hidden, ffn = scaled["hidden_size"], scaled["expert_ffn_size"]
        shapes.append((hidden, ffn, load["load_experts"]))  # an EP rank's experts, back to back
        if args.nproc > 1 and ffn // args.nproc >= 1:  # a TP rank's shards of every expert
            shapes.append((hidden, ffn // args.nproc, model.num_experts))
    bench = run_microbench(
        backend=args.backend, nproc=args.nproc, sizes_bytes=sizes,
        gemm_tokens=_size_list(args.gemm_tokens, "--gemm-tokens", _gemm_rows),
        hidden=update["hidden_size"], ffn=update["expert_ffn_size"], act_dtype=args.act_dtype,
        warmup=args.warmup, repeats=args.repeats, timeout_s=args.timeout_s,
        statistic=args.statistic, load_tokens=load["load_tokens"],
        load_experts=load["load_experts"], load_layers=load["load_layers"],
        gemm_shapes=tuple(shapes), row_budget_s=args.row_budget_s,
        progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
    )
    bench.update(model=args.model, scale=scale, scales=list(scales), trace=args.trace)
    if args.bench_json:
        write_json(bench, args.bench_json)
    return bench


_LOAD_WEIGHT_BUDGET_BYTES = 1 << 30  # expert weights a calibration rank may hold for its load


def layer_load(model: ModelSpec, update: dict[str, int], nproc: int, trace: str,
               load_tokens: int | None, act_dtype: str) -> dict[str, int]:
    """The expert GEMMs between a calibration iteration's two collectives, as in a live run of
    `trace` on `nproc` expert-parallel ranks: `num_experts / nproc` experts per rank (at least
    one), each on `tokens * top_k / num_experts` rows (or `load_tokens`), cycling over the
    model's MoE layers (as many as fit in 1 GiB of weights per rank)."""
    from moesim.inputs.options import ACT_DTYPE_BYTES
    from moesim.trace.bundled import load_named_trace

    if load_tokens is not None and load_tokens < 0:
        raise ConfigError(f"--load-tokens {load_tokens}: give rows per expert, 0 or more "
                          "(0: idle collectives), or leave it out to size it from --trace")
    experts = max(1, model.num_experts // nproc)
    if load_tokens is None:
        tokens = load_named_trace(trace).num_tokens
        load_tokens = max(1, round(tokens * model.top_k / model.num_experts))
    weight_bytes = 3 * update["hidden_size"] * update["expert_ffn_size"] * experts \
        * ACT_DTYPE_BYTES[act_dtype]
    layers = max(1, min(model.num_layers - model.first_dense_layers,
                        _LOAD_WEIGHT_BUDGET_BYTES // max(1, weight_bytes)))
    return {"load_tokens": int(load_tokens), "load_experts": experts, "load_layers": int(layers)}


# The default widths of the expert GEMM rows on CPUs: the two a CPU live run uses most
# (validate suite: 1/32 and 1/16). Fitting 1/32 with 1/8 instead put rows 10-24% off (the
# curves are by rows per expert only, and a CPU's efficiency also moves with the width).
DEFAULT_GLOO_SCALES = (1 / 32, 1 / 16)
DEFAULT_ROW_BUDGET_S = 3.0


def _scale_list(text: str) -> tuple[float, ...]:
    """Comma-separated width scales, each as `parse_scale` reads it (at least one)."""
    scales = tuple(parse_scale(item) for item in text.split(",") if item.strip())
    if not scales:
        raise argparse.ArgumentTypeError(f"scale {text!r}: give one or more, e.g. 1/32,1/16")
    return scales


def _gemm_rows(text: str) -> int:
    """Rows of one timed GEMM: 1 .. 2**20 (a million rows of the model's width is minutes)."""
    rows = int(text)
    if not 1 <= rows <= 1 << 20:
        raise ValueError(text)
    return rows


def _size_list(text: str, flag: str, parse) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    """Comma-separated sizes, each parsed by `parse` (at least one)."""
    try:
        sizes = tuple(int(parse(item.strip())) for item in text.split(",") if item.strip())
    except (ValueError, ConfigError):
        raise ConfigError(f"{flag} {text!r}: write comma-separated positive sizes like "
                          "4K,64K") from None
    if not sizes:
        raise ConfigError(f"{flag} {text!r}: give at least one size, e.g. 4K,64K")
    return sizes


def _run_live(args: argparse.Namespace) -> int:
    from validate.microbench import fit_live

    if args.folds == 1:
        raise ConfigError("--folds 1: cross-validation needs 2 or more folds (0 skips it)")

    spec, path = _live_base(args)
    gpus = spec.nodes * spec.gpus_per_node
    if args.nproc > gpus:
        raise ConfigError(f"--nproc {args.nproc}: topology {path} has {gpus} GPUs; give at most "
                          f"{gpus} ranks or a larger -t/--topology")
    bench = _live_bench(args)
    ranks = bench.get("nproc")
    if isinstance(ranks, int) and not 1 <= ranks <= gpus:
        raise ConfigError(f"--from-bench {args.from_bench}: {ranks} ranks, but topology {path} "
                          f"has {gpus} GPUs; calibrate a topology of at least {ranks} GPUs")
    fit = fit_live(spec, bench, fidelity=args.fidelity, folds=args.folds)
    if fit.comm is not None:
        print(format_table(fit.measurements, fit.comm))
    else:
        print("one rank: no collective to time; the links keep the base topology's figures, "
              "the expert GEMMs are fitted")
    if fit.loopback_latency_s is not None:
        print(f"fitted loopback latency_s: {fit.loopback_latency_s * 1e6:.1f} us per link")
    spec = fit.spec
    if any(r.get("op") == "sync" and "position" not in r for r in bench["rows"]):
        print("note: sync rows without a position (saved by an older moesim) count as after "
              "compute, but each held the waits on both sides of it; no wait before compute is "
              "fitted from them: rerun `moesim calibrate live` for both")
    if spec.straggler_wait_fraction:
        print(f"fitted straggler_wait_fraction: {spec.straggler_wait_fraction:.3f}"
              f"{_cap(spec.straggler_wait_cap_s)} (a collective of g ranks right after compute "
              f"waits {spec.straggler_wait_fraction:.3f} x E[max of g normals] s more per second "
              f"of that compute, 0.56 for 2 ranks and 1.03 for 4"
              f"{_levelling(spec.straggler_wait_cap_s)})")
    if spec.precompute_wait_fraction:
        print(f"fitted precompute_wait_fraction: {spec.precompute_wait_fraction:.3f}"
              f"{_cap(spec.precompute_wait_cap_s)} (a collective right before compute waits "
              f"{spec.precompute_wait_fraction:.3f} s more per second of that compute"
              f"{_levelling(spec.precompute_wait_cap_s)}: the ranks that leave it first compute "
              "on the cores the others need to finish it)")
    gpu = fit.spec.gpu_spec
    print(f"fitted compute_efficiency {gpu.compute_efficiency:.4f} of "
          f"{gpu.peak_bf16_flops_per_s:.3g} FLOP/s, memory_efficiency "
          f"{gpu.memory_efficiency:.4f} of {gpu.memory_bandwidth_bytes_per_s:.3g} B/s, "
          f"kernel_launch_s {gpu.kernel_launch_s * 1e6:.1f} us")
    moe = gpu.kernels.moe if gpu.kernels is not None else None
    if moe is not None:
        print(f"fitted expert GEMM curves ({moe.family}): launch {moe.launch_s * 1e6:.1f} us per "
              "expert; compute " + ", ".join(f"{f:.2f}@{x:g}" for x, f in moe.compute.points)
              + " of peak by rows per expert; memory "
              + ", ".join(f"{f:.2f}@{x:g}" for x, f in moe.memory.points) + " of bandwidth")
    hidden = fit.gemm_hidden if len(fit.gemm_hidden) else [bench["hidden"]] * len(fit.gemm_ffn)
    for row in zip(hidden, fit.gemm_ffn, fit.gemm_tokens, fit.gemm_measured_s,
                   fit.gemm_before_s, fit.gemm_after_s, strict=True):
        width_in, width, tokens, measured, before, after = row
        print(f"gemm {int(width_in):>5}x{int(width):<5} x {int(tokens):>5} tokens: measured "
              f"{measured * 1e6:9.1f} us, before "
              f"{before * 1e6:9.1f} us {_pct(before, measured):>8}, after {after * 1e6:9.1f} us "
              f"{_pct(after, measured):>8}")
    if fit.held_out:
        from moesim.calibrate.cross_validation import held_out_table

        print(held_out_table(fit.held_out, args.folds))
    note = (
        f"Calibrated by `moesim calibrate live` on {datetime.date.today()}: {bench['backend']}, "
        f"{bench['nproc']} ranks on {bench.get('device', '?')} ({bench.get('threads_per_rank')} "
        f"threads per rank), "
        + (f"all-to-all + ring sizes {args.sizes} B, " if fit.comm is not None else "")
        + f"GEMM {bench['hidden']}x"
        f"{bench['ffn']} {bench['act_dtype']} (widths {_widths(bench)}), load "
        f"{bench.get('load_experts', 1)} experts x "
        f"{bench.get('load_tokens')} rows over {bench.get('load_layers', 1)} layers, "
        f"{bench.get('repeats')} repeats, {bench.get('statistic', 'median')}: "
        + (f"collective_launch_s {fit.comm.launch_s:.3e} s, link_efficiency "
           f"{fit.comm.efficiency_by_medium}, " if fit.comm is not None else
           "no collective (one rank), ")
        + f"straggler_wait_fraction "
        f"{fit.spec.straggler_wait_fraction:.3f}{_cap(fit.spec.straggler_wait_cap_s)}, "
        f"precompute_wait_fraction {fit.spec.precompute_wait_fraction:.3f}"
        f"{_cap(fit.spec.precompute_wait_cap_s)}, compute_efficiency "
        f"{gpu.compute_efficiency:.4f}, memory_efficiency {gpu.memory_efficiency:.4f}, "
        f"kernel_launch_s {gpu.kernel_launch_s:.3e} s"
        + (f", expert GEMM curves ({moe.family}, launch {moe.launch_s:.3e} s per expert)"
           if moe is not None else "")
        + (f"; held-out MAPE {_held_out_brief(fit.held_out)}" if fit.held_out else "")
    )
    _write_live(fit.spec, note, Path(args.output), path)
    print(f"wrote {args.output}")
    return 0


def _cap(cap_s: float | None) -> str:
    """' (cap X ms)' for a fitted wait's cap, '' without one."""
    return "" if cap_s is None else f" (cap {cap_s * 1e3:.2f} ms)"


def _levelling(cap_s: float | None) -> str:
    """', levelling off at X ms' for a fitted wait's cap, '' without one."""
    return "" if cap_s is None else f", levelling off at {cap_s * 1e3:.2f} ms"


def _widths(bench: dict[str, Any]) -> str:
    """The GEMM rows' hidden x FFN widths, as the sources note lists them."""
    shapes = sorted({(int(r.get("hidden", bench["hidden"])), int(r.get("ffn", bench["ffn"])))
                     for r in bench["rows"] if r["op"] == "gemm"})
    return ", ".join(f"{h}x{f}" for h, f in shapes)


def _held_out_brief(errors: list[Any]) -> str:
    """Held-out MAPE per op and band in one line (for the sources note)."""
    return "; ".join(f"{e.op} {e.band} {100 * e.mape:.1f}%" for e in errors if e.rows)


def _write_live(spec: TopologySpec, note: str, out: Path, original: Path) -> None:
    """Write a live-calibrated topology YAML with a header and the `sources` note."""
    fitted = spec.model_copy(update={"sources": (*spec.sources, note)})
    data = fitted.model_dump(mode="json", exclude_defaults=True)
    header = (
        f"# {spec.name}, calibrated by `moesim calibrate live` (microbenchmarks on live ranks).\n"
        f"# Base topology: {original}. Fitted: link_efficiency, collective_launch_s, loopback\n"
        "# latency_s, the waits around compute (straggler_wait_fraction and\n"
        "# precompute_wait_fraction), gpu_spec compute_efficiency, memory_efficiency,\n"
        "# kernel_launch_s and the expert GEMM curves (gpu_spec.kernels); see the last `sources`.\n"
    )
    _write_fitted(out, header + yaml.safe_dump(data, sort_keys=False))


def _write_fitted(out: Path, text: str) -> None:
    """Write a fitted result (topology or kernel YAML, kernel CSV) after the work is done (live
    ranks ran, logs were fitted): when `out` cannot be written after all, the text is saved in
    the temporary folder (or printed) and the error says where, so the fit is not lost."""
    try:
        write_atomic(out, text)
    except OSError as exc:
        raise rescue_output(text, out, exc) from None


def _run_nccl_tests(args: argparse.Namespace) -> int:
    from moesim.calibrate.fit import fit_topology, measurements_from_sections
    from moesim.calibrate.nccl_tests import read_nccl_tests
    from moesim.calibrate.protocol_fit import fit_protocols
    from moesim.engine.protocols import uses_nccl
    from moesim.inputs.topology import build_topology, resolve_topology_path

    path = resolve_topology_path(args.topology)
    spec = load_model_file(TopologySpec, path, "topology")
    sections = [s for log in args.logs for s in read_nccl_tests(log)]
    measurements = measurements_from_sections(
        sections,
        num_ranks=args.gpus,
        min_size_bytes=parse_bytes(args.min_bytes, "--min-bytes", allow_zero=True),
        max_size_bytes=parse_bytes(args.max_bytes, "--max-bytes"),
    )
    if args.ops:
        wanted = {op.strip() for op in args.ops.split(",")}
        measurements = [m for m in measurements if m.op in wanted]
    if not measurements:
        raise ConfigError(
            f"{', '.join(args.logs)}: no rows of all_reduce/alltoall/all_gather/reduce_scatter "
            "in the size range; check --min-bytes/--max-bytes"
        )
    if uses_nccl(build_topology(spec, source=str(path))):
        fit = fit_protocols(spec, measurements, media=args.medium, fidelity=args.fidelity)
        print(format_protocol_table(measurements, fit))
        write_protocol_topology(spec, fit, args.logs, Path(args.output), original=path)
        print(f"wrote {args.output}")
        return 0
    result = fit_topology(
        spec, measurements, media=args.medium, fit_launch=not args.fixed_launch,
        loss=args.loss, fidelity=args.fidelity,
        algorithm="ring" if args.algorithm == "auto" else args.algorithm,
    )
    print(format_table(measurements, result))
    write_topology(spec, result, args.logs, Path(args.output), original=path)
    print(f"wrote {args.output}")
    return 0


def format_protocol_table(measurements: list[Measurement], fit: ProtocolFit) -> str:
    """Fitted terms, measured vs predicted per row (with the algorithm/protocol it ran), and
    the error per op, GPU count and size band."""
    from moesim.calibrate.protocol_fit import band_errors

    effs = ", ".join(f"{m} {e:.4f}" for m, e in fit.efficiency_by_medium.items()) or "-"
    lines = [f"fitted link_efficiency: {effs}"]
    for protocol, entry in fit.protocols.items():
        terms = ", ".join(f"{k} {v * 1e6:.2f} us" if k.endswith("_s") else f"{k} {v:.3f}"
                          for k, v in entry.items())
        lines.append(f"  {protocol}: {terms}")
    if fit.multi_gpu_launch_s is not None:
        lines.append(f"  multi_gpu_launch_s: {fit.multi_gpu_launch_s * 1e6:.2f} us")
    if fit.nvls_efficiency is not None:
        lines.append(f"  nvls_efficiency {fit.nvls_efficiency:.3f}, nvls_latency_s "
                     f"{(fit.nvls_latency_s or 0.0) * 1e6:.2f} us")
    lines.append(f"{'op':<14} {'ranks':>5} {'bytes':>14} {'ran':>14} {'measured us':>13}"
                 f" {'before us':>11} {'err':>8} {'after us':>11} {'err':>8}")
    rows = zip(measurements, fit.calls, fit.before_s, fit.after_s, strict=True)
    for m, call, before, after in rows:
        lines.append(
            f"{m.op:<14} {m.num_ranks:>5} {m.size_bytes:>14,.0f} {call:>14} {m.time_s * 1e6:>13.2f}"
            f" {before * 1e6:>11.2f} {_pct(before, m.time_s):>8}"
            f" {after * 1e6:>11.2f} {_pct(after, m.time_s):>8}"
        )
    lines.append(f"{'op':<14} {'ranks':>5} {'size band':>12} {'rows':>6} {'MAPE':>8} {'worst':>9}")
    for op, n, band, count, mape, worst in band_errors(measurements, fit.after_s):
        lines.append(f"{op:<14} {n:>5} {band:>12} {count:>6} {mape:>7.1f}% {worst:>+8.1f}%")
    return "\n".join(lines)


def write_protocol_topology(
    spec: TopologySpec, fit: ProtocolFit, logs: list[str], out: Path, original: Path
) -> None:
    """Write the topology with the fitted protocol block, efficiencies and NVLS figures."""
    from moesim.calibrate.protocol_fit import apply_fit

    note = (
        f"Calibrated by `moesim calibrate nccl-tests` on {datetime.date.today()} from "
        f"{', '.join(logs)}: protocols, link_efficiency, multi_gpu_launch_s and NVLS figures "
        f"over all sizes (RMS log error {fit.loss ** 0.5:.3f})"
    )
    fitted = apply_fit(spec, fit)
    fitted = fitted.model_copy(update={"sources": (*spec.sources, note)})
    data = fitted.model_dump(mode="json", exclude_defaults=True)
    header = (
        f"# {spec.name}, calibrated from nccl-tests logs ({', '.join(logs)}).\n"
        f"# Base topology: {original} (see its comments for the source of every figure).\n"
        "# Fitted: protocols, link_efficiency, multi_gpu_launch_s, NVLS figures; see the last "
        "`sources` entry.\n"
    )
    _write_fitted(out, header + yaml.safe_dump(data, sort_keys=False))


def format_table(measurements: list[Measurement], result: FitResult) -> str:
    """Measured vs predicted time (and error) per row, before and after the fit."""
    effs = ", ".join(f"{m} {e:.4f}" for m, e in result.efficiency_by_medium.items())
    lines = [
        f"fitted link_efficiency: {effs}; collective_launch_s: {result.launch_s * 1e6:.2f} us",
        f"{'op':<14} {'ranks':>5} {'bytes':>14} {'measured us':>13}"
        f" {'before us':>11} {'err':>8} {'after us':>11} {'err':>8}",
    ]
    rows = zip(measurements, result.before_s, result.after_s, strict=True)
    for m, before, after in rows:
        lines.append(
            f"{m.op:<14} {m.num_ranks:>5} {m.size_bytes:>14,.0f} {m.time_s * 1e6:>13.2f}"
            f" {before * 1e6:>11.2f} {_pct(before, m.time_s):>8}"
            f" {after * 1e6:>11.2f} {_pct(after, m.time_s):>8}"
        )
    return "\n".join(lines)


def _pct(predicted: float, measured: float) -> str:
    return f"{100 * (predicted / measured - 1):+.1f}%"


def write_topology(
    spec: TopologySpec, result: FitResult, logs: list[str], out: Path, original: Path
) -> None:
    """Write the fitted topology YAML with a comment and a `sources` entry naming the logs."""
    from moesim.calibrate.fit import calibrated_spec

    effs = ", ".join(f"{m}={e:.4f}" for m, e in result.efficiency_by_medium.items())
    note = (
        f"Calibrated by `moesim calibrate nccl-tests` on {datetime.date.today()} from "
        f"{', '.join(logs)}: link_efficiency {effs}, collective_launch_s "
        f"{result.launch_s:.3e} s (RMS log error {result.loss ** 0.5:.3f})"
    )
    fitted = calibrated_spec(spec, result.efficiency_by_medium, result.launch_s)
    fitted = fitted.model_copy(update={"sources": (*spec.sources, note)})
    data = fitted.model_dump(mode="json", exclude_defaults=True)
    header = (
        f"# {spec.name}, calibrated from nccl-tests logs ({', '.join(logs)}).\n"
        f"# Base topology: {original} (see its comments for the source of every figure).\n"
        "# Fitted: link_efficiency and collective_launch_s; see the last `sources` entry.\n"
    )
    _write_fitted(out, header + yaml.safe_dump(data, sort_keys=False))
