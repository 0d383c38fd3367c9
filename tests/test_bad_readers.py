"""Readers of JSONL, CSV, JSON and text inputs refuse bad bytes and bad values with one line.

Each case runs `moesim.cli.main` in-process on one bad input and holds the project rule: exit
status 2, exactly one `moesim: error:` line on stderr naming the file (and line or field) or
the flag, no traceback. Bad numeric flags are argparse errors (usage and one
`moesim <cmd>: error: argument --flag: ...` line, status 2). None of these needs torch: the
capture cases fail before a model would load (torch is hidden to prove it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from moesim.cli import main
from moesim.errors import ConfigError, TraceError

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "data" / "bad_inputs"
GOOD_REQUEST = '{"arrival_s": 0.0, "prompt_tokens": 16, "output_tokens": 2}\n'
UTF16 = "model: mixtral\n".encode("utf-16")
NON_UTF8 = "op,m\ncaf\xe9\n".encode("latin-1")
NUL = b"model: mix\x00tral\n"


def _error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI on a bad input; assert the rule and return the one error line."""
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("moesim: error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI on a bad flag; assert argparse's exit 2 and return its error line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _write(folder: Path, name: str, data: str | bytes) -> str:
    path = folder / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return str(path)


# ---- 1. serve --requests-file ---------------------------------------------------------------

SERVE = ["serve", "--fidelity", "analytic", "--layers", "2", "--trace-tokens", "64",
         "--placement", "EP8", "--topology", "dgx-h100", "--quiet"]


@pytest.mark.parametrize(("data", "needle"), [
    (GOOD_REQUEST + '{"arrival_s": 0.5, "prompt_tokens": 16, "output_tokens": NaN}\n',
     "line 2: 'output_tokens' is nan"),
    (GOOD_REQUEST + '{"arrival_s": 0.5, "prompt_tokens": Infinity, "output_tokens": 2}\n',
     "line 2: 'prompt_tokens' is inf"),
    (GOOD_REQUEST + '{"arrival_s": 0.5, "prompt_tokens": ' + "9" * 5000
     + ', "output_tokens": 2}\n', "line 2 holds a 5000-digit integer"),
    (GOOD_REQUEST + "[" * 100000 + "]" * 100000 + "\n", "line 2 nests"),
    (GOOD_REQUEST + '{"arrival_s": 0.5, "prompt_tokens": 16, "output_tokens": 1e12}\n',
     "line 2: output_tokens 1e+12 is above the 100,000,000-token context"),
    (GOOD_REQUEST + '{"arrival_s": 0.5, "prompt_tokens": -3, "output_tokens": 2}\n',
     "line 2: prompt and output tokens must be whole numbers >= 1"),
    (UTF16, "is UTF-16"),
    (NUL, "line 1 holds NUL bytes"),
    (GOOD_REQUEST.encode() + b'{"arrival_s": "caf\xe9"}\n',
     "is not UTF-8 text (byte 0xe9 at line 2, column"),
])
def test_serve_requests_file_refuses_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               data: str | bytes, needle: str) -> None:
    path = _write(tmp_path, "requests.jsonl", data)
    line = _error_line([*SERVE, "--requests-file", path], capsys)
    assert f"requests file {path}" in line and needle in line, line


# ---- 2. calibrate kernels --from-csv -------------------------------------------------------

@pytest.mark.parametrize(("data", "needle"), [
    ((BAD / "kernel_csv" / "moe_fractional_experts.csv").read_text(),
     "line 2, row 1: column 'experts' counts something: it must be a whole number"),
    ((BAD / "kernel_csv" / "moe_topk_above_experts.csv").read_text(),
     "line 2, row 1: top_k 9 is above experts 8"),
    ("op,m,n,k,time_s\n# a comment\ngemm,64,4096,4096,-1e-5\n",
     "line 3, row 1: column 'time_s' must be a finite number > 0"),
    ("op,m,n,k,time_s\ngemm,64,4096,4096,inf\n", "column 'time_s' must be a finite number"),
    (UTF16, "is UTF-16"),
    (NUL, "holds NUL bytes (line 1)"),
    (NON_UTF8, "is not UTF-8 text (byte 0xe9 at line 2, column 4)"),
])
def test_kernel_csv_refuses_bad_rows_and_bytes(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               data: str | bytes, needle: str) -> None:
    path = _write(tmp_path, "kernels.csv", data)
    line = _error_line(["calibrate", "kernels", "--from-csv", path, "--gpu", "h100-sxm",
                        "-o", str(tmp_path / "o.yaml")], capsys)
    assert f"kernel table {path}" in line and needle in line, line


