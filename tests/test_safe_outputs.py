"""Outputs are safe (issue 15): bad output paths are refused before the work, naming the flag;
every output is written whole or not at all; sweeps lock their output, drop a row cut short,
leave no workers behind when killed, and ship absolute input paths."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moesim.cli import build_parser, main
from moesim.cli.outputs import OUTPUT_FLAGS, check_output
from moesim.cli.run import write_json
from moesim.errors import ConfigError
from moesim.inputs.config import Scenario
from moesim.output.files import atomic_path, write_atomic, write_atomic_with, write_npz_atomic
from moesim.planning import sweep as sweep_module
from moesim.planning.sweep import Grid, expand_grid, point_key, read_rows, run_sweep
from moesim.planning.sweep_point import evaluate_point, missing_inputs, with_absolute_inputs
from moesim.planning.sweep_rows import SweepLock, complete_length

ROOT = Path(__file__).resolve().parents[1]
GRID = Grid(name="safe", placements=["EP8", "TP8"], batches=[1, 2], contexts=[16],
            topologies=["dgx-h100"], fixed={"phase": "decode", "fidelity": "analytic"})


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    """A folder, a regular file and a path under that file."""
    folder = tmp_path / "folder"
    folder.mkdir()
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    return {"folder": folder, "file": regular, "under_file": regular / "out.json"}


# ---- 1. output paths refused before the work, naming the flag ---------------------------------


def test_check_output_refuses_folders_files_and_unwritable(
    paths: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder, a path under a regular file, a read-only file or folder, a wrong suffix and
    (for traces) a missing folder are refused naming the flag; '-' and creatable paths pass."""
    with pytest.raises(ConfigError, match=r"^--json .*folder is a folder; give a file path"):
        check_output(paths["folder"], "--json")
    with pytest.raises(ConfigError, match=r"^-o/--output .* lies under .*file\.txt, which is a"):
        check_output(paths["under_file"], "-o/--output")
    with pytest.raises(ConfigError, match=r"^--plot .*file\.txt is a file; give a folder"):
        check_output(paths["file"], "--plot", directory=True)
    with pytest.raises(ConfigError, match=r"^-o/--out x\.txt: give a path ending in \.csv or"):
        check_output("x.txt", "-o/--out", suffixes=(".csv", ".parquet"))
    with pytest.raises(ConfigError, match=r"^-o/--output .*nope/t\.npz: folder .*nope does not"):
        check_output(tmp_path / "nope" / "t.npz", "-o/--output", suffixes=(".npz",),
                     folder_must_exist=True)
    check_output("-", "--json")
    check_output(tmp_path / "new" / "deeper" / "r.json", "--json")  # created by the writer
    check_output(tmp_path / "plots", "--plot", directory=True)
    check_output(paths["folder"], "--plot", directory=True)
    assert not (tmp_path / "new").exists() and not (tmp_path / "plots").exists()

    def no_write(path: Any, mode: int) -> bool:  # as an unprivileged user sees a 0o555 folder
        return False

    monkeypatch.setattr(os, "access", no_write)
    with pytest.raises(ConfigError, match=r"^--html .*: cannot write in folder .*permission"):
        check_output(tmp_path / "r.html", "--html")
    with pytest.raises(ConfigError, match=r"^--json .*file\.txt is a read-only file"):
        check_output(paths["file"], "--json")


def _refusing_parser(called: list[str]) -> argparse.ArgumentParser:
    """The real parser with every handler replaced by one that records it was reached."""
    parser = build_parser()

    def stub(args: argparse.Namespace) -> int:
        called.append(args.command)
        return 0

    def walk(p: argparse.ArgumentParser) -> None:
        p.set_defaults(handler=stub)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(parser)
    return parser


