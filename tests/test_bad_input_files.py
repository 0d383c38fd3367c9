"""Bad input files give one clear error naming the file and the field (issue 15).

Classes: files that are binary or not UTF-8, nest too deeply or hold numbers out of range
(`read_mapping`); malformed `.npz` traces (`load_trace`) and routing logs that would wrap when
stored (`moesim trace convert`); Hugging Face configs with wrong types or absurd sizes; and
measurement JSON missing or mistyping a field (`validate compare`). CLI-level cases check the
project rule: exit 2, exactly one `moesim: error:` line on stderr, no traceback.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moesim.cli import main
from moesim.errors import ConfigError, ModelError, TraceError
from moesim.inputs.config import read_mapping
from moesim.inputs.model_files import load_model, model_from_hf_config
from moesim.inputs.models import SIZE_LIMITS, get_model, model_spec_from_mapping
from moesim.trace.convert import from_exp_ids, from_hf_router_logits, from_vllm_jsonl
from moesim.trace.format import load_trace


def _one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str], *named: str) -> str:
    """Run the CLI; assert exit 2, one `moesim: error:` line naming `named`, no traceback."""
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("moesim: error:"), captured.err
    assert "Traceback" not in captured.err + captured.out
    for text in named:
        assert text in lines[0], lines[0]
    return lines[0]


# ---- 1. text files: encoding, nesting, numbers ---------------------------------------------

BAD_TEXT = [
    ("binary.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    ("latin1.yaml", "name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at line 1"),
    ("utf16.json", '{"a": 1}'.encode("utf-16"), "UTF-16"),
    ("deep.json", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests"),
    ("deep.yaml", b"a: " + b"[" * 1000 + b"]" * 1000 + b"\n", "too deeply to parse"),
    ("nested.yaml", b"a: " + b"[" * 70 + b"]" * 70 + b"\n", "more than 64 levels"),
    ("bigint.json", b'{"batch": ' + b"9" * 5000 + b"}", "field 'batch': integer 999"),
    ("bigint.yaml", b"batch: " + b"9" * 5000 + b"\n", "field 'batch': integer 999"),
    ("int64.yaml", b"serve:\n  seed: 9223372036854775808\n", "field 'serve.seed'"),
    ("inf.yaml", b"serve:\n  rate: 1.0e+999\n", "field 'serve.rate': number inf is not finite"),
    ("inf_string.yaml", b"serve:\n  rate: 1e999\n", "field 'serve.rate': number 1e999"),
    ("nan.json", b'{"serve": {"rate": NaN}}', "field 'serve.rate': number nan"),
    ("bad_date.yaml", b"name: 2024-13-45\n", "looks like a date"),
]


@pytest.mark.parametrize(("name", "raw", "message"), BAD_TEXT, ids=[c[0] for c in BAD_TEXT])
def test_bad_text_file_is_one_config_error_naming_it(tmp_path: Path, name: str, raw: bytes,
                                                     message: str) -> None:
    """Binary, non-UTF-8, too deep, huge or non-finite numbers: a ConfigError naming the file
    (and the field where there is one), never a UnicodeDecodeError, RecursionError or
    ValueError from the parser."""
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match="scenario file") as info:
        read_mapping(path, "scenario")
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """Aliases that expand to 9^7 values are refused by count, not walked for minutes."""
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdef", "bcdefg", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="aliases expand to more than 5,000,000 values"):
        read_mapping(path, "grid")


def test_utf8_with_bom_and_good_numbers_still_read(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark and int64-sized numbers are fine."""
    path = tmp_path / "ok.json"
    path.write_bytes('\ufeff{"seed": 9223372036854775807, "rate": 1e300}'.encode())
    assert read_mapping(path) == {"seed": 2**63 - 1, "rate": 1e300}


CLI_TEXT = [
    ("scenario", ["run", "{f}"], "scenario file"),
    ("topology", ["run", "--topology", "{f}"], "topology file"),
    ("grid", ["sweep", "{f}", "-o", "{f}.csv"], "grid file"),
    ("expert placement", ["run", "--placement", "EP2", "--expert-placement", "{f}"],
     "expert placement file"),
    ("model", ["run", "--model", "{f}"], "model file"),
    ("kernel profile", ["run", "--topology", "dgx-h100", "--kernels", "{f}"],
     "kernel profile file"),
]


