"""Trace capture from Hugging Face transformers MoE models, on tiny randomly initialised configs.

No weights are downloaded: every model is built from a config with a fixed torch seed, on CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from moesim.cli.trace_capture import add_parser  # noqa: E402
from moesim.errors import TraceError  # noqa: E402
from moesim.trace.capture import capture_trace, load_model, read_jsonl_texts  # noqa: E402
from moesim.trace.format import load_trace  # noqa: E402

VOCAB = 100
PROMPTS = [
    [5, 17, 3, 99, 42, 8, 8, 61, 2, 70, 33, 14],
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    [90, 80, 70, 60, 50, 40, 30, 20, 10, 0, 9, 19],
]
ATTENTION = dict(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def _tiny_mixtral():
    """A 3-layer, 8-expert, top-2 Mixtral with hidden size 32 (random init, fixed seed)."""
    torch.manual_seed(0)
    # A wide router init spreads the logits so no top-k choice is a near-tie.
    config = transformers.MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_local_experts=8,
        num_experts_per_tok=2,
        initializer_range=0.2,
        **ATTENTION,
    )
    return transformers.MixtralForCausalLM(config).eval()


@pytest.fixture(scope="module")
def mixtral():
    """The tiny Mixtral, built once per module."""
    return _tiny_mixtral()


def _hook_gates(gates):
    """Record (indices, weights) of every call of each router module; return (store, handles)."""
    store: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in gates]

    def make_hook(layer):
        def hook(module, inputs, output):
            assert isinstance(output, tuple), "expects transformers>=5 routers"
            _, weights, indices = output  # (logits, top-k weights, top-k indices)
            store[layer].append((indices.numpy().copy(), weights.float().numpy().copy()))

        return hook

    handles = [gate.register_forward_hook(make_hook(i)) for i, gate in enumerate(gates)]
    return store, handles


def _stacked(store):
    """Per-layer hook records concatenated over calls: experts, weights [L, T, k]."""
    experts = np.stack([np.concatenate([idx for idx, _ in calls]) for calls in store])
    weights = np.stack([np.concatenate([w for _, w in calls]) for calls in store])
    return experts, weights


def _softmax_topk(logits, k, renormalise):
    """Reference routing of router logits [..., E]: softmax, top-k, optional renorm."""
    weights, experts = torch.topk(torch.softmax(logits.float(), dim=-1), k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(-1, keepdim=True)
    return experts.numpy(), weights.numpy()


def test_captured_experts_match_model_routing_exactly(mixtral, tmp_path):
    """Every token's experts (prefill and decode) are the ones the router modules chose."""
    gates = [layer.mlp.gate for layer in mixtral.model.layers]
    store, handles = _hook_gates(gates)
    try:
        capture_trace(mixtral, None, PROMPTS, 1000, out_path=tmp_path / "t.npz", generate_tokens=3)
    finally:
        for handle in handles:
            handle.remove()
    trace = load_trace(tmp_path / "t.npz")
    hooked_experts, hooked_weights = _stacked(store)
    assert trace.experts.shape == (3, 3 * (12 + 3), 2)
    np.testing.assert_array_equal(trace.experts, hooked_experts)
    np.testing.assert_allclose(trace.weights, hooked_weights, rtol=1e-6)
    assert trace.metadata["moe_layers"] == "0,1,2"
    assert trace.metadata["source"] == "moesim trace capture"


def test_mixtral_weights_renormalised_and_first_choice_first(mixtral, tmp_path):
    """Mixtral renormalises its top-k weights: they sum to 1 and come in descending order."""
    capture_trace(mixtral, None, PROMPTS, 1000, out_path=tmp_path / "t.npz")
    trace = load_trace(tmp_path / "t.npz")
    np.testing.assert_allclose(trace.weights.sum(-1), 1.0, atol=1e-6)
    assert np.all(trace.weights[..., 0] >= trace.weights[..., 1])
    assert np.all(trace.experts[..., 0] != trace.experts[..., 1])
    assert trace.metadata["routing"] == "softmax-topk-renorm"


