"""Kernel profiles: a serving engine's kernels per GPU, as efficiency curves (data, not code).

A profile (`moesim/presets/kernels/<name>.yaml`, or a user's YAML file) names one serving
engine's kernel families and, per GPU (`GpuSpec.kernel_key`), one `KernelCurves` per op kind:

- `moe`: the grouped / fused expert GEMMs of a SwiGLU MoE layer (gate-up and down GEMMs and
  the activation between them); x = tokens per expert that got any.
- `gemm`: a dense GEMM (attention projections, dense FFNs, shared experts, router, LM head);
  x = M, the rows (tokens).
- `attention_prefill`: causal attention over a prompt (FlashAttention-style); x = keys each
  query attends to on average (about half the sequence for a whole causal prompt).
- `attention_decode`: paged attention of one new token per sequence over its KV cache;
  x = KV tokens read per sequence. MLA uses `mla_decode` where a profile gives it.
- `elementwise`: norms, rotary, residual adds, activations, top-k; x = bytes moved.

The time of an op is `launch_s + max(compute_s, memory_s)` per GEMM, where compute_s runs the
op's FLOPs (rounded up to whole tiles and whole waves of SMs) at `compute(x)` of the
tensor-core peak of its format, and memory_s its bytes at `memory(x)` of DRAM bandwidth
(moesim.engine.kernels). An op kind a profile leaves out, or a GPU it has no entry for, is
costed by the roofline of the GPU spec (one efficiency each), as before profiles existed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from moesim.errors import ConfigError
from moesim.inputs.config import load_model_file

if TYPE_CHECKING:  # numpy is imported where curves are read, so parsing a topology needs none
    import numpy as np

__all__ = [
    "OpKind",
    "OP_KINDS",
    "Curve",
    "KernelCurves",
    "GpuKernels",
    "KernelProfile",
    "PROFILE_DIR",
    "list_kernel_profiles",
    "load_kernel_profile",
]

OpKind = Literal["moe", "gemm", "attention_prefill", "attention_decode", "mla_decode",
                 "elementwise"]
OP_KINDS: tuple[str, ...] = ("moe", "gemm", "attention_prefill", "attention_decode",
                             "mla_decode", "elementwise")
PROFILE_DIR = Path(__file__).parent.parent / "presets" / "kernels"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Curve(_Frozen):
    """A fraction by a size: `[[x, fraction], ...]` with x increasing, interpolated linearly
    in log x and held constant beyond the ends."""

    points: tuple[tuple[float, float], ...] = Field(min_length=1)

    @field_validator("points")
    @classmethod
    def _check(cls, points: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        xs = [x for x, _ in points]
        if any(x <= 0 for x in xs) or any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
            raise ValueError("x must be > 0 and strictly increasing")
        if any(not 0 < f <= 1 for _, f in points):
            raise ValueError("every fraction must be in (0, 1]")
        return points

    def at(self, x: object) -> np.ndarray:
        """The fraction at x (a number or an array)."""
        import numpy as np

        xs = np.log(np.array([p[0] for p in self.points]))
        ys = np.array([p[1] for p in self.points])
        where = np.log(np.maximum(np.asarray(x, dtype=np.float64), 1e-300))
        return np.interp(where, xs, ys)


def constant(fraction: float) -> Curve:
    """A flat curve."""
    return Curve(points=((1.0, fraction),))


class KernelCurves(_Frozen):
    """One kernel family on one GPU: fixed cost, tile shape and efficiency curves."""

    family: str = Field(description="the kernel, e.g. triton-fused-moe, cublas, flash-attn-2")
    launch_s: float = Field(ge=0, description="fixed cost of one op (all its launches)")
    tile_m: tuple[tuple[float, int], ...] = Field(
        default=((1.0, 1),), description="[[x_from, rows per tile], ...]: the tile a kernel "
        "picks from x up (tokens per expert or M round up to it)")
    tile_n: int = Field(default=1, ge=1, description="output columns per tile")
    grouped: bool = Field(default=True, description="moe: one kernel over all experts (False: "
                          "one GEMM per expert, each with its own roofline)")
    compute: Curve = Field(description="fraction of the format's tensor-core peak, by x")
    memory: Curve = Field(description="fraction of DRAM bandwidth, by x")
    sources: tuple[str, ...] = ()

    @field_validator("tile_m")
    @classmethod
    def _check_tiles(cls, tiles: tuple[tuple[float, int], ...]) -> tuple[tuple[float, int], ...]:
        xs = [x for x, _ in tiles]
        increasing = all(b > a for a, b in zip(xs, xs[1:], strict=False))
        if not tiles or not increasing or any(m < 1 for _, m in tiles):
            raise ValueError("tile_m needs [x_from, rows >= 1] pairs with x_from increasing")
        return tiles

    def tile_rows(self, x: object) -> np.ndarray:
        """Rows per tile the kernel uses at size x."""
        import numpy as np

        xs = np.array([t[0] for t in self.tile_m])
        rows = np.array([t[1] for t in self.tile_m])
        index = np.searchsorted(xs, np.asarray(x, dtype=np.float64), side="right") - 1
        return rows[np.clip(index, 0, len(rows) - 1)]


class GpuKernels(_Frozen):
    """Every op kind a profile covers on one GPU (a missing one: the roofline)."""

    moe: KernelCurves | None = None
    gemm: KernelCurves | None = None
    attention_prefill: KernelCurves | None = None
    attention_decode: KernelCurves | None = None
    mla_decode: KernelCurves | None = None
    elementwise: KernelCurves | None = None

    def curves(self, kind: str) -> KernelCurves | None:
        """The curves of op kind `kind` (MLA decode falls back on attention decode)."""
        found: KernelCurves | None = getattr(self, kind)
        if found is None and kind == "mla_decode":
            return self.attention_decode
        return found


class KernelProfile(_Frozen):
    """A serving engine's kernels: per GPU key, curves per op kind."""

    name: str
    description: str = ""
    sources: tuple[str, ...] = ()
    gpus: dict[str, GpuKernels] = Field(default_factory=dict)

    def for_gpu(self, key: str | None) -> GpuKernels | None:
        """The entry of GPU `key`, or None."""
        return None if key is None else self.gpus.get(key)


def list_kernel_profiles() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


_CACHE: dict[str, KernelProfile] = {}


def load_kernel_profile(name_or_path: str | Path) -> KernelProfile:
    """A shipped profile by name (vllm, sglang, trtllm) or a profile YAML file."""
    key = str(name_or_path)
    if key in _CACHE:
        return _CACHE[key]
    path = Path(key)
    if not path.is_file():
        preset = PROFILE_DIR / f"{key}.yaml"
        if not preset.is_file():
            raise ConfigError(
                f"unknown kernel profile '{key}'; give one of {', '.join(list_kernel_profiles())}, "
                "roofline, auto, or a profile YAML file (moesim calibrate kernels -o writes one)")
        path = preset
    profile = load_model_file(KernelProfile, path, "kernel profile")
    _CACHE[key] = profile
    return profile
