"""Measurement: what a live run recorded, as one JSON document, and the check of its bytes.

A measurement holds, per MoE layer, per rank and per *measured phase*, the median time over the
repeats (`time_s`, plus `time_s_min` and `time_s_mean`) and the bytes the rank passed to torch:
`sent_bytes` and `recv_bytes` cross ranks, `local_bytes` stay on the rank (the diagonal of an
all-to-all).
Its `inputs` block records everything needed to ask the simulator for the same traffic: the
model, the scale and the scaled sizes (`model_update`), the trace and the slice of it that ran,
the placement, dtype, dedup, phase. An EPLB placement (`eplb`, with redundant expert slots) is
computed once from the run's trace slice and recorded inline as `expert_placement` (copy choice
`local_first`), with its policy and window under `eplb`, so a later `validate compare` rebuilds
the same traffic whatever the balancing code does meanwhile. `check_bytes` recomputes that
Traffic and compares every layer, rank, phase and byte field exactly. The harness replays direct
all-to-all only (`check_replayable`): no allgather or DeepEP dispatch, two-batch overlap or MTP.
This module never imports torch.

Measured phases, in the order a layer runs them (`ENGINE_PHASE` maps each to the engine's):
`sp_exchange` (SP attention exchange), `attn_reduce_scatter` (attention-TP ring reduce-scatter),
`dispatch`, `moe_tp_gather`, `experts`, `moe_tp_scatter`, `combine`, `attn_all_gather`.
Attention and router compute are not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError

from moesim.errors import ConfigError
from moesim.inputs.config import Scenario, format_validation_error, parse_model, read_mapping
from moesim.inputs.model_files import load_model
from moesim.inputs.models import ModelSpec
from moesim.inputs.options import ACT_DTYPE_BYTES, ActDtype, Dedup, EplbPolicy, Phase, SpVariant
from moesim.planning.evaluate import step_traffic
from moesim.planning.resolve import resolve_inputs
from moesim.traffic.traffic import Traffic, ring_bytes_matrix
from moesim.traffic.workload import build_step

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "PHASES",
    "ENGINE_PHASE",
    "BYTE_FIELDS",
    "Mismatch",
    "scaled_model_update",
    "check_replayable",
    "live_inputs",
    "measurement_scenario",
    "traffic_for_inputs",
    "phase_byte_matrices",
    "exchange_layers",
    "expected_bytes",
    "build_measurement",
    "load_measurement",
    "measured_bytes",
    "check_bytes",
]

SCHEMA = "moesim-measurement"
SCHEMA_VERSION = 1
PHASES: tuple[str, ...] = (
    "sp_exchange",
    "attn_reduce_scatter",
    "dispatch",
    "moe_tp_gather",
    "experts",
    "moe_tp_scatter",
    "combine",
    "attn_all_gather",
)
# Measured phase -> engine phase (moesim.engine.plan.PHASES) whose time holds it: the engine
# books the MoE-TP gather/scatter and the attention-TP all-gather as `moe_comm`
# (moesim.engine.plan); validate.predict splits shared engine phases back per measured phase.
ENGINE_PHASE: dict[str, str] = {
    "sp_exchange": "attn_comm",
    "attn_reduce_scatter": "attn_comm",
    "dispatch": "dispatch",
    "moe_tp_gather": "moe_comm",
    "experts": "experts",
    "moe_tp_scatter": "moe_comm",
    "combine": "combine",
    "attn_all_gather": "moe_comm",
}
BYTE_FIELDS: tuple[str, ...] = ("sent_bytes", "recv_bytes", "local_bytes")
_SCALED_FIELDS = ("hidden_size", "expert_ffn_size", "shared_expert_ffn_size", "dense_ffn_size")
_MLA_SCALED_FIELDS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                      "v_head_dim")


@dataclass(frozen=True)
class Mismatch:
    """One byte count that differs between the measurement and the simulator."""

    layer: int
    rank: int
    phase: str
    field: str
    measured: int
    predicted: int

    def __str__(self) -> str:
        return (f"layer {self.layer} rank {self.rank} {self.phase} {self.field}: measured "
                f"{self.measured}, predicted {self.predicted}")


def _scaled(value: int, scale: float) -> int:
    """`value * scale` rounded, at least 1 (0 stays 0: an absent part of the model)."""
    return 0 if value == 0 else max(1, round(value * scale))


def scaled_model_update(model: ModelSpec, scale: float, layers: int) -> dict[str, int]:
    """ModelSpec fields to replace: widths times `scale`, head counts kept, `layers` MoE blocks."""
    if not 0 < scale <= 1:
        raise ConfigError(f"--scale {scale} must be in (0, 1]; e.g. 1/32 on CPU, 1 on GPUs")
    update = {name: _scaled(getattr(model, name), scale) for name in _SCALED_FIELDS}
    if model.attention == "mla":
        update.update({name: _scaled(getattr(model, name), scale) for name in _MLA_SCALED_FIELDS})
        update["head_dim"] = update["qk_nope_head_dim"] + update["qk_rope_head_dim"]
    else:
        update["head_dim"] = _scaled(model.head_dim, scale)
    update["num_layers"] = model.first_dense_layers + layers
    return update


def check_replayable(*, a2a: str = "direct", overlap: str = "none", mtp: int = 0,
                     dispatch_dtype: str | None = None, act_dtype: str = "bf16") -> None:
    """Raise one ConfigError naming the first flag whose MoE engine the harness cannot replay:
    it runs each layer's dispatch and combine as one `all_to_all_single` of `--act-dtype` rows
    with the predicted splits, one batch at a time, over the trace's tokens as one step."""
    why = "the live harness replays direct all-to-all only"
    if a2a != "direct":
        raise ConfigError(f"--a2a {a2a}: {why} (all_to_all_single with the predicted splits); "
                          "drop --a2a or give --a2a direct")
    if overlap != "none":
        raise ConfigError(f"--overlap {overlap}: {why}, one batch per layer without two-batch "
                          "overlap; drop --overlap or give --overlap none")
    if mtp:
        raise ConfigError(f"--mtp {mtp}: {why}, one step of the trace's tokens without MTP "
                          "draft or verify passes; drop --mtp or give --mtp 0")
    if dispatch_dtype is not None and dispatch_dtype != act_dtype:
        raise ConfigError(f"--dispatch-dtype {dispatch_dtype}: {why}, dispatching rows of "
                          f"--act-dtype {act_dtype}; drop --dispatch-dtype")


