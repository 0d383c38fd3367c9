"""Options: every choice a user names (phase, fidelity, dtype, dedup, ...) as a `Literal` type.

They are checked once, at the edge: the Scenario (pydantic) and the CLI (argparse `choices`
derived from the same types by `choices`) refuse anything else, so code further down takes
them as typed values and never re-checks a string. Byte sizes of the dtypes live here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = [
    "Phase",
    "Fidelity",
    "Dedup",
    "SpVariant",
    "ActDtype",
    "WeightDtype",
    "ComputeDtype",
    "CopyChoice",
    "CollectiveOp",
    "AllreduceAlgorithm",
    "Stream",
    "EplbPolicy",
    "Overlap",
    "A2aImpl",
    "ACT_DTYPE_BYTES",
    "WEIGHT_DTYPE_BYTES",
    "compute_dtype",
    "Precision",
    "choices",
]

Phase = Literal["prefill", "decode"]
Fidelity = Literal["des", "analytic"]
Dedup = Literal["none", "gpu", "node"]
SpVariant = Literal["ring", "allgather"]
ActDtype = Literal["fp32", "bf16", "fp16", "fp8"]
# Weight storage formats: fp8 per-tensor scaled, fp8-block (128x128 block scales, DeepSeek-V3),
# int4 (group-128 bf16 scales, GPTQ/AWQ), nvfp4 (fp8 scale per 16), mxfp4 (e8m0 scale per 32).
WeightDtype = Literal["bf16", "fp16", "fp8", "fp8-block", "int4", "nvfp4", "mxfp4"]
# What an operation's matmuls run on: the tensor-core peak a GPU spec gives per format.
ComputeDtype = Literal["bf16", "fp8", "fp4"]
# How a token picks among the copies of a replicated expert (moesim.traffic.experts).
CopyChoice = Literal["round_robin", "local_first"]
CollectiveOp = Literal["alltoall", "allreduce", "allgather", "reducescatter"]
AllreduceAlgorithm = Literal["ring", "tree", "nvls", "auto"]
# The two streams of a rank: an operation on one may run beside one on the other.
Stream = Literal["compute", "comm"]
# Expert load balancing (moesim.traffic.eplb): none, a greedy baseline, DeepSeek's EPLB.
EplbPolicy = Literal["none", "greedy", "deepseek"]
# Overlap of the MoE all-to-all with compute (moesim.engine.plan): none; shared experts beside
# the dispatch; two-batch overlap (which includes the shared experts').
Overlap = Literal["none", "shared", "tbo"]
# The MoE all-to-all as engines run it (moesim.engine.a2a).
A2aImpl = Literal["direct", "allgather", "deepep-normal", "deepep-ll"]

ACT_DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
# Bytes per stored weight, scales included:
# - fp8: one fp32 scale per tensor (negligible).
# - fp8-block: one fp32 scale per 128x128 block, 1 + 4/16384 (DeepSeek-V3 technical report,
#   arXiv 2412.19437, section 3.3.2 "block-wise quantization ... 128x128").
# - int4: one bf16 scale per group of 128 weights, 0.5 + 2/128 (GPTQ/AWQ default group size).
# - nvfp4: one fp8 (E4M3) scale per 16 weights, 0.5 + 1/16 (NVIDIA, "Introducing NVFP4 for
#   efficient and accurate low-precision inference", developer.nvidia.com blog, 2025).
# - mxfp4: one 8-bit (E8M0) scale per 32 weights, 0.5 + 1/32 = 4.25 bits (OCP Microscaling
#   Formats (MX) v1.0 spec; gpt-oss model card, arXiv 2508.10925: "4.25 bits per parameter").
WEIGHT_DTYPE_BYTES: dict[str, float] = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "fp8-block": 1.0 + 4 / (128 * 128),
    "int4": 0.5 + 2 / 128,
    "nvfp4": 0.5 + 1 / 16,
    "mxfp4": 0.5 + 1 / 32,
}


def compute_dtype(weight_dtype: str, gpu_formats: tuple[str, ...]) -> str:
    """The tensor-core format a GEMM of `weight_dtype` weights runs on, given the formats the GPU
    has peaks for (`gpu_formats`, always with bf16).

    fp8 weights run W8A8 on fp8 tensor cores (activations quantized per token on the fly, as
    vLLM and SGLang run fp8 checkpoints) where the GPU has them, else dequantized at the bf16
    peak (Marlin W8A16 on Ampere). nvfp4 and mxfp4 run on fp4 tensor cores where the GPU has
    them (Blackwell), else dequantized in the kernel at the bf16 peak (W4A16: Marlin, gpt-oss's
    Triton kernels on Hopper). int4 is weight-only everywhere (W4A16).
    """
    if weight_dtype in ("fp8", "fp8-block"):
        return "fp8" if "fp8" in gpu_formats else "bf16"
    if weight_dtype in ("nvfp4", "mxfp4"):
        return "fp4" if "fp4" in gpu_formats else "bf16"
    return "bf16"


def choices(option: Any) -> tuple[str, ...]:
    """The values a Literal option type admits, in order (for argparse `choices`)."""
    return tuple(str(value) for value in get_args(option))


@dataclass(frozen=True)
class Precision:
    """The dtypes of one run: weights outside the experts, routed-expert weights (None: as
    `weight`), activations (and the all-to-all's dispatch), KV cache (None: as `act`)."""

    weight: str = "bf16"
    expert_weight: str | None = None
    act: str = "bf16"
    kv: str | None = None

    @property
    def weight_bytes(self) -> float:
        """Bytes per weight outside the routed experts."""
        return WEIGHT_DTYPE_BYTES[self.weight]

    @property
    def expert_dtype(self) -> str:
        """The routed experts' weight format."""
        return self.expert_weight or self.weight

    @property
    def expert_weight_bytes(self) -> float:
        """Bytes per routed-expert weight, block scales included."""
        return WEIGHT_DTYPE_BYTES[self.expert_dtype]

    @property
    def act_bytes(self) -> int:
        """Bytes per activation."""
        return ACT_DTYPE_BYTES[self.act]

    @property
    def kv_bytes(self) -> int:
        """Bytes per KV-cache value."""
        return ACT_DTYPE_BYTES[self.kv or self.act]
