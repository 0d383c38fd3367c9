"""Launching a live run: one process per rank on this host, over loopback only.

`run_live` computes the simulator's Traffic once, writes each rank its rows
(`PLAN_DIR/rank{r}.npz`), starts `python -m validate.harness PLAN_DIR r` per rank with
MASTER_ADDR=127.0.0.1 and a free port, watches them, and assembles the measurement. If a rank
exits with an error, or the whole run outlives `timeout_s`, every rank still running is
terminated (then killed) and one `LiveRunError` names the rank that failed first and its error
line; no child process outlives `run_live` (on Linux not even when the launcher is killed).
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import MoesimError
from moesim.traffic.traffic import Traffic
from validate.measurement import (
    PHASES,
    build_measurement,
    exchange_layers,
    expected_bytes,
    live_inputs,
    phase_byte_matrices,
    traffic_for_inputs,
)

__all__ = ["LiveRunError", "RankCommand", "run_live", "rank_plans", "free_port"]

_POLL_S = 0.05
_TERMINATE_GRACE_S = 3.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class LiveRunError(MoesimError):
    """A live run failed: a rank raised, hung past the timeout, or could not start."""


@dataclass(frozen=True)
class RankCommand:
    """How one rank starts elsewhere: a command prefix (`ip netns exec NS`) and extra env."""

    prefix: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _attn_group(traffic: Traffic, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of `rank`'s attention-TP group and their chunk rows (empty when attn_tp == 1)."""
    for coll in traffic.attn_collectives:
        if rank in coll.ranks:
            rows = np.asarray(coll.chunk_bytes, dtype=np.int64) // traffic.hidden_bytes
            return np.asarray(coll.ranks, dtype=np.int64), rows
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)