def _check_balancing(eplb: str, redundant_experts: int, eplb_window: int | None,
                     expert_placement: str | None) -> None:
    """The EPLB options are consistent (Scenario's rules, named by their flags)."""
    if eplb not in get_args(EplbPolicy):
        raise ConfigError(f"--eplb {eplb}: choose one of {', '.join(get_args(EplbPolicy))}")
    if redundant_experts < 0:
        raise ConfigError(f"--redundant-experts {redundant_experts} must be >= 0")
    if eplb_window is not None and eplb_window < 1:
        raise ConfigError(f"--eplb-window {eplb_window} must be >= 1")
    if eplb == "none" and (redundant_experts or eplb_window is not None):
        flag = "--redundant-experts" if redundant_experts else "--eplb-window"
        raise ConfigError(f"{flag} needs a balancing policy to place the experts: give --eplb "
                          "greedy or --eplb deepseek")
    if eplb != "none" and expert_placement is not None:
        raise ConfigError("give either --eplb (a placement computed from the trace's load) or "
                          "--expert-placement (a placement from a file), not both")


def live_inputs(
    *,
    model: str,
    trace: str,
    placement: str,
    backend: str,
    scale: float,
    layers: int | None = None,
    tokens: int | None = None,
    act_dtype: str = "bf16",
    dedup: str = "none",
    phase: str = "prefill",
    sp_variant: str = "ring",
    warmup: int = 1,
    repeats: int = 3,
    barrier: str = "step",
    expert_placement: str | None = None,
    eplb: str = "none",
    redundant_experts: int = 0,
    eplb_window: int | None = None,
    a2a: str = "direct",
    overlap: str = "none",
    mtp: int = 0,
    dispatch_dtype: str | None = None,
) -> dict[str, Any]:
    """The `inputs` block of a live run, checked: the model, trace slice, layout and expert
    placement are resolved as `moesim run` resolves them (`measurement_scenario`). With `eplb`
    the placement (with `redundant_experts` extra slots) is balanced on the load of the run's
    trace slice (its first `eplb_window` tokens) and recorded inline."""
    if act_dtype not in ACT_DTYPE_BYTES or act_dtype == "fp8":
        raise ConfigError(f"--act-dtype {act_dtype}: the live harness runs fp32, bf16 or fp16")
    check_replayable(a2a=a2a, overlap=overlap, mtp=mtp, dispatch_dtype=dispatch_dtype,
                     act_dtype=act_dtype)
    _check_balancing(eplb, redundant_experts, eplb_window, expert_placement)
    full = resolve_inputs(Scenario(model=model, trace=trace, placement=placement))
    router_trace, source = full.trace, full.trace_source
    if not source.startswith("bundled:"):
        source = str(Path(source).resolve())
    layers = router_trace.num_layers if layers is None else layers
    tokens = router_trace.num_tokens if tokens is None else tokens
    if not 1 <= layers <= router_trace.num_layers:
        raise ConfigError(f"--layers {layers} must be in 1..{router_trace.num_layers} "
                          f"(the trace's MoE layers)")
    if not 1 <= tokens <= router_trace.num_tokens:
        raise ConfigError(f"--tokens {tokens} must be in 1..{router_trace.num_tokens} "
                          f"(the trace's tokens)")
    update = scaled_model_update(full.model, scale, layers)
    par = full.parallelism
    inputs = {
        "model": model,
        "model_name": full.model.name,
        "model_update": update,
        "trace": source,
        "tokens": tokens,
        "layers": layers,
        "placement": placement,
        "parallelism": par.model_dump(exclude={"name"}),
        "world": par.world,
        "scale": scale,
        "hidden_size_full": full.model.hidden_size,
        "hidden_size": update["hidden_size"],
        "expert_ffn_size": update["expert_ffn_size"],
        "act_dtype": act_dtype,
        "act_bytes": ACT_DTYPE_BYTES[act_dtype],
        "dedup": dedup,
        "phase": phase,
        "sp_variant": sp_variant,
        "expert_placement": expert_placement,
        "eplb": None,
        "a2a": "direct",
        "backend": backend,
        "nproc": par.world,
        "warmup": warmup,
        "repeats": repeats,
        "barrier": barrier,
    }
    balancing: dict[str, Any] = {}
    if eplb != "none":
        balancing = {"eplb": eplb, "redundant_experts": redundant_experts,
                     "eplb_window": eplb_window}
    # The placement must fit this run; EPLB balances the load of this run's trace slice.
    run = resolve_inputs(measurement_scenario(inputs, **balancing))
    if expert_placement is not None or run.balance is not None:
        inputs["expert_placement"] = run.experts.to_spec()  # recorded inline, not as a path
    if run.balance is not None:
        inputs["eplb"] = {"policy": run.balance.policy,
                          "redundant_experts": run.balance.redundant,
                          "window_tokens": run.balance.window_tokens}
    return inputs


