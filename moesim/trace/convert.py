"""Importing router logs into a RouterTrace: vLLM JSONL dumps, HF router logits, exp_ids arrays.

Each importer returns `(trace, report)`: the trace with metadata (model, source, dataset,
tool, date, provenance) and a `ConvertReport` saying how many tokens were kept and dropped.
A token is kept only when every MoE layer logged it; a trace never holds invented choices.
Malformed input raises one TraceError naming the file and the line (JSONL) or array index.

Formats:
- `vllm-jsonl`: one JSON object per (token, layer) with `dataset`, `problem_id`, `layer`,
  `token_idx`, `experts` (first choice first) and `gating_probs`; pos = `token_idx`.
- `vllm-raw-jsonl`: the same fields with `token_pos`, the token's row inside its forward
  batch, instead of `token_idx`. Rows arrive forward pass by forward pass, layer-major inside
  a pass (all rows of layer 0, then layer 1...). A new pass starts where the sequence changes
  or (layer, token_pos) stops increasing. A pass of n rows-per-layer covers n new positions:
  the first pass of a sequence is its prefill (prompt_len = n), each later pass is a decode
  step. Limitation: a pass missing its last layers directly followed by one missing its first
  layers cannot be told apart from a single pass.
- `hf-router-logits`: per-layer `[tokens, experts]` (or `[batch, seq, experts]`) router logits
  as transformers returns with `output_router_logits=True`, saved as `.pt` (torch.save of the
  tuple) or `.npz` (`layer_0..layer_{L-1}`, or one stacked `router_logits`); optional `seq_id`
  and `pos` arrays in the `.npz` override the defaults (batch row, index in row). Padding
  tokens are not removed.
- `exp-ids`: an integer array `exp_ids[tokens, k, layers]` in `.npy` or `.npz`.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import TraceError
from moesim.inputs.models import SIZE_LIMITS
from moesim.trace.format import RouterTrace, read_npz, repeated_expert, save_trace

__all__ = [
    "FORMATS",
    "ConvertReport",
    "from_vllm_jsonl",
    "from_vllm_raw_jsonl",
    "from_hf_router_logits",
    "from_exp_ids",
    "convert_file",
    "is_prefill",
    "load_router_logits",
    "topk_softmax",
]

FORMATS = ("vllm-jsonl", "vllm-raw-jsonl", "hf-router-logits", "exp-ids")
TOOL = "moesim trace convert"
_INT16_MAX = int(np.iinfo(np.int16).max)
_INT32_MAX = int(np.iinfo(np.int32).max)
_MAX_LAYER = SIZE_LIMITS["num_layers"] - 1  # a MoE layer index, below ModelSpec's block limit


@dataclass(frozen=True)
class ConvertReport:
    """What one import read, kept and dropped (tokens lacking a layer are dropped)."""

    source: str
    fmt: str
    num_layers: int
    num_tokens: int
    top_k: int
    records: int
    dropped_tokens: int
    dropped: tuple[str, ...] = ()  # "sequence:pos" of each dropped token
    output: str | None = None
    elapsed_s: float = 0.0

    def summary(self) -> str:
        """A few human lines for the CLI."""
        lines = [
            f"read {self.records} records from {self.source} ({self.fmt})",
            f"kept {self.num_tokens} tokens x {self.num_layers} layers, top-{self.top_k}",
            f"dropped {self.dropped_tokens} tokens lacking some layer"
            + (f": {', '.join(self.dropped[:10])}" if self.dropped else ""),
        ]
        if self.output:
            lines.append(f"wrote {self.output} in {self.elapsed_s:.2f} s")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Rows:
    """Validated JSONL records as arrays, one entry per (token, layer) line."""

    line: np.ndarray  # [N] 1-based line numbers
    seq: np.ndarray  # [N] sequence index, order of first appearance
    index: np.ndarray  # [N] token_idx or token_pos
    layer: np.ndarray  # [N]
    experts: np.ndarray  # [N, k]
    weights: np.ndarray  # [N, k]
    seq_names: tuple[str, ...]
    datasets: tuple[str, ...]


def _metadata(fmt: str, path: Path, model: str | None, dataset: str, provenance: str,
              **extra: Any) -> dict[str, str]:
    """The metadata every importer writes."""
    meta = {
        "model": model or "unknown",
        "source": f"{fmt}:{path.name}",
        "dataset": dataset,
        "tool": TOOL,
        "date": datetime.date.today().isoformat(),
        "provenance": provenance,
    }
    meta.update({key: str(value) for key, value in extra.items() if value is not None})
    return meta


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_record(rec: Any, index_key: str, top_k: int | None, where: str) -> int:
    """Validate one JSONL record; return its k."""
    if not isinstance(rec, dict):
        raise TraceError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for key in ("dataset", "problem_id", "layer", index_key, "experts", "gating_probs"):
        if key not in rec:
            raise TraceError(f"{where}: missing key '{key}'; each line needs dataset, "
                             f"problem_id, layer, {index_key}, experts, gating_probs")
    for key, high in (("layer", _MAX_LAYER), (index_key, _INT32_MAX)):
        if not _is_int(rec[key]) or rec[key] < 0:
            raise TraceError(f"{where}: '{key}' must be a non-negative integer, "
                             f"got {_short(rec[key])}")
        if rec[key] > high:  # stored as int32 (positions) or sizing the [L, T, k] array
            raise TraceError(f"{where}: '{key}' {_short(rec[key])} is above {high}, the "
                             f"largest {key} moesim stores")
    experts, probs = rec["experts"], rec["gating_probs"]
    if not isinstance(experts, list) or not experts or not all(_is_int(e) for e in experts):
        raise TraceError(f"{where}: 'experts' must be a non-empty list of integer ids, "
                         f"got {_short(experts)}")
    if top_k is not None and len(experts) != top_k:
        raise TraceError(f"{where}: 'experts' has {len(experts)} ids but earlier lines have "
                         f"{top_k}; every line needs the same top-k")
    if min(experts) < 0 or max(experts) > _INT16_MAX:
        raise TraceError(f"{where}: 'experts' {_short(experts)} holds an id outside "
                         f"0..{_INT16_MAX}")
    if len(set(experts)) != len(experts):
        raise TraceError(f"{where}: 'experts' {experts} lists an expert twice; a router "
                         "picks distinct experts")
    if (not isinstance(probs, list) or len(probs) != len(experts)
            or not all(_is_probability(p) for p in probs)):
        raise TraceError(f"{where}: 'gating_probs' must be {len(experts)} finite numbers "
                         f">= 0 matching 'experts', got {_short(probs)}")
    return len(experts)


def _short(value: Any) -> str:
    """A repr cut to a readable length (a record can hold a huge value)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_probability(value: Any) -> bool:
    """A finite number >= 0 (a gate probability or score; huge ints are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:
        return False


def _read_jsonl(path: Path, index_key: str) -> _Rows:
    """Parse and validate a routing JSONL file (one record per line)."""
    if not path.is_file():
        raise TraceError(f"{path} does not exist; pass an existing JSONL routing log")
    seq_of: dict[tuple[str, str], int] = {}
    cols: dict[str, list[Any]] = {k: [] for k in ("line", "seq", "index", "layer", "e", "w")}
    top_k: int | None = None
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            if b"\0" in raw:
                raise TraceError(f"{where}: holds NUL bytes: a binary file, not a JSONL log")
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise TraceError(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                                 f"column {exc.start + 1}); save the log as UTF-8") from None
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{where}: not valid JSON ({exc.msg}); "
                                 "each line must be one JSON object") from None
            except ValueError:  # Python reads no integer of more than 4300 digits
                raise TraceError(f"{where}: holds an integer of thousands of digits; ids, "
                                 "layers and positions must be small integers") from None
            except RecursionError:
                raise TraceError(f"{where}: nests lists too deeply; each line must be one "
                                 "flat JSON object") from None
            top_k = _check_record(rec, index_key, top_k, where)
            name = (str(rec["dataset"]), str(rec["problem_id"]))
            cols["line"].append(lineno)
            cols["seq"].append(seq_of.setdefault(name, len(seq_of)))
            cols["index"].append(rec[index_key])
            cols["layer"].append(rec["layer"])
            cols["e"].append(rec["experts"])
            cols["w"].append(rec["gating_probs"])
    if top_k is None:
        raise TraceError(f"{path}: holds no records; expected one JSON object per line")
    return _Rows(
        line=np.asarray(cols["line"], dtype=np.int64),
        seq=np.asarray(cols["seq"], dtype=np.int64),
        index=np.asarray(cols["index"], dtype=np.int64),
        layer=np.asarray(cols["layer"], dtype=np.int64),
        experts=np.asarray(cols["e"], dtype=np.int16),
        weights=np.asarray(cols["w"], dtype=np.float32),
        seq_names=tuple(f"{d}/{p}" for d, p in seq_of),
        datasets=tuple(dict.fromkeys(d for d, _ in seq_of)),
    )


def _token_numbers(seq: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number (seq, pos) keys by first appearance; return per-row token and first row per token."""
    key = seq * (int(pos.max()) + 1) + pos
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse.reshape(-1)], first[order]