@pytest.mark.parametrize(("what", "argv", "named"), CLI_TEXT, ids=[c[0] for c in CLI_TEXT])
def test_cli_binary_input_file_is_one_error_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], what: str,
                                                 argv: list[str], named: str) -> None:
    """Every YAML/JSON input given as a non-UTF-8 file: exit 2 and one line naming it."""
    path = tmp_path / ("bad.json" if what == "model" else "bad.yaml")
    path.write_bytes(b"name: \xff\xfe\xfa broken\n")
    _one_error_line(capsys, [a.replace("{f}", str(path)) for a in argv], named, str(path))


def test_cli_hf_config_with_thousand_digit_number_is_one_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config.json holding a 5000-digit integer (Python's int() refuses it) names the key."""
    path = tmp_path / "config.json"
    cfg = json.loads((Path(__file__).parent / "data" / "hf_configs" / "Mixtral-8x7B-v0.1" /
                      "config.json").read_text())
    text = json.dumps(cfg).replace('"hidden_size": 4096', '"hidden_size": ' + "7" * 5000)
    assert text != json.dumps(cfg)
    path.write_text(text)
    _one_error_line(capsys, ["run", "--model", str(path)], str(path), "field 'hidden_size'")


# ---- 2. traces: .npz load and importers --------------------------------------------------


def _save(path: Path, **overrides: Any) -> Path:
    """A valid 1-layer, 3-token top-2 trace, with arrays replaced by `overrides` (None: drop)."""
    arrays: dict[str, Any] = {
        "experts": np.array([[[0, 1], [2, 3], [1, 0]]], dtype=np.int16),
        "seq_id": np.zeros(3, np.int32),
        "pos": np.arange(3, dtype=np.int32),
        "metadata": np.array(json.dumps({"model": "tiny", "format_version": "1"})),
    }
    arrays.update(overrides)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


BAD_TRACES = [
    ("experts_strings", {"experts": np.array([[["a", "b"]] * 3])}, "'experts' must hold integers"),
    ("experts_nan", {"experts": np.array([[[0.0, np.nan]] * 3])}, "'experts' must hold integers"),
    ("experts_2d", {"experts": np.zeros((3, 2), np.int16)}, "'experts' must have shape"),
    ("seq_len_mismatch", {"seq_id": np.zeros(2, np.int32)}, "'seq_id' must have shape"),
    ("pos_negative", {"pos": np.array([0, -1, 2], np.int32)}, "'pos' holds negative positions"),
    ("seq_negative", {"seq_id": np.array([0, -4, 0], np.int32)}, "'seq_id' holds negative"),
    ("pos_nan", {"pos": np.array([0, np.nan, 2])}, "'pos' must hold integers"),
    ("pos_beyond_int32", {"pos": np.array([0, 2**40, 2])}, "'pos' holds positions above"),
    ("duplicate_expert", {"experts": np.array([[[0, 1], [3, 3], [1, 0]]], np.int16)},
     "token 1 of MoE layer 0 lists expert 3 twice"),
    ("k_zero", {"experts": np.zeros((1, 3, 0), np.int16)}, "k = 0"),
    ("expert_beyond_int16", {"experts": np.array([[[0, 40000]] * 3], np.int32)},
     "'experts' holds expert ids above 32767"),
    ("expert_negative", {"experts": np.array([[[0, -2]] * 3], np.int32)}, "negative expert ids"),
    ("no_tokens", {"experts": np.zeros((1, 0, 2), np.int16), "seq_id": np.zeros(0, np.int32),
                   "pos": np.zeros(0, np.int32)}, "at least one MoE layer and one token"),
    ("metadata_list", {"metadata": np.array("[1, 2]")}, "'metadata' must be a JSON object"),
    ("metadata_number", {"metadata": np.array(7)}, "'metadata' must be one JSON string"),
    ("metadata_nested", {"metadata": np.array('{"a": {"b": 1}}')}, "metadata key 'a'"),
    ("weights_nan", {"weights": np.array([[[np.nan, 1]] * 3], np.float32)}, "'weights' holds nan"),
    ("weights_negative", {"weights": np.array([[[0.5, -0.5]] * 3], np.float32)},
     "'weights' holds -0.5"),
    ("num_experts_zero", {"metadata": np.array('{"num_experts": "0"}')},
     "metadata num_experts '0' must be a whole number in 4..32768"),
    ("prompt_lens_short", {"seq_id": np.array([0, 1, 1], np.int32),
                           "metadata": np.array('{"prompt_lens": "[3]"}')},
     "metadata prompt_lens must be a JSON list"),
    ("weights_strings", {"weights": np.array([[["x", "y"]] * 3])}, "'weights' must hold numbers"),
    ("no_pos", {"pos": None}, "lacks the array 'pos'"),
]


@pytest.mark.parametrize(("name", "overrides", "message"), BAD_TRACES,
                         ids=[c[0] for c in BAD_TRACES])
def test_malformed_trace_array_is_one_trace_error(tmp_path: Path, name: str,
                                                  overrides: dict[str, Any], message: str) -> None:
    """Wrong dtype, shape, range, duplicate top-k or metadata type: a TraceError naming the
    file and the array, never a ValueError/AttributeError or a silently wrapped value."""
    path = _save(tmp_path / f"{name}.npz", **overrides)
    with pytest.raises(TraceError, match=message) as info:
        load_trace(path)
    assert str(path) in str(info.value)


def _corrupt(path: Path) -> None:
    """Flip bytes inside the compressed data of the archive's first member."""
    _save(path)
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw = bytearray(path.read_bytes())
    for i in range(start + 2, start + min(info.compress_size, 40)):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("kind", ["truncated", "not_zip", "npy", "corrupt", "pickled", "empty"])
def test_unreadable_trace_archive_is_one_trace_error(tmp_path: Path, kind: str) -> None:
    """Truncated, not a zip, a bare .npy, corrupt compression, pickled objects or empty: one
    TraceError naming the file (zlib.error and BadZipFile never escape)."""
    path = tmp_path / f"{kind}.npz"
    if kind == "truncated":
        raw = _save(path).read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "not_zip":
        path.write_text("experts: [1, 2]\n")
    elif kind == "npy":
        np.save(tmp_path / "x.npy", np.zeros((1, 3, 2), np.int16))
        (tmp_path / "x.npy").rename(path)
    elif kind == "corrupt":
        _corrupt(path)
    elif kind == "pickled":
        np.savez(path, experts=np.array([None, 1], dtype=object), seq_id=np.zeros(1),
                 pos=np.zeros(1))
    else:
        path.write_bytes(b"")
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert str(path) in str(info.value)


def test_cli_corrupt_trace_is_one_error_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`moesim trace stats` of a corrupt archive: exit 2, one line naming the file."""
    path = tmp_path / "corrupt.npz"
    _corrupt(path)
    _one_error_line(capsys, ["trace", "stats", str(path)], str(path))


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _record(layer: int = 0, token: int = 0, experts: list[int] | None = None) -> dict[str, Any]:
    return {"dataset": "d", "problem_id": 0, "layer": layer, "token_idx": token,
            "experts": experts or [1, 2], "gating_probs": [0.6, 0.4]}


BAD_LOGS = [
    ("token_beyond_int32", [_record(token=2**31)], "'token_idx' 2147483648 is above"),
    ("layer_absurd", [_record(layer=10**9)], "'layer' 1000000000 is above"),
    ("layer_gap", [_record(0), _record(1), _record(5)], "no record has layer 2"),
    ("duplicate_expert", [_record(experts=[3, 3])], "lists an expert twice"),
    ("expert_beyond_int16", [_record(experts=[1, 40000])], "outside 0..32767"),
]


@pytest.mark.parametrize(("name", "records", "message"), BAD_LOGS, ids=[c[0] for c in BAD_LOGS])
def test_importer_refuses_what_would_wrap(tmp_path: Path, name: str,
                                          records: list[dict[str, Any]], message: str) -> None:
    """Token indices beyond int32, absurd layers, expert ids beyond int16, repeated experts:
    refused by name, never wrapped into the int16/int32 trace or an enormous array."""
    path = _jsonl(tmp_path / f"{name}.jsonl", records)
    with pytest.raises(TraceError, match=message) as info:
        from_vllm_jsonl(path)
    assert str(path) in str(info.value)


def test_importer_non_utf8_and_huge_number_name_the_line(tmp_path: Path) -> None:
    """A non-UTF-8 line or a 5000-digit integer: the file and line number, no ValueError."""
    good = json.dumps(_record()) + "\n"
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(good.encode() + b'{"dataset": "caf\xe9"}\n')
    with pytest.raises(TraceError, match=f"{latin}:2: not UTF-8"):
        from_vllm_jsonl(latin)
    huge = tmp_path / "huge.jsonl"
    huge.write_text(good + good.replace('"layer": 0', '"layer": ' + "9" * 5000))
    with pytest.raises(TraceError, match=f"{huge}:2: holds an integer of thousands of digits"):
        from_vllm_jsonl(huge)


def test_other_importers_refuse_by_name(tmp_path: Path) -> None:
    """exp_ids with a repeated expert, logits with more experts than int16 ids or text logits,
    and a logits archive with corrupt compression: one TraceError naming the file."""
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([[[1], [1]], [[0], [2]]]))  # token 0 picks expert 1 twice
    with pytest.raises(TraceError, match="ids.npy: exp_ids: token 0 .* expert 1 twice"):
        from_exp_ids(ids)
    wide = tmp_path / "wide.npz"
    np.savez(wide, layer_0=np.zeros((2, 40000), np.float32))
    with pytest.raises(TraceError, match="wide.npz: logits have 40000 experts"):
        from_hf_router_logits(wide, top_k=2)
    text = tmp_path / "text.npz"
    np.savez(text, layer_0=np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(TraceError, match="text.npz: layer 0 logits must be numbers"):
        from_hf_router_logits(text, top_k=1)
    bad_pos = tmp_path / "pos.npz"
    np.savez(bad_pos, layer_0=np.zeros((2, 4), np.float32), pos=np.array([0, -1]))
    with pytest.raises(TraceError, match="pos.npz: .*'pos' holds negative"):
        from_hf_router_logits(bad_pos, top_k=2)


# ---- 3. Hugging Face configs ---------------------------------------------------------------

MIXTRAL = {"model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32,
           "vocab_size": 32000, "num_attention_heads": 32, "num_key_value_heads": 8,
           "num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 14336}
BAD_HF = [
    ({"num_attention_heads": 0}, "'num_attention_heads' must be >= 1, got 0"),
    ({"hidden_size": "4096"}, "'hidden_size' must be a whole number, got str '4096'"),
    ({"num_experts_per_tok": True}, "'num_experts_per_tok' must be a whole number, got bool"),
    ({"hidden_size": 10**12}, "'hidden_size' is 1000000000000, above moesim's limit of 1048576"),
    ({"num_hidden_layers": 10**9}, "'num_hidden_layers' is 1000000000, above"),
    ({"num_local_experts": 10**6}, "'num_local_experts' is 1000000, above moesim's limit of 32768"),
    ({"hidden_size": 4096.5}, "'hidden_size' must be a whole number, got float"),
    ({"tie_word_embeddings": "yes"}, "'tie_word_embeddings' must be true or false"),
    ({"sliding_window": [128]}, "'sliding_window' must be a whole number, got list"),
]


@pytest.mark.parametrize(("update", "message"), BAD_HF, ids=[m.split("'")[1] + str(i)
                                                             for i, (_, m) in enumerate(BAD_HF)])
def test_hf_config_bad_value_is_one_model_error_naming_the_key(tmp_path: Path,
                                                               update: dict[str, Any],
                                                               message: str) -> None:
    """Zero heads (was ZeroDivisionError), strings where ints belong (was a misleading
    'not a whole number' or silently coerced), absurd sizes (were accepted): the HF key."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**MIXTRAL, **update}))
    with pytest.raises(ModelError, match=message) as info:
        model_from_hf_config(path)
    assert str(path) in str(info.value)


def test_qwen_mlp_only_layers_of_wrong_type_names_the_key() -> None:
    """mlp_only_layers not a list of ints (was TypeError from sorted())."""
    qwen = {**MIXTRAL, "num_local_experts": None, "num_experts": 8, "moe_intermediate_size": 768}
    qwen = {k: v for k, v in qwen.items() if v is not None}
    for bad in (3, [0, "a"]):
        with pytest.raises(ModelError, match="'mlp_only_layers'"):
            model_from_hf_config({**qwen, "mlp_only_layers": bad})


def test_model_spec_limits_are_generous_but_finite() -> None:
    """Every preset fits the limits; beyond one, or parameters above 10^15, is refused."""
    mixtral = get_model("mixtral-8x7b").model_dump()
    for field, limit in SIZE_LIMITS.items():
        with pytest.raises(ConfigError, match=f"field '{field}'.*above moesim's limit"):
            model_spec_from_mapping({**mixtral, field: limit + 1})
    with pytest.raises(ConfigError, match="parameters, above moesim's limit"):
        model_spec_from_mapping({**mixtral, "hidden_size": 1 << 20, "expert_ffn_size": 1 << 22})
    with pytest.raises(ConfigError, match="field 'num_layers': .*whole number, got str"):
        model_spec_from_mapping({**mixtral, "num_layers": "32"})


def test_cli_hf_config_zero_heads_is_one_error_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A config.json with zero heads, given as its folder: exit 2, one line naming the key."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**MIXTRAL, "num_attention_heads": 0}))
    with pytest.raises(ModelError, match="'num_attention_heads' must be >= 1"):
        load_model(str(tmp_path))
    _one_error_line(capsys, ["run", "--model", str(tmp_path)], str(path),
                    "'num_attention_heads'")


# ---- 4. measurement JSON -------------------------------------------------------------------


@pytest.fixture(scope="module")
def measurement() -> dict[str, Any]:
    """A small synthetic measurement (EP2, 1 layer, 8 tokens) as `validate live` writes it."""
    from validate.measurement import (
        PHASES,
        build_measurement,
        expected_bytes,
        live_inputs,
        traffic_for_inputs,
    )

    inputs = live_inputs(model="mixtral-8x7b", trace="bundled:mixtral8x7b_humaneval_decode",
                         placement="EP2", backend="gloo", scale=1 / 64, layers=1, tokens=8)
    counts = expected_bytes(traffic_for_inputs(inputs))
    world = counts.shape[1]
    times = np.full((1, 1, world, len(PHASES)), 1e-3)
    return build_measurement(inputs, times, counts, np.full((1, world), 1e-2), 1.0)


def _drop(doc: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc[int(part)] if part.isdigit() else doc[part]  # type: ignore[index]
    del doc[last]


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc[int(part)] if part.isdigit() else doc[part]  # type: ignore[index]
    doc[last] = value


BAD_MEASUREMENTS = [
    ("drop", "per_layer.0.ranks.1.phases.dispatch.time_s", None,
     "field 'per_layer.0.ranks.1.phases.dispatch.time_s': Field required"),
    ("drop", "inputs.model_update", None, "field 'inputs.model_update': Field required"),
    ("drop", "inputs.parallelism", None, "field 'inputs.parallelism': Field required"),
    ("put", "per_layer.0.ranks.0.phases.combine.sent_bytes", "12",
     "field 'per_layer.0.ranks.0.phases.combine.sent_bytes': Input should be a valid integer"),
    ("put", "per_layer.0.ranks.0.phases.combine.recv_bytes", 1.5,
     "field 'per_layer.0.ranks.0.phases.combine.recv_bytes'"),
    ("put", "per_layer.0.ranks.0.phases.experts.time_s", -1.0,
     "field 'per_layer.0.ranks.0.phases.experts.time_s': Input should be greater than or equal"),
    ("put", "inputs.tokens", "8", "field 'inputs.tokens'"),
    ("put", "per_layer.0.ranks", [], "field 'per_layer.0.ranks'"),
    ("put", "per_layer.0.layer", 3, "field 'per_layer': layers [3] are not 0..0"),
    ("put", "per_layer.0.ranks.1.rank", 0, "field 'per_layer.0.ranks': ranks [0, 0]"),
    ("drop", "per_layer.0.ranks.1.phases.combine", None, "phases ['attn_all_gather'"),
    ("put", "inputs.model_update.hidden_sise", 8, "hidden_sise are not ModelSpec fields"),
    ("put", "inputs.act_dtype", "int3", "field 'inputs.act_dtype': Input should be 'fp32'"),
    ("put", "inputs.scale", 0, "field 'inputs.scale': Input should be greater than 0"),
]


@pytest.mark.parametrize(("op", "where", "value", "message"), BAD_MEASUREMENTS,
                         ids=[f"{c[0]}-{c[1]}" for c in BAD_MEASUREMENTS])
def test_measurement_missing_or_mistyped_field_is_one_config_error(
        tmp_path: Path, measurement: dict[str, Any], op: str, where: str, value: Any,
        message: str) -> None:
    """A missing or ill-typed field, or layers/ranks/phases that disagree, are refused on load
    naming the field (before: KeyError or TypeError in `validate compare`, or bytes read as 0)."""
    from validate.measurement import load_measurement

    doc = json.loads(json.dumps(measurement))
    _drop(doc, where) if op == "drop" else _put(doc, where, value)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as info:
        load_measurement(path)
    assert f"measurement file {path}" in str(info.value) and message in str(info.value)


def test_cli_compare_of_broken_measurement_is_one_error_line(
        tmp_path: Path, measurement: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """`validate compare` of a measurement lacking a time: exit 2, one line naming the field
    (before: a KeyError traceback from the per-layer time sum)."""
    doc = json.loads(json.dumps(measurement))
    del doc["per_layer"][0]["ranks"][1]["phases"]["experts"]["time_s"]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    _one_error_line(capsys, ["validate", "compare", str(path)], str(path),
                    "per_layer.0.ranks.1.phases.experts.time_s")
    path.write_bytes(b"\x00\x01binary")
    _one_error_line(capsys, ["validate", "compare", str(path)], str(path), "binary")