def measurement_scenario(inputs: dict[str, Any], **balancing: Any) -> Scenario:
    """The Scenario a live run executed: the scaled model inline, the trace cut to the run's
    tokens and layers, the layout, the expert placement (inline; an EPLB placement too, its
    `inputs["eplb"]` being a record of how it was made) and the traffic options. `balancing`
    (Scenario's `eplb`, `redundant_experts`, `eplb_window`) asks for an EPLB placement instead:
    `live_inputs` uses it once, to compute the placement it records."""
    model = load_model(inputs["model"]).model_copy(update=dict(inputs["model_update"]))
    fields = {
        "name": "live run",
        "model": model.model_dump(),
        "trace": inputs["trace"],
        "trace_tokens": int(inputs["tokens"]),
        "layers": int(inputs["layers"]),
        "placement": inputs["placement"],
        "expert_placement": inputs.get("expert_placement"),
        "act_dtype": inputs["act_dtype"],
        "dedup": inputs["dedup"],
        "phase": inputs["phase"],
        "sp_variant": inputs["sp_variant"],
        **balancing,
    }
    return parse_model(Scenario, fields, "the measurement's inputs")


def traffic_for_inputs(inputs: dict[str, Any]) -> Traffic:
    """The simulator's Traffic for a live run's recorded inputs: every token of the run's trace
    slice as one step of its `measurement_scenario`."""
    run = resolve_inputs(measurement_scenario(inputs))
    return step_traffic(run, build_step(run.trace, run.scenario.phase))


