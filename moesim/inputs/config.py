"""Reading input files: the one place that parses YAML and JSON into pydantic models.

Every user-facing file (scenario, topology, model config, grid) goes through `read_mapping`
and `parse_model`, so a malformed file always yields one `ConfigError` that names the
file, the field and what to do.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    field_validator,
    model_validator,
)

from moesim.errors import ConfigError
from moesim.inputs.options import (
    A2aImpl,
    ActDtype,
    CopyChoice,
    Dedup,
    EplbPolicy,
    Fidelity,
    Overlap,
    Phase,
    Precision,
    SpVariant,
    WeightDtype,
)
from moesim.inputs.text import read_capped, utf8_text

__all__ = [
    "read_mapping",
    "parse_model",
    "load_model_file",
    "format_validation_error",
    "ExpertPlacementSpec",
    "ServeSpec",
    "Scenario",
    "load_scenario",
    "MAX_CONTEXT_TOKENS",
    "MAX_BATCH",
    "MAX_ITERATION_TOKENS",
    "MAX_SERVE_OUTPUT_TOKENS",
    "MAX_SERVE_REQUESTS",
]

ModelT = TypeVar("ModelT", bound=BaseModel)


# Limits of what `read_mapping` accepts, each far above any real input: a per-layer expert
# placement, the deepest documented input, nests 4 levels; the largest inputs (measurements
# of 256 ranks) hold about two million numbers. Integers must fit in int64 (numpy's counts).
MAX_NESTING = 64
MAX_VALUES = 5_000_000
MAX_YAML_BYTES = 16 << 20  # PyYAML parses a few hundred kB/s: 16 MiB is about a minute
MAX_JSON_BYTES = 1 << 30
_INT_LIMIT = 1 << 63
_NUMBER = re.compile(r"[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)")


class _OutOfRange:
    """An integer read from a file that does not fit in int64, reported by `_check_values`."""

    def __init__(self, text: str, line: int | None = None) -> None:
        self.text, self.line = text, line

    def describe(self) -> str:
        text = self.text
        if len(text) > 24:
            text = f"{text[:12]}... ({len(text)} chars)"
        where = f" at line {self.line}" if self.line is not None else ""
        return (f"integer {text}{where} is out of range; numbers must lie within "
                f"+-{_INT_LIMIT - 1} (int64)")


def _json_int(text: str) -> int | _OutOfRange:
    """json's parse_int: huge integers (Python refuses 4300+ digits) become a reported marker."""
    digits = text.lstrip("+-")
    if len(digits) > 19:
        return _OutOfRange(text)
    value = int(text)
    return value if -_INT_LIMIT < value < _INT_LIMIT else _OutOfRange(text)


def _json_constant(text: str) -> float:
    """json's parse_constant (NaN, Infinity, -Infinity): refused later unless allowed."""
    return float(text.replace("Infinity", "inf"))


