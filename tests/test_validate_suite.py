"""`moesim validate suite`: the matrix, the table, the refusals, and (live) a run on 2 ranks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from moesim.cli import validate as validate_cli
from validate import suite


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moesim")
    validate_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def _quick_suite(out: Path, repeats: int) -> int:
    """`validate suite --quick` on 2 ranks, 1 layer, on the uncalibrated cpu-loopback."""
    args = _parser().parse_args(["validate", "suite", "--nproc", "2", "--quick", "--topology",
                                 "cpu-loopback", "--layers", "1", "--repeats", str(repeats),
                                 "-o", str(out)])
    return int(args.handler(args))


def test_matrix_on_four_ranks_covers_every_layout_size_and_width() -> None:
    """4 ranks: EP4, EP2xDP2, TP4, SP4, TP2xEP2, each decode- and prefill-sized at 1/32 and
    1/16 width, and decode at 1/8, a width the calibration does not time (25 runs); quick
    keeps one width per size (10 runs)."""
    configs, notes = suite.suite_matrix(4)
    assert notes == []
    assert [c.layout for c in configs[::5]] == ["EP4", "EP2xDP2", "TP4", "SP4", "TP2xEP2"]
    assert len(configs) == 25 and len({c.name for c in configs}) == 25
    assert {(c.size, c.scale) for c in configs} == {
        (s, w) for s in ("decode", "prefill") for w in (1 / 32, 1 / 16)} | {("decode", 1 / 8)}
    decode = [c for c in configs if c.size == "decode"]
    assert {c.trace for c in decode} == {suite.DECODE_TRACE} and {c.phase for c in decode} == {
        "decode"}
    quick, _ = suite.suite_matrix(4, quick=True)
    assert len(quick) == 10
    assert {(c.size, c.scale, c.tokens) for c in quick} == {
        ("decode", 1 / 32, None), ("prefill", 1 / 16, suite.QUICK_PREFILL_TOKENS)}


def test_matrix_on_two_ranks_says_what_it_leaves_out() -> None:
    configs, notes = suite.suite_matrix(2)
    assert sorted({c.layout for c in configs}) == ["EP2", "SP2", "TP2"]
    assert len(notes) == 2 and "EP+DP" in notes[0] and "TP x EP" in notes[1]


def test_matrix_on_one_rank_is_ep1_and_says_so() -> None:
    """The one-rank form (a host with one GPU): EP1 at every size and width, nothing else, and a
    note that no collective runs between ranks."""
    configs, notes = suite.suite_matrix(1)
    assert {c.layout for c in configs} == {"EP1"} and len(configs) == 5
    assert len(notes) == 1 and "no collective between ranks" in notes[0]
    configs, _ = suite.suite_matrix(1, backend="nccl")
    assert {c.layout for c in configs} == {"EP1"} and {c.scale for c in configs} == {1.0}


def test_nccl_runs_full_width() -> None:
    configs, _ = suite.suite_matrix(8, backend="nccl")
    assert {c.scale for c in configs} == {1.0} and len(configs) == 10


def test_calibration_trace_is_not_a_suite_trace() -> None:
    """The calibration sizes its load from the bundled decode trace (`calibrate live --trace`);
    the suite runs other traces, so every run is out of sample."""
    from moesim.cli.calibrate import add_parser as add_calibrate

    parser = argparse.ArgumentParser(prog="moesim")
    add_calibrate(parser.add_subparsers(dest="command"))
    default = parser.parse_args(["calibrate", "live", "-o", "x.yaml"]).trace
    assert default not in (suite.DECODE_TRACE, suite.PREFILL_TRACE)


def _row(layout: str, layer: float | None, a2a: float | None, status: str = "ok"
         ) -> suite.SuiteRow:
    config = suite.SuiteConfig(layout, "decode", 1 / 32, suite.DECODE_TRACE, None, "decode")
    return suite.SuiteRow(config, status, layer, a2a, {"experts": 5.0}, 0.01, 0.011,
                          [(0.005, 0.0055), (0.005, 0.0055)])


def test_table_verdicts_and_summary() -> None:
    """Worst of layer and all-to-all MAPE against 20%; no all-to-all is said, not zero."""
    table = suite.suite_table([_row("EP4", 10.0, 19.9), _row("TP4", 12.0, None),
                               _row("SP4", 25.0, 5.0), _row("EP2xDP2", None, None,
                                                           "skipped: too long")])
    lines = table.splitlines()
    assert "within 20%" in lines[2] and "19.9%" in lines[2]
    assert "no a2a" in lines[3] and "within 20%" in lines[3]
    assert "OVER 20%" in lines[4]
    assert "skipped: too long" in lines[5]
    assert "3 of 4 configurations ran" in table and "worst 25.0%" in table


def test_outputs_are_written_and_the_page_escapes_text(tmp_path: Path) -> None:
    rows = [_row("EP4", 10.0, 12.0), _row("TP4", 8.0, None)]
    paths = suite.write_outputs(tmp_path, rows, ["note <b>"], "cal <i>", {"nproc": 4})
    assert {p.name for p in paths} == {"suite.json", "suite.md", "errors.png", "layers.png",
                                       "index.html"}
    data = json.loads((tmp_path / "suite.json").read_text())
    assert [c["layout"] for c in data["configs"]] == ["EP4", "TP4"]
    assert data["configs"][0]["layers"][0] == {"measured_s": 0.005, "predicted_s": 0.0055}
    page = (tmp_path / "index.html").read_text()
    assert "note &lt;b&gt;" in page and "cal &lt;i&gt;" in page and "<b>" not in page
    assert page.count("data:image/png;base64,") == 2


def test_a_run_past_the_timeout_is_not_started(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each run's time is estimated first (passes x predicted step): 2,000 passes of even the
    smallest layer (a millisecond or more on any topology's launch latencies) are past a 1 s
    --timeout-s, so no run is started and the table says why."""
    import validate.launch

    def never(*_: object, **__: object) -> None:
        raise AssertionError("a run past its timeout was started")

    monkeypatch.setattr(validate.launch, "_spawn", never)
    rows, _ = suite.run_suite(out_dir=tmp_path, topology="cpu-loopback", nproc=2, quick=True,
                              layers=1, repeats=2000, timeout_s=1.0, log=lambda line: None)
    assert rows and all(r.status.startswith("skipped: the run would take about") for r in rows)
    assert "beyond --timeout-s 1;" in rows[0].status


