"""One run end to end: resolve a Scenario's inputs, build the step, count traffic, time it."""

from __future__ import annotations

from typing import Any

from moesim.errors import PlacementError
from moesim.inputs.config import Scenario
from moesim.inputs.options import ACT_DTYPE_BYTES
from moesim.output.result import latency_result, merge_layer_times, traffic_result
from moesim.planning.resolve import RunInputs, resolve_inputs
from moesim.traffic.memory import MemoryFit, memory_fit
from moesim.traffic.traffic import Traffic, compute_traffic
from moesim.traffic.workload import StepWorkload, build_step, prefill_chunks, trace_sequences

__all__ = [
    "step_traffic",
    "time_step",
    "run_scenario",
    "prefill_steps",
    "decode_step",
    "scenario_memory_fit",
]

WEIGHT_DTYPE_BYTES = {"bf16": 2, "fp8": 1}


def step_traffic(inputs: RunInputs, step: StepWorkload) -> Traffic:
    """Traffic of one step of the scenario."""
    sc = inputs.scenario
    return compute_traffic(
        step.trace,
        inputs.model,
        inputs.parallelism,
        experts=inputs.experts,
        act_dtype=sc.act_dtype,
        dedup=sc.dedup,
        gpus_per_node=inputs.gpus_per_node,
        phase=step.phase,
        sp_variant=sc.sp_variant,
    )


def time_step(inputs: RunInputs, step: StepWorkload, traffic: Traffic):  # type: ignore[no-untyped-def]
    """Simulate one step on the scenario's topology; returns a StepTimeline."""
    from moesim.engine.plan import build_step_plan
    from moesim.engine.step import simulate_step

    sc = inputs.scenario
    topology = inputs.topology
    if topology is None:
        raise ValueError("time_step needs a scenario with a topology")
    plan = build_step_plan(
        step,
        traffic,
        inputs.model,
        topology.gpu_spec,
        act_dtype=sc.act_dtype,
        weight_bytes=WEIGHT_DTYPE_BYTES[sc.weight_dtype],
    )
    return simulate_step(plan, topology, sc.fidelity)


def scenario_memory_fit(scenario: Scenario, model: Any, par: Any, topology: Any) -> MemoryFit:
    """The memory fit of one scenario's layout on `topology` (KV cache in the activation dtype)."""
    act_bytes = ACT_DTYPE_BYTES[scenario.act_dtype]
    return memory_fit(
        model,
        par,
        topology.gpu_spec.memory_bytes,
        batch=scenario.batch or 1,
        context=scenario.context or 1,
        weight_bytes=WEIGHT_DTYPE_BYTES[scenario.weight_dtype],
        act_bytes=act_bytes,
        kv_bytes=act_bytes,
        prefill_chunk_tokens=scenario.prefill_chunk_tokens,
    )


def describe_inputs(inputs: RunInputs, step: StepWorkload) -> dict[str, Any]:
    """The `inputs` block of a Result: what was run, so every number can be traced back."""
    par = inputs.parallelism
    sc = inputs.scenario
    return {
        "scenario": sc.name,
        "model": inputs.model.name,
        "trace": inputs.trace_source,
        "trace_metadata": dict(inputs.trace.metadata),
        "trace_tokens": inputs.trace.num_tokens,
        "tokens": step.num_tokens,
        "sequences": step.num_sequences,
        "batch": sc.batch,
        "context": sc.context,
        "layers": inputs.trace.num_layers,
        "top_k": inputs.trace.top_k,
        "placement": par.label,
        "parallelism": par.model_dump(exclude={"name"}),
        "world": par.world,
        "topology": sc.topology,
        "gpus_per_node": inputs.gpus_per_node,
        "phase": sc.phase,
        "act_dtype": sc.act_dtype,
        "weight_dtype": sc.weight_dtype,
        "dedup": sc.dedup,
        "sp_variant": sc.sp_variant,
        "fidelity": sc.fidelity if inputs.topology is not None else None,
        "ownership": "default: contiguous token blocks per attention DP/SP group in trace order; "
        "expert e on EP rank e // (E / ep)",
        "notes": list(step.notes),
    }


def prefill_steps(inputs: RunInputs) -> list[tuple[StepWorkload, int]]:
    """The chunk steps of the batch's prefill, each with how many times it runs."""
    sc = inputs.scenario
    if sc.batch is None and sc.context is None:
        return [(build_step(inputs.trace, "prefill"), 1)]
    context = sc.context or int(trace_sequences(inputs.trace)[1].max())
    return [
        (build_step(inputs.trace, "prefill", c.sequences, c.length, offset=c.offset), c.repeats)
        for c in prefill_chunks(sc.batch or 1, context, sc.prefill_chunk_tokens)
    ]


def decode_step(inputs: RunInputs, index: int = 0) -> StepWorkload:
    """Decode step `index` of the scenario's batch."""
    sc = inputs.scenario
    return build_step(inputs.trace, "decode", sc.batch, sc.context, decode_step=index)


def run_scenario(scenario: Scenario) -> dict[str, Any]:
    """Run one scenario and return its Result dict (latency keys only with a topology).

    Traffic, imbalance and `latency` describe the scenario's own phase: its first prefill chunk
    or its first decode step.
    """
    inputs = resolve_inputs(scenario)
    prefill = prefill_steps(inputs)
    step = prefill[0][0] if scenario.phase == "prefill" else decode_step(inputs)
    traffic = step_traffic(inputs, step)
    result = traffic_result(traffic, describe_inputs(inputs, step))
    if inputs.topology is None:
        return result
    fit = scenario_memory_fit(scenario, inputs.model, inputs.parallelism, inputs.topology)
    if not fit.fits:
        raise PlacementError(
            f"placement {inputs.parallelism.label} does not fit in memory on "
            f"{scenario.topology}: {fit.reason}; use more GPUs, --weight-dtype fp8, or a "
            "smaller --batch/--context"
        )
    main = time_step(inputs, step, traffic)
    ttft_s = 0.0
    for index, (chunk, repeats) in enumerate(prefill):
        same = index == 0 and scenario.phase == "prefill"
        timeline = main if same else time_step(inputs, chunk, step_traffic(inputs, chunk))
        ttft_s += timeline.step_s * repeats
    decode_s = []
    for index in range(scenario.decode_steps):
        if index == 0 and scenario.phase == "decode":
            decode_s.append(main.step_s)
        else:
            decode = decode_step(inputs, index)
            decode_s.append(time_step(inputs, decode, step_traffic(inputs, decode)).step_s)
    tpot_s = float(sum(decode_s) / len(decode_s))
    prefill_tokens = sum(chunk.num_tokens * repeats for chunk, repeats in prefill)
    result.update(
        latency_result(
            main,
            scenario.phase,
            ttft_s=ttft_s,
            tpot_s=tpot_s,
            decode_sequences=decode_step(inputs).num_sequences,
            prefill_tokens=prefill_tokens,
        )
    )
    result["tpot_steps_s"] = decode_s
    result["memory"] = fit.to_dict()
    notes = {f"prefill: {note}" for chunk, _ in prefill for note in chunk.notes}
    notes |= {f"decode: {note}" for note in decode_step(inputs).notes}
    if len(prefill) > 1 or prefill[0][1] > 1:
        notes.add(
            f"prefill: TTFT sums {sum(r for _, r in prefill)} chunk steps of at most "
            f"{scenario.prefill_chunk_tokens} tokens (prefill_chunk_tokens)"
        )
    result["inputs"]["notes"] = sorted(notes)
    merge_layer_times(result, inputs.model.first_dense_layers)
    return result
