"""RouterTrace: which experts each token chose in each MoE layer, and its `.npz` file format.

A trace holds `experts[L, T, k]` (int16 expert ids, first choice first), optional
`weights[L, T, k]` (float32 gate weights), `seq_id[T]` and `pos[T]` (int32: the sequence a
token belongs to and its position in it), and string metadata (model, source, dataset,
tool, date, provenance). `L` counts MoE layers only (dense layers have no router).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moesim.errors import TraceError

__all__ = ["RouterTrace", "load_trace", "save_trace", "read_npz", "repeated_expert",
           "FORMAT_VERSION"]

FORMAT_VERSION = "1"
_INT16_MAX = int(np.iinfo(np.int16).max)
_INT32_MAX = int(np.iinfo(np.int32).max)


def _integers(name: str, value: object, high: int, what: str,
              whole_floats: bool = False) -> np.ndarray:
    """`value` as an integer array with entries in 0..high, or a TraceError naming the field
    (never a silent wrap when it is later stored as int16 / int32). With `whole_floats`, a
    float array of whole numbers (np.zeros(T)) is taken as integers; NaN or 0.5 is not."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise TraceError(f"trace field '{name}' cannot be read as an array") from None
    if whole_floats and arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise TraceError(f"trace field '{name}' must hold integers, got {arr.dtype} with "
                             "NaN, infinite or fractional values")
        if arr.size and (arr.min() < 0 or arr.max() > high):
            raise TraceError(f"trace field '{name}' holds {what} outside 0..{high}")
        return arr.astype(np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TraceError(f"trace field '{name}' must hold integers, got {arr.dtype}")
    if arr.size:
        low, top = int(arr.min()), int(arr.max())
        if low < 0:
            raise TraceError(f"trace field '{name}' holds negative {what} ({low}); "
                             f"{what} start at 0")
        if top > high:
            bits = 16 if high == _INT16_MAX else 32
            raise TraceError(f"trace field '{name}' holds {what} above {high} ({top}), "
                             f"beyond int{bits}")
    return arr


@dataclass(frozen=True)
class RouterTrace:
    """Per-layer top-k expert choices of T tokens; arrays are validated on construction."""

    experts: np.ndarray  # [L, T, k] int16
    seq_id: np.ndarray  # [T] int32
    pos: np.ndarray  # [T] int32
    weights: np.ndarray | None = None  # [L, T, k] float32
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        experts = _integers("experts", self.experts, _INT16_MAX, "expert ids")
        if experts.ndim != 3:
            raise TraceError(
                f"trace field 'experts' must have shape [layers, tokens, k], got {experts.shape}"
            )
        n_layers, n_tokens, top_k = experts.shape
        if top_k == 0:
            raise TraceError(f"trace field 'experts' has shape {experts.shape}: k = 0 experts "
                             "per token; a trace needs k >= 1 (shape [layers, tokens, k])")
        object.__setattr__(self, "experts", experts.astype(np.int16, copy=False))
        for name, what in (("seq_id", "sequence ids"), ("pos", "positions")):
            arr = _integers(name, getattr(self, name), _INT32_MAX, what, whole_floats=True)
            if arr.shape != (n_tokens,):
                raise TraceError(
                    f"trace field '{name}' must have shape [tokens]=({n_tokens},), got {arr.shape}"
                )
            object.__setattr__(self, name, arr.astype(np.int32, copy=False))
        if self.weights is not None:
            try:
                weights = np.asarray(self.weights, dtype=np.float32)
            except (TypeError, ValueError):
                raise TraceError("trace field 'weights' must hold numbers (gate weights), got "
                                 f"{np.asarray(self.weights).dtype}") from None
            if weights.shape != experts.shape:
                raise TraceError(
                    f"trace field 'weights' must match 'experts' {experts.shape}, "
                    f"got {weights.shape}"
                )
            bad = ~(np.isfinite(weights) & (weights >= 0))
            if bad.any():
                layer, token, slot = (int(v) for v in np.argwhere(bad)[0])
                raise TraceError(f"trace field 'weights' holds {weights[layer, token, slot]} "
                                 f"(layer {layer}, token {token}); gate weights are finite "
                                 "and >= 0")
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
        index = np.asarray(index)
        if index.dtype != bool:  # np.take along the token axis: ~10x faster than [:, index, :]
            index = index.astype(np.int64, copy=False)
            return self.derived(
                np.take(self.experts, index, axis=1), np.take(self.seq_id, index),
                np.take(self.pos, index),
                None if self.weights is None else np.take(self.weights, index, axis=1))
        return self.derived(
            self.experts[:, index, :], self.seq_id[index], self.pos[index],
            None if self.weights is None else self.weights[:, index, :])

    def first_layers(self, count: int) -> RouterTrace:
        """A trace of the first `count` MoE layers (all of them when `count` is larger)."""
        return self.derived(self.experts[:count], self.seq_id, self.pos,
                            None if self.weights is None else self.weights[:count])

    def derived(self, experts: np.ndarray, seq_id: np.ndarray, pos: np.ndarray,
                weights: np.ndarray | None) -> RouterTrace:
        """A trace whose expert ids and weights are a selection of this (validated) trace's,
        so their values need no check again; shapes are checked, and `seq_id` / `pos` (made by
        the caller) are validated as on construction. Per-step workloads cut traces this way:
        re-validating every step's expert ids and weights was a quarter of a warm estimate."""
        if experts.ndim != 3 or (weights is not None and weights.shape != experts.shape):
            raise TraceError(f"a selection of a trace must keep [layers, tokens, k] arrays, got "
                             f"experts {experts.shape}")
        trace = object.__new__(RouterTrace)
        fields: dict[str, object] = {"experts": experts.astype(np.int16, copy=False),
                  "weights": None if weights is None else weights.astype(np.float32, copy=False),
                  "metadata": dict(self.metadata)}
        for name, value, what in (("seq_id", seq_id, "sequence ids"), ("pos", pos, "positions")):
            arr = _integers(name, value, _INT32_MAX, what, whole_floats=True)
            if arr.shape != (experts.shape[1],):
                raise TraceError(f"trace field '{name}' must have shape [tokens]="
                                 f"({experts.shape[1]},), got {arr.shape}")
            fields[name] = arr.astype(np.int32, copy=False)
        for name, field_value in fields.items():
            object.__setattr__(trace, name, field_value)
        return trace


def save_trace(trace: RouterTrace, path: str | Path) -> None:
    """Write `trace` to a compressed `.npz` (metadata as a JSON string) at exactly `path` (no
    `.npz` appended), whole or not at all: written to a temporary file beside it, then renamed
    into place, so an interruption never leaves a truncated trace. The folder must exist.

    (moesim.output.files.write_npz_atomic does the same, but the trace stage comes before the
    output stage and imports nothing from it.)"""
    arrays: dict[str, np.ndarray] = {
        "experts": trace.experts,
        "seq_id": trace.seq_id,
        "pos": trace.pos,
        "metadata": np.array(json.dumps({"format_version": FORMAT_VERSION, **trace.metadata})),
    }
    if trace.weights is not None:
        arrays["weights"] = trace.weights
    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    mask = os.umask(0)  # the permissions a plain open() gives, not mkstemp's owner-only
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    try:
        with os.fdopen(handle, "wb") as out:  # a file object: numpy appends no suffix
            np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_trace(path: str | Path) -> RouterTrace:
    """Read a `.npz` trace, raising TraceError with the file and field on any defect."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {path} does not exist; pass an existing .npz trace")
    arrays = read_npz(path, f"trace file {path}", "convert logs with `moesim trace convert`")
    for required in ("experts", "seq_id", "pos"):
        if required not in arrays:
            raise TraceError(
                f"trace file {path} lacks the array '{required}'; "
                "a trace needs experts[L,T,k], seq_id[T] and pos[T]"
            )
    metadata = _read_metadata(arrays["metadata"], path) if "metadata" in arrays else {}
    try:
        trace = RouterTrace(
            experts=arrays["experts"],
            seq_id=arrays["seq_id"],
            pos=arrays["pos"],
            weights=arrays.get("weights"),
            metadata=metadata,
        )
    except TraceError as exc:
        raise TraceError(f"trace file {path}: {exc}") from None
    if not trace.num_layers or not trace.num_tokens:
        raise TraceError(f"trace file {path}: array 'experts' has shape {trace.experts.shape}; "
                         "a trace needs at least one MoE layer and one token")
    repeat = repeated_expert(trace.experts)
    problem = f"array 'experts': {repeat}" if repeat else _metadata_problem(trace)
    if problem:
        raise TraceError(f"trace file {path}: {problem}")
    return trace


def _metadata_problem(trace: RouterTrace) -> str | None:
    """The metadata keys moesim reads back, checked against the arrays, or None:
    `num_experts` (a whole number covering every expert id) and `prompt_lens` (a JSON list of
    prompt lengths, one per sequence id)."""
    meta = trace.metadata
    if "num_experts" in meta:
        text = meta["num_experts"]
        if not text.isdigit() or not trace.max_expert_id < int(text) <= _INT16_MAX + 1:
            return (f"metadata num_experts {text[:20]!r} must be a whole number in "
                    f"{trace.max_expert_id + 1}..{_INT16_MAX + 1} (above the largest expert id "
                    f"{trace.max_expert_id}); fix or drop it")
    if "prompt_lens" in meta:
        try:
            lens = json.loads(meta["prompt_lens"])
        except (ValueError, RecursionError):
            lens = None
        if (not isinstance(lens, list) or len(lens) <= int(trace.seq_id.max())
                or not all(isinstance(n, int) and not isinstance(n, bool)
                           and 0 <= n <= _INT32_MAX for n in lens)):
            return (f"metadata prompt_lens must be a JSON list of prompt lengths (whole numbers "
                    f">= 0), one per sequence id 0..{int(trace.seq_id.max())}")
    return None


def repeated_expert(experts: np.ndarray) -> str | None:
    """Where a token lists one expert twice among its top-k in `experts[L, T, k]`, or None:
    a router picks k distinct experts, so a repeat is a corrupt or mis-built trace."""
    if experts.shape[-1] < 2 or not experts.size:
        return None
    ordered = np.sort(experts, axis=-1)
    same = ordered[..., 1:] == ordered[..., :-1]
    if not same.any():
        return None
    layer, token, slot = (int(v) for v in np.argwhere(same)[0])
    return (f"token {token} of MoE layer {layer} lists expert {int(ordered[layer, token, slot])} "
            f"twice in its top-{experts.shape[-1]} ({experts[layer, token].tolist()}); "
            "a router picks distinct experts")


def _read_metadata(value: np.ndarray, path: Path) -> dict[str, str]:
    """The 'metadata' array: a 0-d string holding a JSON object of scalar values."""
    if value.shape != () or value.dtype.kind != "U":
        raise TraceError(f"trace file {path}: array 'metadata' must be one JSON string, got "
                         f"{value.dtype} of shape {value.shape}")
    try:
        metadata = json.loads(str(value))
    except (ValueError, RecursionError):
        raise TraceError(f"trace file {path}: array 'metadata' is not a JSON string") from None
    if not isinstance(metadata, dict):
        raise TraceError(f"trace file {path}: array 'metadata' must be a JSON object of "
                         f"strings, got {type(metadata).__name__}")
    for key, item in metadata.items():
        if isinstance(item, (dict, list)) or item is None:
            raise TraceError(f"trace file {path}: metadata key '{key}' must be a string, "
                             f"got {type(item).__name__}")
    version = str(metadata.get("format_version", FORMAT_VERSION))
    if version != FORMAT_VERSION:
        raise TraceError(f"trace file {path}: format_version {version!r} is not "
                         f"{FORMAT_VERSION!r}, the one this moesim reads; upgrade moesim or "
                         "rewrite the trace")
    return metadata


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, RuntimeError, NotImplementedError,
               zipfile.BadZipFile, zlib.error)


def read_npz(path: Path, source: str, hint: str) -> dict[str, np.ndarray]:
    """Every array of a `.npz` archive (no pickles), or one TraceError that starts with `source`
    and names the array it could not read; `hint` says what to pass instead."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise TraceError(f"{source} cannot be read: {exc.strerror}") from None
    if head.startswith(_NPY_MAGIC):
        raise TraceError(f"{source} is not a readable .npz archive: it is a single .npy "
                         f"array, not an archive of named arrays; {hint}")
    if not head.startswith(_ZIP_MAGIC):
        raise TraceError(f"{source} is not a readable .npz archive (not a zip file); {hint}")
    arrays: dict[str, np.ndarray] = {}
    name = ""
    try:
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                value = data[name]
                if not isinstance(value, np.ndarray):  # a zip member that is not .npy
                    raise ValueError("not a .npy array")
                arrays[name] = value
    except _NPZ_ERRORS as exc:
        which = f"array '{name}' " if name else ""
        raise TraceError(f"{source}: {which}cannot be read ({type(exc).__name__}: {exc}); "
                         f"{hint}") from None
    return arrays
