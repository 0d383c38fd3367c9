"""Synthetic router traces: a calibrated generative model of top-k expert choices.

The model, per MoE layer l (E experts, top-k), for S sequences laid out one after another:

1. **Popularity.** A global first-choice popularity `p_l` [E] and a popularity `q_l` [E] for
   choices 2..k. Each sequence s draws its own first-choice popularity
   `pi_{s,l} ~ Dirichlet(alpha_l * p_l)` (prompt-to-prompt variation; `alpha_l = inf` means
   none). Optionally the popularity also drifts inside a sequence: every `segment_tokens`
   tokens a segment draws `pi_{g,l} ~ Dirichlet(beta_l * pi_{s,l})` (topic drift; `beta_l =
   inf` or `segment_tokens = 0` means none). Choices 2..k use `q_{g,l} ∝ q_l * pi_{g,l} / p_l`,
   so an expert that is hot for a prompt is hot for all its choices.
2. **First choice.** Token i draws a candidate: with probability `c_l` from the row of the
   transition matrix `P_l(e_l | e_{l-1})` picked by its own first choice at layer l-1
   reweighted by the segment's popularity over p_l (cross-layer agreement), else from the
   segment's popularity. With probability
   `avoid_first_l`, a candidate equal to token i-1's candidate is redrawn excluding it (fewer
   repeats than independent draws, seen at the first and last layers of real traces). Then,
   if token i is not the first of its sequence, it keeps token i-1's first choice with
   probability `rho_l` (temporal repetition) instead of its candidate.
3. **Other choices.** Token i draws k-1 experts without replacement from `q_{g,l}`, excluding
   its first choice and, with probability `avoid_rest_l`, token i-1's first choice
   (Plackett-Luce: sequential draws renormalised over the experts not yet excluded). With
   probability `kappa_l` it keeps instead the choices 2..k of the last token of its run that
   drew them (a kept choice equal to token i's own first choice is replaced by that token's
   first choice, so the whole top-k set carries over).

`moesim.trace.fit` fits all of them so that a generated trace matches a real one's per-layer
expert shares, Table-5 repetition (`repeat_first`, `repeat_any`), the spread of expert shares
over 64-token windows and the first-choice mutual information between consecutive layers.
Baselines: `uniform_params` (independent uniform choices) and `zipf_params` (first choice
Zipf(s) over a per-layer random expert ranking, the rest without replacement from the same
law).

Cost: one pass per layer, each vectorised over all tokens and sequences (no loop over
positions: runs of kept choices are resolved by a forward fill of the last fresh draw, and
an avoided repeat is checked against the neighbour's candidate, not its final choice, which
the calibration absorbs). Categorical draws are `searchsorted` over per-segment cumulative
tables, so a layer costs O(T log(G E) + G E) time for G segments and O(T k + G E) memory,
the whole trace O(L T k log(G E)) time and L T k int16 of output.
Random numbers: one child generator per layer (two streams: first and other choices) drawn
from the caller's `numpy.random.Generator`, so a seed fixes the trace bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from moesim.errors import TraceError
from moesim.trace.format import RouterTrace

__all__ = [
    "SynthParams",
    "SequenceLayout",
    "sequence_layout",
    "sequence_popularity",
    "first_choices",
    "rest_choices",
    "layer_generators",
    "generate_layer",
    "generate_trace",
    "uniform_params",
    "zipf_params",
    "GENERATOR_VERSION",
]

GENERATOR_VERSION = "1"
_REJECTION_ROUNDS = 16  # redraws of colliding choices before the Gumbel fallback
_CHUNK_TOKENS = 1 << 16  # tokens per chunk of tilted transition draws
_TABLE_ENTRIES = 1 << 22  # largest (segment, previous expert, expert) table
_MIN_PROB = 1e-12  # floor on per-segment probabilities so every expert stays drawable
_PROBABILITIES = ("keep_first", "avoid_first", "keep_rest", "avoid_rest", "cross_prob")


def _unset() -> np.ndarray:
    """Placeholder for an optional per-layer array: filled with its default on construction."""
    return np.zeros(0)


@dataclass(frozen=True)
class SynthParams:
    """Per-layer parameters of the synthetic router model (see the module docstring)."""

    first_popularity: np.ndarray  # [L, E] p_l, mean first-choice probability
    rest_popularity: np.ndarray  # [L, E] q_l, popularity of choices 2..k
    concentration: np.ndarray  # [L] alpha_l, per-sequence Dirichlet (inf: no variation)
    keep_first: np.ndarray  # [L] rho_l
    keep_rest: np.ndarray  # [L] kappa_l
    cross_prob: np.ndarray  # [L] c_l (c_0 unused)
    transition: np.ndarray  # [L, E, E] P_l[e_{l-1}, e_l], row-stochastic ([0] unused)
    top_k: int
    avoid_first: np.ndarray = field(default_factory=_unset)  # [L], default zeros
    avoid_rest: np.ndarray = field(default_factory=_unset)  # [L], default zeros
    segment_tokens: int = 0  # drift segment length in tokens (0: whole sequence)
    segment_concentration: np.ndarray = field(default_factory=_unset)  # [L] beta_l, default inf
    generator: str = "fitted"  # fitted | uniform | zipf
    source: str = ""  # where the parameters came from
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        first = np.asarray(self.first_popularity, dtype=np.float64)
        if first.ndim != 2 or first.shape[1] < 1:
            raise TraceError(f"first_popularity must be [layers, experts], got {first.shape}")
        n_layers, n_experts = first.shape
        if not 1 <= self.top_k <= n_experts:
            raise TraceError(f"top_k {self.top_k} must be between 1 and the {n_experts} experts")
        if self.segment_tokens < 0:
            raise TraceError(f"segment_tokens must be >= 0, got {self.segment_tokens}")
        defaults = {"avoid_first": 0.0, "avoid_rest": 0.0, "segment_concentration": np.inf}
        for name, value in defaults.items():
            if np.size(getattr(self, name)) == 0:
                object.__setattr__(self, name, np.full(n_layers, value))
        shapes = {"first_popularity": (n_layers, n_experts),
                  "rest_popularity": (n_layers, n_experts),
                  "transition": (n_layers, n_experts, n_experts),
                  **{name: (n_layers,) for name in _PROBABILITIES},
                  "concentration": (n_layers,), "segment_concentration": (n_layers,)}
        for name, shape in shapes.items():
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != shape:
                raise TraceError(f"synth parameter '{name}' must have shape {shape}, "
                                 f"got {arr.shape}")
            object.__setattr__(self, name, arr)
        for name in ("first_popularity", "rest_popularity", "transition"):
            object.__setattr__(self, name, _normalised(getattr(self, name), name))
        for name in _PROBABILITIES:
            if not np.all((getattr(self, name) >= 0) & (getattr(self, name) <= 1)):
                raise TraceError(f"synth parameter '{name}' must be probabilities in [0, 1]")
        for name in ("concentration", "segment_concentration"):
            if not np.all(getattr(self, name) > 0):
                raise TraceError(f"synth parameter '{name}' must be > 0 (inf: no variation)")

    @property
    def num_layers(self) -> int:
        """MoE layers L."""
        return int(self.first_popularity.shape[0])

    @property
    def num_experts(self) -> int:
        """Experts per layer E."""
        return int(self.first_popularity.shape[1])

    def summary(self) -> dict[str, object]:
        """Small JSON-ready summary (means over layers) for trace metadata and reports."""
        def mean(arr: np.ndarray) -> float:
            return round(float(arr.mean()), 4)

        def median(arr: np.ndarray) -> float | None:
            finite = arr[np.isfinite(arr)]
            return round(float(np.median(finite)), 2) if finite.size else None

        return {
            "generator": self.generator, "source": self.source,
            "num_layers": self.num_layers, "num_experts": self.num_experts, "top_k": self.top_k,
            **{f"{name}_mean": mean(getattr(self, name)) for name in _PROBABILITIES},
            "concentration_median": median(self.concentration),
            "segment_tokens": self.segment_tokens,
            "segment_concentration_median": median(self.segment_concentration),
            "notes": list(self.notes),
        }


def _normalised(arr: np.ndarray, name: str) -> np.ndarray:
    """Rows of `arr` rescaled to sum to 1; raise if any entry is negative or a row is 0."""
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise TraceError(f"synth parameter '{name}' must hold finite non-negative numbers")
    total = arr.sum(axis=-1, keepdims=True)
    if np.any(total <= 0):
        raise TraceError(f"synth parameter '{name}' has a row summing to 0")
    return arr / total


@dataclass(frozen=True)
class SequenceLayout:
    """Token order of a generated trace: sequences, positions, drift segments, successors."""

    seq: np.ndarray  # [T] int64 sequence of each token
    pos: np.ndarray  # [T] int64 position inside its sequence
    continues: np.ndarray  # [T] bool, token t is token t-1's successor in one sequence
    segment: np.ndarray  # [T] int64 popularity segment of each token (global numbering)
    segment_seq: np.ndarray  # [G] int64 sequence of each segment
    num_sequences: int


def sequence_layout(num_tokens: int, num_sequences: int,
                    segment_tokens: int = 0) -> SequenceLayout:
    """`num_sequences` contiguous sequences of near-equal length (the first ones one longer)."""
    if num_tokens < 1 or num_sequences < 1:
        raise TraceError("--tokens and --sequences must be at least 1")
    if num_sequences > num_tokens:
        raise TraceError(f"{num_sequences} sequences need at least as many tokens, got "
                         f"{num_tokens}; lower --sequences or raise --tokens")
    base, extra = divmod(num_tokens, num_sequences)
    lengths = np.full(num_sequences, base, dtype=np.int64)
    lengths[:extra] += 1
    seq = np.repeat(np.arange(num_sequences, dtype=np.int64), lengths)
    pos = np.arange(num_tokens, dtype=np.int64) - (np.cumsum(lengths) - lengths)[seq]
    if segment_tokens <= 0:
        segment, segment_seq = seq, np.arange(num_sequences, dtype=np.int64)
    else:
        per_seq = -(-lengths // segment_tokens)  # ceil
        first_segment = np.cumsum(per_seq) - per_seq
        segment = first_segment[seq] + pos // segment_tokens
        segment_seq = np.repeat(np.arange(num_sequences, dtype=np.int64), per_seq)
    return SequenceLayout(seq=seq, pos=pos, continues=pos > 0, segment=segment,
                          segment_seq=segment_seq, num_sequences=num_sequences)


def _cumulative_rows(probs: np.ndarray) -> np.ndarray:
    """[R, E] row-stochastic -> flat increasing table: row r holds r + cumsum(row)."""
    cum = np.cumsum(probs, axis=1)
    cum[:, -1] = 1.0
    return (cum + np.arange(probs.shape[0])[:, None]).ravel()


def _draw_rows(table: np.ndarray, num_experts: int, rows: np.ndarray,
               uniforms: np.ndarray) -> np.ndarray:
    """One categorical draw per entry of `rows` from the rows of a `_cumulative_rows` table."""
    hit = np.searchsorted(table, rows + uniforms, side="right") - rows * num_experts
    return np.minimum(hit, num_experts - 1)


def _categorical(probs: np.ndarray, rows: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One draw per entry of `rows` from rows of `probs` [R, E]; one small table when the
    rows are a broadcast of a single row (no per-sequence variation), which is faster."""
    if probs.shape[0] > 1 and probs.strides[0] == 0:
        return _draw_rows(_cumulative_rows(probs[:1]), probs.shape[1], np.zeros_like(rows),
                          uniforms)
    return _draw_rows(_cumulative_rows(probs), probs.shape[1], rows, uniforms)