def test_bad_output_folder_is_one_error(tmp_path: Path) -> None:
    from moesim.errors import ConfigError

    target = tmp_path / "file"
    target.write_text("x")
    args = _parser().parse_args(["validate", "suite", "--topology", "cpu-loopback", "-o",
                                 str(target)])
    with pytest.raises(ConfigError, match="is a file"):
        suite.run_suite_command(args, target)


@pytest.mark.live
def test_suite_on_two_gloo_ranks(tmp_path: Path) -> None:
    """The whole command on 2 gloo ranks (quick, 1 layer, few repeats, on the uncalibrated
    cpu-loopback topology to keep it short): every run's bytes match (exit 0), each
    configuration has finite errors, and the outputs are written."""
    out = tmp_path / "suite"
    assert _quick_suite(out, repeats=3) == 0
    data = json.loads((out / "suite.json").read_text())
    assert [c["name"] for c in data["configs"]] == [
        "EP2_decode_w32", "EP2_prefill_w16", "TP2_decode_w32", "TP2_prefill_w16",
        "SP2_decode_w32", "SP2_prefill_w16"]
    assert all(c["status"] == "ok" for c in data["configs"])
    assert all(c["layer_mape_pct"] is not None and c["layer_mape_pct"] >= 0
               for c in data["configs"])
    assert [c["a2a_mape_pct"] is None for c in data["configs"]] == [
        False, False, True, True, False, False]  # TP moves no all-to-all bytes
    assert all((out / "runs" / f"{c['name']}.json").is_file() for c in data["configs"])
    for name in ("suite.md", "errors.png", "layers.png", "index.html"):
        assert (out / name).stat().st_size > 0


