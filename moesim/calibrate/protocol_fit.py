"""Fitting NCCL's cost structure to nccl-tests logs over all sizes, by linear least squares.

Each row runs on the algorithm and protocol NCCL's tuner picks for it (`nccl_tuner`; or the
algorithm the log forced, e.g. NCCL_ALGO=RING). Its predicted time is linear in the unknowns:

    t = launch[p] + steps_intra x step[p][intra] + steps_net x step[p][net]
        + (g - 1) x multi_gpu_launch + link_latency + bare_transfer x y[p]

where `bare_transfer` is the DES (or analytic) time of the payload with every fitted link at
its nominal bandwidth and `y[p]` = wire factor / link efficiency. NVLS rows have their own
fixed cost (`launch[Simple] + nvls_latency`) and `y[nvls]` = 1 / nvls_efficiency. Small
messages pin the latency terms, large ones the bandwidth terms, in one solve: non-negative
least squares on *relative* error (every size counts alike), with weak pulls (weight
`PRIOR_WEIGHT`) toward NCCL's defaults so that a term no row can tell apart from another
(say the launch and the step latency with one GPU count) stays at NCCL's figure rather than
wandering. `bare_transfer` and `link_latency` come from two runs at link efficiency 1 and 1/2:
flow times scale exactly with 1/bandwidth, latencies not at all.

The results are written back as a `protocols` block, `link_efficiency` (from y[Simple]),
`multi_gpu_launch_s`, and the NVLS fields of the nvswitch block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from moesim.calibrate.fit import Measurement, check_measurements
from moesim.engine.collective_model import nccl_tests_alltoall_matrix
from moesim.engine.collectives import predict_collective
from moesim.engine.protocols import (
    CollectiveCall,
    bare_call,
    group_step_kind,
    hop_kind,
    plan_call,
    protocol_costs,
    uses_nccl,
)
from moesim.errors import ConfigError
from moesim.inputs.config import format_validation_error
from moesim.inputs.topology import Topology, build_topology
from moesim.inputs.topology_spec import NvSwitchFabric, TopologySpec

__all__ = ["PRIOR_WEIGHT", "ProtocolFit", "fit_protocols", "predict_rows_s", "nnls",
           "apply_fit", "SIZE_BANDS", "band_errors"]

PRIOR_WEIGHT = 0.03
_KINDS = ("nvlink", "pci", "net")

# Size bands of the accuracy tables (nccl-tests bytes): small, mid, large.
SIZE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<64KiB", 0.0, 64 * 2**10),
    ("64KiB-8MiB", 64 * 2**10, 8 * 2**20),
    (">8MiB", 8 * 2**20, float("inf")),
)


@dataclass(frozen=True)
class ProtocolFit:
    """What the fit found, and every row's prediction before and after it."""

    efficiency_by_medium: dict[str, float]
    protocols: dict[str, dict[str, float]]  # LL / LL128 / Simple -> ProtocolSpec fields
    multi_gpu_launch_s: float | None
    nvls_efficiency: float | None
    nvls_latency_s: float | None
    measured_s: np.ndarray
    before_s: np.ndarray
    after_s: np.ndarray
    calls: list[str] = field(default_factory=list)  # "ring/LL" per row

    @property
    def launch_s(self) -> float:
        """The Simple protocol's launch (the figure older reports show)."""
        return self.protocols.get("Simple", {}).get("launch_s", 0.0)

    @property
    def loss(self) -> float:
        """Mean squared log error after the fit."""
        return float(np.mean(np.log(self.after_s / self.measured_s) ** 2))


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """min ||a x - b|| subject to x >= 0 (Lawson and Hanson's active-set method)."""
    rows, cols = a.shape
    x = np.zeros(cols)
    passive = np.zeros(cols, dtype=bool)
    w = a.T @ (b - a @ x)
    for _ in range(max_iter):
        if passive.all() or w[~passive].max(initial=-np.inf) <= 1e-12 * max(1.0, abs(w).max()):
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            z = np.zeros(cols)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    del rows
    return x


def _call_of(topo: Topology, m: Measurement) -> CollectiveCall:
    n = m.num_ranks
    size = m.size_bytes * (n - 1) / n if m.op == "alltoall" else m.size_bytes
    return plan_call(topo, m.op, list(range(n)), size, algorithm=m.algorithm,
                     gpus_per_process=m.gpus_per_process)


def _args(m: Measurement) -> dict:
    if m.op == "alltoall":
        return {"bytes_matrix": nccl_tests_alltoall_matrix(m.num_ranks, m.size_bytes)}
    return {"size_bytes": m.size_bytes}


def predict_rows_s(topo: Topology, measurements: Sequence[Measurement],
                   fidelity: str = "analytic") -> np.ndarray:
    """Each row's predicted time on `topo` with its own algorithm choice and process layout."""
    out = np.empty(len(measurements))
    for i, m in enumerate(measurements):
        call = _call_of(topo, m)
        out[i] = predict_collective(topo, m.op, range(m.num_ranks), call=call,
                                    fidelity=fidelity, **_args(m)).time_s
    return out


