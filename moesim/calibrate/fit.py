"""Fitting a topology to measured collective times: link efficiency and launch latency.

A topology predicts a collective's time as `launch + t(efficiency)`, where `t` is the DES (or
analytic) time with every link of the fitted media (`nvlink`, `pcie`, `network`, ... the
edge attribute `medium`) running at `efficiency` x its nominal bandwidth. Two parameters are
fitted to nccl-tests measurements by least squares, on log time by default (every size
counts alike, whatever its magnitude) or on relative error:

- one `efficiency` in (0, 1] shared by the fitted media, by golden-section search (the
  loss is unimodal in it: times fall monotonically as bandwidth rises);
- `launch_s` >= 0 for each trial efficiency, by golden-section search on the same loss.

Results go back into the spec as `link_efficiency[medium]` and `collective_launch_s`
(`calibrated_spec`), so `build_topology` applies them. numpy only: no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from moesim.calibrate.nccl_tests import NcclTestsSection
from moesim.engine.collective_model import (
    busbw_factor,
    collective_launch_s,
    nccl_tests_alltoall_matrix,
)
from moesim.engine.collectives import predict_collective
from moesim.errors import ConfigError
from moesim.inputs.options import AllreduceAlgorithm
from moesim.inputs.topology import Topology, build_topology
from moesim.inputs.topology_spec import MAX_LATENCY_S, TopologySpec

__all__ = [
    "Measurement",
    "FitResult",
    "topology_launch_s",
    "measurements_from_sections",
    "calibrated_spec",
    "predict_times_s",
    "fit_topology",
    "check_measurements",
]

_GOLDEN = (math.sqrt(5) - 1) / 2
_MIN_EFFICIENCY = 0.01


@dataclass(frozen=True)
class Measurement:
    """One measured collective: op, group size, nccl-tests buffer size and time."""

    op: str
    num_ranks: int
    size_bytes: float
    time_s: float
    algorithm: str = "auto"  # what the run forced (NCCL_ALGO), else NCCL's tuner picks
    gpus_per_process: int = 1  # GPUs one process (thread) drove: nccl-tests -g

    @property
    def busbw_bytes_per_s(self) -> float:
        """nccl-tests bus bandwidth of this measurement."""
        return self.size_bytes / self.time_s * busbw_factor(self.op, self.num_ranks)


@dataclass(frozen=True)
class FitResult:
    """Fitted efficiency (per medium), launch latency, loss, and times before and after."""

    efficiency_by_medium: dict[str, float]
    launch_s: float
    loss: float
    measured_s: np.ndarray  # [M]
    before_s: np.ndarray  # [M] predictions with the input spec
    after_s: np.ndarray  # [M] predictions with the fitted spec


def topology_launch_s(topo: Topology) -> float:
    """The topology's collective launch latency, else NCCL's default `NCCL_LAUNCH_S`."""
    return collective_launch_s(topo)


def measurements_from_sections(
    sections: Iterable[NcclTestsSection],
    *,
    num_ranks: int | None = None,
    min_size_bytes: float = 1.0,
    max_size_bytes: float = math.inf,
    inplace: bool = False,
    algorithm: str = "auto",
) -> list[Measurement]:
    """Rows of the supported collectives as measurements (out-of-place times by default;
    rows of size 0 skipped); `algorithm` says what the runs forced (NCCL_ALGO)."""
    out: list[Measurement] = []
    for section in sections:
        if section.op is None:
            continue
        ranks = num_ranks or section.num_ranks
        if ranks < 2:
            raise ConfigError(
                f"{section.source}: line {section.line}: the log does not list its ranks "
                "('#  Rank  r ...' lines); give the GPU count with --gpus N"
            )
        for row in section.rows:
            time_s = row.inplace_time_s if inplace else row.time_s
            if (time_s and row.size_bytes > 0
                    and min_size_bytes <= row.size_bytes <= max_size_bytes):
                forced = algorithm if algorithm != "auto" else section.algorithm
                out.append(Measurement(section.op, ranks, float(row.size_bytes), time_s,
                                       forced, max(section.gpus_per_thread, 1)))
    return out


def check_measurements(measurements: Sequence[Measurement]) -> None:
    """Refuse measurements no fit can use: a time or size that is not finite and positive, or
    a group of fewer than 2 ranks (each named by its position, op and size)."""
    for index, m in enumerate(measurements):
        if not (math.isfinite(m.time_s) and m.time_s > 0):
            problem = f"time {m.time_s!r} s must be a finite number > 0"
        elif not (math.isfinite(m.size_bytes) and m.size_bytes > 0):
            problem = f"size {m.size_bytes!r} bytes must be a finite number > 0"
        elif m.num_ranks < 2:
            problem = f"{m.num_ranks} ranks: a collective needs 2 or more"
        else:
            continue
        raise ConfigError(f"measurement {index + 1} ({m.op}, {m.size_bytes:g} bytes): {problem}; "
                          "fix or drop it")


def calibrated_spec(
    spec: TopologySpec, efficiency_by_medium: dict[str, float], launch_s: float | None
) -> TopologySpec:
    """`spec` with these link efficiencies (others kept) and this collective launch latency."""
    merged = {**spec.link_efficiency, **efficiency_by_medium}
    return spec.model_copy(update={"link_efficiency": merged, "collective_launch_s": launch_s})


def predict_times_s(
    topo: Topology,
    measurements: Sequence[Measurement],
    *,
    launch_s: float,
    fidelity: str = "des",
    algorithm: AllreduceAlgorithm = "ring",
) -> np.ndarray:
    """Predicted time of each measurement on `topo`, as `moesim collective` computes it."""
    times = np.empty(len(measurements))
    for i, m in enumerate(measurements):
        ranks = list(range(m.num_ranks))
        if m.op == "alltoall":
            args: dict = {"bytes_matrix": nccl_tests_alltoall_matrix(m.num_ranks, m.size_bytes)}
        else:
            args = {"size_bytes": m.size_bytes}
        result = predict_collective(
            topo, m.op, ranks, algorithm=algorithm, launch_s=launch_s, fidelity=fidelity, **args
        )
        times[i] = result.time_s
    return times


def fit_topology(
    spec: TopologySpec,
    measurements: Sequence[Measurement],
    *,
    media: Sequence[str] | None = None,
    fit_launch: bool = True,
    loss: str = "log",
    fidelity: str = "des",
    algorithm: AllreduceAlgorithm = "ring",
) -> FitResult:
    """Fit one link efficiency for `media` (default: every medium) and the launch latency.

    The fit is of NCCL's Simple protocol: a topology's `ll_launch_s` (small all-to-alls on LL)
    is left out here and kept as it is; pass rows above ~1 MiB per rank to keep LL-sized
    all-to-alls from pulling the fitted launch down."""
    if not measurements:
        raise ConfigError("nothing to calibrate: no measurements of a supported collective")
    check_measurements(measurements)
    spec = spec.model_copy(update={"ll_launch_s": None})
    base = build_topology(spec, source=f"topology {spec.name}")
    _check_size(base, measurements)
    media = sorted(media or {medium for _, _, medium in base.graph.edges(data="medium")})
    measured = np.array([m.time_s for m in measurements])
    loss_fn = _LOSSES[loss]
    fixed_launch = topology_launch_s(base)

    def evaluate(efficiency: float) -> tuple[float, float]:
        topo = build_topology(calibrated_spec(spec, dict.fromkeys(media, efficiency), None))
        core = predict_times_s(topo, measurements, launch_s=0.0, fidelity=fidelity,
                               algorithm=algorithm)
        launch = _best_launch_s(core, measured, loss_fn) if fit_launch else fixed_launch
        return loss_fn(core + launch, measured), launch

    efficiency = _golden_min(lambda e: evaluate(e)[0], _MIN_EFFICIENCY, 1.0, tol=1e-5)
    best_loss, launch_s = evaluate(efficiency)
    if not (math.isfinite(best_loss) and 0 <= launch_s <= MAX_LATENCY_S):
        raise ConfigError(
            f"topology '{spec.name}': the fit to these measurements gives a collective launch of "
            f"{launch_s:.3g} s (loss {best_loss:.3g}), beyond the {MAX_LATENCY_S:g} s a topology "
            "may hold; the measured times do not match this topology: check the logs (and "
            "--gpus, --ops) and the topology")
    fitted = dict.fromkeys(media, efficiency)
    after = build_topology(calibrated_spec(spec, fitted, launch_s))
    return FitResult(
        efficiency_by_medium=fitted,
        launch_s=launch_s,
        loss=best_loss,
        measured_s=measured,
        before_s=predict_times_s(base, measurements, launch_s=fixed_launch, fidelity=fidelity,
                                 algorithm=algorithm),
        after_s=predict_times_s(after, measurements, launch_s=launch_s, fidelity=fidelity,
                                algorithm=algorithm),
    )


def _check_size(topo: Topology, measurements: Sequence[Measurement]) -> None:
    largest = max(m.num_ranks for m in measurements)
    if largest > topo.num_gpus:
        raise ConfigError(
            f"the measurements use {largest} GPUs but topology '{topo.name}' has "
            f"{topo.num_gpus}; calibrate a larger topology or pass --gpus"
        )


def _log_loss(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Mean squared error of log time."""
    return float(np.mean((np.log(predicted) - np.log(measured)) ** 2))


def _relative_loss(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Mean squared relative error."""
    return float(np.mean(((predicted - measured) / measured) ** 2))


_LOSSES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "log": _log_loss,
    "relative": _relative_loss,
}


def _best_launch_s(core: np.ndarray, measured: np.ndarray, loss_fn) -> float:  # type: ignore[no-untyped-def]
    """Launch latency in [0, max measured time] minimising the loss of `core + launch`."""
    upper = float(measured.max())
    return _golden_min(lambda launch: loss_fn(core + launch, measured), 0.0, upper, tol=1e-10)


def _golden_min(fn: Callable[[float], float], low: float, high: float, tol: float) -> float:
    """Minimiser of a unimodal `fn` on [low, high] by golden-section search, to `tol`."""
    a, b = low, high
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = fn(c), fn(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = fn(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = fn(d)
    candidates = [(fn(low), low), (fc, c), (fd, d), (fn(high), high)]
    return min(candidates)[1]
