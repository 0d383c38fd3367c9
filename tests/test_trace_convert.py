"""Trace import: vLLM JSONL dumps, HF router logits, exp_ids arrays, bundled traces, CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from moesim.cli import main
from moesim.errors import TraceError
from moesim.trace.bundled import BUNDLED_TRACES, bundled_trace_path, load_bundled_trace
from moesim.trace.convert import (
    convert_file,
    from_exp_ids,
    from_hf_router_logits,
    from_vllm_jsonl,
    from_vllm_raw_jsonl,
    is_prefill,
    topk_softmax,
)
from moesim.trace.format import load_trace

# shared/ sits beside the repository checkout (in CI and on developers' machines)
_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "mixtral" / "traces",
    Path("/work/shared/data/mixtral/traces"),
)
SHARED = next((path for path in _CANDIDATES if path.is_dir()), _CANDIDATES[0])
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared Mixtral traces absent")


def _row(problem: int, layer: int, token: int, experts: list[int], key: str = "token_idx") -> dict:
    probs = [0.75, 0.25][: len(experts)]
    return {"dataset": "he", "problem_id": problem, "layer": layer, key: token,
            "experts": experts, "gating_probs": probs}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_jsonl(tmp_path: Path) -> Path:
    """2 sequences, 3 tokens, 2 layers; token (0, 1) lacks layer 1."""
    rows = [
        _row(0, 0, 0, [1, 2]), _row(0, 0, 1, [3, 0]),
        _row(0, 1, 0, [4, 5]),
        _row(1, 0, 0, [6, 7]), _row(1, 1, 0, [7, 1]),
    ]
    return _write_jsonl(tmp_path / "tiny.jsonl", rows)


def test_vllm_jsonl_tiny_exact(tiny_jsonl: Path) -> None:
    """Tokens grouped by (dataset, problem, token_idx); a token lacking a layer is dropped."""
    trace, report = from_vllm_jsonl(tiny_jsonl, model="m")
    assert report.dropped_tokens == 1 and report.dropped == ("he/0:1",)
    assert report.records == 5 and (report.num_tokens, report.num_layers, report.top_k) == (2, 2, 2)
    np.testing.assert_array_equal(trace.experts[:, :, :], [[[1, 2], [6, 7]], [[4, 5], [7, 1]]])
    np.testing.assert_array_equal(trace.seq_id, [0, 1])
    np.testing.assert_array_equal(trace.pos, [0, 0])
    np.testing.assert_allclose(trace.weights[:, :, 0], 0.75)
    assert trace.metadata["tool"] == "moesim trace convert" and trace.metadata["model"] == "m"
    assert trace.metadata["dropped_tokens"] == "1"
    assert json.loads(trace.metadata["sequences"]) == ["he/0", "he/1"]


@needs_shared
def test_vllm_jsonl_real_file() -> None:
    """The shared decode dump: 338 tokens logged, 5 lack layers, 333 x 32 x top-2 remain."""
    trace, report = from_vllm_jsonl(SHARED / "humaneval_decode_routing.jsonl")
    assert report.records == 10779
    assert (trace.num_layers, trace.num_tokens, trace.top_k) == (32, 333, 2)
    # The last 2 tokens of HumanEval/0 and last 3 of HumanEval/1 lack some layer (checked by
    # counting rows per (problem, token_idx) in the file: 333 have 32, the 5 below fewer).
    assert report.dropped == ("humaneval/0:81", "humaneval/0:82", "humaneval/1:252",
                              "humaneval/1:253", "humaneval/1:254")
    assert np.bincount(trace.seq_id).tolist() == [81, 252]
    # First line of the file: problem 0, layer 0, token 0, experts [6, 5], probs 0.696/0.304.
    assert trace.experts[0, 0].tolist() == [6, 5]
    assert trace.weights[0, 0, 0] == pytest.approx(0.6959584, abs=1e-6)
    np.testing.assert_allclose(trace.weights.sum(axis=2), 1.0, atol=1e-5)
    assert np.all(trace.weights[:, :, 0] >= trace.weights[:, :, 1])


def test_vllm_raw_resegments_forward_passes(tmp_path: Path) -> None:
    """Prefill pass = rows 0..N-1 per layer; each later pass is one decode step at pos N+j."""
    rows = [_row(0, 0, p, [p, 7], "token_pos") for p in range(3)]  # prefill, layer 0
    rows += [_row(0, 1, p, [p, 6], "token_pos") for p in (0, 2)]  # layer 1 lacks row 1
    rows += [_row(0, 0, 0, [4, 5], "token_pos"), _row(0, 1, 0, [5, 4], "token_pos")]  # pos 3
    rows += [_row(0, 0, 0, [1, 2], "token_pos")]  # pos 4, lacks layer 1
    rows += [_row(0, 0, 0, [2, 3], "token_pos"), _row(0, 1, 0, [3, 2], "token_pos")]  # pos 5
    trace, report = from_vllm_raw_jsonl(_write_jsonl(tmp_path / "raw.jsonl", rows))
    np.testing.assert_array_equal(trace.pos, [0, 2, 3, 5])
    assert report.dropped == ("he/0:1", "he/0:4")
    np.testing.assert_array_equal(trace.experts[1, :, 0], [0, 2, 5, 3])
    assert json.loads(trace.metadata["prompt_lens"]) == [3]
    np.testing.assert_array_equal(is_prefill(trace), [True, True, False, False])
    assert trace.metadata["prefill_tokens"] == "2" and trace.metadata["decode_tokens"] == "2"


@needs_shared
def test_vllm_raw_real_file() -> None:
    """The shared raw dump: a 135-token prefill and 83 decode steps; 94 tokens have all layers."""
    trace, report = from_vllm_raw_jsonl(SHARED / "humaneval0_prefill_decode_raw.jsonl")
    assert report.records == 6777
    # 135 + 83 = 218 positions; 76 prefill and 48 decode tokens miss some layer in the dump.
    assert report.num_tokens + report.dropped_tokens == 218
    assert (trace.num_layers, trace.num_tokens) == (32, 94)
    assert json.loads(trace.metadata["prompt_lens"]) == [135]
    assert int(is_prefill(trace).sum()) == 59
    assert int(trace.pos.max()) == 135 + 83 - 1
    assert np.all(np.diff(trace.pos) > 0)


MALFORMED = [
    ("{not json", "not valid JSON"),
    ('{"dataset": "he", "problem_id": 0, "layer": 0, "experts": [1, 2], '
     '"gating_probs": [0.5, 0.5]}', "missing key 'token_idx'"),
    ('{"dataset": "he", "problem_id": 0, "layer": 0, "token_idx": 1, "experts": [1, 2, 3], '
     '"gating_probs": [0.5, 0.3, 0.2]}', "earlier lines have 2"),
    ('{"dataset": "he", "problem_id": 0, "layer": 0, "token_idx": 1, "experts": [-1, 2], '
     '"gating_probs": [0.5, 0.5]}', "outside 0..32767"),
    ('{"dataset": "he", "problem_id": 0, "layer": -2, "token_idx": 1, "experts": [1, 2], '
     '"gating_probs": [0.5, 0.5]}', "'layer' must be a non-negative integer"),
    ('{"dataset": "he", "problem_id": 0, "layer": 0, "token_idx": 1, "experts": [1, 2], '
     '"gating_probs": [0.5]}', "'gating_probs' must be 2 finite numbers"),
    ('{"dataset": "he", "problem_id": 0, "layer": 0, "token_idx": 0, "experts": [1, 2], '
     '"gating_probs": [0.5, 0.5]}', "a second record for layer 0"),
    ("[1, 2]", "expected a JSON object"),
]


@pytest.mark.parametrize(("bad_line", "message"), MALFORMED)
def test_vllm_jsonl_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str,
                                                       message: str) -> None:
    """Each malformed record raises one TraceError naming the file and its line (here 2)."""
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_row(0, 0, 0, [1, 2])) + "\n" + bad_line + "\n")
    with pytest.raises(TraceError, match=message) as info:
        from_vllm_jsonl(path)
    assert f"{path}:2:" in str(info.value)


def test_jsonl_empty_or_missing_file(tmp_path: Path) -> None:
    """An empty or absent log is one TraceError naming the file."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TraceError, match="holds no records"):
        from_vllm_raw_jsonl(empty)
    with pytest.raises(TraceError, match="does not exist"):
        from_vllm_jsonl(tmp_path / "nope.jsonl")


