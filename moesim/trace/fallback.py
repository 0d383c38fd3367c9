"""A synthetic stand-in for the bundled real trace when a model's shape does not match it.

The default trace is real Mixtral-8x7B routing (32 MoE layers, 8 experts, top-2). A model of
another depth, expert count or k cannot replay it, so a scenario that did not choose a trace
runs instead on a synthetic one: the generator of `moesim.trace.synth`, fitted to the bundled
real trace by `moesim.trace.fit`, with its per-layer parameters mapped onto the model's shape.
The fit is deterministic but takes ~5 s, so it is kept: in the process, and on disk in
`$MOESIM_CACHE_DIR` (default `$XDG_CACHE_HOME/moesim`, else `~/.cache/moesim`; `off` disables
it) under a key that hashes the bundled trace, the fitting code and numpy's version, so a
changed fit is never read stale; an unwritable cache is skipped silently. The mapping:

- layers: new layer l of L' takes the parameters of real layer round(l (L-1) / (L'-1)), the
  nearest relative depth with the first and last layers aligned (popularity, per-sequence
  concentration, drift, repetition keep/avoid probabilities, cross-layer agreement);
- the same expert count: expert identities are kept. Where two consecutive new layers do not
  map to consecutive real layers (a real layer used twice, or one skipped), the real
  transition is rebalanced by iterative proportional fitting so that its margins are the
  mapped layers' popularity (its associations, the odds ratios, are kept);
- another expert count: the popularity skew is kept, not the identities. Each layer's sorted
  popularity (the first choice's, and that of choices 2..k) is resampled onto E' experts along
  its cumulative-share (Lorenz) curve, so the hottest x % of experts get the same share of
  the choices, and dealt to the experts by a seeded random permutation per layer, separately
  for the first and the other choices (the real rank correlation of the two is weak, 0.2 on
  average over layers). Layers are routed independently (cross-layer agreement is defined
  between expert identities), which leaves every layer's traffic and load unchanged.
  Repetition keeps the fitted keep/avoid probabilities, the repeats beyond chance, so the
  measured repeat rates fall with the chance of a repeat: Mixtral's 27 % first-choice repeats
  (14 % chance with 8 experts) become ~15 % with 128 experts.

The tokens are the real trace's: its 333 decode tokens with their sequences and positions, so
a step's workload (batch, context, reuse and tiling, `trace_tokens`) is cut from it exactly as
from the real trace. A seed fixes the trace bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from moesim.errors import TraceError
from moesim.trace.bundled import (
    BUNDLED_PREFIX,
    DEFAULT_BUNDLED_TRACE,
    bundled_trace_path,
    load_bundled_trace,
)
from moesim.trace.format import RouterTrace
from moesim.trace.synth import SequenceLayout, SynthParams, generate_layer, layer_generators

__all__ = [
    "SyntheticFallback",
    "trace_num_experts",
    "shape_mismatch",
    "fitted_bundled",
    "layer_map",
    "map_params",
    "synthetic_fallback",
    "fit_cache_dir",
]

# What each bundled real trace's statistics are called in a note.
_DESCRIPTION = {DEFAULT_BUNDLED_TRACE: "Mixtral-8x7B HumanEval"}
_IPF_ROUNDS = 100  # rebalancing a transition to new margins (converges in a few tens)
_CACHE_VERSION = "1"  # bump when the cached file's layout changes
_ARRAYS = ("first_popularity", "rest_popularity", "concentration", "keep_first", "keep_rest",
           "cross_prob", "transition", "avoid_first", "avoid_rest", "segment_concentration")
_SCALARS = ("top_k", "segment_tokens", "generator", "source", "notes")


@dataclass(frozen=True)
class SyntheticFallback:
    """A synthetic trace standing in for a real one, its source string and the result note."""

    trace: RouterTrace
    source: str
    note: str
    params: SynthParams


def trace_num_experts(trace: RouterTrace) -> int:
    """Experts per layer of the model a trace was recorded from: metadata, else max id + 1."""
    try:
        return max(int(trace.metadata["num_experts"]), trace.max_expert_id + 1)
    except (KeyError, ValueError):
        return trace.max_expert_id + 1


def shape_mismatch(trace: RouterTrace, num_layers: int, num_experts: int,
                   top_k: int) -> list[str]:
    """What of the trace's shape differs from the model's, e.g. ['32 MoE layers', 'top-2']."""
    differ = []
    if trace.num_layers != num_layers:
        differ.append(f"{trace.num_layers} MoE layers")
    if trace_num_experts(trace) != num_experts:
        differ.append(f"{trace_num_experts(trace)} experts")
    if trace.top_k != top_k:
        differ.append(f"top-{trace.top_k}")
    return differ


def fitted_bundled(name: str = DEFAULT_BUNDLED_TRACE) -> tuple[RouterTrace, SynthParams]:
    """The bundled real trace `name` and the generator fitted to it (once per process)."""
    return _fitted(name)


@lru_cache(maxsize=2)
def _fitted(name: str) -> tuple[RouterTrace, SynthParams]:
    real = load_bundled_trace(name)
    directory = fit_cache_dir()
    path = None if directory is None else directory / f"fit-{name}-{_fit_key(name)}.npz"
    if path is not None:
        cached = _read_params(path)
        if cached is not None:
            return real, cached
    from moesim.trace.fit import fit_synth_params

    fresh = fit_synth_params(real, trace_num_experts(real),
                             source=f"fitted to trace {BUNDLED_PREFIX}{name}")
    arrays = _params_arrays(fresh)
    if path is not None:
        _write_arrays(path, arrays)
    return real, _params_from(arrays)  # built as a cached copy is: the same bits either way


def fit_cache_dir() -> Path | None:
    """Where fitted parameters are kept on disk (module doc); None when disabled."""
    given = os.environ.get("MOESIM_CACHE_DIR")
    if given is not None:
        return None if given.strip().lower() in ("", "off", "0", "none") else Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moesim"


def _fit_key(name: str) -> str:
    """Hash of everything the fit of bundled trace `name` depends on."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(f"{_CACHE_VERSION} numpy {np.__version__}".encode())
    digest.update(bundled_trace_path(name).read_bytes())
    for module in ("fit.py", "synth.py", "variation.py", "stats.py", "format.py"):
        digest.update((here / module).read_bytes())
    digest.update((here.parent / "data" / "mmlu_popularity_variation.json").read_bytes())
    return digest.hexdigest()[:20]


