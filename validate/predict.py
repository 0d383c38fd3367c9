"""Predicted times of a live run: the engine's timeline of exactly what the harness executed.

From a measurement's recorded inputs the same Traffic is rebuilt (`traffic_for_inputs`) and a
StepPlan is made of what the harness ran: no attention, router or LM-head compute (the harness
runs none: zero), experts = the scaled SwiGLU GEMMs of each rank's local experts, one launch
per expert that got tokens (the harness loops over experts, it is not a grouped kernel), the
SP exchange, dispatch, MoE-TP gather/scatter, combine and attention-TP rings with the exact
bytes (`harness_costs`, `moesim.engine.plan.build_step_plan`); `moesim.engine.backends.execute`
runs it on a topology (default `cpu-loopback`, or a file written by `moesim calibrate live`).

Engine phase -> harness phase (documented mapping; `validate.measurement.ENGINE_PHASE` is the
reverse): `dispatch` -> dispatch, `combine` -> combine, `experts` -> experts; `attn_comm` holds
sp_exchange + attn_reduce_scatter and `moe_comm` holds moe_tp_gather + moe_tp_scatter +
attn_all_gather: where one engine phase holds several active harness phases its seconds are
split in proportion to each one's stand-alone time (`predict_collective`, analytic), per rank.
A phase that moves no cross-rank bytes in a layer (TP's all-local dispatch and combine) is
skipped by the engine and the harness only copies the rank's own rows: predicted 0 s, and it is
left out of the per-phase and all-to-all errors (`time_comparison`).

On gloo the collectives after the experts are re-timed as the world calls they are
(`_world_sync_after_experts`), and the topology's waits around compute are added
(`_add_waits`: the straggler wait on the first collective after the experts, the
precompute wait on the last one before them, each `capped_wait_s` of the slowest rank's expert
time; both fitted by `moesim calibrate live`, 0 on a preset).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from moesim.engine.backends import execute
from moesim.engine.collective_model import collective_launch_s
from moesim.engine.collectives import predict_collective
from moesim.engine.cost import OpCost, StepCosts, experts_cost
from moesim.engine.kernels import moe_time
from moesim.engine.plan import PHASES as ENGINE_PHASES
from moesim.engine.plan import StepPlan, build_step_plan
from moesim.errors import ConfigError, TopologyError
from moesim.inputs.model_files import load_model
from moesim.inputs.options import Fidelity
from moesim.inputs.topology import Topology, build_topology, resolve_topology_path
from moesim.inputs.topology_spec import GpuSpec, TopologySpec
from moesim.traffic.traffic import Traffic
from validate.measurement import PHASES, exchange_layers, phase_byte_matrices

__all__ = [
    "DEFAULT_TOPOLOGY",
    "ENGINE_GROUPS",
    "active_phases",
    "capped_wait_s",
    "local_only_phases",
    "harness_experts_s",
    "harness_costs",
    "harness_step_plan",
    "prediction_topology",
    "predict_phase_times",
    "predicted_times",
    "estimated_run_s",
    "measured_phase_times",
    "time_comparison",
    "plot_comparison",
]

DEFAULT_TOPOLOGY = "cpu-loopback"
# Engine phase -> the harness phases it holds, in the order the harness runs them.
ENGINE_GROUPS: dict[str, tuple[str, ...]] = {
    "attention": (),
    "attn_comm": ("sp_exchange", "attn_reduce_scatter"),
    "router": (),
    "dispatch": ("dispatch",),
    "experts": ("experts",),
    "combine": ("combine",),
    "moe_comm": ("moe_tp_gather", "moe_tp_scatter", "attn_all_gather"),
}
_P = {name: i for i, name in enumerate(PHASES)}


def active_phases(traffic: Traffic) -> np.ndarray:
    """`[P]` bool: the phases the harness runs (any bytes, local included, and experts)."""
    active = np.array([bool(m.any()) for m in phase_byte_matrices(traffic).values()])
    active[_P["experts"]] = True
    return active


def local_only_phases(traffic: Traffic) -> list[str]:
    """Active phases that never cross ranks: the harness copies rows locally (no collective)
    and the engine books nothing, so they have no time error to report."""
    crosses = [bool(c) for c in np.any(exchange_layers(traffic), axis=0).tolist()]
    active = [bool(a) for a in active_phases(traffic)]
    return [p for p, on, cross in zip(PHASES, active, crosses, strict=True)
            if on and not cross and p != "experts"]


def harness_experts_s(inputs: dict[str, Any], traffic: Traffic, gpu: GpuSpec) -> np.ndarray:
    """`[L, W]` seconds of the harness's expert GEMMs: the roofline of each local expert's
    SwiGLU at the scaled sizes, weights in the activation dtype, one launch per busy expert."""
    return harness_costs(inputs, traffic, gpu).experts.arrays()[0]


def harness_costs(inputs: dict[str, Any], traffic: Traffic, gpu: GpuSpec) -> StepCosts:
    """The compute of what the harness runs: expert GEMMs (a Python loop over experts, so one
    launch per expert that got tokens, not one grouped kernel): on the GPU's own calibrated
    `moe` curves where it has them (`GpuSpec.kernels`: each expert a one-expert op of its
    tokens), else the roofline; no attention, router, shared experts or LM head (zero)."""
    model = load_model(inputs["model"]).model_copy(update=dict(inputs["model_update"]))
    moe_tp, act_bytes = int(inputs["parallelism"]["moe_tp"]), float(inputs["act_bytes"])
    tokens = traffic.rank_expert_tokens  # [L, W, S]
    cost = experts_cost(model, gpu, tokens_per_expert=tokens, moe_tp=moe_tp,
                        weight_bytes=act_bytes, act_bytes=act_bytes)
    busy = (tokens > 0).sum(axis=2)
    curves = gpu.kernels.curves("moe") if gpu.kernels is not None else None
    if curves is not None:  # the device's own curves (`moesim calibrate live`), per expert
        per_expert_s = moe_time(
            curves, gpu, tokens_per_expert=tokens[..., None], hidden=model.hidden_size,
            ffn=model.expert_ffn_per_shard(moe_tp), weight_bytes=act_bytes,
            act_bytes=act_bytes, peak_flops_per_s=gpu.peak_bf16_flops_per_s)  # [L, W, S]
        time_s = np.where(tokens > 0, per_expert_s, 0.0).sum(axis=2)
    else:
        time_s = np.where(busy > 0, cost.time_s + (busy - 1) * gpu.kernel_launch_s, 0.0)
    zero = OpCost(np.zeros(traffic.world), np.zeros(traffic.world), np.zeros(traffic.world))
    return StepCosts(attention=zero, dense_ffn=zero, router=zero,
                     experts=OpCost(cost.flops, cost.bytes_moved, time_s), shared_experts=zero,
                     lm_head=zero)


def harness_step_plan(inputs: dict[str, Any], traffic: Traffic, gpu: GpuSpec) -> StepPlan:
    """The StepPlan of what the harness ran: traffic exact, compute = expert GEMMs only."""
    return build_step_plan(traffic, harness_costs(inputs, traffic, gpu), num_dense_blocks=0)


def prediction_topology(topology: str | None, world: int) -> Topology:
    """The topology to predict on; the default `cpu-loopback` is resized to `world` ranks."""
    from moesim.inputs.config import load_model_file

    path = resolve_topology_path(topology or DEFAULT_TOPOLOGY)
    spec = load_model_file(TopologySpec, path, "topology")
    if topology is None and spec.nodes * spec.gpus_per_node != world:
        spec = spec.model_copy(update={"gpus_per_node": world})
    if spec.nodes * spec.gpus_per_node < world:
        raise TopologyError(
            f"topology {path} has {spec.nodes * spec.gpus_per_node} ranks but the measurement "
            f"ran {world}; raise its gpus_per_node or calibrate with --nproc {world}"
        )
    return build_topology(spec, source=f"topology file {path}")


def _standalone_s(traffic: Traffic, topo: Topology, launch_s: float) -> np.ndarray:
    """`[L, W, P]` each harness phase alone on an idle network (analytic), for splitting."""
    out = np.zeros((traffic.num_layers, traffic.world, len(PHASES)))
    ranks = list(range(traffic.world))
    for p, (phase, matrices) in enumerate(phase_byte_matrices(traffic).items()):
        if phase in _RING_PHASES:
            op = "reducescatter" if phase == "attn_reduce_scatter" else "allgather"
            for coll in (c for c in traffic.attn_collectives if c.op == op):
                result = predict_collective(topo, op, coll.ranks, size_bytes=coll.buffer_bytes,
                                            launch_s=launch_s, fidelity="analytic")
                out[:, list(coll.ranks), p] = result.rank_times_s
        elif phase != "experts":
            for layer in range(traffic.num_layers):
                if matrices[layer].any():
                    result = predict_collective(topo, "alltoall", ranks,
                                                bytes_matrix=np.asarray(matrices[layer], float),
                                                launch_s=launch_s, fidelity="analytic")
                    out[layer, :, p] = result.rank_times_s
    return out


def predict_phase_times(inputs: dict[str, Any], traffic: Traffic, topo: Topology,
                        fidelity: Fidelity = "des") -> np.ndarray:
    """Predicted seconds `[L, W, P]` per layer, rank and harness phase (`PHASES`)."""
    plan = harness_step_plan(inputs, traffic, topo.gpu_spec)
    timeline = execute(plan, topo, fidelity)
    launch_s = collective_launch_s(topo)
    active = active_phases(traffic)
    runs = exchange_layers(traffic)  # [L, P]: the phase's collective runs in the layer
    runs[:, _P["experts"]] = True
    alone = _standalone_s(traffic, topo, launch_s)
    out = np.zeros((traffic.num_layers, traffic.world, len(PHASES)))
    for e, engine_phase in enumerate(ENGINE_PHASES):
        members = [_P[p] for p in ENGINE_GROUPS[engine_phase] if active[_P[p]]]
        if not members:
            continue
        engine_s = timeline.phase_s[:, :, e]  # [L, W]
        weights = alone[:, :, members] if len(members) > 1 else np.ones(engine_s.shape + (1,))
        weights = weights * runs[:, None, members]  # a local copy gets no share
        total = weights.sum(axis=2, keepdims=True)
        share = np.divide(weights, total, out=np.full_like(weights, 1 / len(members)),
                          where=total > 0)
        out[:, :, members] = engine_s[:, :, None] * share
    if inputs.get("backend", "gloo") == "gloo":
        _world_sync_after_experts(out, runs, active)
    _add_waits(out, runs, active, topo.spec, _group_sizes(traffic))
    return out


@functools.lru_cache(maxsize=256)
def expected_max_normal(count: int) -> float:
    """E[max of `count` independent standard normal draws] (0 for one, 0.564 for two, 1.029
    for four, 1.424 for eight): how far the last of `count` ranks falls behind, in units of
    one rank's spread (numeric integral of x count phi(x) Phi(x)^(count-1))."""
    if count < 2:
        return 0.0
    x = np.linspace(-9.0, 9.0, 6001)
    cdf = 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in x]))
    density = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    values = x * count * density * cdf ** (count - 1)
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(x)))  # the trapezoid rule


