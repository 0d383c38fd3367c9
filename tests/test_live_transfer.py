"""Issue 17: a live calibration that transfers across widths and token counts.

The expert GEMMs of `moesim calibrate live` are fitted by `fit_curves` (the fit `moesim
calibrate kernels` runs) over rows at several widths; both that fit and the collectives' fit
report a k-fold held-out error; the harness's prediction uses the device's own curves."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from moesim.calibrate.kernels import KernelRow, predict_row_s
from moesim.engine.cost import compute_model
from moesim.engine.kernels import moe_time
from moesim.inputs.kernel_profile import Curve, GpuKernels, KernelCurves
from tests.test_calibrate_live import _bench, _spec
from validate.microbench import GEMM_FAMILY, comm_band, fit_live, with_loopback_latency

# A CPU-like expert GEMM with known curves: 60 us per expert, compute rising from 20% of the
# peak at 1 row per expert to 50% at 256, memory at 30% of the bandwidth throughout.
TRUE_CURVES = KernelCurves(
    family=GEMM_FAMILY, launch_s=6e-5, grouped=False,
    compute=Curve(points=((1.0, 0.2), (16.0, 0.3), (256.0, 0.5))),
    memory=Curve(points=((1.0, 0.3),)))
WIDTHS = ((128, 448), (128, 112), (256, 896), (256, 224))  # 1/32 and 1/16 of Mixtral, EP and TP
TOKENS = (1, 4, 16, 64, 256, 1024)


def _gpu():  # type: ignore[no-untyped-def]
    return _spec().gpu_spec.model_copy(update={"memory_bandwidth_bytes_per_s": 2e10})


def _gemm_rows(noise: float = 0.0, seed: int = 0) -> list[dict]:
    """One-expert GEMM rows made by TRUE_CURVES at every width and token count (times scaled
    by lognormal noise of `noise`)."""
    rng = np.random.default_rng(seed)
    rows = []
    for hidden, ffn in WIDTHS:
        for tokens in TOKENS:
            row = KernelRow("moe", {"tokens": tokens, "experts": 1, "top_k": 1,
                                    "hidden": hidden, "ffn": ffn, "time_s": 1.0})
            time_s = predict_row_s(row, TRUE_CURVES, _gpu()) * float(
                np.exp(noise * rng.standard_normal()))
            rows.append({"op": "gemm", "num_ranks": 4, "tokens": tokens, "hidden": hidden,
                         "ffn": ffn, "experts": 1, "time_s": time_s})
    return rows


def _live_bench(noise: float = 0.0) -> dict:
    bench = _bench(with_loopback_latency(_spec(0.4, 2e-4), 5e-4), 1 / 2e10, 3e-5)
    bench["rows"] = [r for r in bench["rows"] if r["op"] != "gemm"] + _gemm_rows(noise)
    return bench


def test_gemm_curves_fitted_over_widths_recover_the_truth_and_report_held_out_error() -> None:
    """Rows at two widths (EP and TP shapes) and 1..1024 rows per expert, made by known curves:
    the fitted curves predict every row within 3%, the launch within 15%, and the 5-fold
    held-out error of every band (each row predicted by a fit that never saw it) is under 6%;
    the collectives' held-out error (noise-free rows of a topology the fit can represent) is
    under 2% in every op and size band."""
    fit = fit_live(_spec().model_copy(update={"gpu_spec": _gpu()}), _live_bench())
    curves = fit.spec.gpu_spec.kernels.moe  # type: ignore[union-attr]
    assert curves is not None and curves.family == GEMM_FAMILY and not curves.grouped
    np.testing.assert_allclose(fit.gemm_after_s, fit.gemm_measured_s, rtol=0.03)
    assert curves.launch_s == pytest.approx(6e-5, rel=0.15)
    gemm = [e for e in fit.held_out if e.op == "expert_gemm"]
    assert {e.band for e in gemm} == {"1-16", "32-256", "320-2048"}
    assert sum(e.rows for e in gemm) == len(WIDTHS) * len(TOKENS)
    assert all(e.mape < 0.06 for e in gemm), gemm
    comm = [e for e in fit.held_out if e.op != "expert_gemm"]
    assert {e.op for e in comm} == {"alltoall x4", "allgather x4"}
    assert all(e.mape < 0.02 and e.failed == 0 for e in comm), comm


def test_noise_shows_in_the_held_out_error() -> None:
    """25% lognormal noise on the GEMM rows raises their held-out MAPE above twice the clean
    fit's: the table tells a user how far the fit can be trusted."""
    clean = fit_live(_spec().model_copy(update={"gpu_spec": _gpu()}), _live_bench())
    noisy = fit_live(_spec().model_copy(update={"gpu_spec": _gpu()}), _live_bench(0.25))

    def mape(fit) -> float:  # type: ignore[no-untyped-def]
        errors = [e for e in fit.held_out if e.op == "expert_gemm"]
        return sum(e.mape * e.rows for e in errors) / sum(e.rows for e in errors)

    assert mape(noisy) > 2 * mape(clean)
    assert mape(noisy) > 0.1


