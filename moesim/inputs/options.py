"""Options: every choice a user names (phase, fidelity, dtype, dedup, ...) as a `Literal` type.

They are checked once, at the edge: the Scenario (pydantic) and the CLI (argparse `choices`
derived from the same types by `choices`) refuse anything else, so code further down takes
them as typed values and never re-checks a string. Byte sizes of the dtypes live here too.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

__all__ = [
    "Phase",
    "Fidelity",
    "Dedup",
    "SpVariant",
    "ActDtype",
    "WeightDtype",
    "CopyChoice",
    "CollectiveOp",
    "AllreduceAlgorithm",
    "Stream",
    "ACT_DTYPE_BYTES",
    "WEIGHT_DTYPE_BYTES",
    "choices",
]

Phase = Literal["prefill", "decode"]
Fidelity = Literal["des", "analytic"]
Dedup = Literal["none", "gpu", "node"]
SpVariant = Literal["ring", "allgather"]
ActDtype = Literal["fp32", "bf16", "fp16", "fp8"]
WeightDtype = Literal["bf16", "fp8"]
# How a token picks among the copies of a replicated expert (moesim.traffic.experts).
CopyChoice = Literal["round_robin", "local_first"]
CollectiveOp = Literal["alltoall", "allreduce", "allgather", "reducescatter"]
AllreduceAlgorithm = Literal["ring", "tree", "nvls", "auto"]
# The two streams of a rank: an operation on one may run beside one on the other.
Stream = Literal["compute", "comm"]

ACT_DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
WEIGHT_DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp8": 1}


def choices(option: Any) -> tuple[str, ...]:
    """The values a Literal option type admits, in order (for argparse `choices`)."""
    return tuple(str(value) for value in get_args(option))
