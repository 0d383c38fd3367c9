"""RouterTrace: which experts each token chose in each MoE layer, and its `.npz` file format.

A trace holds `experts[L, T, k]` (int16 expert ids, first choice first), optional
`weights[L, T, k]` (float32 gate weights), `seq_id[T]` and `pos[T]` (int32: the sequence a
token belongs to and its position in it), and string metadata (model, source, dataset,
tool, date, provenance). `L` counts MoE layers only (dense layers have no router).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moesim.errors import TraceError

__all__ = ["RouterTrace", "load_trace", "save_trace", "FORMAT_VERSION"]

FORMAT_VERSION = "1"


@dataclass(frozen=True)
class RouterTrace:
    """Per-layer top-k expert choices of T tokens; arrays are validated on construction."""

    experts: np.ndarray  # [L, T, k] int16
    seq_id: np.ndarray  # [T] int32
    pos: np.ndarray  # [T] int32
    weights: np.ndarray | None = None  # [L, T, k] float32
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        experts = np.asarray(self.experts)
        if experts.ndim != 3:
            raise TraceError(
                f"trace field 'experts' must have shape [layers, tokens, k], got {experts.shape}"
            )
        if not np.issubdtype(experts.dtype, np.integer):
            raise TraceError(f"trace field 'experts' must hold integers, got {experts.dtype}")
        if experts.size and experts.min() < 0:
            raise TraceError("trace field 'experts' holds negative expert ids; ids start at 0")
        if experts.size and experts.max() > np.iinfo(np.int16).max:
            raise TraceError("trace field 'experts' holds ids above 32767 (int16)")
        n_layers, n_tokens, top_k = experts.shape
        object.__setattr__(self, "experts", experts.astype(np.int16, copy=False))
        for name in ("seq_id", "pos"):
            arr = np.asarray(getattr(self, name))
            if arr.shape != (n_tokens,):
                raise TraceError(
                    f"trace field '{name}' must have shape [tokens]=({n_tokens},), got {arr.shape}"
                )
            object.__setattr__(self, name, arr.astype(np.int32, copy=False))
        if self.weights is not None:
            weights = np.asarray(self.weights, dtype=np.float32)
            if weights.shape != experts.shape:
                raise TraceError(
                    f"trace field 'weights' must match 'experts' {experts.shape}, "
                    f"got {weights.shape}"
                )
            object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "metadata", {str(k): str(v) for k, v in self.metadata.items()})

    @property
    def num_layers(self) -> int:
        """Number of MoE layers L."""
        return int(self.experts.shape[0])

    @property
    def num_tokens(self) -> int:
        """Number of tokens T."""
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        """Experts chosen per token k."""
        return int(self.experts.shape[2])

    @property
    def max_expert_id(self) -> int:
        """Largest expert id in the trace (-1 when empty)."""
        return int(self.experts.max()) if self.experts.size else -1

    def select_tokens(self, index: np.ndarray) -> RouterTrace:
        """A trace of the tokens at `index` (any integer or boolean index over T)."""
        return RouterTrace(
            experts=self.experts[:, index, :],
            seq_id=self.seq_id[index],
            pos=self.pos[index],
            weights=None if self.weights is None else self.weights[:, index, :],
            metadata=dict(self.metadata),
        )

    def first_layers(self, count: int) -> RouterTrace:
        """A trace of the first `count` MoE layers (all of them when `count` is larger)."""
        return RouterTrace(
            experts=self.experts[:count],
            seq_id=self.seq_id,
            pos=self.pos,
            weights=None if self.weights is None else self.weights[:count],
            metadata=dict(self.metadata),
        )


def save_trace(trace: RouterTrace, path: str | Path) -> None:
    """Write `trace` to a compressed `.npz` (metadata as a JSON string)."""
    arrays: dict[str, np.ndarray] = {
        "experts": trace.experts,
        "seq_id": trace.seq_id,
        "pos": trace.pos,
        "metadata": np.array(json.dumps({"format_version": FORMAT_VERSION, **trace.metadata})),
    }
    if trace.weights is not None:
        arrays["weights"] = trace.weights
    np.savez_compressed(Path(path), **arrays)  # type: ignore[arg-type]


def load_trace(path: str | Path) -> RouterTrace:
    """Read a `.npz` trace, raising TraceError with the file and field on any defect."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {path} does not exist; pass an existing .npz trace")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise TraceError(
            f"trace file {path} is not a readable .npz archive ({exc}); "
            "convert logs with `moesim trace convert`"
        ) from None
    for required in ("experts", "seq_id", "pos"):
        if required not in arrays:
            raise TraceError(
                f"trace file {path} lacks the array '{required}'; "
                "a trace needs experts[L,T,k], seq_id[T] and pos[T]"
            )
    metadata: dict[str, str] = {}
    if "metadata" in arrays:
        try:
            metadata = json.loads(str(arrays["metadata"]))
        except json.JSONDecodeError:
            raise TraceError(f"trace file {path}: 'metadata' is not a JSON string") from None
    try:
        return RouterTrace(
            experts=arrays["experts"],
            seq_id=arrays["seq_id"],
            pos=arrays["pos"],
            weights=arrays.get("weights"),
            metadata=metadata,
        )
    except TraceError as exc:
        raise TraceError(f"trace file {path}: {exc}") from None
