"""Rank worker of the live harness: one process runs one rank's share of the predicted traffic.

`python -m validate.harness PLAN_DIR RANK` reads `PLAN_DIR/rank{RANK}.npz` (written by
`validate.launch`: this rank's rows of the simulator's Traffic), joins the process group over
loopback, runs every layer `warmup + repeats` times and writes `PLAN_DIR/result{RANK}.npz`:
`time_s[R, L, P]`, `byte_counts[L, P, 3]` (sent, received, local) and `step_time_s[R]`; on an
error it writes `PLAN_DIR/error{RANK}.txt` (wall-clock time, one-line message) and exits 1.

Per layer, in order (phases named as in `validate.measurement.PHASES`): SP exchange
(all_to_all_single of bytes), attention-TP ring reduce-scatter (point-to-point, so the bytes on
each link are the ring's), dispatch (all_to_all_single, rows of `hidden`), MoE-TP gather
(all_to_all_single), expert SwiGLU GEMMs, MoE-TP scatter and combine (the reverse calls),
attention-TP ring all-gather. A phase that moves nothing between ranks in a layer (the plan's
`exchange[L, P]`, the same on every rank: TP's dispatch and combine) copies the rank's own rows
and calls no collective. Bytes are counted from the split sizes handed to torch times the
tensors' row size. A barrier starts each pass over the layers (plan `barrier: step`; the
layers then run back to back as in a serving step, each layer's first collective absorbing
the previous one's skew) or each layer (`barrier: layer`: layers timed in isolation, each
first collective absorbing the barrier's exit skew instead); phases are timed with
perf_counter on CPU and CUDA events on GPUs.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["TORCH_DTYPES", "run_rank", "main"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
}
ByteCount = tuple[int, int, int]  # sent, received, local
# The harness's phase order (validate.measurement.PHASES; this module does not import moesim).
PHASE_INDEX = {name: i for i, name in enumerate((
    "sp_exchange", "attn_reduce_scatter", "dispatch", "moe_tp_gather", "experts",
    "moe_tp_scatter", "combine", "attn_all_gather"))}


def _load_plan(path: Path) -> dict[str, Any]:
    """The rank plan arrays; 0-d arrays become Python scalars."""
    with np.load(path, allow_pickle=False) as data:
        return {k: (data[k].item() if data[k].ndim == 0 else data[k]) for k in data.files}


class _Clock:
    """Time marks: perf_counter on CPU, CUDA events on GPUs (resolved after synchronize)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def mark(self) -> Any:
        """A point in time on this rank's stream."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, marks: list[Any]) -> np.ndarray:
        """Durations between consecutive marks."""
        if not self.cuda:
            return np.diff(np.asarray(marks, dtype=np.float64))
        torch.cuda.synchronize()
        pairs = zip(marks[:-1], marks[1:], strict=True)
        return np.array([a.elapsed_time(b) / 1e3 for a, b in pairs])


def _row_bytes(tensor: torch.Tensor) -> int:
    """Bytes of one row (first-dimension slice) of `tensor`."""
    return tensor.element_size() * (int(np.prod(tensor.shape[1:])) if tensor.dim() > 1 else 1)


def _all_to_all(out: torch.Tensor, inp: torch.Tensor, recv_rows: np.ndarray,
                send_rows: np.ndarray, rank: int, exchange: bool = True) -> ByteCount:
    """all_to_all_single with the given splits; bytes from the splits and the row size.

    Without `exchange` (no rank sends another anything in this layer's phase) only this
    rank's own rows are copied and no collective is called."""
    send, recv = [int(n) for n in send_rows], [int(n) for n in recv_rows]
    out, inp = out[: sum(recv)], inp[: sum(send)]
    if exchange:
        dist.all_to_all_single(out, inp, output_split_sizes=recv, input_split_sizes=send)
    else:
        src, dst = sum(send[:rank]), sum(recv[:rank])
        out[dst: dst + recv[rank]].copy_(inp[src: src + send[rank]])
    row = _row_bytes(inp)
    local = send[rank] * row
    return sum(send) * row - local, sum(recv) * row - recv[rank] * row, local


def _ring_step(send: torch.Tensor | None, recv: torch.Tensor | None, nxt: int, prv: int) -> None:
    """One ring step: send to the successor and receive from the predecessor, both at once."""
    ops = []
    if send is not None and send.shape[0]:
        ops.append(dist.P2POp(dist.isend, send, nxt))
    if recv is not None and recv.shape[0]:
        ops.append(dist.P2POp(dist.irecv, recv, prv))
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()


def _ring(buf: torch.Tensor, tmp: torch.Tensor, ranks: np.ndarray, rows: np.ndarray,
          rank: int, reduce: bool) -> ByteCount:
    """Ring reduce-scatter (`reduce`) or all-gather over `ranks` with chunk `rows` per rank.

    Step s: rank i sends chunk (i-s-1) mod n (reduce-scatter) or (i-s) mod n (all-gather) to
    i+1 and receives the chunk one behind from i-1, as `moesim.traffic.traffic.ring_bytes_matrix`.
    """
    n = len(ranks)
    i = int(np.flatnonzero(ranks == rank)[0])
    starts = np.concatenate(([0], np.cumsum(rows)))
    nxt, prv = int(ranks[(i + 1) % n]), int(ranks[(i - 1) % n])
    sent = received = 0
    for step in range(n - 1):
        send_c, recv_c = (i - step - 1) % n, (i - step - 2) % n
        if not reduce:
            send_c, recv_c = (i - step) % n, (i - step - 1) % n
        chunk = buf[starts[recv_c]: starts[recv_c + 1]]
        into = tmp[: chunk.shape[0]] if reduce else chunk
        _ring_step(buf[starts[send_c]: starts[send_c + 1]], into, nxt, prv)
        if reduce:
            chunk.add_(into)
        sent += int(rows[send_c]) * _row_bytes(buf)
        received += int(rows[recv_c]) * _row_bytes(buf)
    return sent, received, 0


class _Rank:
    """One rank's buffers, weights and phase operations."""

    def __init__(self, plan: dict[str, Any], device: torch.device) -> None:
        self.plan, self.rank = plan, int(plan["rank"])
        dtype, hidden = TORCH_DTYPES[plan["act_dtype"]], int(plan["hidden"])
        gen = torch.Generator().manual_seed(1000 + self.rank)

        def rand(*shape: int) -> torch.Tensor:
            return (0.02 * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)

        def rows(*keys: str) -> int:
            return max(int(plan[k].sum(axis=-1).max(initial=0)) for k in keys)

        self.dispatch_in = rand(rows("dispatch_send_rows"), hidden)
        self.dispatch_out = rand(rows("dispatch_recv_rows"), hidden)
        self.combine_out = rand(rows("dispatch_send_rows"), hidden)
        self.gather_in = rand(rows("gather_send_rows"), hidden)
        self.gather_out = rand(rows("gather_recv_rows"), hidden)
        self.scatter_out = rand(rows("gather_send_rows"), hidden)
        self.sp_in = torch.zeros(int(plan["sp_send_bytes"].sum()), dtype=torch.uint8, device=device)
        self.sp_out = torch.zeros(int(plan["sp_recv_bytes"].sum()), dtype=torch.uint8,
                                  device=device)
        self.attn_buf = rand(int(plan["attn_chunk_rows"].sum()), hidden)
        self.attn_tmp = rand(int(plan["attn_chunk_rows"].max(initial=0)), hidden)
        tokens = plan["expert_tokens"]  # [L, E_local]
        ffn = int(plan["ffn_shard"])
        self.expert_in = rand(int(tokens.max(initial=0)), hidden)
        self.weights = [[(rand(hidden, ffn), rand(hidden, ffn), rand(ffn, hidden))
                         for _ in range(tokens.shape[1])] for _ in range(tokens.shape[0])]

    def _exchange(self, layer: int, phase: str) -> bool:
        """Whether the layer's phase crosses ranks (plan `exchange[L, P]`, the same on all)."""
        return bool(self.plan["exchange"][layer, PHASE_INDEX[phase]])

    def phases(self) -> list[Callable[[int], ByteCount]]:
        """The layer's operations in `PHASES` order."""
        return [self.sp_exchange, self.attn_reduce_scatter, self.dispatch, self.moe_tp_gather,
                self.experts, self.moe_tp_scatter, self.combine, self.attn_all_gather]

    def sp_exchange(self, layer: int) -> ByteCount:
        """SP attention exchange: the sp_bytes row and column of this rank, as raw bytes."""
        p = self.plan
        return _all_to_all(self.sp_out, self.sp_in, p["sp_recv_bytes"], p["sp_send_bytes"],
                           self.rank, self._exchange(layer, "sp_exchange"))

    def attn_reduce_scatter(self, layer: int) -> ByteCount:
        """Attention-TP ring reduce-scatter of the group's token block."""
        p = self.plan
        return _ring(self.attn_buf, self.attn_tmp, p["attn_ranks"], p["attn_chunk_rows"],
                     self.rank, reduce=True)

    def attn_all_gather(self, layer: int) -> ByteCount:
        """Attention-TP ring all-gather of the group's token block."""
        p = self.plan
        return _ring(self.attn_buf, self.attn_tmp, p["attn_ranks"], p["attn_chunk_rows"],
                     self.rank, reduce=False)

    def dispatch(self, layer: int) -> ByteCount:
        """MoE dispatch: dispatch_bytes[l, r, :] out, dispatch_bytes[l, :, r] in."""
        p = self.plan
        return _all_to_all(self.dispatch_out, self.dispatch_in, p["dispatch_recv_rows"][layer],
                           p["dispatch_send_rows"][layer], self.rank,
                           self._exchange(layer, "dispatch"))

    def combine(self, layer: int) -> ByteCount:
        """MoE combine: the dispatch reversed."""
        p = self.plan
        return _all_to_all(self.combine_out, self.dispatch_out, p["dispatch_send_rows"][layer],
                           p["dispatch_recv_rows"][layer], self.rank,
                           self._exchange(layer, "combine"))

    def moe_tp_gather(self, layer: int) -> ByteCount:
        """MoE-TP all-gather of the rows each shard received."""
        p = self.plan
        return _all_to_all(self.gather_out, self.gather_in, p["gather_recv_rows"][layer],
                           p["gather_send_rows"][layer], self.rank,
                           self._exchange(layer, "moe_tp_gather"))

    def moe_tp_scatter(self, layer: int) -> ByteCount:
        """MoE-TP reduce-scatter: the gather reversed."""
        p = self.plan
        return _all_to_all(self.scatter_out, self.gather_out, p["gather_send_rows"][layer],
                           p["gather_recv_rows"][layer], self.rank,
                           self._exchange(layer, "moe_tp_scatter"))

    def experts(self, layer: int) -> ByteCount:
        """SwiGLU of every local expert on its tokens: down(silu(x W_gate) * (x W_up))."""
        for e, count in enumerate(self.plan["expert_tokens"][layer]):
            if count:
                x = self.expert_in[: int(count)]  # [n, D]
                w_gate, w_up, w_down = self.weights[layer][e]
                _ = (F.silu(x @ w_gate) * (x @ w_up)) @ w_down  # [n, D]
        return 0, 0, 0


def _maybe_fail(plan: dict[str, Any]) -> None:
    """Injected failure for tests: rank `fail_rank` raises or hangs."""
    if int(plan["fail_rank"]) != int(plan["rank"]):
        return
    if plan["fail_mode"] == "hang":
        time.sleep(10**6)
    raise RuntimeError(f"injected failure on rank {plan['rank']}")


def _run_step(worker: _Rank, clock: _Clock, num_layers: int) -> tuple[np.ndarray, np.ndarray,
                                                                      float]:
    """One pass over all layers: times `[L, P]`, bytes `[L, P, 3]`, step seconds."""
    phases = worker.phases()
    times = np.zeros((num_layers, len(phases)))
    counts = np.zeros((num_layers, len(phases), 3), dtype=np.int64)
    active = worker.plan["active_phases"]
    step_marks = []
    per_layer = worker.plan["barrier"] == "layer"
    for layer in range(num_layers):
        if per_layer or layer == 0:
            dist.barrier()
        marks = [clock.mark()]
        for p, op in enumerate(phases):
            if active[p]:
                counts[layer, p] = op(layer)
            marks.append(clock.mark())
        times[layer] = clock.seconds(marks)
        step_marks += [marks[0], marks[-1]]
    return times, counts, float(clock.seconds([step_marks[0], step_marks[-1]])[0])


def run_rank(plan: dict[str, Any]) -> dict[str, np.ndarray]:
    """Join the group, run warm-up and repeats, return this rank's result arrays."""
    cuda = plan["backend"] == "nccl"
    device = torch.device(f"cuda:{plan['rank']}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(int(plan["threads"]))
    dist.init_process_group(
        plan["backend"], init_method=f"tcp://{os.environ.get('MASTER_ADDR', '127.0.0.1')}:"
        f"{plan['port']}", rank=int(plan["rank"]),
        world_size=int(plan["world"]), timeout=timedelta(seconds=float(plan["timeout_s"])),
    )
    # On an error the group is left to process exit, so this rank files its error report
    # before its peers see the connections close and fail in turn.
    worker, clock = _Rank(plan, device), _Clock(cuda)
    num_layers = int(plan["expert_tokens"].shape[0])
    _maybe_fail(plan)
    runs = [_run_step(worker, clock, num_layers)
            for _ in range(int(plan["warmup"]) + int(plan["repeats"]))]
    measured = runs[int(plan["warmup"]):]
    if any(not np.array_equal(run[1], measured[0][1]) for run in runs):
        raise RuntimeError("byte counts differ between repeats")
    dist.barrier()
    dist.destroy_process_group()
    return {
        "time_s": np.stack([run[0] for run in measured]),
        "byte_counts": measured[0][1],
        "step_time_s": np.array([run[2] for run in measured]),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of one rank; on error prints one line `rank R: Type: message` last."""
    return rank_main(run_rank, argv)


def rank_main(
    work: Callable[[dict[str, Any]], dict[str, np.ndarray]], argv: list[str] | None = None
) -> int:
    """Run `work` on this rank's plan (`PLAN_DIR RANK`), save its arrays as `result{R}.npz`;
    on any failure file `error{R}.txt` (time and one line) for the launcher and return 1."""
    plan_dir, rank = Path((argv or sys.argv[1:])[0]), int((argv or sys.argv[1:])[1])
    try:
        result = work(_load_plan(plan_dir / f"rank{rank}.npz"))
        tmp = plan_dir / f"result{rank}.tmp.npz"
        np.savez(tmp, **result)  # type: ignore[arg-type]
        tmp.replace(plan_dir / f"result{rank}.npz")
    except Exception as exc:  # noqa: BLE001 - any failure ends this rank with one line
        failed_at = time.time()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        line = f"rank {rank}: {type(exc).__name__}: {message}"
        # the launcher blames the rank that failed first: peers fail after it
        report = plan_dir / f"error{rank}.tmp"
        report.write_text(f"{failed_at!r}\n{line}\n")
        report.replace(plan_dir / f"error{rank}.txt")
        traceback.print_exc()
        print(line, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