class _Checks:
    """What moesim's YAML loaders add to PyYAML's safe loader: integers and dates report their
    line instead of a bare ValueError, and aliases that expand to more than MAX_VALUES values
    are refused before anything is built."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()  # type: ignore[misc]  # the loader's parser
        if node is not None:
            _check_expansion(node)
        return node

    def construct_checked_int(self, node: yaml.ScalarNode) -> int | _OutOfRange:
        text = str(node.value)
        line = node.start_mark.line + 1
        if len(text.replace("_", "").lstrip("+-")) > 66:  # longer than any int64, any base
            return _OutOfRange(text, line)
        try:
            value = int(self.construct_yaml_int(node))  # type: ignore[attr-defined]
        except ValueError:
            return _OutOfRange(text, line)
        return value if -_INT_LIMIT < value < _INT_LIMIT else _OutOfRange(text, line)

    def construct_checked_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return self.construct_yaml_timestamp(node)  # type: ignore[attr-defined]
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} looks like a date but is not one ({exc}); "
                "quote it to keep it a string", node.start_mark) from None


def _check_expansion(root: yaml.Node) -> None:
    """Count the values the composed YAML graph expands to (each alias counted in full, each
    node's count computed once), refusing more than MAX_VALUES: a few lines of nested aliases
    ("billion laughs") would otherwise build and validate billions of values."""
    sizes: dict[int, int] = {}
    pending: set[int] = set()  # nodes whose children are being counted (ancestors)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes or (not children_done and id(node) in pending):
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = ([part for pair in node.value for part in pair]
                    if isinstance(node, yaml.MappingNode) else list(node.value))
        if not children_done:
            pending.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        # a child still missing is an alias back to an ancestor: the nesting check reports it
        size = 1 + sum(sizes.get(id(child), 1) for child in children)
        if size > MAX_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"its aliases expand to more than {MAX_VALUES:,} values; moesim's "
                "inputs are far smaller", node.start_mark)
        sizes[id(node)] = size


class _Loader(_Checks, yaml.SafeLoader):
    """The pure-Python safe loader with moesim's checks: its error messages are the ones users
    see (line, column and problem)."""


_FastLoader: Any = None
if getattr(yaml, "__with_libyaml__", False):
    class _CLoader(_Checks, yaml.CSafeLoader):  # type: ignore[misc]
        """libyaml's parser with the same checks: ~10x faster on valid files."""

    _FastLoader = _CLoader

_loader: Any
for _loader in (_Loader, _FastLoader):
    if _loader is not None:
        _loader.add_constructor("tag:yaml.org,2002:int", _Checks.construct_checked_int)
        _loader.add_constructor("tag:yaml.org,2002:timestamp",
                                _Checks.construct_checked_timestamp)


def _load_yaml(text: str) -> Any:
    """Parse YAML with libyaml when it is there; a document it refuses (or cannot convert) is
    parsed again by the pure-Python loader, whose error is the one reported."""
    if _FastLoader is not None:
        try:
            return yaml.load(text, Loader=_FastLoader)  # noqa: S506 (a CSafeLoader subclass)
        except (yaml.YAMLError, RecursionError, ValueError, OverflowError):
            pass
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _field(where: tuple[Any, ...]) -> str:
    """A value's place, spelled as `format_validation_error` spells pydantic's locations."""
    return ".".join(str(part) for part in where) or "(top level)"


def _scalar_problem(value: Any, finite: bool) -> str | None:
    """Why a parsed scalar cannot be used, or None."""
    if isinstance(value, _OutOfRange):
        return value.describe()
    if not finite:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return (f"number {value} is not finite (NaN, Infinity or beyond 1.8e308); "
                "give a finite number")
    if isinstance(value, str) and len(value) < 400 and _NUMBER.fullmatch(value.strip()):
        number = float(value.replace("_", ""))
        if not math.isfinite(number):
            return f"number {value} overflows a float (beyond 1.8e308); give a finite number"
    return None


def _check_values(data: Any, source: str, finite: bool) -> None:
    """Walk the parsed document without recursion: refuse nesting deeper than MAX_NESTING,
    more than MAX_VALUES values (YAML aliases can expand a small file enormously), integers
    beyond int64 and, when `finite`, NaN and infinite numbers; each named by its field."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    count = 0
    while stack:
        container, where = stack.pop()
        if len(where) >= MAX_NESTING:
            raise ConfigError(f"{source} nests lists and mappings more than {MAX_NESTING} "
                              f"levels deep (under field '{_field(where[:3])}...'); moesim's "
                              "inputs nest a few levels")
        items = container.items() if isinstance(container, dict) else enumerate(container)
        count += len(container)
        if count > MAX_VALUES:
            raise ConfigError(f"{source} holds more than {MAX_VALUES:,} values (do YAML "
                              "aliases expand it?); moesim's inputs are far smaller")
        for key, value in items:
            for item in (key, value) if isinstance(container, dict) else (value,):
                if isinstance(item, (dict, list)):
                    stack.append((item, (*where, key)))
                    continue
                problem = _scalar_problem(item, finite)
                if problem:
                    which = "a key" if item is key and isinstance(container, dict) else "field"
                    name = f"{which} under '{_field(where)}'" if which == "a key" else (
                        f"field '{_field((*where, key))}'")
                    raise ConfigError(f"{source}: {name}: {problem}")


def _decode(raw: bytes, path: Path, what: str) -> str:
    """The file's text, or one ConfigError saying it is binary or not UTF-8."""
    return utf8_text(raw, f"{what} file {path}", ConfigError, kind="YAML or JSON text")


def read_mapping(path: str | Path, what: str = "input", *, finite: bool = True) -> dict[str, Any]:
    """Parse a YAML or JSON file whose top level must be a mapping.

    Every defect is one ConfigError naming the file (and the field where there is one): a
    missing, unreadable, binary or non-UTF-8 file, a file above MAX_YAML_BYTES /
    MAX_JSON_BYTES, a syntax error, nesting deeper than MAX_NESTING, an integer beyond int64
    and, unless `finite` is False, NaN or an infinite number.
    """
    path = Path(path)
    is_json = path.suffix.lower() == ".json"
    limit = MAX_JSON_BYTES if is_json else MAX_YAML_BYTES
    raw = read_capped(path, f"{what} file {path}", ConfigError, limit,
                      f"moesim reads as {'JSON' if is_json else 'YAML'}")
    size = len(raw)
    key = (is_json, finite, raw)
    parsed = _PARSED.get(key)
    if parsed is not None:  # the same bytes parsed before in this process
        return copy.deepcopy(parsed)
    text = _decode(raw, path, what)
    try:
        if is_json:
            data = json.loads(text, parse_int=_json_int, parse_constant=_json_constant)
        else:
            data = _load_yaml(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{what} file {path} is not valid JSON: {exc.msg} at line {exc.lineno}"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{what} file {path} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{what} file {path} nests lists and mappings too deeply to parse; "
                          "moesim's inputs nest a few levels") from None
    except (ValueError, OverflowError) as exc:  # a value the parser could not convert
        raise ConfigError(f"{what} file {path} holds a value that cannot be read: {exc}") from None
    if data is None:
        raise ConfigError(f"{what} file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} file {path} must hold a mapping of fields at top level, "
            f"got {type(data).__name__}"
        )
    _check_values(data, f"{what} file {path}", finite)
    if size <= _PARSED_MAX_BYTES:
        if len(_PARSED) >= _PARSED_MAX_FILES:
            _PARSED.pop(next(iter(_PARSED)))  # the oldest
        _PARSED[key] = copy.deepcopy(data)
    return data


# Files parsed in this process, by content: a sweep, a served run or repeated estimates read the
# same topology and GPU catalogue YAML many times, and pure-Python YAML parsing was ~75% of a
# warm analytic estimate (benchmarks/suite.py estimate-analytic). Keyed by the bytes read, so an
# edited file is parsed again; callers get a deep copy (they may change it).
_PARSED: dict[tuple[bool, bool, bytes], dict[str, Any]] = {}
_PARSED_MAX_FILES = 64
_PARSED_MAX_BYTES = 1 << 20


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One readable message per pydantic error: `source: field.path: problem`."""
    lines = []
    errors = exc.errors()
    for err in errors[:_MAX_REPORTED]:
        # a key read from a file can be arbitrarily long: cut each part of the location
        loc = ".".join(_cut(str(part), 60) for part in err["loc"]) or "(top level)"
        msg = _cut(err["msg"], 300)
        if err["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against the documented fields"
        lines.append(f"{source}: field '{loc}': {msg}")
    if len(errors) > _MAX_REPORTED:
        lines.append(f"and {len(errors) - _MAX_REPORTED} more errors")
    return "; ".join(lines)


_MAX_REPORTED = 10  # errors listed per message (one bad field repeated per rank can make 1000s)


def _cut(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters and one line."""
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_model(model: type[ModelT], data: dict[str, Any], source: str) -> ModelT:
    """Validate `data` into `model`, turning pydantic errors into one ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_model_file(model: type[ModelT], path: str | Path, what: str) -> ModelT:
    """Read and validate a YAML/JSON file into `model`."""
    return parse_model(model, read_mapping(path, what), f"{what} file {path}")


class ExpertPlacementSpec(BaseModel):
    """Which experts each EP rank holds, as a file or a scenario's inline mapping.

    `ep_ranks[i]` lists the experts EP rank i holds in every MoE layer; `layers[l][i]` gives it
    per layer instead. An expert listed on several EP ranks is replicated; its tokens pick a
    copy by `copy_choice` (moesim.traffic.experts). The model-dependent checks (every expert
    held, ids below the model's experts, one list per EP rank, one entry per layer) run when
    the scenario is resolved.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ep_ranks: list[list[NonNegativeInt]] | None = None
    layers: list[list[list[NonNegativeInt]]] | None = None
    copy_choice: CopyChoice = "round_robin"

    @model_validator(mode="after")
    def _one_form(self) -> ExpertPlacementSpec:
        if (self.ep_ranks is None) == (self.layers is None):
            raise ValueError("give exactly one of 'ep_ranks' (every layer alike) or 'layers' "
                             "(a list of ep_ranks per MoE layer)")
        for layer, ranks in enumerate(self.layers or [self.ep_ranks or []]):
            for rank, experts in enumerate(ranks):
                if len(set(experts)) != len(experts):
                    where = f"layer {layer} " if self.layers is not None else ""
                    raise ValueError(f"{where}EP rank {rank} lists an expert twice ({experts}); "
                                     "list each expert once per rank")
        return self


# Limits of the workload fields, far above anything served today; beyond them a run would
# allocate without bound or never finish, so the input is refused with the limit named.
# Token positions are int32 in traces and steps (moesim.trace.format): a context must stay well
# inside 2**31. 100M tokens is 10x the longest context any released model takes (Llama 4
# Scout, 10M).
MAX_CONTEXT_TOKENS = 100_000_000
# Sequences in one step: a million is ~1000x what serving engines batch (vLLM --max-num-seqs
# 256-1024). The step's size in routed entries is checked too (moesim.traffic.workload).
MAX_BATCH = 1_000_000
# Tokens of one serving iteration: 16x the largest vLLM/SGLang --max-num-batched-tokens in
# common use (65536); every iteration's routing is an int16 [layers, tokens, k] array.
MAX_ITERATION_TOKENS = 1 << 20
# A serving run keeps every output token's time (ITL, TPOT) and runs at least output tokens /
# batch iterations, each a timed step: 100M output tokens is ~3 GB of token times and hours of
# simulation; the default run (200 requests x 256 tokens) is 51,200.
MAX_SERVE_OUTPUT_TOKENS = 100_000_000
# Requests of one serving run (the `requests` field's own limit and rate x duration_s's).
MAX_SERVE_REQUESTS = 10_000_000
# Requests a run sends when `requests` is not given (moesim.serve.requests.DEFAULT_REQUESTS).
_DEFAULT_SERVE_REQUESTS = 200
# Coefficients of variation above 100 are no published arrival or length distribution, and
# make the gamma / lognormal draws degenerate (a gamma shape of 1 / cv**2 underflows to 0).
_MAX_CV = 100.0


class ServeSpec(BaseModel):
    """A served workload and the serving engine's knobs (`moesim serve`, moesim.serve).

    Arrivals come from exactly one of `rate` (open loop, gamma inter-arrival times of mean
    1/rate and coefficient of variation `burst_cv`: 1 is Poisson), `concurrency` (closed loop:
    that many clients, each sending its next request when its last one finishes) or
    `requests_file` (replay). Every field is also a flag of `moesim serve`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float | None = Field(None, gt=0, allow_inf_nan=False,
                               description="open loop: requests per second")
    burst_cv: float = Field(1.0, gt=0, le=_MAX_CV, allow_inf_nan=False,
                            description="coefficient of variation of inter-arrival times (1: "
                            "Poisson, above 1: bursty, gamma)")
    concurrency: int | None = Field(None, ge=1, le=MAX_BATCH, description="closed loop: "
                                    "clients, each sending its next request when its last one "
                                    "finishes")
    requests_file: str | None = Field(None, description="JSONL to replay, one request a line "
                                      "(arrival_s, prompt_tokens, output_tokens)")
    field_map: dict[str, str] = Field(default_factory=dict, description="the file's names for "
                                      "the fields, e.g. arrival_s=timestamp,prompt_tokens=input")
    isl: int = Field(1024, ge=1, le=MAX_CONTEXT_TOKENS,
                     description="prompt tokens per request (the mean with --isl-cv)")
    osl: int = Field(256, ge=1, le=MAX_CONTEXT_TOKENS,
                     description="output tokens per request (the mean with --osl-cv)")
    isl_cv: float = Field(0.0, ge=0, le=_MAX_CV, allow_inf_nan=False,
                          description="coefficient of variation of prompt lengths (lognormal)")
    osl_cv: float = Field(0.0, ge=0, le=_MAX_CV, allow_inf_nan=False,
                          description="coefficient of variation of output lengths (lognormal)")
    requests: int | None = Field(None, ge=1, le=MAX_SERVE_REQUESTS,
                                 description="requests to send (default 200)")
    duration_s: float | None = Field(None, gt=0, allow_inf_nan=False,
                                     description="open loop: send requests for this long instead")
    warmup_requests: int = Field(0, ge=0, le=MAX_SERVE_REQUESTS,
                                 description="first requests left out of the statistics")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random seed of arrivals and lengths")
    max_num_seqs: int = Field(256, ge=1, le=MAX_BATCH, description="running sequences per "
                              "scheduler (vLLM --max-num-seqs)")
    max_num_batched_tokens: int = Field(8192, ge=1, le=MAX_ITERATION_TOKENS,
                                        description="tokens per iteration (vLLM "
                                        "--max-num-batched-tokens)")
    block_size: int = Field(16, ge=1, le=1 << 16, description="tokens per paged KV-cache block")
    kv_cache_tokens: int | None = Field(None, ge=1, le=10**15, description="KV cache per "
                                        "attention group, tokens (default: what the memory fit "
                                        "leaves)")
    dp_balance: Literal["round_robin", "least_loaded"] = Field(
        "round_robin", description="how requests are spread over attention-DP schedulers")
    disagg: str | None = Field(None, description="prefill/decode disaggregation "
                               "xPyD:PREFILL_LAYOUT:DECODE_LAYOUT, e.g. 1P1D:EP4:EP4")
    slo_ttft_ms: float | None = Field(None, gt=0, allow_inf_nan=False,
                                      description="TTFT target for goodput (ms)")
    slo_tpot_ms: float | None = Field(None, gt=0, allow_inf_nan=False,
                                      description="TPOT target for goodput (ms)")

    @model_validator(mode="after")
    def _one_arrival_process(self) -> ServeSpec:
        given = [name for name in ("rate", "concurrency", "requests_file")
                 if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of rate, concurrency and requests_file, not {given}")
        if self.duration_s is not None and self.rate is None:
            raise ValueError("duration_s needs an open-loop rate")
        if self.isl + self.osl > MAX_CONTEXT_TOKENS:
            raise ValueError(f"isl {self.isl} + osl {self.osl} tokens per request exceed the "
                             f"{MAX_CONTEXT_TOKENS:,}-token context moesim simulates (token "
                             "positions are int32); lower isl or osl")
        self._check_work()
        return self

    def _check_work(self) -> None:
        """Refuse a run too large to simulate (MAX_SERVE_REQUESTS, MAX_SERVE_OUTPUT_TOKENS)
        from the requests it will send, before any is drawn."""
        if self.requests is not None:
            requests, what = float(self.requests), f"requests {self.requests}"
        elif self.duration_s is not None and self.rate is not None:
            requests = self.rate * self.duration_s
            what = f"rate {self.rate:g} x duration_s {self.duration_s:g}"
            if requests > MAX_SERVE_REQUESTS:
                raise ValueError(f"{what} = {requests:.3g} requests, above the "
                                 f"{MAX_SERVE_REQUESTS:,} a serving run simulates; shorten "
                                 "duration_s or lower rate")
        elif self.requests_file is not None:
            return  # as many as the file holds (the file's size bounds them)
        else:
            requests, what = float(_DEFAULT_SERVE_REQUESTS), "the default 200 requests"
        tokens = requests * self.osl
        if tokens > MAX_SERVE_OUTPUT_TOKENS:
            raise ValueError(f"{what} x osl {self.osl} = {tokens:.3g} output tokens to simulate, "
                             f"above the {MAX_SERVE_OUTPUT_TOKENS:,} a serving run keeps (every "
                             "token's time is kept and each iteration is a timed step); lower "
                             "requests (or duration_s) or osl")

    @property
    def arrival(self) -> str:
        """`rate`, `concurrency`, `replay`, or `` when none is given yet."""
        if self.rate is not None:
            return "rate"
        if self.concurrency is not None:
            return "concurrency"
        return "replay" if self.requests_file is not None else ""


class Scenario(BaseModel):
    """One simulation input: model, trace, placement, topology and workload; flags override it.

    Every field is also a command-line flag (`--field-name`) of `moesim run` (moesim.cli.flags).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "scenario"
    description: str = ""
    model: str | dict[str, Any] = Field(
        "mixtral-8x7b", description="preset name, HF config.json or ModelSpec YAML (a scenario "
        "file may also give a mapping of ModelSpec fields)")
    trace: str = Field("bundled:mixtral8x7b_humaneval_decode",
                       description="router trace .npz or bundled:NAME")
    placement: str | dict[str, int] = Field(
        "EP8", description="layout: TP8, EP8, EP4xDP2, SP8, TP2xEP4, ... (a scenario file may "
        "give the six product-form sizes)")
    expert_placement: str | ExpertPlacementSpec | None = Field(
        None, description="YAML/JSON file of the experts each EP rank holds (replicas allowed); "
        "default: expert e on EP rank e // (E / moe_ep)")
    topology: str | None = Field(None, description="topology preset name or YAML file")
    phase: Phase = Field("prefill", description="the step `latency`, traffic and imbalance "
                         "describe")
    act_dtype: ActDtype = Field("bf16", description="activation and dispatch dtype (and the KV "
                                "cache's unless kv_dtype)")
    kv_dtype: ActDtype | None = Field(None, description="KV cache dtype (default: act_dtype)")
    dedup: Dedup = Field("none", description="dispatch dedup: one copy per (token, expert), "
                         "per destination GPU, or per destination node")
    sp_variant: SpVariant = Field("ring", description="SP prefill K/V exchange")
    batch: int | None = Field(None, ge=1, le=MAX_BATCH, description="sequences in the batch")
    context: int | None = Field(None, ge=1, le=MAX_CONTEXT_TOKENS,
                                description="prompt tokens per sequence")
    decode_steps: int = Field(1, ge=1, le=4096, description="average TPOT over N decode steps")
    # Prefill is scheduled in chunks of at most this many tokens (vLLM's chunked prefill;
    # memory.py sizes activations for the same chunk). TTFT sums the chunk steps.
    prefill_chunk_tokens: int = Field(8192, ge=1, le=MAX_CONTEXT_TOKENS,
                                      description="largest prefill chunk step "
                                      "(tokens); TTFT sums the chunks")

    weight_dtype: WeightDtype = Field("bf16", description="weight format (fp8: W8A8; "
                                      "fp8-block: 128x128 scales; int4: W4A16; nvfp4, mxfp4)")
    expert_weight_dtype: WeightDtype | None = Field(
        None, description="routed experts' weight format (default: weight_dtype; gpt-oss: mxfp4)")
    kernels: str = Field("auto", description="kernel profile: vllm, sglang, trtllm, roofline, a "
                         "profile YAML, or auto (vllm where it covers the GPU, else roofline)")
    fidelity: Fidelity = Field("des", description="des: flows and stragglers; analytic: fast")
    layers: int | None = Field(None, ge=1, description="simulate only the first N MoE layers "
                               "(model and trace)")
    trace_tokens: int | None = Field(None, ge=1, description="replay only the first N tokens "
                                     "of the trace")
    redundant_experts: int = Field(0, ge=0, le=4096, description="EPLB: extra expert slots "
                                   "over all EP ranks (moe_ep must divide experts + R)")
    eplb: EplbPolicy = Field("none", description="expert load balancing from the trace's "
                             "measured load: greedy, or DeepSeek's hierarchical EPLB")
    eplb_window: int | None = Field(None, ge=1, description="EPLB: measure expert load over the "
                                    "trace's first N tokens (default: all of it)")
    rebalance_steps: int | None = Field(None, ge=1, description="serve: rerun EPLB every N "
                                        "iterations on the load of the last N, moving weights")
    overlap: Overlap = Field("none", description="shared: shared experts beside the dispatch; "
                             "tbo: also two micro-batches, one's all-to-all beside the other's "
                             "compute")
    a2a: A2aImpl = Field("direct", description="MoE all-to-all: direct pairwise, allgather "
                         "(+ reduce-scatter), deepep-normal, deepep-ll")
    dispatch_dtype: ActDtype | None = Field(
        None, description="dispatch dtype (default: fp8 with 128-channel scales for deepep-*, "
        "else act_dtype); combine runs in act_dtype")
    mtp: int = Field(0, ge=0, le=16, description="multi-token prediction / speculative "
                     "decoding: draft tokens per decode step")
    mtp_acceptance: list[float] = Field(
        [0.8], description="acceptance rate of each draft token (one value: every position; "
        "comma-separated: per position)")
    serve: ServeSpec | None = Field(None, description="served workload (moesim serve)")

    @field_validator("mtp_acceptance", mode="before")
    @classmethod
    def _acceptance_list(cls, value: Any) -> Any:
        if isinstance(value, (int, float)):
            return [value]
        if isinstance(value, str):
            try:
                return [float(part) for part in value.split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"cannot read {value!r}; give rates in 0..1, comma-separated "
                                 "per draft position, e.g. 0.8 or 0.9,0.7") from None
        return value

    @model_validator(mode="after")
    def _moe_engine_rules(self) -> Scenario:
        rates = self.mtp_acceptance
        if not rates or any(not 0.0 <= r <= 1.0 for r in rates):
            raise ValueError(f"mtp_acceptance {rates}: give rates in 0..1, e.g. 0.8 or 0.9,0.7")
        if self.mtp and len(rates) not in (1, self.mtp):
            raise ValueError(f"mtp_acceptance gives {len(rates)} rates but mtp is {self.mtp}; "
                             "give one rate or one per draft position")
        if self.redundant_experts and self.eplb == "none":
            raise ValueError(f"redundant_experts {self.redundant_experts} needs a balancing "
                             "policy to place the copies: give eplb greedy or deepseek")
        if self.rebalance_steps is not None and self.eplb == "none":
            raise ValueError("rebalance_steps needs eplb greedy or deepseek")
        if self.eplb_window is not None and self.eplb == "none":
            raise ValueError("eplb_window needs eplb greedy or deepseek")
        if self.a2a != "direct" and self.dedup != "none":
            raise ValueError(f"dedup {self.dedup} applies to a2a direct: deepep-normal dedups "
                             "by node itself, deepep-ll and allgather send what they send; "
                             "leave dedup at none")
        if self.eplb != "none" and self.expert_placement is not None:
            raise ValueError("give either eplb (a placement computed from the trace's load) or "
                             "expert_placement (a placement from a file), not both")
        return self

    @property
    def precision(self) -> Precision:
        """The run's dtypes (moesim.inputs.options.Precision)."""
        return Precision(weight=self.weight_dtype, expert_weight=self.expert_weight_dtype,
                         act=self.act_dtype, kv=self.kv_dtype)


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario YAML; relative trace/topology/model paths resolve against its folder."""
    path = Path(path)
    scenario = load_model_file(Scenario, path, "scenario")
    updates: dict[str, Any] = {}
    for field_name in ("trace", "topology", "model", "expert_placement", "kernels"):
        value = getattr(scenario, field_name)
        if isinstance(value, str) and _looks_like_path(value):
            candidate = path.parent / value
            if candidate.exists():
                updates[field_name] = str(candidate)
    return scenario.model_copy(update=updates) if updates else scenario


def _looks_like_path(value: str) -> bool:
    """A value with a file suffix or a slash names a file rather than a preset."""
    return not value.startswith("bundled:") and (
        "/" in value or Path(value).suffix in {".npz", ".yaml", ".yml", ".json"}
    )