def test_folds_zero_skips_the_held_out_error() -> None:
    fit = fit_live(_spec().model_copy(update={"gpu_spec": _gpu()}), _live_bench(), folds=0)
    assert fit.held_out == []


def test_fp32_runs_keep_the_roofline_fit() -> None:
    """Curves are fitted for 2-byte activations only (the kernel fit's rows): an fp32
    calibration leaves `kernels` unset and predicts with the fitted roofline."""
    bench = _live_bench()
    bench["act_dtype"] = "fp32"
    fit = fit_live(_spec().model_copy(update={"gpu_spec": _gpu()}), bench, folds=0)
    assert fit.spec.gpu_spec.kernels is None


def test_calibrated_curves_survive_the_topology_file_and_drive_auto(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The written topology carries the curves (gpu_spec.kernels); `kernels: auto` then costs
    compute on them, `roofline` does not."""
    import yaml

    from moesim.inputs.topology import load_topology

    fit = fit_live(_spec().model_copy(update={"gpu_spec": _gpu()}), _live_bench(), folds=0)
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(fit.spec.model_dump(mode="json", exclude_defaults=True)))
    gpu = load_topology(str(path)).gpu_spec
    assert gpu.kernels == fit.spec.gpu_spec.kernels
    assert compute_model("auto", gpu).kernels == gpu.kernels
    assert compute_model("roofline", gpu).kernels is None


def test_harness_prediction_sums_one_expert_ops_on_the_curves() -> None:
    """With curves, the harness's experts phase is the sum over its busy experts of a
    one-expert op each (its own launch: the harness loops over experts); idle experts cost 0."""
    from moesim.inputs.model_files import load_model
    from validate.measurement import scaled_model_update
    from validate.predict import harness_costs

    model = load_model("mixtral-8x7b")
    update = scaled_model_update(model, 1 / 32, 1)
    gpu = _gpu().model_copy(update={"kernels": GpuKernels(moe=TRUE_CURVES)})
    tokens = np.array([[[5, 0], [40, 3]]], dtype=np.float64)  # [L=1, W=2, S=2]

    class _Traffic:
        rank_expert_tokens = tokens
        world = 2

    inputs = {"model": "mixtral-8x7b", "model_update": update,
              "parallelism": {"moe_tp": 1}, "act_bytes": 2}
    got = harness_costs(inputs, _Traffic(), gpu).experts.time_s  # type: ignore[arg-type]

    def one(n: float) -> float:
        return float(moe_time(TRUE_CURVES, gpu, tokens_per_expert=np.array([n]),
                              hidden=update["hidden_size"], ffn=update["expert_ffn_size"],
                              weight_bytes=2, act_bytes=2,
                              peak_flops_per_s=gpu.peak_bf16_flops_per_s))

    np.testing.assert_allclose(got, [[one(5), one(40) + one(3)]], rtol=1e-12)


def test_comm_bands() -> None:
    assert [comm_band(s) for s in (4096, 16384, 16385, 262144, 1 << 20, 8 << 20)] == [
        "<=16K", "<=16K", "16K-256K", "16K-256K", "256K-4M", ">4M"]


def _sync(computes: list[float], wait: Any, position: str = "after") -> list[dict]:
    """Sync rows of 4 ranks: the plain all-to-all on `TRUTH_WAITS` plus `wait(row)` seconds."""
    from validate.microbench import _plain_alltoall_s

    rows = [{"op": "sync", "num_ranks": 4, "size_bytes": 65536.0, "compute_s": c,
             "position": position, "time_s": 1.0} for c in computes]
    for row, plain in zip(rows, _plain_alltoall_s(TRUTH_WAITS, rows, "analytic"), strict=True):
        row["time_s"] = float(plain + wait(row))
    return rows


TRUTH_WAITS = with_loopback_latency(_spec(0.4, 2e-4), 5e-4)
COMPUTES = [5e-4, 2e-3, 8e-3, 3e-2, 1e-3, 4e-3]


def test_waits_are_recovered_from_all_to_alls_after_and_before_compute() -> None:
    """Sync rows of 4 ranks made as `plain all-to-all + 0.3 x E[max of 4 normals] x compute`
    after compute and `plain + 0.2 x compute` before it (compute 0.5 to 30 ms) give back a
    straggler_wait_fraction of 0.3 and a precompute_wait_fraction of 0.2 without caps, each from
    its own rows, written into the spec; rows saved without a position count as after compute;
    with none the spec keeps 0; the held-out error of each wait is reported per compute band and
    is ~0 here."""
    from validate.microbench import fit_wait, sync_rows
    from validate.predict import expected_max_normal

    rows = _sync(COMPUTES, lambda r: 0.3 * expected_max_normal(4) * r["compute_s"])
    before = _sync(COMPUTES, lambda r: 0.2 * r["compute_s"], "before")
    unplaced = [{k: v for k, v in r.items() if k != "position"} for r in rows]
    for found, fraction in ((fit_wait(TRUTH_WAITS, {"rows": unplaced}), 0.3),
                            (fit_wait(TRUTH_WAITS, {"rows": rows + before}), 0.3),
                            (fit_wait(TRUTH_WAITS, {"rows": rows + before}, position="before"),
                             0.2)):
        assert found is not None and found.cap_s is None
        assert found.fraction == pytest.approx(fraction, rel=1e-9)
    assert fit_wait(TRUTH_WAITS, {"rows": []}) is None
    assert fit_wait(TRUTH_WAITS, {"rows": rows}, position="before") is None
    assert sync_rows({"rows": rows + before}, "before") == before
    bench = _live_bench()
    bench["rows"] += rows + before
    assert len(sync_rows(bench)) == len(COMPUTES)
    fit = fit_live(_spec().model_copy(update={"gpu_spec": _gpu()}), bench)
    assert fit.spec.straggler_wait_fraction == pytest.approx(0.3, rel=0.05)
    assert fit.spec.precompute_wait_fraction == pytest.approx(0.2, rel=0.05)
    for group in ("a2a after compute x4", "a2a before compute x4"):
        waits = [e for e in fit.held_out if e.op == group]
        assert {e.band for e in waits} == {"<1ms", "1-10ms", ">10ms"}
        assert all(e.mape < 0.05 for e in waits), waits


def test_a_wait_that_levels_off_is_fitted_with_its_cap() -> None:
    """Rows made as `plain + 3 ms x (1 - exp(-0.45 x compute / 3 ms))` before compute (a rank
    waits for a core at most about a time slice) give back the slope 0.45 and the cap 3 ms to
    within the fit's grid (0.5%), and the waits it predicts match the rows' (a line of that
    slope would overshoot the long rows several times over)."""
    from validate.microbench import WaitFit, fit_wait

    def truth(row: dict) -> float:
        return 3e-3 * -math.expm1(-0.45 * row["compute_s"] / 3e-3)

    rows = _sync(COMPUTES + [6e-3, 1.5e-3], truth, "before")
    found = fit_wait(TRUTH_WAITS, {"rows": rows}, position="before")
    assert found is not None and found.cap_s is not None
    assert found.fraction == pytest.approx(0.45, rel=5e-3)
    assert found.cap_s == pytest.approx(3e-3, rel=5e-3)
    np.testing.assert_allclose(found.wait_s(rows), [truth(r) for r in rows], rtol=1e-2)
    line = WaitFit(found.fraction, None).wait_s(rows)
    assert np.max(np.abs(line / [truth(r) for r in rows] - 1)) > 1


def _waited_phase_times(placement: str, **fractions: float) -> tuple[np.ndarray, np.ndarray]:
    """Predicted `[L, W, P]` of a 2-layer, 2-rank live run without and with `fractions`."""
    from moesim.inputs.topology import build_topology
    from validate.measurement import live_inputs, traffic_for_inputs
    from validate.predict import predict_phase_times, prediction_topology

    inputs = live_inputs(model="mixtral-8x7b", trace="bundled:mixtral8x7b_humaneval_decode",
                         placement=placement, backend="gloo", scale=1 / 32, layers=2,
                         tokens=64, act_dtype="bf16", dedup="none", phase="decode",
                         sp_variant="ring", warmup=0, repeats=1, barrier="step")
    traffic = traffic_for_inputs(inputs)
    topo = prediction_topology(None, 2)
    plain = predict_phase_times(inputs, traffic, topo, "analytic")
    spec = topo.spec.model_copy(update=fractions)
    return plain, predict_phase_times(inputs, traffic, build_topology(spec), "analytic")


def test_prediction_adds_the_waits_around_the_experts() -> None:
    """EP2: the first collective after the experts (the combine, a world call of 2 ranks) gets
    straggler fraction x E[max of 2 normals] (0.5642) x the slowest rank's expert time on every
    rank (no cap: linear), the last before them (the dispatch) the precompute wait of that
    time, capped at 0.1 ms: 0.1 ms x (1 - exp(-0.25 x time / 0.1 ms)); the experts are
    unchanged."""
    from validate.measurement import PHASES

    plain, waited = _waited_phase_times("EP2", straggler_wait_fraction=0.5,
                                        precompute_wait_fraction=0.25,
                                        precompute_wait_cap_s=1e-4)
    experts, combine = PHASES.index("experts"), PHASES.index("combine")
    slowest = plain[:, :, experts].max(axis=1)[:, None]
    expected = plain.copy()
    expected[:, :, combine] += 0.5 * 0.5642 * slowest
    expected[:, :, PHASES.index("dispatch")] += 1e-4 * (1 - np.exp(-0.25 * slowest / 1e-4))
    np.testing.assert_allclose(waited, expected, rtol=1e-4)  # 0.5642: E[max] to 4 digits


def test_precompute_wait_goes_to_the_last_collective_that_runs_before_the_experts() -> None:
    """TP2: the dispatch only copies rows on each rank (no collective runs), so the wait before
    compute lands on the MoE-TP gather, the last collective before the experts."""
    from validate.measurement import PHASES

    plain, waited = _waited_phase_times("TP2", precompute_wait_fraction=0.25)
    experts, gather = PHASES.index("experts"), PHASES.index("moe_tp_gather")
    expected = plain.copy()
    expected[:, :, gather] += 0.25 * plain[:, :, experts].max(axis=1)[:, None]
    np.testing.assert_allclose(waited, expected, rtol=1e-12)
    assert plain[:, :, gather].min() > 0


def test_expected_max_of_normals_matches_the_tables() -> None:
    """E[max of n standard normals]: 0 for 1, 1/sqrt(pi) for 2, 3/(2 sqrt(pi)) for 3, and the
    tabulated 1.0294 (4), 1.4236 (8), 1.7660 (16)."""
    import math

    from validate.predict import expected_max_normal

    assert expected_max_normal(1) == 0.0
    assert expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-6)
    assert expected_max_normal(3) == pytest.approx(1.5 / math.sqrt(math.pi), rel=1e-6)
    for count, value in ((4, 1.0294), (8, 1.4236), (16, 1.7660)):
        assert expected_max_normal(count) == pytest.approx(value, abs=1e-4)


def test_auto_keeps_the_shipped_profile_for_what_the_device_did_not_time() -> None:
    """A calibrated GPU's own `moe` curves replace the vllm profile's MoE entry only: its
    attention and dense GEMM curves stay (a live calibration times expert GEMMs alone)."""
    from moesim.inputs.kernel_profile import load_kernel_profile
    from moesim.inputs.topology_spec import load_gpu

    gpu = load_gpu("h100-sxm")
    shipped = load_kernel_profile("vllm").for_gpu(gpu.kernel_key)
    assert shipped is not None and shipped.attention_decode is not None
    calibrated = gpu.model_copy(update={"kernels": GpuKernels(moe=TRUE_CURVES)})
    model = compute_model("auto", calibrated)
    assert model.kernels is not None and model.kernels.moe == TRUE_CURVES
    assert model.kernels.attention_decode == shipped.attention_decode
    assert model.kernels.gemm == shipped.gemm


def test_bands_have_no_gaps() -> None:
    """Sizes between two bands' bounds (a fractional byte count from a saved file) fall in the
    upper band instead of no band."""
    from validate.microbench import compute_band

    assert comm_band(16384.5) == "16K-256K" and comm_band(0.5) == "<=16K"
    assert compute_band(0.0) == "<1ms" and compute_band(1e-3) == "1-10ms"
    assert compute_band(0.5) == ">10ms"


@pytest.mark.parametrize(("row", "field"), [
    ({"op": "sync", "num_ranks": 4, "size_bytes": 65536, "compute_s": -1.0, "time_s": 1e-3},
     "compute_s"),
    ({"op": "sync", "num_ranks": 4, "size_bytes": 65536, "time_s": 1e-3}, "compute_s"),
    ({"op": "sync", "num_ranks": 1, "size_bytes": 65536, "compute_s": 1e-3, "time_s": 1e-3},
     "num_ranks"),
    ({"op": "sync", "num_ranks": 4, "size_bytes": 65536, "compute_s": 1e-3, "time_s": 1e-3,
      "position": "during"}, "position"),
    ({"op": "gemm", "num_ranks": 4, "tokens": 8, "hidden": 0, "time_s": 1e-3}, "hidden"),
    ({"op": "gemm", "num_ranks": 4, "tokens": 8, "hidden": 12.5, "time_s": 1e-3}, "hidden"),
])
def test_saved_sync_and_width_rows_are_checked(row: dict, field: str) -> None:
    """`--from-bench` files: a sync row or a GEMM row's own width that no fit can use is one
    ConfigError naming the row and the field."""
    from moesim.errors import ConfigError
    from validate.microbench import check_bench

    bench = _live_bench()
    bench["rows"] = bench["rows"] + [row]
    with pytest.raises(ConfigError, match=rf"rows\[{len(bench['rows']) - 1}\]: field '{field}'"):
        check_bench(bench)


@pytest.mark.parametrize(("flag", "value"), [
    ("--scale", "1/32,,2"), ("--scale", ","), ("--scale", "1/32,0"),
    ("--row-budget-s", "-1"), ("--row-budget-s", "nan"), ("--folds", "-1"),
])
def test_calibrate_live_flags_are_refused_at_parse_time(flag: str, value: str, capsys) -> None:  # type: ignore[no-untyped-def]
    """Bad `calibrate live` widths, row budget or folds: argparse's one error line, exit 2."""
    from moesim.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "live", flag, value, "-o", "x.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error:" in err[-1] and flag in err[-1] and "Traceback" not in "\n".join(err)


def test_world_calls_after_the_experts_end_together_on_every_rank() -> None:
    """Hand-worked, 2 ranks: experts 1 and 3 ms, then the MoE-TP scatter (engine: 1 and 0.5 ms,
    ending at 2 and 3.5 ms), the combine (engine: 2.5 and 1 ms, ending at 4.5 ms on both) and
    the attention ring (0.2, 0.3 ms). As world calls the scatter ends at 3.5 ms on both ranks
    (2.5 and 0.5 ms), the combine at 4.5 ms (1 ms each); the ring, a group call, and the phases
    before the experts keep their seconds."""
    from validate.measurement import PHASES
    from validate.predict import _world_sync_after_experts

    out = np.zeros((1, 2, len(PHASES)))
    given = {"dispatch": [0.7, 0.9], "experts": [1.0, 3.0], "moe_tp_scatter": [1.0, 0.5],
             "combine": [2.5, 1.0], "attn_all_gather": [0.2, 0.3]}
    for phase, ms in given.items():
        out[0, :, PHASES.index(phase)] = np.array(ms) * 1e-3
    active = np.ones(len(PHASES), dtype=bool)
    runs = np.ones((1, len(PHASES)), dtype=bool)
    _world_sync_after_experts(out, runs, active)
    expected = dict(given, moe_tp_scatter=[2.5, 0.5], combine=[1.0, 1.0])
    for phase, ms in expected.items():
        np.testing.assert_allclose(out[0, :, PHASES.index(phase)], np.array(ms) * 1e-3,
                                   rtol=1e-12, err_msg=phase)


def test_gloo_predictions_end_world_calls_together_and_nccl_keeps_the_engines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """TP2xEP2 on 4 ranks: on gloo every rank ends the MoE-TP scatter and the combine at the
    same time from the experts' common start (experts + scatter + combine equal on all ranks);
    on nccl the engine's per-rank seconds stay as they are (gloo's without the re-timing)."""
    import validate.predict
    from validate.measurement import PHASES, live_inputs, traffic_for_inputs
    from validate.predict import predict_phase_times, prediction_topology

    def predict(backend: str) -> np.ndarray:
        inputs = live_inputs(model="mixtral-8x7b", trace="bundled:mixtral8x7b_humaneval_decode",
                             placement="TP2xEP2", backend=backend, scale=1 / 32, layers=2,
                             tokens=64, act_dtype="bf16", dedup="none", phase="decode",
                             sp_variant="ring", warmup=0, repeats=1, barrier="step")
        return predict_phase_times(inputs, traffic_for_inputs(inputs),
                                   prediction_topology(None, 4), "analytic")

    through = [PHASES.index(p) for p in ("experts", "moe_tp_scatter", "combine")]
    gloo, nccl = predict("gloo"), predict("nccl")
    ends = gloo[:, :, through].sum(axis=2)  # [L, W]
    np.testing.assert_allclose(ends, ends[:, :1].repeat(4, axis=1), rtol=1e-12)
    assert not np.allclose(nccl[:, :, through].sum(axis=2), ends)
    before = [PHASES.index(p) for p in PHASES[:PHASES.index("experts") + 1]]
    np.testing.assert_array_equal(gloo[:, :, before], nccl[:, :, before])
    monkeypatch.setattr(validate.predict, "_world_sync_after_experts", lambda *a: None)
    np.testing.assert_array_equal(predict("gloo"), nccl)


def test_noisy_rows_of_a_line_keep_the_line() -> None:
    """Rows of a linear wait (0.3 x E[max of 4] x compute) with 5% noise on every time, 20
    draws: a two-parameter cap fits each a little better, but none lowers the error enough to
    be kept (`_cap_is_shown`), and the line's fraction stays within 10% of 0.3. A wait that
    does not grow with compute (1 ms at every compute) gives a small line, not a fraction at
    the grid's edge."""
    from validate.microbench import fit_wait
    from validate.predict import expected_max_normal

    computes = [3e-4, 5e-4, 6e-4, 7e-4, 9e-4, 1.2e-3, 2e-3, 6e-3, 3e-2, 2.8e-2]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        rows = _sync(computes, lambda r: 0.3 * expected_max_normal(4) * r["compute_s"])
        for row in rows:
            row["time_s"] *= 1 + 0.05 * rng.standard_normal()
        found = fit_wait(TRUTH_WAITS, {"rows": rows})
        assert found is not None and found.cap_s is None, (seed, found)
        assert found.fraction == pytest.approx(0.3, rel=0.1), seed
    flat = fit_wait(TRUTH_WAITS, {"rows": _sync(computes, lambda r: 1e-3)})
    assert flat is not None and flat.cap_s is None and 0 < flat.fraction < 0.2


def test_a_cap_needs_its_fraction() -> None:
    """A topology with a wait's cap but no fraction is refused, naming both fields."""
    from pydantic import ValidationError

    spec = _spec()
    with pytest.raises(ValidationError, match="precompute_wait_cap_s is set but "
                       "precompute_wait_fraction is 0"):
        type(spec).model_validate(spec.model_dump() | {"precompute_wait_cap_s": 1e-3})
    type(spec).model_validate(spec.model_dump() | {"precompute_wait_cap_s": 1e-3,
                                                   "precompute_wait_fraction": 0.1})


def test_timed_pairs_each_collective_with_the_compute_next_to_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`_timed` on a fake clock (a collective takes 2 s, the GEMMs 5 s, the load 3 s), warm-up
    1 and 3 repeats. GEMM rows (`between`): each iteration `a2a, GEMMs, a2a`; the a2a after
    the GEMMs is an "after" pair (5, 2) every timed iteration, the one before them a "before"
    pair (5, 2) except right after the barrier at the first timed iteration; nothing from the
    warm-up. Collective rows with a load: `a2a, load, a2a`; "after" (3, 2) thrice, "before"
    (3, 2) twice. The statistics hold the timed calls only."""
    import validate.microbench as microbench

    clock = [0.0]
    monkeypatch.setattr(microbench.time, "perf_counter", lambda: clock[0])

    def takes(seconds: float) -> Any:
        def call() -> None:
            clock[0] += seconds
        return call

    barriers: list[float] = []
    after: list[tuple[float, float]] = []
    before: list[tuple[float, float]] = []
    stats = microbench._timed(takes(5.0), 1, 3, between=takes(2.0), sync=after, before=before,
                              barrier=lambda: barriers.append(clock[0]))
    assert stats == (5.0, 5.0, 5.0)
    assert after == [(5.0, 2.0)] * 3 and before == [(5.0, 2.0)] * 2
    assert len(barriers) == 2  # before the warm-up and before the first timed iteration
    after, before = [], []
    stats = microbench._timed(takes(2.0), 1, 3, load=takes(3.0), sync=after, before=before,
                              barrier=lambda: None)
    assert stats == (2.0, 2.0, 2.0)
    assert after == [(3.0, 2.0)] * 3 and before == [(3.0, 2.0)] * 2


def test_rows_name_each_sync_rows_position() -> None:
    """`_rows` turns the ranks' sync arrays into rows: the slowest rank's time and compute, the
    position code 0 as "after" and 1 as "before"; such rows pass `check_bench`, as do rows
    saved without a position."""
    from validate.microbench import _rows, check_bench

    def rank(scale: float) -> dict[str, np.ndarray]:
        return {"alltoall": np.array([1e-3]) * scale, "allgather": np.array([2e-3]) * scale,
                "gemm": np.array([3e-3]) * scale, "sync": np.array([4e-3, 5e-3]) * scale,
                "sync_compute": np.array([6e-3, 7e-3]) * scale,
                "sync_size": np.array([4096, 4096]), "sync_position": np.array([0, 1])}

    rows = _rows([rank(1.0), rank(2.0)], 2, (4096,), (8,), [(64, 128, 2)])
    syncs = [r for r in rows if r["op"] == "sync"]
    assert syncs == [
        {"op": "sync", "num_ranks": 2, "size_bytes": 4096, "compute_s": 12e-3,
         "position": "after", "time_s": 8e-3},
        {"op": "sync", "num_ranks": 2, "size_bytes": 4096, "compute_s": 14e-3,
         "position": "before", "time_s": 10e-3}]
    bench = _live_bench()
    check_bench(bench | {"rows": bench["rows"] + syncs}, "rows")
    unplaced = [{k: v for k, v in r.items() if k != "position"} for r in syncs]
    check_bench(bench | {"rows": bench["rows"] + unplaced}, "rows")