# ---- 3. calibrate live --from-bench ----------------------------------------------------------

def _bench() -> dict[str, Any]:
    rows = [{"op": "alltoall", "num_ranks": 4, "size_bytes": 4096.0, "time_s": 1e-4},
            {"op": "gemm", "num_ranks": 4, "tokens": 8, "time_s": 3e-5}]
    return {"backend": "gloo", "nproc": 4, "hidden": 128, "ffn": 448, "act_dtype": "bf16",
            "rows": rows}


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda b: b.pop("rows"), "field 'rows' is missing"),
    (lambda b: b.update(rows=5), "field 'rows' must be a non-empty list"),
    (lambda b: b.update(rows=[]), "field 'rows' must be a non-empty list"),
    (lambda b: b["rows"].append([1, 2, 3]), "rows[2] must be a mapping"),
    (lambda b: b["rows"][0].update(time_s="slow"), "rows[0]: field 'time_s' must be a finite"),
    (lambda b: b["rows"][0].pop("size_bytes"), "rows[0]: field 'size_bytes' is missing"),
    (lambda b: b["rows"][1].update(tokens=2.5), "rows[1]: field 'tokens' must be a whole"),
    (lambda b: b.update(nproc="four"), "field 'nproc' must be a whole number >= 1"),
    (lambda b: b.update(act_dtype="int3"), "field 'act_dtype' must be one of"),
])
def test_from_bench_refuses_bad_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       edit: Callable[[dict[str, Any]], Any],
                                       needle: str) -> None:
    bench = _bench()
    edit(bench)
    path = _write(tmp_path, "bench.json", json.dumps(bench))
    line = _error_line(["calibrate", "live", "--from-bench", path, "-o",
                        str(tmp_path / "o.yaml")], capsys)
    assert needle in line, line


# ---- 4. profile_build reads its tables as UTF-8 ----------------------------------------------

def test_profile_build_names_an_unreadable_table(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.calibrate import profile_build

    (tmp_path / "bad.csv").write_bytes(b"# caf\xe9\nop,m,n,k,time_s\n")
    monkeypatch.setattr(profile_build, "MEASUREMENTS", tmp_path)
    with pytest.raises(ConfigError, match=r"bad.csv is not UTF-8 text \(byte 0xe9 at line 1"):
        profile_build._sources("bad")

    def broken() -> list[Path]:
        raise ConfigError("measured kernel table x.csv is not UTF-8 text")

    monkeypatch.setattr(profile_build, "build_profiles", broken)
    assert profile_build.main() == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "moesim: error: measured kernel table x.csv is not UTF-8 text"]


# ---- 5 and 6. trace capture: prompts and flags, refused before any model loads --------------

