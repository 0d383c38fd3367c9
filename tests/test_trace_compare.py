"""Trace comparison: distances on hand-worked traces, batch imbalance, KS, the CLI and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moesim.cli import main
from moesim.errors import TraceError
from moesim.trace.compare import (
    batch_imbalance,
    compare_traces,
    comparison_to_dict,
    format_comparison,
    ks_statistic,
)
from moesim.trace.format import RouterTrace, save_trace
from moesim.trace.synth import generate_trace, uniform_params


def _trace(layer0: list[list[int]], seq_id: list[int] | None = None) -> RouterTrace:
    """One-layer trace from per-token expert lists; one sequence unless `seq_id` is given."""
    n = len(layer0)
    seq = np.array(seq_id if seq_id is not None else [0] * n)
    pos = np.concatenate([np.arange((seq == s).sum()) for s in np.unique(seq)])
    return RouterTrace(experts=np.array([layer0]), seq_id=seq, pos=pos)


def test_ks_statistic_hand_worked() -> None:
    """KS of {1,2,3} vs {2,3,4}: CDFs differ by 1/3 at x=1 (and at 3); identical samples: 0."""
    assert ks_statistic(np.array([1, 2, 3]), np.array([2, 3, 4])) == pytest.approx(1 / 3)
    assert ks_statistic(np.array([1.0, 5.0]), np.array([5.0, 1.0])) == 0.0
    assert np.isnan(ks_statistic(np.array([]), np.array([1.0])))


def test_batch_imbalance_hand_worked() -> None:
    """Batches of 2 tokens, top-1 of 2 experts: [0,0] -> max 2 / mean 1 = 2; [0,1] -> 1; the
    fifth token (an incomplete batch) is dropped."""
    trace = _trace([[0], [0], [0], [1], [1]])
    assert batch_imbalance(trace, 2, batch_tokens=2).tolist() == [[2.0, 1.0]]


def test_distances_hand_worked() -> None:
    """A: expert 0 then 1 alternating (shares 1/2, no repeats); B: always expert 0 (share 1,
    100 % repeats). Share error 0.5, repetition differences +100 points."""
    a = _trace([[0], [1], [0], [1]])
    b = _trace([[0], [0], [0], [0]])
    comp = compare_traces(a, b, 2, batch_tokens=2)
    assert comp.share_max_abs_error == pytest.approx(0.5)
    assert comp.repeat_first_diff_pts.tolist() == [100.0]
    assert comp.repeat_any_diff_pts.tolist() == [100.0]
    assert comp.batch_imbalance_a.tolist() == [[1.0, 1.0]]
    assert comp.batch_imbalance_b.tolist() == [[2.0, 2.0]]
    assert comp.batch_imbalance_ks == 1.0


def test_trace_against_itself_has_zero_distance() -> None:
    """Comparing a trace with itself gives zero share error, repetition and KS distance."""
    trace = generate_trace(uniform_params(8, 2, 3), 640, 5, np.random.default_rng(0))
    comp = compare_traces(trace, trace, 8)
    summary = comparison_to_dict(comp)["summary"]
    assert summary["share_max_abs_error"] == 0.0
    assert summary["repeat_first_max_abs_diff_pts"] == 0.0
    assert summary["batch_imbalance_ks"] == 0.0
    assert "expert share max abs error: 0.0000" in format_comparison(comp)


def test_mismatched_traces_are_a_trace_error() -> None:
    """Traces of different top-k cannot be compared: one TraceError saying why."""
    with pytest.raises(TraceError, match="top-2"):
        compare_traces(_trace([[0], [1]]), _trace([[0, 1], [1, 0]]), 2)


def test_cli_compare_json_and_plots(tmp_path: Path) -> None:
    """`moesim trace compare A B --json --plot` writes valid JSON and three PNG figures."""
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"t{seed}.npz"
        save_trace(generate_trace(uniform_params(8, 2, 4), 512, 4,
                                  np.random.default_rng(seed)), path)
        paths.append(str(path))
    out = tmp_path / "cmp.json"
    code = main(["trace", "compare", *paths, "--json", str(out), "--plot",
                 str(tmp_path / "plots")])
    data = json.loads(out.read_text(encoding="utf-8"))
    assert code == 0 and data["batch_tokens"] == 64
    assert len(data["per_layer"]["repeat_first_diff_pts"]) == 4
    for name in ("expert_load_heatmaps.png", "repetition_by_layer.png",
                 "batch_imbalance_cdf.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_cli_compare_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing trace file exits 2 with one line naming it."""
    code = main(["trace", "compare", str(tmp_path / "none.npz"), "mixtral8x7b_humaneval_decode"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "none.npz" in err