def _bare_spec(spec: TopologySpec, media: Sequence[str], efficiency: float) -> TopologySpec:
    fabric = tuple(
        block.model_copy(update={"nvls_efficiency": None, "nvls_latency_s": 0.0})
        if isinstance(block, NvSwitchFabric) else block
        for block in spec.fabric
    )
    return spec.model_copy(update={
        "link_efficiency": {**spec.link_efficiency, **dict.fromkeys(media, efficiency)},
        "fabric": fabric,
    })


def _steps(topo: Topology, m: Measurement, algorithm: str) -> dict[str, float]:
    """Sequential protocol steps of a row, by hop kind."""
    n = m.num_ranks
    ranks = list(range(n))
    if n < 2 or algorithm == "nvls":
        return {}
    if algorithm == "direct":
        return {group_step_kind(topo, ranks): 1.0}
    if algorithm == "tree":
        per_node = topo.gpus_per_node
        nodes = len({r // per_node for r in ranks})
        ppn = n // nodes
        kind = group_step_kind(topo, ranks[:ppn]) if ppn > 1 else "nvlink"
        return {kind: 2.0 * (ppn - 1), "net": 2.0 * np.log2(nodes)}
    total = 2 * (n - 1) if m.op == "allreduce" else n - 1
    kinds = [hop_kind(topo, topo.routes(i, (i + 1) % n)[0]) for i in range(n)]
    # every step of a ring pays its slowest hop: the net kind if any hop crosses servers
    kind = "net" if "net" in kinds else ("pci" if "pci" in kinds else "nvlink")
    return {kind: float(total)}


def fit_protocols(
    spec: TopologySpec,
    measurements: Sequence[Measurement],
    *,
    media: Sequence[str] | None = None,
    fidelity: str = "analytic",
) -> ProtocolFit:
    """Fit a GPU topology's protocol costs, link efficiency and NVLS figures to the rows."""
    if not measurements:
        raise ConfigError("nothing to calibrate: no measurements of a supported collective")
    check_measurements(measurements)
    base = build_topology(spec, source=f"topology {spec.name}")
    if not uses_nccl(base):
        raise ConfigError(f"topology '{spec.name}': its GPU has no compute_capability, so it "
                          "has no NCCL protocols to fit; use the loopback fit "
                          "(`moesim calibrate live`)")
    largest = max(m.num_ranks for m in measurements)
    if largest > base.num_gpus:
        raise ConfigError(f"the measurements use {largest} GPUs but topology '{spec.name}' has "
                          f"{base.num_gpus}; calibrate a larger topology or pass --gpus")
    media = sorted(media or {medium for _, _, medium in base.graph.edges(data="medium")})
    one = build_topology(_bare_spec(spec, media, 1.0))
    half = build_topology(_bare_spec(spec, media, 0.5))
    plain = spec.model_copy(update={"protocols": {}, "collective_launch_s": None})
    defaults = protocol_costs(build_topology(plain))
    measured = np.array([m.time_s for m in measurements])
    columns: dict[str, int] = {}
    prior: dict[str, float] = {}

    def col(name: str, default: float) -> int:
        if name not in columns:
            columns[name] = len(columns)
            prior[name] = default
        return columns[name]

    rows: list[dict[int, float]] = []
    offsets = np.zeros(len(measurements))
    calls = []
    eff0 = {m_: spec.link_efficiency.get(m_, 1.0) for m_ in media}
    eff_guess = float(np.mean(list(eff0.values()))) if eff0 else 1.0
    for i, m in enumerate(measurements):
        call = _call_of(base, m)
        calls.append(f"{call.algorithm}/{call.protocol}")
        bare = bare_call(call.algorithm, call.protocol)
        ranks = range(m.num_ranks)
        t1 = predict_collective(one, m.op, ranks, call=bare, fidelity=fidelity, **_args(m)).time_s
        t05 = predict_collective(half, m.op, ranks, call=bare, fidelity=fidelity,
                                 **_args(m)).time_s
        transfer = t05 - t1
        offsets[i] = t1 - transfer  # links' own latency
        row: dict[int, float] = {}
        p = call.protocol
        row[col(f"launch:{p}", defaults[p].launch_s)] = 1.0
        if call.algorithm == "nvls":  # NVLS runs on Simple: its launch plus its own latency
            row[col("nvls_latency", 25e-6)] = 1.0
            row[col("y:nvls", 1 / 0.7)] = transfer
        else:
            for kind, count in _steps(base, m, call.algorithm).items():
                if count:
                    row[col(f"step:{p}:{kind}", defaults[p].step_latency_s[kind])] = count
            row[col(f"y:{p}", defaults[p].wire_factor / eff_guess)] = transfer
        if m.gpus_per_process > 1:
            row[col("multi_gpu_launch", 3e-6)] = m.gpus_per_process - 1.0
        rows.append(row)
    a = np.zeros((len(rows) + len(columns), len(columns)))
    b = np.zeros(len(rows) + len(columns))
    for i, row in enumerate(rows):
        for j, coefficient in row.items():
            a[i, j] = coefficient / measured[i]
        b[i] = (measured[i] - offsets[i]) / measured[i]
    for name, j in columns.items():  # weak pull toward the default, in relative units
        scale = max(abs(prior[name]), 1e-7)
        a[len(rows) + j, j] = PRIOR_WEIGHT / scale
        b[len(rows) + j] = PRIOR_WEIGHT
    x = nnls(a, b)
    value = {name: float(x[j]) for name, j in columns.items()}
    fit = _assemble(value, media, defaults)
    before = predict_rows_s(base, measurements, fidelity)
    after = predict_rows_s(build_topology(apply_fit(spec, fit)), measurements, fidelity)
    return ProtocolFit(fit.efficiency_by_medium, fit.protocols, fit.multi_gpu_launch_s,
                       fit.nvls_efficiency, fit.nvls_latency_s, measured, before, after, calls)


def _assemble(value: dict[str, float], media: Sequence[str], defaults: dict) -> ProtocolFit:
    y_simple = value.get("y:Simple")
    efficiency = min(1.0, 1.0 / y_simple) if y_simple else None
    protocols: dict[str, dict[str, float]] = {}
    for p in ("LL", "LL128", "Simple"):
        entry: dict[str, float] = {}
        if f"launch:{p}" in value:
            entry["launch_s"] = value[f"launch:{p}"]
        for kind in _KINDS:
            if f"step:{p}:{kind}" in value:
                entry[f"{kind}_step_latency_s"] = value[f"step:{p}:{kind}"]
        if f"y:{p}" in value and value[f"y:{p}"] > 0 and p != "Simple":
            reference = y_simple if y_simple else defaults["Simple"].wire_factor
            entry["bandwidth_fraction"] = min(1.0, reference / value[f"y:{p}"])
        if entry:
            protocols[p] = entry
    y_nvls = value.get("y:nvls")
    empty = np.zeros(0)
    return ProtocolFit(
        efficiency_by_medium=dict.fromkeys(media, efficiency) if efficiency else {},
        protocols=protocols,
        multi_gpu_launch_s=value.get("multi_gpu_launch"),
        nvls_efficiency=min(1.0, 1.0 / y_nvls) if y_nvls else None,
        nvls_latency_s=value.get("nvls_latency"),
        measured_s=empty, before_s=empty, after_s=empty,
    )


def apply_fit(spec: TopologySpec, fit: ProtocolFit) -> TopologySpec:
    """`spec` with the fitted protocols, efficiencies, multi-GPU launch and NVLS figures."""
    protocols = {p: {**(spec.protocols[p].model_dump(exclude_none=True)
                        if p in spec.protocols else {}), **entry}
                 for p, entry in fit.protocols.items()}
    protocols = {**{p: s.model_dump(exclude_none=True) for p, s in spec.protocols.items()},
                 **protocols}
    fabric = []
    for block in spec.fabric:
        if isinstance(block, NvSwitchFabric) and block.nvls and fit.nvls_efficiency:
            block = block.model_copy(update={"nvls_efficiency": fit.nvls_efficiency,
                                             "nvls_latency_s": fit.nvls_latency_s or 0.0})
        fabric.append(block)
    update: dict[str, Any] = {
        "link_efficiency": {**spec.link_efficiency, **fit.efficiency_by_medium},
        "collective_launch_s": None,
        "fabric": tuple(fabric),
    }
    if fit.multi_gpu_launch_s is not None:
        update["multi_gpu_launch_s"] = fit.multi_gpu_launch_s
    data = {**spec.model_dump(), **update, "protocols": protocols}
    try:
        return TopologySpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"topology '{spec.name}': the fit to these logs gives values a topology cannot hold "
            f"({format_validation_error(exc, 'fitted topology')}); the logs' times do not "
            "match this topology: check the logs (and --gpus, --ops) and the topology") from None


def band_errors(measurements: Sequence[Measurement], predicted: np.ndarray
                ) -> list[tuple[str, int, str, int, float, float]]:
    """(op, GPUs, size band, rows, mean absolute % error, worst signed % error) per group."""
    groups: dict[tuple[str, int, str], list[float]] = {}
    for m, p in zip(measurements, predicted, strict=True):
        band = next(name for name, low, high in SIZE_BANDS if low <= m.size_bytes < high)
        groups.setdefault((m.op, m.num_ranks, band), []).append(100 * (p / m.time_s - 1))
    order = {name: k for k, (name, _, _) in enumerate(SIZE_BANDS)}
    out = []
    for (op, n, band), errors in sorted(groups.items(),
                                        key=lambda kv: (kv[0][0], kv[0][1], order[kv[0][2]])):
        arr = np.array(errors)
        out.append((op, n, band, len(arr), float(np.mean(np.abs(arr))),
                    float(arr[np.argmax(np.abs(arr))])))
    return out