def _ring_matrix(traffic: Traffic, op: str) -> np.ndarray:
    """Bytes `[W, W]` of one layer's attention-TP ring collectives of kind `op`."""
    total = np.zeros((traffic.world, traffic.world), dtype=np.int64)
    for coll in traffic.attn_collectives:
        if coll.op == op:
            total += ring_bytes_matrix(coll, traffic.world)
    return total


def phase_byte_matrices(traffic: Traffic) -> dict[str, np.ndarray]:
    """Per measured phase the bytes `[L, W, W]` (src, dst) the simulator predicts."""
    shape = traffic.dispatch_bytes.shape
    per_layer = {
        "sp_exchange": traffic.sp_bytes,
        "attn_reduce_scatter": _ring_matrix(traffic, "reducescatter"),
        "attn_all_gather": _ring_matrix(traffic, "allgather"),
        "experts": np.zeros(shape[1:], dtype=np.int64),
    }
    matrices = {name: np.broadcast_to(m, shape) for name, m in per_layer.items()}
    matrices.update(
        dispatch=traffic.dispatch_bytes,
        moe_tp_gather=traffic.moe_tp_gather_bytes,
        moe_tp_scatter=traffic.moe_tp_scatter_bytes,
        combine=traffic.combine_bytes,
    )
    return {name: matrices[name] for name in PHASES}


def exchange_layers(traffic: Traffic) -> np.ndarray:
    """`[L, P]` bool: the layer's phase moves bytes between ranks. Where it does not (TP's
    dispatch and combine: every token's experts are on its own rank), the harness copies the
    local rows and calls no collective, as a TP deployment runs no all-to-all and the engine
    books none."""
    out = np.zeros((traffic.num_layers, len(PHASES)), dtype=bool)
    for p, matrix in enumerate(phase_byte_matrices(traffic).values()):
        cross = matrix.sum(axis=(1, 2)) - np.trace(matrix, axis1=1, axis2=2)  # [L]
        out[:, p] = cross > 0
    return out


def expected_bytes(traffic: Traffic) -> np.ndarray:
    """Predicted `[L, W, P, 3]` bytes: (sent, received, local) per layer, rank and phase."""
    out = np.zeros((traffic.num_layers, traffic.world, len(PHASES), 3), dtype=np.int64)
    for p, matrix in enumerate(phase_byte_matrices(traffic).values()):
        local = np.diagonal(matrix, axis1=1, axis2=2)  # [L, W]
        out[:, :, p, 0] = matrix.sum(axis=2) - local
        out[:, :, p, 1] = matrix.sum(axis=1) - local
        out[:, :, p, 2] = local
    return out


