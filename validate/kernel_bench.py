"""Kernel microbenchmarks with torch, the measurements `moesim calibrate kernels` fits.

On a GPU (`device="cuda"`) it times bf16 GEMMs over M at the model's shapes (and fp8 ones where
torch has `_scaled_mm` and the GPU fp8), a grouped MoE layer at the model's expert shape over
tokens per expert (torch's per-expert loop: the `torch-loop` kernel family; import a serving
engine's own kernel times with `--from-csv`), and causal attention prefill and decode over
context (`scaled_dot_product_attention`). On a CPU the same code runs at small sizes (CI).
Rows come back as `KernelRow`s in the documented CSV format (moesim.calibrate.kernels).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from moesim.calibrate.kernels import KernelRow
from moesim.inputs.models import ModelSpec

__all__ = ["run_kernel_bench"]


def _timer(device: str) -> Callable[[Callable[[], Any], int], float]:
    import torch

    def timed(fn: Callable[[], Any], repeats: int) -> float:
        fn()  # warm-up (and compile/autotune)
        if device == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end)) / 1e3 / repeats
        begin = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - begin) / repeats

    return timed


def run_kernel_bench(model: ModelSpec, *, device: str = "cpu", quick: bool = False,
                     progress: Callable[[str], None] = lambda _: None) -> list[KernelRow]:
    """Time GEMMs, the grouped MoE layer and attention of `model` on `device`."""
    import torch

    small = device == "cpu"
    scale = 16 if small else 1  # CPU: shapes divided so CI runs in seconds
    hidden = max(model.hidden_size // scale, 64)
    ffn = max(model.expert_ffn_size // scale, 64)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    repeats = 3 if small else 20
    timed = _timer(device)
    rows: list[KernelRow] = []
    token_counts = [1, 4, 16, 64, 256] if (small or quick) else [1, 2, 4, 8, 16, 32, 64, 128,
                                                                  256, 512, 1024, 2048, 4096]

    def rand(*shape: int) -> Any:
        return torch.randn(*shape, device=device, dtype=dtype)

    for n, k in ((2 * ffn, hidden), (hidden, ffn)):
        weight = rand(k, n)
        for m in token_counts:
            x = rand(m, k)
            seconds = timed(partial(torch.matmul, x, weight), repeats)
            rows.append(KernelRow("gemm", {"m": m, "n": n, "k": k, "time_s": seconds}, "bf16",
                                  {"kernel": "torch.matmul"}))
        progress(f"gemm {k}x{n}: {len(token_counts)} sizes")
    experts = model.num_experts if not small else min(model.num_experts, 8)
    top_k = min(model.top_k, experts)
    w13 = [rand(hidden, 2 * ffn) for _ in range(experts)]
    w2 = [rand(ffn, hidden) for _ in range(experts)]
    for tokens in token_counts:
        per = max(tokens * top_k // experts, 1)
        xs = [rand(per, hidden) for _ in range(experts)]

        def layer(xs: list[Any] = xs) -> None:
            for e in range(experts):
                gate, up = (xs[e] @ w13[e]).chunk(2, dim=-1)
                (torch.nn.functional.silu(gate) * up) @ w2[e]

        rows.append(KernelRow("moe", {"tokens": per * experts / top_k, "experts": experts,
                                      "top_k": top_k, "hidden": hidden, "ffn": ffn,
                                      "time_s": timed(layer, repeats)}, "bf16",
                              {"kernel": "torch-loop"}))
    progress(f"moe: {len(token_counts)} token counts over {experts} experts")
    heads = max(model.heads_per_rank(1) // (4 if small else 1), 1)
    kv_heads = heads
    dim = model.head_dim
    contexts = [64, 128, 256] if (small or quick) else [512, 1024, 2048, 4096, 8192, 16384]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for seq in contexts:
        q = rand(1, heads, seq, dim)
        seconds = timed(partial(sdpa, q, q, q, is_causal=True), repeats)
        rows.append(KernelRow("attention_prefill", {"batch": 1, "seq_len": seq, "heads": heads,
                                                    "kv_heads": kv_heads, "head_dim": dim,
                                                    "time_s": seconds}, "bf16",
                              {"kernel": "sdpa"}))
        batch = 8 if small else 32
        q1, kv = rand(batch, heads, 1, dim), rand(batch, kv_heads, seq, dim)
        seconds = timed(partial(sdpa, q1, kv, kv), repeats)
        rows.append(KernelRow("attention_decode", {"batch": batch, "context": seq,
                                                   "heads": heads, "kv_heads": kv_heads,
                                                   "head_dim": dim, "time_s": seconds}, "bf16",
                              {"kernel": "sdpa"}))
    progress(f"attention: {len(contexts)} contexts")
    return rows