BAD_OUTPUTS = [
    (["run", "--json", "{folder}"], "--json"),
    (["run", "--json", "{under_file}"], "--json"),
    (["serve", "--rate", "1", "--json", "{folder}"], "--json"),
    (["serve", "--rate", "1", "--requests-out", "{folder}/r.json"], "--requests-out"),
    (["serve", "--rate", "1", "--plot", "{file}"], "--plot"),
    (["compare", "--html", "{under_file}"], "--html"),
    (["compare", "--plot", "{file}"], "--plot"),
    (["compare", "--json", "{folder}"], "--json"),
    (["report", "r.json", "--html", "{folder}"], "--html"),
    (["report", "r.json", "--plot", "{file}"], "--plot"),
    (["sweep", "g.yaml", "-o", "{folder}/out.txt"], "-o/--out"),
    (["sweep", "g.yaml", "-o", "{under_file}.csv"], "-o/--out"),
    (["sweep", "g.yaml", "-o", "o.csv", "--plot", "{file}"], "--plot"),
    (["plan", "--gpus-available", "8", "--slo-tpot-ms", "50", "--context", "16", "--json",
      "{folder}"], "--json"),
    (["trace", "convert", "--from", "vllm-jsonl", "in.jsonl", "-o", "{folder}/x.trace"],
     "-o/--output"),
    (["trace", "convert", "--from", "vllm-jsonl", "in.jsonl", "-o", "{folder}/no/x.npz"],
     "-o/--output"),
    (["trace", "stats", "bundled:mixtral8x7b_humaneval_decode", "--json", "{folder}"], "--json"),
    (["trace", "synth", "--uniform", "--tokens", "4", "-o", "{folder}/x.trace"], "-o/--output"),
    (["trace", "capture", "--model", "m", "--text", "t.txt", "-o", "{folder}/x.trace"],
     "-o/--output"),
    (["calibrate", "nccl-tests", "log", "-t", "dgx-h100", "-o", "{under_file}"], "-o/--output"),
    (["calibrate", "live", "-o", "{folder}"], "-o/--output"),
    (["calibrate", "live", "-o", "t.yaml", "--bench-json", "{folder}"], "--bench-json"),
    (["calibrate", "kernels", "--device", "cpu", "-o", "{folder}"], "-o/--output"),
    (["validate", "live", "--placement", "EP2", "-o", "{folder}"], "-o/--output"),
    (["validate", "compare", "m.json", "--json", "{folder}"], "--json"),
    (["validate", "compare", "m.json", "--plot", "{under_file}"], "--plot"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_OUTPUTS, ids=[" ".join(a[:2]) + " " + f
                                                              for a, f in BAD_OUTPUTS])
def test_every_command_refuses_a_bad_output_before_the_work(
    argv: list[str], flag: str, paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`moesim validate live -o DIR` and friends: one error line naming the flag, exit 2, and
    the command's handler never runs (no rank, no simulation)."""
    called: list[str] = []
    monkeypatch.setattr("moesim.cli.build_parser", lambda: _refusing_parser(called))
    code = main([arg.format(**{k: str(v) for k, v in paths.items()}) for arg in argv])
    err = capsys.readouterr().err
    assert (code, called) == (2, [])
    assert err.startswith(f"moesim: error: {flag} ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_every_output_flag_is_checked() -> None:
    """Every flag that names an output (-o, --out, --output, --json OUT, --html, --plot, ...) has
    its dest in OUTPUT_FLAGS, so a new command cannot skip the check."""
    names = ("-o", "--out", "--output", "--json", "--html", "--plot", "--bench-json")
    unchecked = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif action.nargs != 0 and (set(action.option_strings) & set(names)
                                        or any(o.endswith("-out") for o in action.option_strings)):
                if action.dest not in OUTPUT_FLAGS:
                    unchecked.append(f"{path} {action.option_strings}")

    walk(build_parser(), "moesim")
    assert unchecked == []


def test_a_result_that_cannot_be_written_after_the_work_is_saved_elsewhere(
    paths: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """If the path turns bad after the check (a folder appeared there), the JSON is not lost:
    the error says where it was saved instead."""
    result = {"a2a_bytes": 123, "per_layer": [1, 2]}
    with pytest.raises(ConfigError, match="saved to") as caught:
        write_json(result, str(paths["folder"]))
    saved = Path(str(caught.value).split("saved to ")[1].split(":")[0])
    try:
        assert json.loads(saved.read_text()) == result
    finally:
        saved.unlink()


def test_cli_stdout_json_is_still_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    """'-' stays stdout."""
    code = main(["run", "--phase", "decode", "--batch", "2", "--context", "16", "--layers", "2",
                 "--json", "-"])
    assert code == 0 and json.loads(capsys.readouterr().out)["a2a_bytes"] > 0


# ---- 2. whole or not at all, at exactly the path given ------------------------------------------


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """write_atomic_with: a writer that raises half way leaves the previous file as it was."""
    out = tmp_path / "plot.png"
    write_atomic(out, b"old")

    def half(tmp: Path) -> None:
        tmp.write_bytes(b"half a png")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic_with(out, half)
    assert out.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [out]


def test_npz_outputs_are_written_exactly_where_asked(tmp_path: Path) -> None:
    """numpy appends .npz to a name; atomic_path and write_npz_atomic never do."""
    arrays = {"experts": np.arange(6, dtype=np.int16).reshape(1, 3, 2)}
    write_npz_atomic(tmp_path / "plain.trace", arrays)
    with atomic_path(tmp_path / "t.npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.trace", "t.npz"]
    with np.load(tmp_path / "plain.trace") as data:
        np.testing.assert_array_equal(data["experts"], arrays["experts"])


def test_trace_convert_is_whole_or_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    """`trace convert -o t.npz` writes exactly t.npz; a failed conversion leaves no file."""
    rows = [{"dataset": "he", "problem_id": 0, "layer": layer, "token_idx": t,
             "experts": [t, 3], "gating_probs": [0.75, 0.25]} for t in range(3) for layer in (0, 1)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.npz"
    assert main(["trace", "convert", "--from", "vllm-jsonl", str(src), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    src.write_text("{oops\n")
    assert main(["trace", "convert", "--from", "vllm-jsonl", str(src), "-o",
                 str(tmp_path / "u.npz")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "t.npz"]


def test_a_failed_parquet_finalize_keeps_the_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parquet output is replaced whole: a write that dies half way leaves the old file."""
    pytest.importorskip("pyarrow", reason="parquet output needs pyarrow")
    from moesim.planning import sweep_rows

    out, points = tmp_path / "s.parquet", expand_grid(GRID)
    run_sweep(points[:2], out, workers=1, progress=False)
    before = read_rows(out)
    real = sweep_rows.parquet_module()

    class Dying:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def write_table(self, table: Any, where: Any) -> None:
            Path(where).write_bytes(b"PAR1 half")
            raise OSError("killed")

    monkeypatch.setattr(sweep_rows, "parquet_module", lambda: Dying())
    with pytest.raises(OSError):
        run_sweep(points, out, workers=1, progress=False)
    monkeypatch.undo()
    assert read_rows(out) == before  # and the journal still holds the new rows:
    assert run_sweep(points, out, workers=1, progress=False).computed == 0
    assert len(read_rows(out)) == 4


# ---- 3. sweeps: lock, rows cut short, workers, shipped paths ------------------------------------


def test_two_sweeps_on_one_output_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    """While one sweep holds OUT.lock another is refused naming the holder's pid; the lock file
    is gone after a sweep ends."""
    out = tmp_path / "s.csv"
    grid = tmp_path / "g.yaml"
    grid.write_text("placements: [EP8]\nbatches: [1]\ncontexts: [16]\ntopologies: [dgx-h100]\n"
                    "fixed: {phase: decode, fidelity: analytic}\n")
    lock = SweepLock(out)
    assert lock.acquire() is None
    try:
        with pytest.raises(ConfigError, match=rf"another sweep \(pid {os.getpid()}\) is writing"):
            run_sweep(expand_grid(GRID)[:1], out, workers=1, progress=False)
        code = main(["sweep", str(grid), "-o", str(out), "--workers", "1", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "s.csv.lock" in err
    finally:
        lock.release()
    run_sweep(expand_grid(GRID)[:1], out, workers=1, progress=False)
    assert not Path(f"{out}.lock").exists() and len(read_rows(out)) == 1


def test_a_stale_lock_of_a_dead_sweep_is_taken_over_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lock file left by a sweep that died (its pid gone) is taken over, and the note says so."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "s.csv"
    Path(f"{out}.lock").write_text(f"{dead.pid}\n")
    run_sweep(expand_grid(GRID)[:1], out, workers=1, progress=False)
    err = capsys.readouterr().err
    assert f"note: took over the lock {out}.lock of pid {dead.pid}" in err
    assert not Path(f"{out}.lock").exists()


def _quoted_rows(scenario: Scenario) -> dict[str, Any]:
    """A row whose reason needs CSV quoting (a comma, a quote and a line break)."""
    row = evaluate_point(scenario)
    row.update(feasible=False, reason='cut "here", or\nthere')
    return row


@pytest.mark.parametrize("cut", ["inside_quotes", "before_newline", "early"])
def test_a_row_cut_by_kill_is_dropped_and_recomputed(
    cut: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A last record cut mid-write is never read as a row (even when the cut leaves every
    column, or sits in a quoted cell spanning lines) and is recomputed with a note."""
    out, points = tmp_path / "s.csv", expand_grid(GRID)[:3]
    run_sweep(points, out, workers=1, progress=False, evaluate=_quoted_rows)
    whole = out.read_bytes()
    last = whole.rindex(b"\n", 0, len(whole) - 1) + 1
    while whole.count(b'"', 0, last) % 2:  # the start of the last record, outside quotes
        last = whole.rindex(b"\n", 0, last - 1) + 1
    at = {"inside_quotes": whole.index(b"here", last), "before_newline": len(whole) - 2,
          "early": last + 40}[cut]
    out.write_bytes(whole[:at])
    assert complete_length(whole[:at]) == last
    assert [r["key"] for r in read_rows(out)] == [point_key(p) for p in points[:2]]
    calls: list[str] = []

    def counting(scenario: Scenario) -> dict[str, Any]:
        calls.append(point_key(scenario))
        return _quoted_rows(scenario)

    run_sweep(points, out, workers=1, progress=False, evaluate=counting)
    assert calls == [point_key(points[2])]
    assert "note: dropped an unfinished last row" in capsys.readouterr().err
    assert out.read_bytes() == whole
    with out.open(newline="") as handle:
        assert [r["reason"] for r in csv.DictReader(handle)] == ['cut "here", or\nthere'] * 3


_KILLED_SWEEP = """
import sys, time
from moesim.planning.sweep import Grid, expand_grid, run_sweep
from moesim.planning.sweep_point import evaluate_point

def slow(scenario):
    time.sleep(60)
    return evaluate_point(scenario)

if __name__ == "__main__":
    grid = Grid(placements=["EP8", "TP8"], batches=[1, 2], contexts=[16],
                topologies=["dgx-h100"], fixed={"phase": "decode", "fidelity": "analytic"})
    run_sweep(expand_grid(grid), sys.argv[1], workers=2, progress=False, evaluate=slow)
"""


def _children(pid: int) -> list[int]:
    """Forked copies of `pid` (pool workers): its children running its command line."""
    found = []
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                same = Path(f"/proc/{entry}/cmdline").read_bytes() == command
            except OSError:
                continue
            if same and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _lock_free(path: Path) -> bool:
    """Whether nobody holds the flock of a sweep's lock file."""
    import fcntl

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_a_sweep_leaves_no_pool_workers(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """kill -9 of a sweep with two pool workers: both workers are gone within seconds (they
    would block forever on the pool's queue otherwise), and a rerun takes the lock over."""
    script = tmp_path / "sweep_then_hang.py"
    script.write_text(textwrap.dedent(_KILLED_SWEEP))
    out = tmp_path / "s.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT),
                                                                     os.environ.get("PYTHONPATH"))))}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            workers = _children(proc.pid)
        assert len(workers) == 2, "the sweep did not start its two workers"
        for _ in range(6):  # the workers are inside their first point
            time.sleep(0.05)
            workers = sorted(set(workers) | set(_children(proc.pid)))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [w for w in workers if _running(w)]
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert left == []
    lock = Path(f"{out}.lock")
    assert lock.read_text().strip() == str(proc.pid)
    deadline = time.monotonic() + 5
    while not _lock_free(lock) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _lock_free(lock), Path("/proc/locks").read_text()
    summary = run_sweep(expand_grid(GRID), out, workers=1, progress=False)
    assert summary.computed == 4 and summary.feasible == 4
    assert f"took over the lock {out}.lock of pid {proc.pid}" in capsys.readouterr().err


def test_points_ship_absolute_paths_and_keep_their_keys_and_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grid read from a relative path names its trace relatively; the points shipped to
    workers carry it absolute, so a worker in another folder finds it, and the row (key and
    cells) is the one the point gives where it was written."""
    data = tmp_path / "grids" / "traces"
    data.mkdir(parents=True)
    trace = ROOT / "moesim" / "data" / "mixtral8x7b_humaneval_decode.npz"
    (data / "t.npz").write_bytes(trace.read_bytes())
    (tmp_path / "grids" / "g.yaml").write_text(
        "name: rel\ntraces: [traces/t.npz, bundled:mixtral8x7b_humaneval_decode]\n"
        "placements: [EP8]\nbatches: [2]\ncontexts: [16]\ntopologies: [dgx-h100]\n"
        "fixed: {phase: decode, fidelity: analytic}\n")
    monkeypatch.chdir(tmp_path)
    points = expand_grid(sweep_module.load_grid("grids/g.yaml"))
    assert points[0].trace == "grids/traces/t.npz" and points[1].trace.startswith("bundled:")
    entries = [sweep_module._shipped(point_key(p), p) for p in points]
    assert entries[0][1].trace == str(data / "t.npz") and entries[1][1] is points[1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a worker started in another folder
    rows = sweep_module._evaluate_chunk(entries, evaluate_point)
    assert [r["feasible"] for r in rows] == ["true", "true"]
    assert [r["key"] for r in rows] == [point_key(p) for p in points]
    assert rows[0]["trace"] == "grids/traces/t.npz"
    assert rows[0]["tpot_s"] == rows[1]["tpot_s"]  # the same trace, bundled or copied


def test_a_missing_input_is_never_a_row(tmp_path: Path) -> None:
    """A point naming a file that is not there fails before any work; a file a worker cannot
    find is reported, not recorded as an infeasible row, and a rerun computes the point."""
    trace = tmp_path / "t.npz"
    trace.write_bytes((ROOT / "moesim" / "data" / "mixtral8x7b_humaneval_decode.npz").read_bytes())
    grid = GRID.model_copy(update={"traces": [str(tmp_path / "gone.npz")]})
    out = tmp_path / "s.csv"
    with pytest.raises(ConfigError, match=r"trace file .*gone\.npz does not exist"):
        run_sweep(expand_grid(grid), out, workers=1, progress=False)
    assert not out.exists() and not Path(f"{out}.lock").exists()

    points = expand_grid(GRID.model_copy(update={"traces": [str(trace)]}))
    assert missing_inputs(points[0]) == [] and with_absolute_inputs(points[0]) is points[0]
    hidden = tmp_path / "hidden.npz"

    def vanishing(scenario: Scenario) -> dict[str, Any]:  # the file leaves after one point
        row = evaluate_point(scenario)
        if trace.exists():
            trace.rename(hidden)
        return row

    with pytest.raises(ConfigError, match=r"^3 points were not computed: trace file .*t\.npz "
                                          r"does not exist on "):
        run_sweep(points, out, workers=1, progress=False, evaluate=vanishing)
    assert [r["key"] for r in read_rows(out)] == [point_key(points[0])]
    hidden.rename(trace)
    again = run_sweep(points, out, workers=1, progress=False)
    assert (again.computed, again.feasible, again.remaining) == (3, 4, 0)


@pytest.mark.slow
def test_a_ray_sweep_from_another_folder_equals_the_serial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`moesim sweep ../grids/g.yaml --ray local` run from another folder: every point is
    computed (no row of a missing file) and the rows equal a serial run's."""
    pytest.importorskip("ray", reason="Ray is optional: pip install 'ray>=2.9'")
    data = tmp_path / "grids" / "traces"
    data.mkdir(parents=True)
    (data / "t.npz").write_bytes(
        (ROOT / "moesim" / "data" / "mixtral8x7b_humaneval_decode.npz").read_bytes())
    (tmp_path / "grids" / "g.yaml").write_text(
        "name: rel\ntraces: [traces/t.npz, bundled:mixtral8x7b_humaneval_decode]\n"
        "placements: [EP8, TP8]\nbatches: [2]\ncontexts: [16]\ntopologies: [dgx-h100]\n"
        "fixed: {phase: decode, fidelity: analytic}\n")
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    assert main(["sweep", "../grids/g.yaml", "-o", "serial.csv", "--workers", "1",
                 "--no-progress"]) == 0
    assert main(["sweep", "../grids/g.yaml", "-o", "ray.csv", "--ray", "local", "--workers", "2",
                 "--no-progress"]) == 0
    assert Path("ray.csv").read_text() == Path("serial.csv").read_text()
    assert [r["feasible"] for r in read_rows("ray.csv")] == ["true"] * 4