def rank_plans(
    traffic: Traffic, inputs: dict[str, Any], settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each rank's rows of `traffic` plus the run settings, as arrays for `np.savez`."""
    hidden_bytes = traffic.hidden_bytes
    matrices = phase_byte_matrices(traffic)
    active = np.array([bool(m.any()) for m in matrices.values()])
    active[PHASES.index("experts")] = True
    exchange = exchange_layers(traffic)  # [L, P]: all ranks call the collective, or none
    moe_tp = int(inputs["parallelism"]["moe_tp"])
    plans = []
    for rank in range(traffic.world):
        attn_ranks, attn_rows = _attn_group(traffic, rank)
        plans.append({
            **settings,
            "rank": rank,
            "world": traffic.world,
            "hidden": int(inputs["hidden_size"]),
            "ffn_shard": max(1, int(inputs["expert_ffn_size"]) // moe_tp),
            "act_dtype": inputs["act_dtype"],
            "dispatch_send_rows": traffic.dispatch_bytes[:, rank, :] // hidden_bytes,
            "dispatch_recv_rows": traffic.dispatch_bytes[:, :, rank] // hidden_bytes,
            "gather_send_rows": traffic.moe_tp_gather_bytes[:, rank, :] // hidden_bytes,
            "gather_recv_rows": traffic.moe_tp_gather_bytes[:, :, rank] // hidden_bytes,
            "sp_send_bytes": traffic.sp_bytes[rank, :],
            "sp_recv_bytes": traffic.sp_bytes[:, rank],
            "expert_tokens": traffic.rank_expert_tokens[:, rank, :],
            "attn_ranks": attn_ranks,
            "attn_chunk_rows": attn_rows,
            "active_phases": active,
            "exchange": exchange,
        })
    return plans


def _loopback_interface() -> str | None:
    """Name of the loopback interface (lo, lo0), for GLOO_SOCKET_IFNAME."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in names if n in ("lo", "lo0")), None)


def _child_env(threads: int) -> dict[str, str]:
    """Environment of the rank processes: loopback only, this package importable."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["MASTER_ADDR"] = "127.0.0.1"
    env["OMP_NUM_THREADS"] = str(threads)
    iface = _loopback_interface()
    if iface:
        env.setdefault("GLOO_SOCKET_IFNAME", iface)
        env.setdefault("NCCL_SOCKET_IFNAME", iface)
    return env


def _failure(plan_dir: Path, codes: list[int | None]) -> str:
    """Which rank failed first and why: the earliest error report, else the first exit code."""
    failed = [r for r, code in enumerate(codes) if code not in (None, 0)]
    reports = []
    for rank in range(len(codes)):
        path = plan_dir / f"error{rank}.txt"
        if path.is_file():
            stamp, _, line = path.read_text(errors="replace").partition("\n")
            reports.append((float(stamp), rank, line.strip()))
    if reports:
        _, rank, line = min(reports)
        return f"rank {rank} failed: {line.removeprefix(f'rank {rank}: ')}"
    rank = failed[0]
    code = codes[rank] or 0
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return f"rank {rank} {how}: {_last_line(plan_dir / f'rank{rank}.log')}"


def _last_line(log: Path) -> str:
    """The last non-empty line of a rank's log."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(no output)"


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate every rank still running, then kill what outlives the grace period."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + _TERMINATE_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _watch(procs: list[subprocess.Popen[bytes]], plan_dir: Path, timeout_s: float,
           on_poll: Callable[[], None] | None = None) -> None:
    """Wait for all ranks; raise LiveRunError on the first failure or on timeout. `on_poll`
    runs at every poll (progress; it may raise LiveRunError to stop the run)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if on_poll is not None:
            on_poll()
        codes = [proc.poll() for proc in procs]
        if any(code not in (None, 0) for code in codes):
            time.sleep(_POLL_S)  # let a rank that failed at the same moment file its report
            codes = [proc.poll() for proc in procs]
            raise LiveRunError(f"live run failed: {_failure(plan_dir, codes)} "
                               f"(logs: {plan_dir})")
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            running = [r for r, code in enumerate(codes) if code is None]
            raise LiveRunError(
                f"live run exceeded --timeout-s {timeout_s:g}: ranks {running} still running "
                "(a rank hangs or the run is too large); raise --timeout-s or lower "
                f"--layers/--tokens/--repeats (logs: {plan_dir})"
            )
        time.sleep(_POLL_S)


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the launcher dies, even by kill -9."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _spawn(plan_dir: Path, world: int, threads: int, timeout_s: float,
           module: str = "validate.harness",
           rank_commands: Sequence[RankCommand] | None = None,
           on_poll: Callable[[], None] | None = None) -> None:
    """Start one process per rank (`python -m module PLAN_DIR RANK`, after the rank's command
    prefix), watch them, and leave none running."""
    env = _child_env(threads)
    logs = [plan_dir / f"rank{rank}.log" for rank in range(world)]
    commands = list(rank_commands or [RankCommand()] * world)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for rank in range(world):
            with open(logs[rank], "wb") as log:
                procs.append(subprocess.Popen(
                    [*commands[rank].prefix, sys.executable, "-m", module, str(plan_dir),
                     str(rank)],
                    env={**env, **commands[rank].env, "RANK": str(rank),
                         "WORLD_SIZE": str(world)},
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                ))
        _watch(procs, plan_dir, timeout_s, on_poll)
    finally:
        _stop(procs)


def _check_backend(backend: str, world: int) -> str:
    """Raise LiveRunError unless `backend` can run `world` ranks here; return a device label."""
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise LiveRunError("this torch build has no torch.distributed; install a build with it")
    if backend == "gloo":
        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    if backend != "nccl":
        raise LiveRunError(f"--backend {backend} is unknown; use gloo (CPU) or nccl (GPUs)")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < world:
        raise LiveRunError(f"--backend nccl needs one GPU per rank: {world} ranks but {gpus} "
                           "GPUs visible; use fewer ranks or --backend gloo")
    return f"{world}x {torch.cuda.get_device_name(0)}"


def _gather(plan_dir: Path, world: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack the ranks' results: times `[R, L, W, P]`, bytes `[L, W, P, 3]`, steps `[R, W]`."""
    results = []
    for rank in range(world):
        with np.load(plan_dir / f"result{rank}.npz") as data:
            results.append({k: data[k] for k in data.files})
    return (np.stack([r["time_s"] for r in results], axis=2),
            np.stack([r["byte_counts"] for r in results], axis=1),
            np.stack([r["step_time_s"] for r in results], axis=1))


def run_live(
    *,
    model: str,
    trace: str,
    placement: str,
    backend: str = "gloo",
    scale: float = 1 / 32,
    layers: int | None = None,
    tokens: int | None = None,
    act_dtype: str = "bf16",
    dedup: str = "none",
    phase: str = "prefill",
    sp_variant: str = "ring",
    warmup: int = 1,
    repeats: int = 3,
    timeout_s: float = 300.0,
    barrier: str = "step",
    nproc: int | None = None,
    inject_failure: tuple[int, str] | None = None,
    workdir: str | Path | None = None,
    rank_commands: Sequence[RankCommand] | None = None,
    expert_placement: str | None = None,
    eplb: str = "none",
    redundant_experts: int = 0,
    eplb_window: int | None = None,
    a2a: str = "direct",
    overlap: str = "none",
    mtp: int = 0,
    dispatch_dtype: str | None = None,
    estimate_topology: str | None = None,
) -> dict[str, Any]:
    """Run the predicted traffic live and return the measurement dict (see validate.measurement).

    `expert_placement` names a file of the experts each EP rank holds (replicas allowed; the
    measurement records it inline); `eplb` (greedy, deepseek) balances the placement on the
    run's trace slice instead, with `redundant_experts` extra slots over the EP ranks (each rank
    runs the GEMMs of its (E + R) / moe_ep slots); `a2a`, `overlap`, `mtp` and `dispatch_dtype`
    other than direct all-to-all in the activation dtype are refused (ConfigError:
    `validate.measurement.check_replayable`); `inject_failure=(rank, "raise" | "hang")` makes
    that rank fail after joining (for tests);
    `rank_commands` start ranks elsewhere (network namespaces: `validate.netns`).
    Before any rank starts, the run's time is estimated (`validate.predict.estimated_run_s` on
    `estimate_topology`, default cpu-loopback): a run that would outlive `timeout_s` is refused
    with a LiveRunError saying so."""
    start = time.perf_counter()
    inputs = live_inputs(model=model, trace=trace, placement=placement, backend=backend,
                         scale=scale, layers=layers, tokens=tokens, act_dtype=act_dtype,
                         dedup=dedup, phase=phase, sp_variant=sp_variant, warmup=warmup,
                         repeats=repeats, barrier=barrier, expert_placement=expert_placement,
                         eplb=eplb, redundant_experts=redundant_experts, eplb_window=eplb_window,
                         a2a=a2a, overlap=overlap, mtp=mtp, dispatch_dtype=dispatch_dtype)
    world = int(inputs["world"])
    if nproc is not None and nproc != world:
        raise LiveRunError(f"--nproc {nproc} differs from placement {placement}'s world {world}; "
                           f"pass --nproc {world} or a placement of {nproc} ranks")
    device = _check_backend(backend, world)
    traffic = traffic_for_inputs(inputs)
    if backend == "gloo" or estimate_topology is not None:  # cpu-loopback prices CPU ranks only
        _check_time(inputs, traffic, timeout_s, estimate_topology)
    threads = max(1, (os.cpu_count() or 1) // world)
    fail_rank, fail_mode = inject_failure or (-1, "raise")
    settings = {"backend": backend, "port": free_port(), "timeout_s": float(timeout_s),
                "warmup": warmup, "repeats": repeats, "threads": threads, "barrier": barrier,
                "fail_rank": fail_rank, "fail_mode": fail_mode}
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    plan_dir = Path(tempfile.mkdtemp(prefix="moesim-live-", dir=workdir))
    for rank, plan in enumerate(rank_plans(traffic, inputs, settings)):
        np.savez(plan_dir / f"rank{rank}.npz", **plan)
    _spawn(plan_dir, world, threads, timeout_s,  # on failure the logs stay in plan_dir
           rank_commands=rank_commands)
    time_s, byte_counts, step_time_s = _gather(plan_dir, world)
    shutil.rmtree(plan_dir, ignore_errors=True)
    if byte_counts.shape != expected_bytes(traffic).shape:
        raise LiveRunError("ranks returned results of the wrong shape; rerun")
    inputs["host"] = _host_info(device, threads if backend == "gloo" else None)
    return build_measurement(inputs, time_s, byte_counts, step_time_s,
                             time.perf_counter() - start)


def _check_time(inputs: dict[str, Any], traffic: Traffic, timeout_s: float,
                topology: str | None) -> None:
    """Refuse, before starting, a run whose timed passes alone would outlast `timeout_s`."""
    from validate.predict import estimated_run_s

    estimate_s = estimated_run_s(inputs, traffic, topology)
    passes = int(inputs["warmup"]) + int(inputs["repeats"])
    if estimate_s > timeout_s:
        raise LiveRunError(
            f"the run would take about {estimate_s:.0f} s ({passes} passes over "
            f"{inputs['layers']} layers at the predicted step time), beyond "
            f"--timeout-s {timeout_s:g}; lower --repeats or --layers, or raise --timeout-s")


def _host_info(device: str, threads_per_rank: int | None) -> dict[str, Any]:
    """Where the run happened."""
    import torch

    return {"hostname": socket.gethostname(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "device": device, "threads_per_rank": threads_per_rank}