def _group_sizes(traffic: Traffic) -> dict[str, np.ndarray]:
    """`[W]` ranks each rank waits for in the collectives that can follow the experts: the
    harness's all-to-alls (MoE-TP scatter, combine) are world calls, as the engine prices every
    exchange; the attention-TP ring all-gather waits for its group."""
    world = np.full(traffic.world, traffic.world, dtype=np.int64)
    ring = np.ones(traffic.world, dtype=np.int64)
    for coll in traffic.attn_collectives:
        ring[list(coll.ranks)] = len(coll.ranks)
    return {"moe_tp_scatter": world, "combine": world, "attn_all_gather": ring}


# Harness phases that precede and follow the experts in a layer, in the harness's order (the
# last collective before them and the first after them are the sync points around compute).
_BEFORE_EXPERTS = PHASES[:PHASES.index("experts")]
_AFTER_EXPERTS = PHASES[PHASES.index("experts") + 1:]


# The harness's attention-TP rings (`validate.harness._ring`, within each TP group); every
# other phase but the experts is a world all_to_all_single call (`validate.harness._all_to_all`).
_RING_PHASES = ("attn_reduce_scatter", "attn_all_gather")
_WORLD_CALLS = frozenset(PHASES) - {"experts", *_RING_PHASES}


def _world_sync_after_experts(out: np.ndarray, runs: np.ndarray, active: np.ndarray) -> None:
    """Re-time the collectives after the experts in each layer as world calls: gloo's
    all-to-all exchanges a message with every peer, empty ones too, so it ends at about the
    same time on every rank, when it would end on the last one. The engine ends an exchange on
    each rank with that rank's own flows (as NCCL, which skips empty peers, does), so the wait
    for the slowest rank's experts can pass through a pairwise first exchange (TP x EP's MoE-TP
    scatter) into the next one (the combine). From a common start of the experts (the world
    call before them aligns the ranks), each world call after them ends on every rank at the
    engine's latest end of it, and its seconds on a rank run from that rank's end of the phase
    before; a group collective (the attention-TP ring) keeps its seconds."""
    for layer in range(out.shape[0]):
        engine_end = out[layer, :, _P["experts"]].copy()  # [W]
        synced_end = engine_end.copy()
        for phase in _AFTER_EXPERTS:
            p = _P[phase]
            if not (active[p] and runs[layer, p]):
                continue
            engine_end = engine_end + out[layer, :, p]
            if phase in _WORLD_CALLS:  # never before a rank got there (a group call first)
                end = max(float(engine_end.max()), float(synced_end.max()))
                out[layer, :, p] = end - synced_end
                synced_end = np.full_like(synced_end, end)
            else:
                synced_end = synced_end + out[layer, :, p]