def build_measurement(
    inputs: dict[str, Any],
    time_s: np.ndarray,
    byte_counts: np.ndarray,
    step_time_s: np.ndarray,
    wall_s: float,
) -> dict[str, Any]:
    """Assemble the JSON document from `time_s[R, L, W, P]` (repeats), `byte_counts[L, W, P, 3]`
    and `step_time_s[R, W]` (each rank's time over all layers per repeat)."""
    median, fastest, mean = np.median(time_s, axis=0), time_s.min(axis=0), time_s.mean(axis=0)
    num_layers, world = byte_counts.shape[:2]

    def record(layer: int, rank: int, p: int) -> dict[str, Any]:
        counts = byte_counts[layer, rank, p]
        return {"time_s": float(median[layer, rank, p]),
                "time_s_min": float(fastest[layer, rank, p]),
                "time_s_mean": float(mean[layer, rank, p]),
                **{field: int(counts[i]) for i, field in enumerate(BYTE_FIELDS)}}

    per_layer = [
        {"layer": layer, "ranks": [
            {"rank": rank, "phases": {phase: record(layer, rank, p)
                                      for p, phase in enumerate(PHASES)}}
            for rank in range(world)]}
        for layer in range(num_layers)
    ]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "inputs": inputs,
        "phases": list(PHASES),
        "engine_phase": ENGINE_PHASE,
        "per_layer": per_layer,
        "totals": _totals(median, byte_counts),
        "step_time_s": float(np.median(step_time_s.max(axis=1))),
        "wall_s": float(wall_s),
    }


def _totals(median_s: np.ndarray, byte_counts: np.ndarray) -> dict[str, Any]:
    """Per phase: time (sum over layers of the slowest rank) and bytes summed over everything."""
    phases = {
        phase: {"time_s": float(median_s[:, :, p].max(axis=1).sum()),
                **{f: int(byte_counts[:, :, p, i].sum()) for i, f in enumerate(BYTE_FIELDS)}}
        for p, phase in enumerate(PHASES)
    }
    a2a = ("dispatch", "combine")
    return {
        "phases": phases,
        "a2a_bytes": sum(phases[p]["sent_bytes"] for p in a2a),
        "local_bytes": sum(phases[p]["local_bytes"] for p in a2a),
    }


# ---- the measurement file's schema: what `validate compare` reads, checked on load ----------
# Strict: a byte count is a JSON integer (not "12" or 12.5), a time a finite number >= 0.
# Fields the compare does not read (totals, host, ...) may be anything; unknown ones are kept.

_Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Record(BaseModel):
    """One (layer, rank, phase): times over the repeats and the bytes passed to torch."""

    model_config = ConfigDict(strict=True, extra="allow")

    time_s: _Seconds
    time_s_min: _Seconds | None = None  # older measurements have the median only
    time_s_mean: _Seconds | None = None
    sent_bytes: NonNegativeInt
    recv_bytes: NonNegativeInt
    local_bytes: NonNegativeInt