def test_topk_softmax_mixtral_convention() -> None:
    """Top-k by logit; weights = softmax renormalised over the top-k (e/(e+1), 1/(e+1))."""
    experts, weights = topk_softmax(np.array([[[1.0, 2.0, 0.0, -1.0]]]), 2)
    assert experts.tolist() == [[[1, 0]]]
    assert weights[0, 0].tolist() == pytest.approx([math.e / (math.e + 1), 1 / (math.e + 1)])


def test_hf_router_logits_npz_layers_and_stacked(tmp_path: Path) -> None:
    """layer_i keys and stacked router_logits give the same trace; [B,S,E] layers set seq/pos."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 8)).astype(np.float32)  # [L, T, E]
    np.savez(tmp_path / "a.npz", **{f"layer_{i}": logits[i] for i in range(3)})
    np.savez(tmp_path / "b.npz", router_logits=logits)
    a, _ = from_hf_router_logits(tmp_path / "a.npz", top_k=2)
    b, _ = from_hf_router_logits(tmp_path / "b.npz", top_k=2)
    np.testing.assert_array_equal(a.experts, b.experts)
    np.testing.assert_array_equal(a.experts[:, :, 0], logits.argmax(axis=2))
    assert a.metadata["num_experts"] == "8"
    np.savez(tmp_path / "c.npz", router_logits=logits.reshape(3, 2, 2, 8))  # [L, B, S, E]
    c, _ = from_hf_router_logits(tmp_path / "c.npz", top_k=2)
    np.testing.assert_array_equal(c.experts, a.experts)
    np.savez(tmp_path / "d.npz", **{f"layer_{i}": logits[i].reshape(2, 2, 8) for i in range(3)})
    d, _ = from_hf_router_logits(tmp_path / "d.npz", top_k=2)
    np.testing.assert_array_equal(d.seq_id, [0, 0, 1, 1])
    np.testing.assert_array_equal(d.pos, [0, 1, 0, 1])
    np.testing.assert_array_equal(d.experts, a.experts)


def test_hf_router_logits_rejects_bad_input(tmp_path: Path) -> None:
    """Missing top-k, mismatched layer shapes, NaN logits and missing layers name the file."""
    np.savez(tmp_path / "ok.npz", layer_0=np.zeros((2, 4)), layer_1=np.zeros((2, 4)))
    with pytest.raises(TraceError, match="pass --top-k"):
        from_hf_router_logits(tmp_path / "ok.npz", top_k=None)
    with pytest.raises(TraceError, match="pass --top-k"):
        from_hf_router_logits(tmp_path / "ok.npz", top_k=5)
    np.savez(tmp_path / "shape.npz", layer_0=np.zeros((2, 4)), layer_1=np.zeros((3, 4)))
    with pytest.raises(TraceError, match="layer 1 logits have shape"):
        from_hf_router_logits(tmp_path / "shape.npz", top_k=2)
    np.savez(tmp_path / "nan.npz", layer_0=np.array([[0.0, np.nan]]))
    with pytest.raises(TraceError, match="layer 0, token 0: logit is not finite"):
        from_hf_router_logits(tmp_path / "nan.npz", top_k=1)
    np.savez(tmp_path / "gap.npz", layer_0=np.zeros((2, 4)), layer_2=np.zeros((2, 4)))
    with pytest.raises(TraceError, match="gap.npz"):
        from_hf_router_logits(tmp_path / "gap.npz", top_k=1)


def test_hf_router_logits_pt(tmp_path: Path) -> None:
    """A torch.save'd tuple of per-layer tensors imports like the same logits in .npz."""
    torch = pytest.importorskip("torch")
    logits = torch.tensor([[[0.1, 3.0, 2.0, -1.0]], [[5.0, 0.0, 0.0, 4.0]]])  # [L, T, E]
    torch.save(tuple(logits), tmp_path / "r.pt")
    trace, _ = from_hf_router_logits(tmp_path / "r.pt", top_k=2)
    assert trace.experts[:, 0].tolist() == [[1, 2], [0, 3]]