@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide torch and transformers: what these cases refuse must not need them."""
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "transformers", None)


def _capture(tmp_path: Path, *given: str) -> list[str]:
    return ["trace", "capture", "--model", str(tmp_path / "no-model"), *given,
            "-o", str(tmp_path / "o.npz")]


@pytest.mark.parametrize(("name", "data", "needle"), [
    ("empty.jsonl", "\n\n", "holds no prompt"),
    ("empty_text.jsonl", '{"text": "  "}\n', ":1: field 'text' is an empty prompt"),
    ("not_string.jsonl", '{"text": 42}\n', ":1: no string field 'text' (it is int)"),
    ("missing.jsonl", '{"body": "the cat"}\n', ":1: no string field 'text' (it is missing)"),
    ("not_json.jsonl", '{"text": "the cat"}\n{oops\n', ":2: not valid JSON"),
    ("deep.jsonl", "[" * 100000 + "]" * 100000 + "\n", ":1: nests lists or objects"),
    ("digits.jsonl", '{"text": "a", "n": ' + "9" * 5000 + "}\n", ":1: holds an integer"),
    ("utf16.jsonl", UTF16, "is UTF-16"),
    ("nul.jsonl", NUL, "line 1 holds NUL bytes"),
    ("latin1.jsonl", '{"text": "ok"}\n{"text": "caf\xe9"}\n'.encode("latin-1"),
     "is not UTF-8 text (byte 0xe9 at line 2, column 14)"),
])
def test_capture_dataset_refused_before_the_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_torch: None,
        name: str, data: str | bytes, needle: str) -> None:
    path = _write(tmp_path, name, data)
    line = _error_line(_capture(tmp_path, "--dataset-jsonl", path), capsys)
    assert path in line and needle in line, line


@pytest.mark.parametrize(("data", "needle"), [
    ("", "is empty (or only whitespace)"),
    ("  \n\t\n", "is empty (or only whitespace)"),
    (UTF16, "is UTF-16"),
    (NUL, "holds NUL bytes"),
    (NON_UTF8, "is not UTF-8 text (byte 0xe9 at line 2, column 4)"),
])
def test_capture_text_prompt_refused_before_the_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_torch: None,
        data: str | bytes, needle: str) -> None:
    path = _write(tmp_path, "prompt.txt", data)
    line = _error_line(_capture(tmp_path, "--text", path), capsys)
    assert f"--text file {path}" in line and needle in line, line


@pytest.mark.parametrize(("flags", "needle"), [
    (["--max-tokens", "0"], "argument --max-tokens: must be an integer in [1, "),
    (["--max-tokens", "-1"], "argument --max-tokens: must be an integer in [1, "),
    (["--max-prompt-tokens", "0"], "argument --max-prompt-tokens: must be an integer >= 1"),
    (["--generate", "-1"], "argument --generate: must be an integer >= 0"),
    (["--device", "tpu9"], "argument --device: must be cpu, cuda, cuda:N or mps"),
])
def test_capture_flags_refused_at_parse_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_torch: None,
        flags: list[str], needle: str) -> None:
    prompt = _write(tmp_path, "p.txt", "the cat sat")
    line = _usage_error(_capture(tmp_path, "--text", prompt, *flags), capsys)
    assert line.startswith("moesim trace capture: error: ") and needle in line, line


def test_capture_budget_without_room_refused_before_the_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_torch: None) -> None:
    prompt = _write(tmp_path, "p.txt", "the cat sat")
    line = _error_line(_capture(tmp_path, "--text", prompt, "--generate", "8",
                                "--max-tokens", "8"), capsys)
    assert "--generate 8 leaves no room for a prompt within --max-tokens 8" in line


def test_capture_api_refuses_a_zero_prompt_budget(tmp_path: Path) -> None:
    from moesim.trace.capture import capture_trace, read_jsonl_texts

    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    with pytest.raises(TraceError, match="--max-prompt-tokens 0"):
        capture_trace(object(), None, [[1, 2]], 10, out_path=tmp_path / "t.npz",
                      max_prompt_tokens=0)
    # only the first `check_first` prompts are read up front; the rest as they are used
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n{"text": "b"}\n{oops\n')
    texts = read_jsonl_texts(data, check_first=2)
    assert [next(texts), next(texts)] == ["a", "b"]
    with pytest.raises(TraceError, match=r"d.jsonl:3: not valid JSON"):
        next(texts)


# ---- 7. trace synth --stats --------------------------------------------------------------------

def _stats() -> dict[str, Any]:
    from moesim.trace.bundled import load_named_trace
    from moesim.trace.stats import compute_stats, stats_to_dict

    trace = load_named_trace("bundled:mixtral8x7b_humaneval_decode").first_layers(2)
    return stats_to_dict(compute_stats(trace, 8))


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("repeat_first_pct", [250.0, 10.0], "field 'repeat_first_pct' must hold a percentage in "
     "0..100 (null where there is no data), got 250 at [0]"),
    ("repeat_any_pct", [-1.0, None], "field 'repeat_any_pct' must hold a percentage"),
    ("cross_nmi", [-3.0], "field 'cross_nmi' must hold a normalised mutual information in 0..1"),
    ("cross_first_in_topk_pct", [101.0], "field 'cross_first_in_topk_pct' must hold a "
     "percentage"),
    ("cv", [1.0, 2.0, 3.0], "field 'cv' must have shape (2,), got (3,)"),
    ("num_layers", 2.5, "field 'num_layers' must be a whole number, got 2.5"),
    ("num_experts", True, "field 'num_experts' must be a whole number, got True"),
])
def test_synth_stats_refuses_impossible_fields(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               field: str, value: Any, needle: str) -> None:
    stats = {**_stats(), field: value}
    path = _write(tmp_path, "stats.json", json.dumps(stats))
    line = _error_line(["trace", "synth", "--stats", path, "--tokens", "32", "--sequences", "1",
                        "-o", str(tmp_path / "o.npz")], capsys)
    assert path in line and needle in line, line