def capped_wait_s(fraction: float, cap_s: float | None, compute_s: Any) -> Any:
    """A wait of `fraction` per second of `compute_s` that levels off at `cap_s`:
    cap x (1 - exp(-fraction x compute / cap)), or fraction x compute without a cap."""
    if cap_s is None:
        return fraction * np.asarray(compute_s, dtype=np.float64)
    return cap_s * -np.expm1(-fraction * np.asarray(compute_s, dtype=np.float64) / cap_s)


def _add_waits(out: np.ndarray, runs: np.ndarray, active: np.ndarray,
                        spec: TopologySpec, group_sizes: dict[str, np.ndarray]) -> None:
    """Add the topology's waits around the experts in each layer, on each rank, from the
    slowest rank's expert time (`capped_wait_s`): to the first collective after them the
    straggler wait of `expected_max_normal(g)` x that time (g: the ranks of its group in that
    collective; ranks sharing CPU cores drift apart while they compute), to the last collective
    before them the precompute wait of that time (the ranks that leave it first compute on the
    cores the others need to finish it)."""
    after_f, before_f = spec.straggler_wait_fraction, spec.precompute_wait_fraction
    if after_f <= 0 and before_f <= 0:
        return
    experts_s = out[:, :, _P["experts"]].max(axis=1)  # [L]
    for layer in range(out.shape[0]):
        after, before = ([p for p in phases if active[_P[p]] and runs[layer, _P[p]]]
                         for phases in (_AFTER_EXPERTS, _BEFORE_EXPERTS))
        if after and after_f > 0:
            spread = np.array([expected_max_normal(int(g)) for g in group_sizes[after[0]]])
            out[layer, :, _P[after[0]]] += capped_wait_s(
                after_f, spec.straggler_wait_cap_s, spread * experts_s[layer])
        if before and before_f > 0:
            out[layer, :, _P[before[-1]]] += capped_wait_s(
                before_f, spec.precompute_wait_cap_s, experts_s[layer])