def _forward_fill(fresh: np.ndarray) -> np.ndarray:
    """Index of the last True at or before each position (fresh[0] must be True)."""
    return np.maximum.accumulate(np.where(fresh, np.arange(fresh.size), 0))


def _dirichlet_rows(mean: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """One Dirichlet(alpha * row) draw per row of `mean` [R, E] (the rows when alpha = inf)."""
    if not math.isfinite(alpha):
        return mean
    gamma = np.maximum(rng.gamma(np.maximum(alpha * mean, _MIN_PROB)), _MIN_PROB)
    return gamma / gamma.sum(axis=1, keepdims=True)


def sequence_popularity(params: SynthParams, layer: int, layout: SequenceLayout,
                        rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-segment first-choice and other-choice popularity [G, E] of one layer, and the tilt.

    The tilt [G, E] is the segment's first-choice popularity over the layer's mean (None when
    neither sequences nor segments vary).
    """
    mean = params.first_popularity[layer]
    per_seq = _dirichlet_rows(np.broadcast_to(mean, (layout.num_sequences, mean.size)),
                              params.concentration[layer], rng)
    per_segment = per_seq[layout.segment_seq]
    if params.segment_tokens > 0:
        per_segment = _dirichlet_rows(per_segment, params.segment_concentration[layer], rng)
    varies = math.isfinite(params.concentration[layer]) or (
        params.segment_tokens > 0 and math.isfinite(params.segment_concentration[layer]))
    if not varies:
        return per_segment, np.broadcast_to(params.rest_popularity[layer], per_segment.shape), None
    tilt = per_segment / mean
    rest = np.maximum(params.rest_popularity[layer] * tilt, _MIN_PROB)
    return per_segment, rest / rest.sum(axis=1, keepdims=True), tilt


def first_choices(layout: SequenceLayout, popularity: np.ndarray, keep_prob: float,
                  avoid_prob: float, cross_prob: float, transition: np.ndarray,
                  prev_first: np.ndarray | None, rng: np.random.Generator,
                  tilt: np.ndarray | None = None) -> np.ndarray:
    """First choices [T] of one layer: kept, following layer l-1 via `transition`, or fresh.

    `popularity` [G, E] is per segment, `transition` [E, E] is P(e_l | e_{l-1}), `prev_first`
    [T] the previous layer's first choices (None at layer 0) and `tilt` [G, E] the segment's
    popularity over the layer's mean, applied to transition rows too (None: no tilt).
    """
    n_tokens, n_experts = layout.seq.size, popularity.shape[1]
    uniforms = rng.random((5, n_tokens))  # fresh, source pick, transition, avoid, keep
    drawn = _categorical(popularity, layout.segment, uniforms[0])
    if prev_first is not None and cross_prob > 0:
        follow = _draw_transition(transition, prev_first.astype(np.int64), tilt,
                                  layout.segment, uniforms[2])
        drawn = np.where(uniforms[1] < cross_prob, follow, drawn)
    if avoid_prob > 0 and n_experts > 1:
        clash = np.flatnonzero((uniforms[3] < avoid_prob) & layout.continues
                               & (drawn == np.roll(drawn, 1)))
        drawn[clash] = _draw_without(popularity, layout.segment[clash],
                                     drawn[clash - 1][:, None], 1, rng)[:, 0]
    keep = (uniforms[4] < keep_prob) & layout.continues
    return drawn[_forward_fill(~keep)]


def _draw_transition(transition: np.ndarray, prev: np.ndarray, tilt: np.ndarray | None,
                     segment: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Draws from rows `prev` of `transition`, each reweighted by its segment's `tilt` row.

    Untilted: a cumulative table of E rows. Tilted: a table of G*E rows (segment, previous
    expert) while G E^2 <= _TABLE_ENTRIES, else [T, E] rows built in chunks of _CHUNK_TOKENS
    tokens, O(T E) time and O(_CHUNK_TOKENS E) memory.
    """
    n_experts = transition.shape[1]
    if tilt is None:
        return _draw_rows(_cumulative_rows(transition), n_experts, prev, uniforms)
    if tilt.shape[0] * n_experts**2 <= _TABLE_ENTRIES:
        rows = transition[None, :, :] * tilt[:, None, :]  # [G, E_prev, E]
        table = _cumulative_rows((rows / rows.sum(axis=2, keepdims=True)).reshape(-1, n_experts))
        return _draw_rows(table, n_experts, segment * n_experts + prev, uniforms)
    out = np.empty(prev.size, dtype=np.int64)
    for start in range(0, prev.size, _CHUNK_TOKENS):
        part = slice(start, start + _CHUNK_TOKENS)
        cum = np.cumsum(transition[prev[part]] * tilt[segment[part]], axis=1)
        out[part] = (cum < uniforms[part, None] * cum[:, -1:]).sum(axis=1)
    return np.minimum(out, n_experts - 1)


def rest_choices(layout: SequenceLayout, popularity: np.ndarray, keep_prob: float,
                 avoid_prob: float, first: np.ndarray, top_k: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Choices 2..k [T, k-1] of one layer given its first choices [T]."""
    n_tokens, n_experts = layout.seq.size, popularity.shape[1]
    if top_k == 1:
        return np.zeros((n_tokens, 0), dtype=np.int64)
    uniforms = rng.random((2, n_tokens))  # keep, avoid
    excluded = first[:, None]
    if avoid_prob > 0 and top_k < n_experts:
        avoid = (uniforms[1] < avoid_prob) & layout.continues
        excluded = np.stack([first, np.where(avoid, np.roll(first, 1), first)], axis=1)
    fresh = _draw_without(popularity, layout.segment, excluded, top_k - 1, rng)
    anchor = _forward_fill(~((uniforms[0] < keep_prob) & layout.continues))
    rest = fresh[anchor]
    return np.where(rest == first[:, None], first[anchor][:, None], rest)


def _draw_without(popularity: np.ndarray, rows: np.ndarray, excluded: np.ndarray, count: int,
                  rng: np.random.Generator) -> np.ndarray:
    """`count` draws per entry without replacement from `popularity[rows]`, not `excluded`."""
    n_experts = popularity.shape[1]
    n_excluded = excluded.shape[1]
    chosen = np.empty((rows.size, n_excluded + count), dtype=np.int64)
    chosen[:, :n_excluded] = excluded
    for slot in range(n_excluded, n_excluded + count):
        todo = np.arange(rows.size)
        for _ in range(_REJECTION_ROUNDS):
            cand = _categorical(popularity, rows[todo], rng.random(todo.size))
            clash = (chosen[todo, :slot] == cand[:, None]).any(axis=1)
            chosen[todo[~clash], slot] = cand[~clash]
            todo = todo[clash]
            if todo.size == 0:
                break
        if todo.size:  # Gumbel-max over the experts not yet taken (rare: very hot segments)
            keys = np.log(popularity[rows[todo]]) + rng.gumbel(size=(todo.size, n_experts))
            np.put_along_axis(keys, chosen[todo, :slot], -np.inf, axis=1)
            chosen[todo, slot] = keys.argmax(axis=1)
    return chosen[:, n_excluded:]


def layer_generators(rng: np.random.Generator, num_layers: int) -> list[np.random.Generator]:
    """Two child generators per layer (first choices, other choices), from `rng`."""
    return [np.random.default_rng(seed) for seed in rng.integers(0, 2**63, 2 * num_layers)]


def generate_layer(params: SynthParams, layer: int, layout: SequenceLayout,
                   prev_first: np.ndarray | None, rng_first: np.random.Generator,
                   rng_rest: np.random.Generator) -> np.ndarray:
    """Top-k choices [T, k] of one layer given the previous layer's first choices."""
    pop_first, pop_rest, tilt = sequence_popularity(params, layer, layout, rng_first)
    first = first_choices(layout, pop_first, params.keep_first[layer],
                          params.avoid_first[layer], params.cross_prob[layer],
                          params.transition[layer], prev_first, rng_first, tilt)
    rest = rest_choices(layout, pop_rest, params.keep_rest[layer], params.avoid_rest[layer],
                        first, params.top_k, rng_rest)
    return np.concatenate([first[:, None], rest], axis=1)


def generate_trace(params: SynthParams, num_tokens: int, num_sequences: int,
                   rng: np.random.Generator,
                   metadata: dict[str, str] | None = None) -> RouterTrace:
    """A synthetic trace of `num_tokens` tokens in `num_sequences` sequences from `params`."""
    layout = sequence_layout(num_tokens, num_sequences, params.segment_tokens)
    experts = np.empty((params.num_layers, num_tokens, params.top_k), dtype=np.int16)
    children = layer_generators(rng, params.num_layers)
    prev: np.ndarray | None = None
    for layer in range(params.num_layers):
        experts[layer] = generate_layer(params, layer, layout, prev, children[2 * layer],
                                        children[2 * layer + 1])
        prev = experts[layer, :, 0].astype(np.int64)
    meta = {"source": f"moesim trace synth ({params.generator})", "tool": "moesim trace synth",
            "generator_version": GENERATOR_VERSION, "num_experts": str(params.num_experts),
            **(metadata or {})}
    return RouterTrace(experts=experts, seq_id=layout.seq.astype(np.int32),
                       pos=layout.pos.astype(np.int32), metadata=meta)


def _independent(popularity: np.ndarray, top_k: int, generator: str, source: str,
                 notes: tuple[str, ...] = ()) -> SynthParams:
    """Parameters of independent draws: no repetition, no cross-layer, no prompt variation."""
    n_layers, n_experts = popularity.shape
    zeros = np.zeros(n_layers)
    return SynthParams(
        first_popularity=popularity, rest_popularity=popularity,
        concentration=np.full(n_layers, np.inf), keep_first=zeros, keep_rest=zeros,
        cross_prob=zeros, transition=np.full((n_layers, n_experts, n_experts), 1.0),
        top_k=top_k, generator=generator, source=source, notes=notes)


def uniform_params(num_experts: int, top_k: int, num_layers: int) -> SynthParams:
    """Baseline: every token picks k distinct experts uniformly at random, independently."""
    _check_shape(num_experts, top_k, num_layers)
    return _independent(np.full((num_layers, num_experts), 1.0), top_k, "uniform",
                        "uniform baseline")


def zipf_params(num_experts: int, top_k: int, num_layers: int, exponent: float,
                rng: np.random.Generator | None = None) -> SynthParams:
    """Baseline: first choice Zipf(`exponent`) over a random expert ranking per layer.

    The expert of rank r (1 = hottest) is the first choice with probability
    r^-s / H(E, s); the other k-1 choices are drawn without replacement from the same law.
    Without `rng` expert e has rank e + 1 in every layer.
    """
    _check_shape(num_experts, top_k, num_layers)
    if not math.isfinite(exponent) or exponent < 0:
        raise TraceError(f"--zipf exponent must be a finite number >= 0, got {exponent}")
    law = np.arange(1, num_experts + 1, dtype=np.float64) ** -exponent
    ranks = np.tile(np.arange(num_experts), (num_layers, 1))
    if rng is not None:
        ranks = rng.permuted(ranks, axis=1)
    return _independent(law[ranks], top_k, "zipf", f"zipf baseline, exponent {exponent:g}",
                        (f"zipf exponent {exponent:g} on the first choice",))


def _check_shape(num_experts: int, top_k: int, num_layers: int) -> None:
    """Raise TraceError unless 1 <= k <= E and L >= 1."""
    if num_layers < 1:
        raise TraceError(f"--layers must be at least 1, got {num_layers}")
    if not 1 <= top_k <= num_experts:
        raise TraceError(f"--top-k {top_k} must be between 1 and --experts {num_experts}")
