"""Calibration: fit a topology's link efficiency and collective launch latency to measurements.

`nccl_tests` reads the text logs of nccl-tests (`all_reduce_perf`, `alltoall_perf`, ...);
`fit` predicts the same collectives with `moesim.engine.collectives.predict_collective` and
fits the topology's `link_efficiency` and `collective_launch_s` to them by least squares.
"""

from __future__ import annotations

from moesim.calibrate.fit import (
    FitResult,
    Measurement,
    calibrated_spec,
    fit_topology,
    measurements_from_sections,
    predict_times_s,
    topology_launch_s,
)
from moesim.calibrate.nccl_tests import (
    NcclTestsRow,
    NcclTestsSection,
    parse_nccl_tests,
    read_nccl_tests,
)

__all__ = [
    "FitResult",
    "Measurement",
    "NcclTestsRow",
    "NcclTestsSection",
    "calibrated_spec",
    "fit_topology",
    "measurements_from_sections",
    "parse_nccl_tests",
    "predict_times_s",
    "read_nccl_tests",
    "topology_launch_s",
]
