"""Requests of a served workload: when they arrive, how long they are, which tokens they replay.

Arrival processes (`ServeSpec`):
- open loop at `rate` requests/s: inter-arrival times are gamma distributed with mean 1/rate
  and coefficient of variation `burst_cv` (shape 1/cv^2; cv = 1 is a Poisson process, cv > 1
  bursty), `requests` of them (default 200) or as many as arrive within `duration_s`;
- closed loop with `concurrency` clients: each sends its first request at 0 and its next one
  the moment its last one finishes (no think time), as vLLM's serving benchmark and genai-perf
  measure at a "concurrency"; the simulator makes those arrivals (`Request.client`);
- replay of a JSONL file, one request a line with `arrival_s`, `prompt_tokens` and
  `output_tokens` (`field_map` renames them), sorted by arrival.

Lengths are `isl`/`osl`, or lognormal with those means and coefficients of variation
`isl_cv`/`osl_cv` (rounded, at least 1), or the file's.

Each request replays one sequence of the router trace token by token, its prompt and its output
alike (request i takes trace sequence i mod S, later reuses of a sequence start further along
it), so an iteration routes exactly the tokens it runs (`Request.trace_index`).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import ConfigError, MoesimError
from moesim.inputs.config import (
    MAX_CONTEXT_TOKENS,
    MAX_SERVE_OUTPUT_TOKENS,
    MAX_SERVE_REQUESTS,
    ServeSpec,
)
from moesim.inputs.text import utf8_text

__all__ = [
    "DEFAULT_REQUESTS",
    "REQUEST_FIELDS",
    "Request",
    "TraceSequences",
    "lengths",
    "open_loop_requests",
    "read_requests_file",
    "jsonl_records",
    "decode_line",
    "closed_loop_first",
]

DEFAULT_REQUESTS = 200
REQUEST_FIELDS = ("arrival_s", "prompt_tokens", "output_tokens")


@dataclass(eq=False)
class Request:
    """One request and its progress (the scheduler advances `computed` and `emitted`)."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    sequence: int = 0  # trace sequence it replays
    offset: int = 0  # where in that sequence its token 0 starts
    client: int | None = None  # closed loop: the client that sent it
    computed: int = 0  # tokens whose K/V is in the cache
    emitted: int = 0  # output tokens produced so far
    blocks: int = 0  # KV-cache blocks held
    group: int = -1  # attention-DP scheduler it runs on
    preemptions: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None
    handoff_s: float | None = None  # disaggregated: when the prefill engine handed it on
    token_times_s: list[float] = field(default_factory=list)

    @property
    def known(self) -> int:
        """Tokens whose content is known: the prompt and the output so far."""
        return self.prompt_tokens + self.emitted

    @property
    def done(self) -> bool:
        """Whether every output token has been produced."""
        return self.emitted >= self.output_tokens

    @property
    def decoding(self) -> bool:
        """Whether its next iteration computes just the last token produced."""
        return self.emitted > 0 and self.computed == self.known - 1

    def emit(self, now_s: float) -> None:
        """One output token produced at `now_s`."""
        self.emitted += 1
        self.token_times_s.append(now_s)
        if self.first_token_s is None:
            self.first_token_s = now_s
        if self.done:
            self.finish_s = now_s