def test_decode_appends_greedy_tokens_with_consecutive_positions(mixtral, tmp_path):
    """Each sequence gets `generate` decode tokens at positions len..len+N-1, routed like the
    same greedy continuation run as one uncached prefill."""
    n_gen = 4
    report = capture_trace(
        mixtral, None, PROMPTS[:2], 1000, out_path=tmp_path / "t.npz", generate_tokens=n_gen
    )
    trace = load_trace(tmp_path / "t.npz")
    assert (report.prefill_tokens, report.decode_tokens) == (24, 2 * n_gen)
    assert trace.metadata["decode_tokens_per_seq"] == str(n_gen)
    for seq, prompt in enumerate(PROMPTS[:2]):
        mine = trace.seq_id == seq
        np.testing.assert_array_equal(trace.pos[mine], np.arange(len(prompt) + n_gen))
        tokens = list(prompt)
        with torch.inference_mode():
            for _ in range(n_gen):  # greedy continuation without the KV cache
                tokens.append(int(mixtral(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
            # the fed tokens: prompt + g1..gN (gN is fed at the last decode step)
            out = mixtral(input_ids=torch.tensor([tokens]), output_router_logits=True)
        ref_experts, ref_weights = _softmax_topk(torch.stack(out.router_logits), 2, True)
        np.testing.assert_array_equal(trace.experts[:, mine], ref_experts)
        np.testing.assert_allclose(trace.weights[:, mine], ref_weights, atol=1e-5)


def test_streamed_prompts_equal_one_batch_forward(mixtral, tmp_path):
    """Capturing prompts one by one into memory maps gives the routing of one batched forward."""
    report = capture_trace(
        mixtral, None, PROMPTS, 1000, out_path=tmp_path / "t.npz", keep_logits=True
    )
    trace = load_trace(tmp_path / "t.npz")
    with torch.inference_mode():
        out = mixtral(input_ids=torch.tensor(PROMPTS), output_router_logits=True)  # [3, 12]
    batch_logits = torch.stack(out.router_logits)  # [L, 3*12, E], batch-major
    ref_experts, ref_weights = _softmax_topk(batch_logits, 2, True)
    np.testing.assert_array_equal(trace.experts, ref_experts)
    np.testing.assert_allclose(trace.weights, ref_weights, atol=1e-5)
    np.testing.assert_array_equal(trace.seq_id, np.repeat([0, 1, 2], 12))
    np.testing.assert_array_equal(trace.pos, np.tile(np.arange(12), 3))
    np.testing.assert_allclose(np.load(report.logits_path), batch_logits.numpy(), atol=1e-5)
    assert not list(tmp_path.glob(".moesim-capture-*")), "temporary part files must be removed"


def test_token_budget_truncates_the_last_prompt(mixtral, tmp_path):
    """max_tokens=13, 2 decode tokens each: 6+2 tokens, then 3+2; the third prompt is dropped."""
    prompts = [list(range(6)), list(range(6, 12)), list(range(12, 18))]
    report = capture_trace(
        mixtral, None, prompts, 13, out_path=tmp_path / "t.npz", generate_tokens=2
    )
    trace = load_trace(tmp_path / "t.npz")
    assert (report.num_sequences, report.prefill_tokens, report.decode_tokens) == (2, 9, 4)
    np.testing.assert_array_equal(np.bincount(trace.seq_id), [8, 5])
    capped = capture_trace(
        mixtral, None, prompts, 100, out_path=tmp_path / "c.npz", max_prompt_tokens=4
    )
    assert capped.prefill_tokens == 3 * 4


def test_progress_reports_every_forward_up_to_the_total(mixtral, tmp_path):
    """progress(done, total) is called once per forward, increasing, ending at (T, T)."""
    calls: list[tuple[int, int]] = []
    capture_trace(
        mixtral,
        None,
        PROMPTS,
        1000,
        out_path=tmp_path / "t.npz",
        generate_tokens=2,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert len(calls) == 3 * (1 + 2)
    assert calls[0] == (12, 42) and calls[-1] == (42, 42)
    assert all(a[0] < b[0] for a, b in zip(calls[:-1], calls[1:], strict=True))


def test_bad_prompts_raise_trace_error(mixtral, tmp_path):
    """Text without a tokenizer, ids outside the vocabulary and empty input are user errors."""
    with pytest.raises(TraceError, match="no tokenizer"):
        capture_trace(mixtral, None, ["hello"], 10, out_path=tmp_path / "t.npz")
    with pytest.raises(TraceError, match=r"outside \[0, 100\)"):
        capture_trace(mixtral, None, [[1, 100]], 10, out_path=tmp_path / "t.npz")
    with pytest.raises(TraceError, match="no tokens to capture"):
        capture_trace(mixtral, None, [[1, 2]], 2, out_path=tmp_path / "t.npz", generate_tokens=2)


SPARSE_MODELS = [
    # (config class, model class, extra config, MoE decoder layers, renormalised)
    (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            decoder_sparse_step=2,
            norm_topk_prob=False,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
        ),
        (1, 3),
        False,
    ),
    ("OlmoeConfig", "OlmoeForCausalLM", dict(norm_topk_prob=True), (0, 1, 2, 3), True),
]


@pytest.mark.parametrize("config_cls, model_cls, extra, moe_layers, renorm", SPARSE_MODELS)
def test_other_moe_families_match_their_routers(
    config_cls, model_cls, extra, moe_layers, renorm, tmp_path
):
    """Qwen2-MoE skips its dense layers and keeps raw top-k probabilities; OLMoE renormalises."""
    if not hasattr(transformers, model_cls):
        pytest.skip(f"{model_cls} not in this transformers")
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_experts=8,
        num_experts_per_tok=2,
        initializer_range=0.2,
        **ATTENTION,
        **extra,
    )
    model = getattr(transformers, model_cls)(config).eval()
    store, handles = _hook_gates([model.model.layers[i].mlp.gate for i in moe_layers])
    try:
        report = capture_trace(
            model, None, PROMPTS[:2], 1000, out_path=tmp_path / "t.npz", generate_tokens=2
        )
    finally:
        for handle in handles:
            handle.remove()
    trace = load_trace(tmp_path / "t.npz")
    hooked_experts, hooked_weights = _stacked(store)
    np.testing.assert_array_equal(trace.experts, hooked_experts)
    np.testing.assert_allclose(trace.weights, hooked_weights, rtol=1e-6)
    assert trace.metadata["moe_layers"] == ",".join(map(str, moe_layers))
    assert report.skipped_dense_layers == tuple(sorted(set(range(4)) - set(moe_layers)))
    sums = trace.weights.sum(-1)
    assert np.allclose(sums, 1.0, atol=1e-6) if renorm else np.all(sums < 1.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny Mixtral saved with a word-level tokenizer in a local folder (no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny-mixtral")
    words = "the a cat dog sat on mat ran fast slow".split()
    tokenizer = Tokenizer(
        models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]"
    ).save_pretrained(folder)
    _tiny_mixtral().save_pretrained(folder)
    return folder


def test_cli_captures_a_jsonl_dataset(model_dir, tmp_path, capsys, monkeypatch):
    """`trace capture --dataset-jsonl` traces each line's words plus --generate tokens."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "the cat sat on the mat"}\n\n{"text": "a dog ran fast"}\n')
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "capture",
            "--model",
            str(model_dir),
            "--dataset-jsonl",
            str(data),
            "--generate",
            "2",
            "--dtype",
            "fp32",
            "-o",
            str(tmp_path / "o"),
        ]
    )
    assert args.handler(args) == 0
    trace = load_trace(tmp_path / "o.npz")
    np.testing.assert_array_equal(np.bincount(trace.seq_id), [6 + 2, 4 + 2])
    assert trace.metadata["dataset"] == str(data)
    captured = capsys.readouterr()
    assert "capture: 14/14 tokens" in captured.err and "wrote" in captured.out


def test_load_model_errors_are_one_line(model_dir, monkeypatch):
    """fp8 on CPU and a missing model folder raise TraceError naming the fix."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TraceError, match="fp8 is unsupported on cpu"):
        load_model(str(model_dir), device="cpu", dtype="fp8")
    with pytest.raises(TraceError, match="cannot load model"):
        load_model(str(model_dir / "missing"), device="cpu", dtype="fp32")


def test_jsonl_errors_name_file_and_line(tmp_path):
    """A bad JSON line or a missing field is reported with its file and line number."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(TraceError, match=r"d.jsonl:2: not valid JSON"):
        list(read_jsonl_texts(data))
    data.write_text('{"body": "ok"}\n')
    with pytest.raises(TraceError, match=r"d.jsonl:1: no string field 'text'"):
        list(read_jsonl_texts(data))


def test_missing_torch_raises_install_hint(monkeypatch, tmp_path):
    """Without torch/transformers, capture and load_model say how to install the extra."""
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    hint = r"needs torch and transformers: pip install 'moesim\[live\]'"
    with pytest.raises(TraceError, match=hint):
        capture_trace(object(), None, [[1, 2]], 10, out_path=tmp_path / "t.npz")
    with pytest.raises(TraceError, match=hint):
        load_model("any/model")


def test_modules_import_without_torch():
    """The capture and CLI modules import with torch and transformers unavailable."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
        "import moesim.trace.capture, moesim.cli.trace_capture; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
