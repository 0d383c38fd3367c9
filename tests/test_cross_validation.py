"""Cross-validated error of kernel fits: a synthetic cost with known parameters is recovered and
its held-out error is small; noise in the measurements shows up in the held-out error."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.calibrate.cross_validation import cross_validate, held_out_table
from moesim.calibrate.kernels import KernelRow, fit_curves, predict_row_s
from moesim.inputs.kernel_profile import Curve, KernelCurves
from moesim.inputs.topology_spec import load_gpu

GPU = load_gpu("h100-sxm")
TRUE = KernelCurves(family="synthetic", launch_s=6e-6,
                    compute=Curve(points=((1.0, 0.05), (64.0, 0.45), (4096.0, 0.75))),
                    memory=Curve(points=((1.0, 0.6), (4096.0, 0.85))))
SIZES = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048,
         3072, 4096, 6144, 8192]


def _rows(noise: float = 0.0, seed: int = 0) -> list[KernelRow]:
    """GEMM rows timed by the known curves (times multiplied by lognormal noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in SIZES:
        row = KernelRow("gemm", {"m": float(m), "n": 4096.0, "k": 4096.0, "time_s": 1.0})
        time_s = predict_row_s(row, TRUE, GPU) * float(np.exp(rng.normal(0.0, noise)))
        rows.append(KernelRow("gemm", {**row.values, "time_s": time_s}))
    return rows


def test_known_cost_is_recovered_and_its_held_out_error_is_small() -> None:
    rows = _rows()
    fitted = fit_curves(rows, GPU, family="synthetic")
    assert fitted.launch_s == pytest.approx(TRUE.launch_s, rel=0.25)
    for row in rows:  # every row reproduced by the fitted curves
        assert predict_row_s(row, fitted, GPU) == pytest.approx(row.time_s, rel=0.05)
    errors = cross_validate(rows, GPU, family="synthetic")
    assert {e.band for e in errors} == {"1-16", "32-256", "320-2048", "3072+"}
    assert sum(e.rows for e in errors) == len(rows)  # each row held out exactly once
    assert all(e.mape < 0.10 for e in errors), held_out_table(errors, 5)


def test_noise_shows_in_the_held_out_error() -> None:
    clean = cross_validate(_rows(), GPU, family="synthetic")
    noisy = cross_validate(_rows(noise=0.3, seed=1), GPU, family="synthetic")
    mean = lambda errors: np.mean([e.mape for e in errors])  # noqa: E731
    assert mean(noisy) > 2 * mean(clean)
    assert mean(noisy) > 0.1  # 30% lognormal noise cannot be predicted away


def test_short_tables_and_table_text() -> None:
    rows = _rows()[:2]
    assert cross_validate(rows, GPU, family="synthetic") == []  # nothing left to fit on
    errors = cross_validate(_rows()[:4], GPU, family="synthetic", folds=10)
    assert sum(e.rows for e in errors) == 4  # leave-one-out when folds exceed rows
    text = held_out_table(errors, 10)
    assert "10-fold" in text and "gemm" in text
    with pytest.raises(ValueError):
        cross_validate(rows, GPU, folds=1, family="synthetic")


def test_calibrate_kernels_prints_the_held_out_error(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from moesim.cli import main

    table = Path(__file__).resolve().parents[1] / "moesim/presets/kernels/measurements" \
        / "h100-sxm_cublas_bf16.csv"
    out = tmp_path / "cal.yaml"
    assert main(["calibrate", "kernels", "--from-csv", str(table), "--gpu", "h100-sxm",
                 "-o", str(out), "--folds", "3"]) == 0
    printed = capsys.readouterr().out
    assert "held-out error (3-fold" in printed and out.exists()
    bands = [line.split()[1] for line in printed.splitlines()
             if line.startswith("gemm ") and line.endswith(tuple("0123456789")) and "%" in line]
    assert bands == ["1-16", "32-256", "320-2048", "3072+"]
    assert main(["calibrate", "kernels", "--from-csv", str(table), "--gpu", "h100-sxm",
                 "-o", str(tmp_path / "b.yaml"), "--folds", "1"]) == 2
    assert "--folds 1" in capsys.readouterr().err


def test_a_fold_whose_fit_fails_is_counted_not_dropped() -> None:
    from pathlib import Path

    from moesim.calibrate.kernels import read_kernel_csv

    path = Path(__file__).resolve().parent / "data/bad_inputs/kernel_csv/odd_time_tiny.csv"
    rows = read_kernel_csv(path)
    errors = cross_validate(rows, GPU, family="measured")
    assert sum(e.rows + e.failed for e in errors) == len(rows)  # every row accounted for
    assert any(e.failed for e in errors)
    assert "not predicted" in held_out_table(errors, 5)