def predicted_times(measurement: dict[str, Any], traffic: Traffic,
                    topology: str | None = None, fidelity: Fidelity = "des") -> dict[str, Any]:
    """Per layer, rank and harness phase predicted seconds for a measurement, and summaries."""
    topo = prediction_topology(topology, traffic.world)
    times = predict_phase_times(measurement["inputs"], traffic, topo, fidelity)
    slowest = times.max(axis=1)  # [L, P]
    return {
        "topology": topo.name,
        "topology_source": topology or DEFAULT_TOPOLOGY,
        "fidelity": fidelity,
        "phases": list(PHASES),
        "active_phases": [p for p, a in zip(PHASES, active_phases(traffic), strict=True) if a],
        "local_only_phases": local_only_phases(traffic),
        "time_s": times.tolist(),
        "per_layer": [dict(zip(PHASES, row.tolist(), strict=True)) for row in slowest],
        "step_time_s": float(slowest.sum()),
    }


def estimated_run_s(inputs: dict[str, Any], traffic: Traffic, topology: str | None = None
                    ) -> float:
    """Seconds the timed work of a live run of `inputs` should take: its passes (warmup +
    repeats) at the predicted step time on `topology` (analytic); the ranks' start-up, which
    varies by host, is not counted."""
    prediction = predicted_times({"inputs": inputs}, traffic, topology, "analytic")
    passes = int(inputs["warmup"]) + int(inputs["repeats"])
    return passes * float(prediction["step_time_s"])


def measured_phase_times(measurement: dict[str, Any], statistic: str = "mean") -> np.ndarray:
    """The measurement's seconds `[L, W, P]` per layer, rank and phase: each rank's mean over
    repeats (`time_s_mean`), median (`time_s`) or minimum (`time_s_min`)."""
    key = "time_s" if statistic == "median" else "time_s_" + statistic
    first = measurement["per_layer"][0]["ranks"][0]["phases"] if measurement["per_layer"] else {}
    if any(key not in record for record in first.values()):
        raise ConfigError(f"the measurement has no '{key}' per phase (written by an older "
                          f"moesim); rerun `moesim validate live` or pass --statistic median")
    return np.array([[[rank["phases"].get(p, {}).get(key, 0.0) for p in PHASES]
                      for rank in layer["ranks"]] for layer in measurement["per_layer"]])