@pytest.mark.live
def test_suite_on_one_gloo_rank_calibrates_the_gemms_alone(tmp_path: Path) -> None:
    """The one-rank form end to end on gloo (quick, 1 layer, few repeats, its own calibration):
    the calibration times no collective and fits the expert GEMM curves, every run's bytes
    match (exit 0), and neither run has an all-to-all error."""
    out = tmp_path / "suite"
    args = _parser().parse_args(["validate", "suite", "--nproc", "1", "--quick", "--layers", "1",
                                 "--repeats", "3", "-o", str(out)])
    assert int(args.handler(args)) == 0
    calibration = (out / "calibration.txt").read_text()
    assert "one rank: no collective to time" in calibration
    assert "fitted expert GEMM curves" in calibration
    data = json.loads((out / "suite.json").read_text())
    assert [c["name"] for c in data["configs"]] == ["EP1_decode_w32", "EP1_prefill_w16"]
    assert all(c["status"] == "ok" and c["a2a_mape_pct"] is None for c in data["configs"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--topology", "no-such-topology.yaml"], "no-such-topology"),
    (["--nproc", "0"], "--nproc"),
    (["--backend", "nccl"], "--backend nccl"),
    (["--repeats", "0"], "--repeats"),
])
def test_bad_flags_are_one_error_line(argv: list[str], message: str, tmp_path: Path,
                                      capsys) -> None:  # type: ignore[no-untyped-def]
    """Bad input: exit 2, one error line naming the flag, nothing started (a missing topology
    fails before any rank; this host has no CUDA GPU)."""
    from moesim.cli import main

    try:
        import torch

        if argv[:2] == ["--backend", "nccl"] and torch.cuda.is_available():
            pytest.skip("this host has a CUDA GPU")
    except ImportError:
        pass
    try:
        code = main(["validate", "suite", *argv, "-o", str(tmp_path / "out")])
    except SystemExit as exit_info:  # argparse's own refusals
        code = exit_info.code  # type: ignore[assignment]
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    # one error line (argparse's refusals print the usage above it, as for every command)
    assert err[-1].startswith("moesim") and "error:" in err[-1] and message in err[-1], err
    assert sum("error:" in line for line in err) == 1


def test_failed_runs_are_rows_and_no_finished_run_exits_1(tmp_path: Path, monkeypatch,
                                                          capsys) -> None:  # type: ignore[no-untyped-def]
    """A run that fails is a row saying why; the others go on, the outputs are still written,
    and a suite in which no run finished exits 1."""
    import validate.launch
    from validate.launch import LiveRunError

    def broken(*_: object, **__: object) -> None:
        raise LiveRunError("rank 1 failed: injected for the test")

    monkeypatch.setattr(validate.launch, "_spawn", broken)
    out = tmp_path / "suite"
    assert _quick_suite(out, repeats=2) == 1
    data = json.loads((out / "suite.json").read_text())
    assert len(data["configs"]) == 6
    assert all(c["status"] == "failed: rank 1 failed: injected for the test"
               for c in data["configs"])
    assert (out / "index.html").is_file()
    assert "no run of the suite finished" in capsys.readouterr().out


def test_a_topology_smaller_than_the_suite_is_refused(tmp_path: Path) -> None:
    from moesim.errors import ConfigError

    args = _parser().parse_args(["validate", "suite", "--nproc", "8", "--topology",
                                 "cpu-loopback", "-o", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="fewer than the suite's 8"):
        suite.run_suite_command(args, tmp_path / "out")