def _params_arrays(params: SynthParams) -> dict[str, np.ndarray]:
    """The parameters as plain arrays (scalars in one JSON string)."""
    arrays = {name: np.asarray(getattr(params, name)) for name in _ARRAYS}
    scalars = {name: getattr(params, name) for name in _SCALARS}
    arrays["scalars"] = np.array(json.dumps({**scalars, "notes": list(params.notes)}))
    return arrays


def _params_from(arrays: dict[str, np.ndarray]) -> SynthParams:
    """SynthParams from `_params_arrays` output."""
    scalars = json.loads(str(arrays["scalars"]))
    return SynthParams(**{name: arrays[name] for name in _ARRAYS},
                       top_k=int(scalars["top_k"]), segment_tokens=int(scalars["segment_tokens"]),
                       generator=str(scalars["generator"]), source=str(scalars["source"]),
                       notes=tuple(str(n) for n in scalars["notes"]))


def _read_params(path: Path) -> SynthParams | None:
    """Cached parameters at `path`, or None when absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return _params_from({name: data[name] for name in (*_ARRAYS, "scalars")})
    except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile, TraceError):
        return None  # a missing, partial or foreign file: fit afresh


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` atomically; skip silently where the cache is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fit-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


def layer_map(num_layers: int, source_layers: int) -> np.ndarray:
    """[num_layers] source layer of each new layer: nearest relative depth, ends aligned."""
    if num_layers == 1 or source_layers == 1:
        return np.zeros(num_layers, dtype=np.int64)
    depth = np.arange(num_layers) * (source_layers - 1) / (num_layers - 1)
    return np.minimum(np.floor(depth + 0.5).astype(np.int64), source_layers - 1)


def _resample_skew(popularity: np.ndarray, num_experts: int) -> np.ndarray:
    """[E'] shares, hottest first, along the Lorenz curve of `popularity` [E]."""
    ordered = np.sort(popularity)[::-1]
    curve = np.r_[0.0, np.cumsum(ordered) / ordered.sum()]
    at = np.interp(np.arange(num_experts + 1) / num_experts,
                   np.arange(ordered.size + 1) / ordered.size, curve)
    return np.maximum(np.diff(at), 1e-12)


def _dealt(shares: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`shares` given to the experts in a random order."""
    out = np.empty_like(shares)
    out[rng.permutation(shares.size)] = shares
    return out


def _rebalanced(transition: np.ndarray, before: np.ndarray, rows: np.ndarray,
                cols: np.ndarray) -> np.ndarray:
    """P(next | prev) with the associations of `transition` (prev marginal `before`) whose
    joint has margins `rows` (prev) and `cols` (next): iterative proportional fitting."""
    joint = before[:, None] * transition
    for _ in range(_IPF_ROUNDS):
        joint *= (rows / joint.sum(axis=1))[:, None]
        joint *= (cols / joint.sum(axis=0))[None, :]
    return joint / joint.sum(axis=1, keepdims=True)


def map_params(params: SynthParams, num_layers: int, num_experts: int, top_k: int,
               rng: np.random.Generator) -> tuple[SynthParams, np.ndarray]:
    """`params` mapped onto `num_layers` x `num_experts`, top-`top_k` (module doc), and the
    source layer of each new layer. `rng` deals popularity to experts (other expert counts)."""
    src = layer_map(num_layers, params.num_layers)
    same_experts = num_experts == params.num_experts
    if same_experts:
        first, rest = params.first_popularity[src], params.rest_popularity[src]
        transition = params.transition[src].copy()
        cross = params.cross_prob[src].copy()
        for layer in range(1, num_layers):
            prev, here = src[layer - 1], src[layer]
            if prev != here - 1 and here > 0:
                transition[layer] = _rebalanced(params.transition[here],
                                                params.first_popularity[here - 1],
                                                first[layer - 1], first[layer])
            elif prev != here - 1:  # real layer 0 has no transition: none
                cross[layer] = 0.0
        cross[0] = 0.0
    else:
        first = np.stack([_dealt(_resample_skew(params.first_popularity[s], num_experts), rng)
                          for s in src])
        rest = np.stack([_dealt(_resample_skew(params.rest_popularity[s], num_experts), rng)
                         for s in src])
        transition = np.broadcast_to(np.ones(1), (num_layers, num_experts, num_experts))
        cross = np.zeros(num_layers)
    notes: tuple[str, ...] = (
        f"mapped from {params.num_layers} layers x {params.num_experts} experts, top-"
        f"{params.top_k} by nearest relative depth (source layers {src.tolist()})",)
    if not same_experts:
        notes += ("other expert count: popularity skew resampled along each layer's Lorenz "
                  "curve, experts in random order; layers routed independently",)
    mapped = SynthParams(
        first_popularity=first, rest_popularity=rest,
        concentration=params.concentration[src], keep_first=params.keep_first[src],
        keep_rest=params.keep_rest[src], cross_prob=cross, transition=transition, top_k=top_k,
        avoid_first=params.avoid_first[src], avoid_rest=params.avoid_rest[src],
        segment_tokens=params.segment_tokens,
        segment_concentration=params.segment_concentration[src],
        generator=params.generator, source=f"{params.source}, mapped onto {num_layers} layers x "
        f"{num_experts} experts, top-{top_k}", notes=params.notes + notes)
    return mapped, src


def _layout_of(trace: RouterTrace, segment_tokens: int) -> SequenceLayout:
    """The generator's token layout for the runs of equal seq_id of `trace`, in its order."""
    num_tokens = trace.num_tokens
    new_run = np.r_[True, trace.seq_id[1:] != trace.seq_id[:-1]]
    run = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    offset = np.arange(num_tokens) - starts[run]
    lengths = np.diff(np.r_[starts, num_tokens])
    if segment_tokens <= 0:
        segment, segment_seq = run, np.arange(starts.size)
    else:
        per_run = -(-lengths // segment_tokens)
        segment = (np.cumsum(per_run) - per_run)[run] + offset // segment_tokens
        segment_seq = np.repeat(np.arange(starts.size), per_run)
    return SequenceLayout(seq=run.astype(np.int64), pos=offset.astype(np.int64),
                          continues=offset > 0, segment=segment.astype(np.int64),
                          segment_seq=segment_seq.astype(np.int64), num_sequences=starts.size)


def synthetic_fallback(num_layers: int, num_experts: int, top_k: int, *, seed: int = 0,
                       name: str = DEFAULT_BUNDLED_TRACE) -> SyntheticFallback:
    """A synthetic trace of `num_layers` MoE layers x `num_experts` experts, top-`top_k`, with
    the tokens of bundled trace `name` and its fitted statistics mapped on (module doc)."""
    real, fitted = fitted_bundled(name)
    params, src = map_params(fitted, num_layers, num_experts, top_k,
                             np.random.default_rng([seed, 1]))
    layout = _layout_of(real, params.segment_tokens)
    experts = np.empty((num_layers, real.num_tokens, top_k), dtype=np.int16)
    children = layer_generators(np.random.default_rng(seed), num_layers)
    prev: np.ndarray | None = None
    for layer in range(num_layers):
        experts[layer] = generate_layer(params, layer, layout, prev, children[2 * layer],
                                        children[2 * layer + 1])
        prev = experts[layer, :, 0].astype(np.int64)
    spec = f"{BUNDLED_PREFIX}{name}"
    shape = f"{num_layers} MoE layers, {num_experts} experts, top-{top_k}"
    differ = shape_mismatch(real, num_layers, num_experts, top_k)
    described = _DESCRIPTION.get(name, spec)
    how = "" if num_experts == trace_num_experts(real) else (
        "; expert popularity by skew, not identity; layers routed independently")
    note = (f"trace: synthetic ({described} statistics mapped onto {shape}{how}): the bundled "
            f"real trace has {', '.join(differ) or 'another shape'}; give --trace for a real one")
    source = f"synthetic: {spec} statistics mapped onto {shape} (seed {seed})"
    metadata = {
        "source": source, "synthetic": "true", "tool": "moesim (synthetic trace fallback)",
        "fitted_to": spec, "fitted_model": real.metadata.get("model", "unknown"),
        "dataset": real.metadata.get("dataset", "unknown"), "phase": real.metadata.get(
            "phase", "unknown"), "num_experts": str(num_experts), "seed": str(seed),
        "layer_map": json.dumps(src.tolist()), "synth_params": json.dumps(params.summary()),
    }
    trace = RouterTrace(experts=experts, seq_id=real.seq_id, pos=real.pos, metadata=metadata)
    return SyntheticFallback(trace, source, note, params)