class TraceSequences:
    """The router trace's sequences: where each starts and how long it is."""

    def __init__(self, seq_id: np.ndarray) -> None:
        self.starts = np.flatnonzero(np.r_[True, seq_id[1:] != seq_id[:-1]])
        self.lengths = np.diff(np.r_[self.starts, seq_id.size])
        self.count = int(self.starts.size)

    def assign(self, request: Request, expected: int) -> None:
        """Give `request` (the `request.id`-th) its trace sequence: sequence id mod S; the k-th
        reuse of a sequence starts k / ceil(expected / S) of the way along it."""
        seq = request.id % self.count
        reuse = request.id // self.count
        spread = max(int(np.ceil(expected / self.count)), 1)
        request.sequence = seq
        request.offset = int((reuse % spread) * self.lengths[seq] // spread)

    def trace_index(self, sequence: np.ndarray, offset: np.ndarray,
                    positions: np.ndarray) -> np.ndarray:
        """Trace token of each (sequence, offset, position), a sequence tiled when too short."""
        length = self.lengths[sequence]
        return self.starts[sequence] + (offset + positions) % length


def lengths(mean: int, cv: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` lengths: all `mean`, or lognormal with that mean and coefficient of variation."""
    if cv == 0:
        return np.full(count, mean, dtype=np.int64)
    sigma2 = np.log1p(cv * cv)
    draws = rng.lognormal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2), count)
    return np.maximum(1, np.rint(draws)).astype(np.int64)


def open_loop_requests(spec: ServeSpec, rng: np.random.Generator) -> list[Request]:
    """Requests arriving at `spec.rate` (gamma inter-arrival times), `spec.requests` of them or
    as many as arrive within `spec.duration_s`."""
    assert spec.rate is not None
    shape = 1.0 / (spec.burst_cv * spec.burst_cv)
    scale = 1.0 / (spec.rate * shape)
    if spec.duration_s is not None:
        times: list[float] = []
        now = 0.0
        while True:
            now += float(rng.gamma(shape, scale)) if times else 0.0
            if now > spec.duration_s or len(times) >= 10_000_000:
                break
            times.append(now)
        arrivals = np.array(times)
    else:
        count = spec.requests or DEFAULT_REQUESTS
        gaps = rng.gamma(shape, scale, count)
        arrivals = np.concatenate(([0.0], np.cumsum(gaps[1:])))
    prompts = lengths(spec.isl, spec.isl_cv, arrivals.size, rng)
    outputs = lengths(spec.osl, spec.osl_cv, arrivals.size, rng)
    return [Request(i, float(t), int(p), int(o))
            for i, (t, p, o) in enumerate(zip(arrivals, prompts, outputs, strict=True))]


def read_requests_file(path: str | Path, field_map: dict[str, str]) -> list[Request]:
    """The requests of a JSONL file, sorted by arrival; one ConfigError names a bad line.

    Each line is one JSON object whose token counts are whole numbers in 1..MAX_CONTEXT_TOKENS
    (prompt + output within the context too) and whose arrival is a finite time >= 0; the file
    must be UTF-8 text and may hold at most MAX_SERVE_REQUESTS requests and
    MAX_SERVE_OUTPUT_TOKENS output tokens in all (ServeSpec's limits).
    """
    unknown = sorted(set(field_map) - set(REQUEST_FIELDS))
    if unknown:
        raise ConfigError(f"--field-map names {unknown}; map only {', '.join(REQUEST_FIELDS)}")
    names = {name: field_map.get(name, name) for name in REQUEST_FIELDS}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"requests file {path} does not exist")
    rows: list[tuple[float, int, int]] = []
    output_tokens = 0
    for number, data in jsonl_records(path, "requests file", ConfigError):
        if not isinstance(data, dict):
            raise ConfigError(f"requests file {path} line {number} is not a JSON object; write "
                              f"one object a line with {', '.join(names.values())}")
        row = _request_row(data, names, path, number)
        rows.append(row)
        output_tokens += row[2]
        if len(rows) > MAX_SERVE_REQUESTS:
            raise ConfigError(f"requests file {path} holds more than {MAX_SERVE_REQUESTS:,} "
                              f"requests (line {number}), above what a serving run simulates; "
                              "replay a shorter file")
        if output_tokens > MAX_SERVE_OUTPUT_TOKENS:
            raise ConfigError(f"requests file {path}: its output tokens pass "
                              f"{MAX_SERVE_OUTPUT_TOKENS:,} at line {number}, above what a "
                              "serving run keeps; replay fewer or shorter requests")
    if not rows:
        raise ConfigError(f"requests file {path} holds no request; write one JSON object a "
                          f"line with {', '.join(names.values())}")
    rows.sort(key=lambda row: row[0])
    return [Request(i, t, p, o) for i, (t, p, o) in enumerate(rows)]


# ---- JSON lines, read defensively -----------------------------------------------------------

_MAX_JSON_INT_DIGITS = 19  # int64's; longer integers are no count or time anyone means


class _HugeInteger(ValueError):
    """An integer literal longer than int64 (json's parse_int refuses to build it)."""


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_JSON_INT_DIGITS:
        raise _HugeInteger(text)
    return int(text)


def _json_constant(text: str) -> float:
    """NaN, Infinity and -Infinity as floats: the callers refuse them by field."""
    return float(text.replace("Infinity", "inf"))


def decode_line(raw: bytes, number: int, where: str, error: type[MoesimError]) -> str:
    """One line of a UTF-8 text file as text, or `error` naming the file, line and byte."""
    return utf8_text(raw, where, error, line=number)


def jsonl_records(path: Path, what: str, error: type[MoesimError]) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a UTF-8 JSON-lines file, read line by
    line; a line that is not UTF-8 or not JSON, nests too deeply or holds an integer beyond
    int64 is one `error` naming `what`, the file and the line. NaN and Infinity come back as
    floats for the caller to refuse by field."""
    where = f"{what} {path}"
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise error(f"cannot read {where}: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            text = decode_line(raw, number, where, error)
            if not text.strip():
                continue
            try:
                value = json.loads(text, parse_int=_json_int, parse_constant=_json_constant)
            except json.JSONDecodeError as exc:
                raise error(f"{where} line {number} is not JSON: {exc.msg} (column "
                            f"{exc.colno})") from None
            except _HugeInteger as exc:
                digits = len(str(exc).lstrip("-"))
                raise error(f"{where} line {number} holds a {digits}-digit integer, beyond "
                            "int64; give a realistic number") from None
            except RecursionError:
                raise error(f"{where} line {number} nests lists or objects too deeply to "
                            "read; write one flat JSON object a line") from None
            except (ValueError, OverflowError) as exc:
                raise error(f"{where} line {number} holds a value that cannot be read: "
                            f"{exc}") from None
            yield number, value


def _request_row(data: dict[str, Any], names: dict[str, str], path: Path, number: int
                 ) -> tuple[float, int, int]:
    """(arrival_s, prompt_tokens, output_tokens) of one line, checked."""
    where = f"requests file {path} line {number}"
    values: list[float] = []
    for field_name, key in names.items():
        if key not in data:
            raise ConfigError(f"{where} has no '{key}' ({field_name}); name it with "
                              f"--field-map {field_name}=NAME")
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, got "
                              f"{type(value).__name__}")
        if not math.isfinite(value):
            what = "a finite time >= 0" if field_name == "arrival_s" else "a whole number >= 1"
            raise ConfigError(f"{where}: '{key}' is {value}; it must be {what}")
        values.append(value)
    arrival, prompt, output = values
    if arrival < 0:
        raise ConfigError(f"{where}: arrival {arrival} must be a finite time >= 0")
    for field_name, value in (("prompt_tokens", prompt), ("output_tokens", output)):
        if value != int(value) or value < 1:
            raise ConfigError(f"{where}: prompt and output tokens must be whole numbers >= 1, "
                              f"got {names[field_name]} {value}")
        if value > MAX_CONTEXT_TOKENS:
            raise ConfigError(f"{where}: {names[field_name]} {value:.6g} is above the "
                              f"{MAX_CONTEXT_TOKENS:,}-token context moesim simulates; fix "
                              "the line or drop it")
    if prompt + output > MAX_CONTEXT_TOKENS:
        raise ConfigError(f"{where}: prompt {int(prompt)} + output {int(output)} tokens exceed "
                          f"the {MAX_CONTEXT_TOKENS:,}-token context moesim simulates; fix the "
                          "line or drop it")
    return float(arrival), int(prompt), int(output)


def closed_loop_first(spec: ServeSpec, rng: np.random.Generator
                      ) -> tuple[list[Request], deque[tuple[int, int]]]:
    """Closed loop: each client's first request at 0, and the lengths of the requests still to
    send as (prompt, output) in order."""
    assert spec.concurrency is not None
    total = spec.requests or DEFAULT_REQUESTS
    prompts = lengths(spec.isl, spec.isl_cv, total, rng)
    outputs = lengths(spec.osl, spec.osl_cv, total, rng)
    first = min(spec.concurrency, total)
    requests = [Request(i, 0.0, int(prompts[i]), int(outputs[i]), client=i) for i in range(first)]
    rest = deque((int(p), int(o)) for p, o in zip(prompts[first:], outputs[first:], strict=True))
    return requests, rest