def _assemble(rows: _Rows, pos: np.ndarray, path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Scatter rows into [L, T, k] arrays; drop tokens lacking a layer."""
    n_layers = int(rows.layer.max()) + 1
    missing = np.setdiff1d(np.arange(n_layers), rows.layer)
    if missing.size:
        raise TraceError(f"{path}: no record has layer {int(missing[0])} ({missing.size} of "
                         f"layers 0..{n_layers - 1} never appear); a token is kept only when "
                         "every MoE layer 0..L-1 logged it, so every layer must be logged")
    token, first_row = _token_numbers(rows.seq, pos)
    n_all = first_row.size
    cell = token * n_layers + rows.layer
    order = np.argsort(cell, kind="stable")
    repeated = order[1:][cell[order][1:] == cell[order][:-1]]
    if repeated.size:
        row = int(repeated.min())
        raise TraceError(f"{path}:{rows.line[row]}: a second record for layer "
                         f"{rows.layer[row]} of token {rows.seq_names[rows.seq[row]]}:{pos[row]}; "
                         "each (token, layer) must appear once")
    keep = np.bincount(token, minlength=n_all) == n_layers
    if not keep.any():
        raise TraceError(f"{path}: no token was logged in all {n_layers} layers; a trace "
                         "holds only tokens every MoE layer logged")
    # Arrays of the kept tokens only: at most one cell per record, whatever the layer gaps.
    new_index = np.cumsum(keep) - 1
    kept_rows = keep[token]
    top_k = rows.experts.shape[1]
    experts = np.zeros((n_layers, int(keep.sum()), top_k), dtype=np.int16)
    weights = np.zeros(experts.shape, dtype=np.float32)
    experts[rows.layer[kept_rows], new_index[token[kept_rows]]] = rows.experts[kept_rows]
    weights[rows.layer[kept_rows], new_index[token[kept_rows]]] = rows.weights[kept_rows]
    tok_seq, tok_pos = rows.seq[first_row], pos[first_row]
    dropped = [f"{rows.seq_names[s]}:{p}"
               for s, p in zip(tok_seq[~keep], tok_pos[~keep], strict=True)]
    arrays = {
        "experts": experts,
        "weights": weights,
        "seq_id": tok_seq[keep],
        "pos": tok_pos[keep],
    }
    return arrays, dropped


def _report(path: Path, fmt: str, trace: RouterTrace, records: int,
            dropped: list[str]) -> ConvertReport:
    return ConvertReport(source=str(path), fmt=fmt, num_layers=trace.num_layers,
                         num_tokens=trace.num_tokens, top_k=trace.top_k, records=records,
                         dropped_tokens=len(dropped), dropped=tuple(dropped))


def from_vllm_jsonl(path: str | Path, model: str | None = None, dataset: str | None = None,
                    provenance: str = "", num_experts: int | None = None,
                    ) -> tuple[RouterTrace, ConvertReport]:
    """Import a per-(token, layer) vLLM routing JSONL (decode tokens, pos = token_idx)."""
    path = Path(path)
    rows = _read_jsonl(path, "token_idx")
    arrays, dropped = _assemble(rows, rows.index, path)
    meta = _metadata("vllm-jsonl", path, model, dataset or ",".join(rows.datasets), provenance,
                     num_experts=num_experts, phase="decode", dropped_tokens=len(dropped),
                     sequences=json.dumps(rows.seq_names))
    trace = RouterTrace(metadata=meta, **arrays)
    return trace, _report(path, "vllm-jsonl", trace, rows.line.size, dropped)


def _forward_passes(rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Per row its position in the sequence; per sequence its prompt length (first pass)."""
    seq, layer, row_in_batch = rows.seq, rows.layer, rows.index
    new = np.ones(seq.size, dtype=bool)
    new[1:] = ((seq[1:] != seq[:-1]) | (layer[1:] < layer[:-1])
               | ((layer[1:] == layer[:-1]) & (row_in_batch[1:] <= row_in_batch[:-1])))
    starts = np.flatnonzero(new)
    pass_of_row = np.cumsum(new) - 1
    pass_tokens = np.maximum.reduceat(row_in_batch, starts) + 1  # positions each pass covers
    pass_seq = seq[starts]
    order = np.argsort(pass_seq, kind="stable")  # passes grouped by sequence, in time order
    sizes = pass_tokens[order]
    before = np.cumsum(sizes) - sizes
    first_of_seq = np.r_[True, pass_seq[order][1:] != pass_seq[order][:-1]]
    seq_start = np.maximum.accumulate(np.where(first_of_seq, np.arange(order.size), 0))
    offset = np.empty_like(before)
    offset[order] = before - before[seq_start]
    prompt_len = np.zeros(len(rows.seq_names), dtype=np.int64)
    prompt_len[pass_seq[order][first_of_seq]] = sizes[first_of_seq]
    return offset[pass_of_row] + row_in_batch, prompt_len


def from_vllm_raw_jsonl(path: str | Path, model: str | None = None, dataset: str | None = None,
                        provenance: str = "", num_experts: int | None = None,
                        ) -> tuple[RouterTrace, ConvertReport]:
    """Import a raw prefill+decode vLLM dump (`token_pos` = row in batch), re-segmented by pass."""
    path = Path(path)
    rows = _read_jsonl(path, "token_pos")
    pos, prompt_len = _forward_passes(rows)
    if int(pos.max()) > _INT32_MAX:  # passes of a sequence add up past int32 positions
        row = int(np.argmax(pos))
        raise TraceError(f"{path}:{rows.line[row]}: this record's position in its sequence "
                         f"({int(pos[row])}) is above {_INT32_MAX} (int32); split the log")
    arrays, dropped = _assemble(rows, pos, path)
    prefill = arrays["pos"] < prompt_len[arrays["seq_id"]]
    meta = _metadata("vllm-raw-jsonl", path, model, dataset or ",".join(rows.datasets),
                     provenance, num_experts=num_experts, phase="prefill+decode",
                     prompt_lens=json.dumps(prompt_len.tolist()),
                     phase_rule="a token is prefill iff pos < prompt_lens[seq_id]",
                     prefill_tokens=int(prefill.sum()), decode_tokens=int((~prefill).sum()),
                     dropped_tokens=len(dropped), sequences=json.dumps(rows.seq_names))
    trace = RouterTrace(metadata=meta, **arrays)
    return trace, _report(path, "vllm-raw-jsonl", trace, rows.line.size, dropped)


def is_prefill(trace: RouterTrace) -> np.ndarray:
    """Per token True when it was processed in a prefill pass (from metadata; else decode)."""
    if "prompt_lens" in trace.metadata:
        prompt_lens = np.asarray(json.loads(trace.metadata["prompt_lens"]), dtype=np.int64)
        return trace.pos < prompt_lens[trace.seq_id]
    return np.full(trace.num_tokens, trace.metadata.get("phase") == "prefill")


def _load_pt(path: Path) -> Any:
    """torch.load a tuple of per-layer tensors (torch imported lazily)."""
    try:
        import torch
    except ImportError:
        raise TraceError(f"{path}: reading .pt router logits needs torch; "
                         "pip install 'moesim[live]' or save them as .npz") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        first = (str(exc).strip().splitlines() or [""])[0][:200]  # torch's text runs for lines
        raise TraceError(f"{path}: torch.load failed ({type(exc).__name__}: {first}); pass "
                         "a torch.save of per-layer tensors, or save them as .npz") from None
    if isinstance(obj, torch.Tensor):
        return obj.float().numpy()
    if isinstance(obj, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in obj):
        return [t.float().numpy() for t in obj]
    raise TraceError(f"{path}: expected a tuple of per-layer tensors, got {type(obj).__name__}")


def _load_npz_logits(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    """Read `router_logits[L,T,E]` / `[L,B,S,E]` or `layer_0..` arrays (+ optional seq_id, pos)."""
    arrays = read_npz(path, str(path), "save router logits with numpy.savez")
    extra: dict[str, np.ndarray] = {k: arrays.pop(k) for k in ("seq_id", "pos") if k in arrays}
    if "router_logits" in arrays:
        return arrays["router_logits"], extra
    n_layers = len(arrays)
    missing = [f"layer_{i}" for i in range(n_layers) if f"layer_{i}" not in arrays]
    if not arrays or missing:
        raise TraceError(f"{path}: expected 'router_logits' or layer_0..layer_{n_layers - 1}, "
                         f"got arrays {sorted(arrays)}")
    return [arrays[f"layer_{i}"] for i in range(n_layers)], extra


def _stack_logits(path: Path, layers: Any, extra: dict[str, np.ndarray],
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer [T, E] or [B, S, E] logits -> [L, T, E] plus seq_id and pos."""
    layers = list(layers)
    shape: tuple[int, ...] = np.shape(layers[0]) if layers else ()
    if len(shape) not in (2, 3):
        raise TraceError(f"{path}: layer 0 logits have shape {shape}; expected "
                         "[tokens, experts] or [batch, seq, experts]")
    for i, arr in enumerate(layers):
        if np.shape(arr) != shape:
            raise TraceError(f"{path}: layer {i} logits have shape {np.shape(arr)}, "
                             f"layer 0 has {shape}; all layers must match")
        if np.asarray(arr).dtype.kind not in "fiu":
            raise TraceError(f"{path}: layer {i} logits must be numbers, got "
                             f"{np.asarray(arr).dtype}")
    if not 1 <= shape[-1] <= _INT16_MAX + 1:
        raise TraceError(f"{path}: logits have {shape[-1]} experts (last axis of {shape}); "
                         f"expert ids are int16, so 1..{_INT16_MAX + 1} experts")
    if not np.prod(shape[:-1]):
        raise TraceError(f"{path}: logits of shape {shape} hold no tokens")
    logits = np.stack([np.asarray(a, dtype=np.float32) for a in layers]).reshape(
        len(layers), -1, shape[-1])  # [L, T, E]
    bad = np.argwhere(~np.isfinite(logits))
    if bad.size:
        raise TraceError(f"{path}: layer {bad[0][0]}, token {bad[0][1]}: logit is not finite")
    batch, seq_len = (shape[0], shape[1]) if len(shape) == 3 else (1, shape[0])
    seq_id = extra.get("seq_id", np.repeat(np.arange(batch), seq_len))
    pos = extra.get("pos", np.tile(np.arange(seq_len), batch))
    return logits, seq_id, pos


def load_router_logits(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read saved router logits as ([L, T, E] float32, seq_id[T], pos[T])."""
    if not path.is_file():
        raise TraceError(f"{path} does not exist; pass saved router logits (.npz or .pt)")
    extra: dict[str, np.ndarray] = {}
    if path.suffix == ".pt":
        layers = _load_pt(path)
    elif path.suffix == ".npz":
        layers, extra = _load_npz_logits(path)
    else:
        raise TraceError(f"{path}: router logits must be a .npz or .pt file")
    return _stack_logits(path, layers, extra)


def topk_softmax(logits: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k experts by router probability and their softmax renormalised over the top-k."""
    experts = np.argsort(-logits, axis=-1, kind="stable")[..., :top_k]  # [L, T, k]
    top = np.take_along_axis(logits, experts, axis=-1)
    exp = np.exp(top - top[..., :1])  # top[..., 0] is the max: stable softmax
    return experts.astype(np.int16), (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def from_hf_router_logits(path: str | Path, top_k: int | None, model: str | None = None,
                          dataset: str | None = None, provenance: str = "",
                          ) -> tuple[RouterTrace, ConvertReport]:
    """Import saved HF router logits (.npz or .pt): top-k by softmax, weights renormalised."""
    path = Path(path)
    logits, seq_id, pos = load_router_logits(path)  # [L, T, E]
    if top_k is None or not 1 <= top_k <= logits.shape[2]:
        raise TraceError(f"{path}: pass --top-k between 1 and {logits.shape[2]} (the number "
                         f"of experts) to pick experts from router logits, got {top_k}")
    experts, weights = topk_softmax(logits, top_k)
    meta = _metadata("hf-router-logits", path, model, dataset or "unknown", provenance,
                     num_experts=logits.shape[2], dropped_tokens=0)
    try:
        trace = RouterTrace(experts=experts, weights=weights, seq_id=seq_id, pos=pos,
                            metadata=meta)
    except TraceError as exc:  # e.g. a seq_id/pos array of the wrong length
        raise TraceError(f"{path}: {exc}") from None
    return trace, _report(path, "hf-router-logits", trace, logits.shape[1], [])


def _load_exp_ids(path: Path) -> np.ndarray:
    """Read `exp_ids[tokens, k, layers]` from .npy or .npz (key `exp_ids` or the only array)."""
    if not path.is_file():
        raise TraceError(f"{path} does not exist; pass an existing .npy/.npz exp_ids file")
    with path.open("rb") as handle:
        zipped = handle.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    if not zipped:
        try:
            return np.asarray(np.load(path, allow_pickle=False))
        except (OSError, ValueError, EOFError) as exc:
            raise TraceError(f"{path}: not a readable .npy/.npz file ({exc})") from None
    arrays = read_npz(path, str(path), "save exp_ids[tokens, k, layers] with numpy.save")
    names = list(arrays)
    if "exp_ids" not in names and len(names) != 1:
        raise TraceError(f"{path}: no array 'exp_ids' among {names}; "
                         "save exp_ids[tokens, k, layers] under that key")
    return arrays["exp_ids" if "exp_ids" in names else names[0]]


def from_exp_ids(path: str | Path, model: str | None = None, dataset: str | None = None,
                 provenance: str = "", num_experts: int | None = None,
                 ) -> tuple[RouterTrace, ConvertReport]:
    """Import `exp_ids[tokens, k, layers]` (one sequence, pos = token index) as [L, T, k]."""
    path = Path(path)
    ids = _load_exp_ids(path)
    if ids.ndim != 3 or not np.issubdtype(ids.dtype, np.integer):
        raise TraceError(f"{path}: exp_ids must be an integer array [tokens, k, layers], "
                         f"got {ids.dtype} {ids.shape}")
    bad = np.argwhere((ids < 0) | (ids > _INT16_MAX))
    if bad.size:
        t, c, layer = (int(v) for v in bad[0])
        raise TraceError(f"{path}: exp_ids[{t}, {c}, {layer}] = {ids[t, c, layer]} is not an "
                         f"expert id in 0..{_INT16_MAX}")
    n_tokens = ids.shape[0]
    if not ids.size:
        raise TraceError(f"{path}: exp_ids of shape {ids.shape} holds no choices; "
                         "expected [tokens, k, layers] with each at least 1")
    problem = repeated_expert(ids.transpose(2, 0, 1))
    if problem:
        raise TraceError(f"{path}: exp_ids: {problem}")
    meta = _metadata("exp-ids", path, model, dataset or "unknown", provenance,
                     num_experts=num_experts, dropped_tokens=0)
    try:
        trace = RouterTrace(experts=ids.transpose(2, 0, 1),
                            seq_id=np.zeros(n_tokens, np.int32), pos=np.arange(n_tokens),
                            metadata=meta)
    except TraceError as exc:  # e.g. more tokens than int32 positions
        raise TraceError(f"{path}: {exc}") from None
    return trace, _report(path, "exp-ids", trace, n_tokens, [])


def convert_file(src: str | Path, fmt: str, out: str | Path, top_k: int | None = None,
                 model: str | None = None, dataset: str | None = None, provenance: str = "",
                 num_experts: int | None = None) -> ConvertReport:
    """Import `src` in format `fmt`, save the trace to `out` (.npz), and report."""
    start = time.perf_counter()
    common: dict[str, Any] = {"model": model, "dataset": dataset, "provenance": provenance}
    if fmt == "vllm-jsonl":
        trace, report = from_vllm_jsonl(src, num_experts=num_experts, **common)
    elif fmt == "vllm-raw-jsonl":
        trace, report = from_vllm_raw_jsonl(src, num_experts=num_experts, **common)
    elif fmt == "hf-router-logits":
        trace, report = from_hf_router_logits(src, top_k, **common)
    elif fmt == "exp-ids":
        trace, report = from_exp_ids(src, num_experts=num_experts, **common)
    else:
        raise TraceError(f"unknown trace format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        save_trace(trace, out)
    except OSError as exc:
        raise TraceError(f"cannot write trace {out}: {exc.strerror}; check the -o path") from None
    return replace(report, output=str(out), elapsed_s=time.perf_counter() - start)