def _ape(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Absolute percentage error, in percent (nan where nothing was measured)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(measured > 0, 100 * np.abs(predicted - measured) / measured, np.nan)


def _mape(predicted: np.ndarray, measured: np.ndarray) -> float | None:
    """Mean absolute percentage error over the finite entries, None when there are none."""
    errors = _ape(predicted, measured)
    return float(np.nanmean(errors)) if np.isfinite(errors).any() else None


def time_comparison(
    measurement: dict[str, Any], prediction: dict[str, Any], statistic: str = "mean"
) -> dict[str, Any]:
    """Predicted vs measured per layer and active phase (slowest rank of each), the error per
    phase (MAPE over layers), `a2a_mape` (dispatch + combine), `layer_mape` and overall MAPE."""
    active = [_P[p] for p in prediction["active_phases"]]
    measured = measured_phase_times(measurement, statistic).max(axis=1)[:, active]  # [L, A]
    predicted = np.asarray(prediction["time_s"]).max(axis=1)[:, active]
    names = [PHASES[p] for p in active]
    local = set(prediction.get("local_only_phases", ()))
    a2a = [i for i, name in enumerate(names) if name in ("dispatch", "combine")
           and name not in local]
    timed = [i for i, name in enumerate(names) if name not in local]
    meas_a2a, pred_a2a = measured[:, a2a].sum(axis=1), predicted[:, a2a].sum(axis=1)
    meas_layer, pred_layer = measured.sum(axis=1), predicted.sum(axis=1)
    rows = [{"layer": layer,
             "measured_s": dict(zip(names, measured[layer].tolist(), strict=True)),
             "predicted_s": dict(zip(names, predicted[layer].tolist(), strict=True)),
             "a2a_measured_s": float(meas_a2a[layer]), "a2a_predicted_s": float(pred_a2a[layer]),
             "layer_measured_s": float(meas_layer[layer]),
             "layer_predicted_s": float(pred_layer[layer])}
            for layer in range(measured.shape[0])]
    return {
        "statistic": statistic,
        "phase_mape": {name: None if name in local else _mape(predicted[:, i], measured[:, i])
                       for i, name in enumerate(names)},
        "local_only_phases": sorted(local),
        "a2a_mape": _mape(pred_a2a, meas_a2a) if a2a else None,
        "layer_mape": _mape(pred_layer, meas_layer),
        "overall_mape": _mape(predicted[:, timed], measured[:, timed]),
        "per_layer": rows,
    }


def _save_png(fig: Any, path: Any) -> None:
    """`fig` as a PNG at `path`, whole or not at all (a temporary file renamed into place)."""
    from moesim.output.files import write_atomic_with

    write_atomic_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120,
                                                    bbox_inches="tight"))


def plot_comparison(comparison: dict[str, Any], out_dir: str, title: str = "") -> list[str]:
    """Write `pred_vs_measured.png` (scatter per layer and phase, y = x) and `per_layer.png`
    (measured and predicted layer time per layer); return the paths."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison["per_layer"]
    fig, ax = plt.subplots(figsize=(5, 5))
    for name in rows[0]["measured_s"] if rows else ():
        ax.scatter([1e3 * r["measured_s"][name] for r in rows],
                   [1e3 * r["predicted_s"][name] for r in rows], label=name, s=18)
    top = max([1e-3] + [1e3 * max(*r["measured_s"].values(), *r["predicted_s"].values())
                        for r in rows])
    ax.plot([0, top], [0, top], "k--", lw=1, label="y = x")
    ax.set(xlabel="measured ms (slowest rank)", ylabel="predicted ms", title=title)
    ax.legend(fontsize=7)
    scatter = out / "pred_vs_measured.png"
    _save_png(fig, scatter)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(rows)), 3.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [1e3 * r["layer_measured_s"] for r in rows], 0.4, label="measured")
    ax.bar(x + 0.2, [1e3 * r["layer_predicted_s"] for r in rows], 0.4, label="predicted")
    ax.set(xlabel="MoE layer", ylabel="layer time, ms", title=title)
    ax.legend()
    bars = out / "per_layer.png"
    _save_png(fig, bars)
    plt.close(fig)
    return [str(scatter), str(bars)]
