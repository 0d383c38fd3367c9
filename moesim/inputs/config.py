"""Reading input files: the one place that parses YAML and JSON into pydantic models.

Every user-facing file (scenario, topology, model config, grid) goes through `read_mapping`
and `parse_model`, so a malformed file always yields one `ConfigError` that names the
file, the field and what to do.
"""

from __future__ import annotations

import json
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

__all__ = [
    "read_mapping",
    "parse_model",
    "load_model_file",
    "format_validation_error",
    "ExpertPlacementSpec",
    "ServeSpec",
    "Scenario",
    "load_scenario",
]

ModelT = TypeVar("ModelT", bound=BaseModel)


def read_mapping(path: str | Path, what: str = "input") -> dict[str, Any]:
    """Parse a YAML or JSON file whose top level must be a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{what} file {path} is not valid JSON: {exc.msg} at line {exc.lineno}"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{what} file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{what} file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} file {path} must hold a mapping of fields at top level, "
            f"got {type(data).__name__}"
        )
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One readable message per pydantic error: `source: field.path: problem`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against the documented fields"
        lines.append(f"{source}: field '{loc}': {msg}")
    return "; ".join(lines)


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
    burst_cv: float = Field(1.0, gt=0, allow_inf_nan=False,
                            description="coefficient of variation of inter-arrival times (1: "
                            "Poisson, above 1: bursty, gamma)")
    concurrency: int | None = Field(None, ge=1, description="closed loop: clients, each sending "
                                    "its next request when its last one finishes")
    requests_file: str | None = Field(None, description="JSONL to replay, one request a line "
                                      "(arrival_s, prompt_tokens, output_tokens)")
    field_map: dict[str, str] = Field(default_factory=dict, description="the file's names for "
                                      "the fields, e.g. arrival_s=timestamp,prompt_tokens=input")
    isl: int = Field(1024, ge=1, description="prompt tokens per request (the mean with --isl-cv)")
    osl: int = Field(256, ge=1, description="output tokens per request (the mean with --osl-cv)")
    isl_cv: float = Field(0.0, ge=0, allow_inf_nan=False,
                          description="coefficient of variation of prompt lengths (lognormal)")
    osl_cv: float = Field(0.0, ge=0, allow_inf_nan=False,
                          description="coefficient of variation of output lengths (lognormal)")
    requests: int | None = Field(None, ge=1, le=10_000_000,
                                 description="requests to send (default 200)")
    duration_s: float | None = Field(None, gt=0, allow_inf_nan=False,
                                     description="open loop: send requests for this long instead")
    warmup_requests: int = Field(0, ge=0, description="first requests left out of the statistics")
    seed: int = Field(0, ge=0, description="random seed of arrivals and lengths")
    max_num_seqs: int = Field(256, ge=1, description="running sequences per scheduler (vLLM "
                              "--max-num-seqs)")
    max_num_batched_tokens: int = Field(8192, ge=1, description="tokens per iteration (vLLM "
                                        "--max-num-batched-tokens)")
    block_size: int = Field(16, ge=1, description="tokens per paged KV-cache block")
    kv_cache_tokens: int | None = Field(None, ge=1, description="KV cache per attention group, "
                                        "tokens (default: what the memory fit leaves)")
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
        return self

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
    batch: int | None = Field(None, ge=1, description="sequences in the batch")
    context: int | None = Field(None, ge=1, description="prompt tokens per sequence")
    decode_steps: int = Field(1, ge=1, le=4096, description="average TPOT over N decode steps")
    # Prefill is scheduled in chunks of at most this many tokens (vLLM's chunked prefill;
    # memory.py sizes activations for the same chunk). TTFT sums the chunk steps.
    prefill_chunk_tokens: int = Field(8192, ge=1, description="largest prefill chunk step "
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
