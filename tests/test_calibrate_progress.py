"""calibrate live's progress: a line per benchmark with an ETA, and an early stop when the ETA
says the run would outlive its timeout (validate.microbench.ProgressWatch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from validate import microbench
from validate.launch import LiveRunError
from validate.microbench import ProgressFile, ProgressWatch


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, total: int, timeout_s: float):  # type: ignore[no-untyped-def]
    clock = _Clock()
    monkeypatch.setattr(microbench.time, "monotonic", clock)
    lines: list[str] = []
    source = ProgressFile(tmp_path / "progress")
    return clock, source, lines, ProgressWatch(source, total, timeout_s, lines.append)


def test_eta_counts_from_the_first_benchmark(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    clock, source, lines, watch = _watch(tmp_path, monkeypatch, total=10, timeout_s=100.0)
    watch.poll()
    assert lines == []  # nothing done yet, no file
    clock.now += 5.0  # start-up and the first benchmark
    source.write(1)
    watch.poll()
    watch.poll()  # no new report: no new line
    assert lines == ["benchmark 1/10: 5 s elapsed"]
    clock.now += 2.0  # then 1 s per benchmark
    source.write(3)
    watch.poll()
    assert lines[-1] == "benchmark 3/10: 7 s elapsed, about 7 s to go"  # 7 left x 1 s


def test_a_run_that_cannot_finish_stops_early_saying_why(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    clock, source, lines, watch = _watch(tmp_path, monkeypatch, total=20, timeout_s=30.0)
    clock.now += 3.0
    source.write(1)
    watch.poll()  # one report: no rate yet, no verdict
    clock.now += 2.0
    source.write(2)
    with pytest.raises(LiveRunError, match=r"would not finish within --timeout-s 30: after 2 of "
                                           r"20 benchmarks \(5 s\) the rest needs about 36 s"):
        watch.poll()


def test_the_last_benchmark_never_stops_the_run(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clock, source, lines, watch = _watch(tmp_path, monkeypatch, total=2, timeout_s=1.0)
    clock.now += 5.0
    source.write(1)
    watch.poll()
    clock.now += 5.0
    source.write(2)
    watch.poll()  # done: past the timeout is the launcher's call, not a forecast
    assert lines[-1] == "benchmark 2/2: 10 s elapsed, about 0 s to go"


def test_a_torn_or_missing_file_reads_as_nothing_done(tmp_path: Path) -> None:
    source = ProgressFile(tmp_path / "progress")
    assert source.read() == 0
    source.path.write_text("x\n")
    assert source.read() == 0
    source.write(4)
    assert source.read() == 4


def test_row_budget_caps_long_rows_and_keeps_short_ones() -> None:
    """A GEMM row's timed iterations: all `repeats` when they fit the budget; else what fits,
    from the warm-up's time per iteration, but never under 20 (or `repeats` if fewer); no
    budget or no warm-up keeps `repeats`."""
    from validate.microbench import _affordable

    assert _affordable(0.003, 3, 200, 3.0) == 200  # 1 ms an iteration: 0.2 s
    assert _affordable(0.3, 3, 200, 3.0) == 30  # 100 ms an iteration: 30 fit in 3 s
    assert _affordable(3.0, 3, 200, 3.0) == 20  # 1 s an iteration: the floor
    assert _affordable(3.0, 3, 10, 3.0) == 10  # fewer repeats than the floor: all of them
    assert _affordable(0.3, 3, 200, 0.0) == 200  # no budget
    assert _affordable(0.3, 0, 200, 3.0) == 200  # no warm-up to measure