class _Rank(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    rank: NonNegativeInt
    phases: dict[str, _Record]


class _Layer(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    layer: NonNegativeInt
    ranks: list[_Rank] = Field(min_length=1)


class _Parallelism(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    moe_tp: PositiveInt


class _Inputs(BaseModel):
    """The inputs `measurement_scenario` and the time prediction read."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str
    model_update: dict[str, NonNegativeInt]
    trace: str
    tokens: PositiveInt
    layers: PositiveInt
    placement: str
    parallelism: _Parallelism
    world: PositiveInt
    scale: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    act_dtype: ActDtype
    act_bytes: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    dedup: Dedup
    phase: Phase
    sp_variant: SpVariant
    expert_placement: str | dict[str, Any] | None = None


class _Measurement(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    schema_version: int
    inputs: _Inputs
    per_layer: list[_Layer] = Field(min_length=1)
    step_time_s: _Seconds | None = None
    wall_s: _Seconds | None = None


def _shape_problem(m: _Measurement) -> str | None:
    """The first way `per_layer` disagrees with itself or with `inputs`, or None: layers
    0..layers-1 and ranks 0..world-1 once each, every rank timing the same known phases."""
    inputs = m.inputs
    layers = sorted(entry.layer for entry in m.per_layer)
    if layers != list(range(inputs.layers)):
        return (f"field 'per_layer': layers {_brief(layers)} are not 0..{inputs.layers - 1} "
                f"once each (inputs.layers is {inputs.layers})")
    phases = set(m.per_layer[0].ranks[0].phases)
    unknown = sorted(phases - set(PHASES))
    if unknown:
        return (f"field 'per_layer.0.ranks.0.phases': unknown phase(s) {', '.join(unknown)}; "
                f"phases are {', '.join(PHASES)}")
    for i, entry in enumerate(m.per_layer):
        ranks = sorted(r.rank for r in entry.ranks)
        if ranks != list(range(inputs.world)):
            return (f"field 'per_layer.{i}.ranks': ranks {_brief(ranks)} are not "
                    f"0..{inputs.world - 1} once each (inputs.world is {inputs.world})")
        for j, rank in enumerate(entry.ranks):
            if set(rank.phases) != phases:
                return (f"field 'per_layer.{i}.ranks.{j}.phases': phases "
                        f"{sorted(rank.phases)} differ from per_layer.0.ranks.0's "
                        f"{sorted(phases)}; every rank times the same phases")
    unknown = sorted(set(inputs.model_update) - set(ModelSpec.model_fields))
    if unknown:
        return (f"field 'inputs.model_update': {', '.join(unknown)} are not ModelSpec fields")
    return None


def _brief(values: list[int]) -> str:
    """A list for a message, cut after 8 entries."""
    return str(values) if len(values) <= 8 else f"[{', '.join(map(str, values[:8]))}, ...]"


def load_measurement(path: str | Path) -> dict[str, Any]:
    """Read a measurement JSON, checking its schema: every field `validate compare` reads is
    present and typed, and the layers, ranks and phases are consistent; any defect is one
    ConfigError naming the file and the field."""
    data = read_mapping(path, "measurement")
    if data.get("schema") != SCHEMA or data.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(
            f"measurement file {path}: schema {str(data.get('schema'))[:40]!r} version "
            f"{str(data.get('schema_version'))[:20]!r} is not {SCHEMA!r} version "
            f"{SCHEMA_VERSION}; write it with `moesim validate live`"
        )
    for key in ("inputs", "per_layer"):
        if key not in data:
            raise ConfigError(f"measurement file {path}: field '{key}' is missing")
    try:
        parsed = _Measurement.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"measurement file {path}")) from None
    problem = _shape_problem(parsed)
    if problem:
        raise ConfigError(f"measurement file {path}: {problem}; write it with "
                          "`moesim validate live`")
    return data


def measured_bytes(measurement: dict[str, Any]) -> np.ndarray:
    """The measurement's bytes as `[L, W, P, 3]` (sent, received, local)."""
    layers = measurement["per_layer"]
    world = len(layers[0]["ranks"]) if layers else 0
    out = np.zeros((len(layers), world, len(PHASES), 3), dtype=np.int64)
    for entry in layers:
        for rank_entry in entry["ranks"]:
            for p, phase in enumerate(PHASES):
                record = rank_entry["phases"].get(phase, {})
                out[entry["layer"], rank_entry["rank"], p] = [record.get(f, 0) for f in BYTE_FIELDS]
    return out


def check_bytes(measurement: dict[str, Any], traffic: Traffic) -> list[Mismatch]:
    """Every (layer, rank, phase, field) whose measured bytes differ from `traffic`'s."""
    measured, predicted = measured_bytes(measurement), expected_bytes(traffic)
    if measured.shape != predicted.shape:
        raise ConfigError(
            f"measurement has {measured.shape[0]} layers x {measured.shape[1]} ranks but the "
            f"simulator's traffic has {predicted.shape[0]} x {predicted.shape[1]}; compare a "
            "measurement with the inputs it records"
        )
    where = np.argwhere(measured != predicted)
    return [
        Mismatch(int(layer), int(rank), PHASES[p], BYTE_FIELDS[f],
                 int(measured[layer, rank, p, f]), int(predicted[layer, rank, p, f]))
        for layer, rank, p, f in where
    ]