def test_hf_router_logits_pt_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch, a .pt file gives one TraceError telling to install moesim[live]."""
    (tmp_path / "r.pt").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(TraceError, match=r"pip install 'moesim\[live\]'"):
        from_hf_router_logits(tmp_path / "r.pt", top_k=2)


def test_exp_ids_transposed(tmp_path: Path) -> None:
    """exp_ids[tokens, k, layers] becomes experts[layers, tokens, k]; npy and npz agree."""
    ids = np.arange(2 * 2 * 3).reshape(2, 2, 3)  # [T=2, k=2, L=3]
    np.save(tmp_path / "e.npy", ids)
    np.savez(tmp_path / "e.npz", exp_ids=ids)
    trace, report = from_exp_ids(tmp_path / "e.npy")
    assert trace.experts.shape == (3, 2, 2)
    assert trace.experts[2, 1].tolist() == [ids[1, 0, 2], ids[1, 1, 2]]
    np.testing.assert_array_equal(from_exp_ids(tmp_path / "e.npz")[0].experts, trace.experts)
    assert report.num_tokens == 2 and trace.pos.tolist() == [0, 1]


def test_exp_ids_malformed(tmp_path: Path) -> None:
    """A negative id names its index; a 2-D or float array is rejected with the file."""
    ids = np.ones((2, 2, 3), dtype=np.int64)
    ids[1, 0, 2] = -4
    np.save(tmp_path / "neg.npy", ids)
    with pytest.raises(TraceError, match=r"exp_ids\[1, 0, 2\] = -4"):
        from_exp_ids(tmp_path / "neg.npy")
    np.save(tmp_path / "flat.npy", np.ones((2, 2), dtype=np.int64))
    with pytest.raises(TraceError, match="flat.npy: exp_ids must be an integer array"):
        from_exp_ids(tmp_path / "flat.npy")
    (tmp_path / "junk.npy").write_text("junk")
    with pytest.raises(TraceError, match="junk.npy"):
        from_exp_ids(tmp_path / "junk.npy")


def test_convert_file_round_trip(tiny_jsonl: Path, tmp_path: Path) -> None:
    """convert_file saves a trace that load_trace reads back identically."""
    report = convert_file(tiny_jsonl, "vllm-jsonl", tmp_path / "t.npz", num_experts=8)
    loaded = load_trace(tmp_path / "t.npz")
    assert report.output == str(tmp_path / "t.npz") and report.elapsed_s > 0
    assert loaded.experts.tolist() == [[[1, 2], [6, 7]], [[4, 5], [7, 1]]]
    assert loaded.metadata["num_experts"] == "8"
    with pytest.raises(TraceError, match="unknown trace format"):
        convert_file(tiny_jsonl, "csv", tmp_path / "x.npz")


def test_bundled_traces_load() -> None:
    """The real bundled traces ship in the package with their provenance in the metadata; the
    synthetic one records its generator and seed."""
    assert bundled_trace_path().is_file()
    decode = load_bundled_trace("mixtral8x7b_humaneval_decode")
    both = load_bundled_trace("mixtral8x7b_humaneval0_prefill_decode")
    assert (decode.num_layers, decode.num_tokens, decode.top_k) == (32, 333, 2)
    assert (both.num_tokens, int(is_prefill(both).sum())) == (94, 59)
    for trace in (decode, both):
        assert "216e26eb86ee09fa46bb0e8c000be7e9758e10b6" in trace.metadata["provenance"]
        assert trace.metadata["num_experts"] == "8" and trace.max_expert_id == 7
    assert set(BUNDLED_TRACES) == {"mixtral8x7b_humaneval_decode",
                                   "mixtral8x7b_humaneval0_prefill_decode",
                                   "mixtral8x7b_humaneval_synth"}
    synth = load_bundled_trace("mixtral8x7b_humaneval_synth")
    assert (synth.num_tokens, len(set(synth.seq_id.tolist()))) == (65536, 32)
    assert synth.metadata["seed"] == "0" and synth.metadata["tool"] == "moesim trace synth"
    with pytest.raises(TraceError, match="no bundled trace named"):
        bundled_trace_path("nope")


def test_cli_convert(tiny_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`moesim trace convert` writes the trace and prints tokens, layers, k and drops."""
    out = tmp_path / "t.npz"
    code = main(["trace", "convert", "--from", "vllm-jsonl", str(tiny_jsonl), "-o", str(out),
                 "--model", "tiny"])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "kept 2 tokens x 2 layers, top-2" in printed and "dropped 1 tokens" in printed
    assert load_trace(out).metadata["model"] == "tiny"


def test_cli_convert_malformed_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A malformed log exits with code 2 and one line on stderr naming file and line."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_row(0, 0, 0, [1, 2])) + "\n{oops\n")
    code = main(["trace", "convert", "--from", "vllm-jsonl", str(bad), "-o",
                 str(tmp_path / "o.npz")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"{bad}:2:" in err and "Traceback" not in err
