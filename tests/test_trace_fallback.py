"""A model the default (bundled Mixtral-8x7B) trace does not fit runs on a synthetic trace of its
own shape, fitted to the real trace's statistics, with a note; a trace the user names must still
fit (moesim.trace.fallback, moesim.planning.resolve)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import moesim
from moesim.cli import main
from moesim.errors import TraceError
from moesim.inputs.config import Scenario
from moesim.planning.resolve import DEFAULT_TRACE, Resolver, resolve_inputs
from moesim.trace import fallback
from moesim.trace.bundled import load_bundled_trace
from moesim.trace.fallback import (
    fit_cache_dir,
    fitted_bundled,
    layer_map,
    map_params,
    synthetic_fallback,
)
from moesim.trace.format import RouterTrace, save_trace

DECODE = {"topology": "dgx-h100", "placement": "EP8", "phase": "decode", "batch": 8,
          "context": 256}
REAL_TOKENS = 333  # tokens of the bundled decode trace (2 sequences of 81 and 252)


@pytest.fixture(scope="module", autouse=True)
def _fit_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Fitted parameters cached in a fresh folder (not the user's), fitted once here."""
    folder = tmp_path_factory.mktemp("fit-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOESIM_CACHE_DIR", str(folder))
        fallback._fitted.cache_clear()
        fitted_bundled()
        yield folder


def _note(result: moesim.RunResult) -> str:
    notes = [n for n in result.inputs["notes"] if n.startswith("trace: synthetic")]
    assert len(notes) == 1, result.inputs["notes"]
    return notes[0]


def _check_topk(trace: RouterTrace, num_experts: int, top_k: int) -> None:
    """Every token holds top_k distinct experts in 0..num_experts-1."""
    experts = trace.experts.astype(np.int64)
    assert experts.shape[2] == top_k
    assert experts.min() >= 0 and experts.max() < num_experts
    assert np.all(np.diff(np.sort(experts, axis=2), axis=2) > 0)


def test_mixtral_8x22b_decode_runs_on_a_56_layer_synthetic_trace() -> None:
    """The issue's case: 56 MoE layers against the 32-layer real trace. It runs end to end,
    every layer has a row, and the result says the trace is synthetic and why."""
    result = moesim.evaluate(Scenario(model="mixtral-8x22b", **DECODE))
    inputs = result.inputs
    assert inputs["layers"] == 56 and len(result.per_layer) == 56 and inputs["top_k"] == 2
    assert inputs["trace"].startswith("synthetic")
    assert inputs["trace_metadata"]["synthetic"] == "true"
    assert inputs["trace_tokens"] == REAL_TOKENS
    assert result.tpot_s is not None and result.tpot_s > 0 and result.ttft_s
    note = _note(result)
    assert "56 MoE layers, 8 experts, top-2" in note
    assert "the bundled real trace has 32 MoE layers;" in note and "--trace" in note


def test_qwen3_30b_a3b_runs_with_128_experts_top8() -> None:
    """Another expert count and k: the trace has the model's 48 layers, 128 experts, top-8."""
    result = moesim.evaluate(Scenario(model="qwen3-30b-a3b", **DECODE))
    assert result.inputs["layers"] == 48 and result.inputs["top_k"] == 8
    note = _note(result)
    assert "48 MoE layers, 128 experts, top-8" in note and "not identity" in note
    assert "32 MoE layers, 8 experts, top-2" in note
    assert result.tpot_s is not None and result.tpot_s > 0
    assert int(result.detail.expert_load.shape[-1]) == 128


def test_the_default_model_keeps_the_real_trace() -> None:
    """Mixtral-8x7B fits the bundled trace: it is used as is, with no note."""
    inputs = resolve_inputs(Scenario())
    assert inputs.trace_source == DEFAULT_TRACE and inputs.notes == ()
    assert np.array_equal(inputs.trace.experts, load_bundled_trace().experts)


def test_a_named_trace_that_does_not_fit_is_still_an_error(tmp_path: Path) -> None:
    """Only the default falls back: a named trace of the wrong shape is refused, the message
    keeping the mismatch and adding that leaving out --trace gives a synthetic one."""
    for trace in ("bundled:mixtral8x7b_humaneval_synth", str(tmp_path / "real.npz")):
        save_trace(load_bundled_trace(), tmp_path / "real.npz")
        with pytest.raises(TraceError) as info:
            moesim.evaluate(Scenario(model="mixtral-8x22b", trace=trace, **DECODE))
        message = str(info.value)
        assert "trace has 32 MoE layers but model Mixtral-8x22B has 56" in message
        assert "omit --trace (scenario field 'trace')" in message and "synthetic" in message
    with pytest.raises(TraceError, match="top-k 2 but model .* top-8; .*omit --trace"):
        resolve_inputs(Scenario(model="qwen3-30b-a3b", trace=str(tmp_path / "real.npz"),
                                layers=32))


def test_cli_named_mismatching_trace_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI prints one `moesim: error:` line naming --trace, exit 2."""
    save_trace(load_bundled_trace(), tmp_path / "real.npz")
    assert main(["run", "--model", "mixtral-8x22b", "--placement", "EP8", "--trace",
                 str(tmp_path / "real.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesim: error: trace has 32 MoE layers") and "\n" not in err
    assert "--trace" in err


def test_cli_run_mixtral_8x22b_exits_0(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's command line runs and writes the note into the JSON."""
    out = tmp_path / "r.json"
    assert main(["run", "--model", "mixtral-8x22b", "--topology", "dgx-h100", "--placement",
                 "EP8", "--phase", "decode", "--batch", "8", "--context", "256", "--json",
                 str(out)]) == 0
    assert "note: trace: synthetic" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert len(result["per_layer"]) == 56
    assert any(n.startswith("trace: synthetic") for n in result["inputs"]["notes"])


@pytest.mark.parametrize("model", ["mixtral-8x22b", "qwen3-30b-a3b"])
def test_resolution_is_deterministic_and_conserves_tokens(model: str) -> None:
    """Two fresh resolutions give identical expert arrays; every token has top_k distinct
    experts in range, and the tokens (sequences, positions) are the real trace's."""
    one, two = (Resolver().inputs(Scenario(model=model)) for _ in range(2))
    assert np.array_equal(one.trace.experts, two.trace.experts)
    assert one.trace_source == two.trace_source and one.notes == two.notes
    real = load_bundled_trace()
    assert one.trace.num_layers == one.model.num_moe_layers
    assert np.array_equal(one.trace.seq_id, real.seq_id)
    assert np.array_equal(one.trace.pos, real.pos)
    _check_topk(one.trace, one.model.num_experts, one.model.top_k)


def test_caching_resolver_makes_the_trace_once() -> None:
    """A caching Resolver keeps the synthetic trace per (shape, seed)."""
    resolver = Resolver(cache=True)
    first = resolver.inputs(Scenario(model="mixtral-8x22b"))
    again = resolver.inputs(Scenario(model="mixtral-8x22b", placement="TP8"))
    assert first.trace is again.trace


def test_layers_and_trace_tokens_cut_the_synthetic_trace() -> None:
    """`layers` and `trace_tokens` cut the model's full-depth synthetic trace as they cut a
    real one; too many tokens is the usual error naming the trace."""
    full = resolve_inputs(Scenario(model="mixtral-8x22b")).trace
    cut = resolve_inputs(Scenario(model="mixtral-8x22b", layers=4, trace_tokens=100))
    assert cut.model.num_moe_layers == 4 and cut.trace.experts.shape == (4, 100, 2)
    assert np.array_equal(cut.trace.experts, full.experts[:4, :100])
    assert cut.notes and "56 MoE layers" in cut.notes[0]
    with pytest.raises(TraceError, match=f"exceeds the {REAL_TOKENS} tokens of trace synthetic"):
        resolve_inputs(Scenario(model="mixtral-8x22b", trace_tokens=REAL_TOKENS + 1))
    with pytest.raises(TraceError, match="layers 57 exceeds"):
        resolve_inputs(Scenario(model="mixtral-8x22b", layers=57))


def test_deepseek_v3_shape_synthesises() -> None:
    """58 MoE layers of 256 experts, top-8 (DeepSeek-V3), and a 61-layer variant."""
    inputs = resolve_inputs(Scenario(model="deepseek-v3"))
    assert inputs.trace.experts.shape == (58, REAL_TOKENS, 8)
    _check_topk(inputs.trace, 256, 8)
    trace = synthetic_fallback(61, 256, 8).trace
    assert trace.num_layers == 61
    _check_topk(trace, 256, 8)


def test_layer_map_is_nearest_relative_depth() -> None:
    """Ends aligned, monotone, every real layer used when deepening; identity at equal depth."""
    deeper = layer_map(56, 32)
    assert deeper[0] == 0 and deeper[-1] == 31 and np.all(np.diff(deeper) >= 0)
    assert set(deeper.tolist()) == set(range(32))
    assert layer_map(32, 32).tolist() == list(range(32))
    assert layer_map(3, 32).tolist() == [0, 16, 31] and layer_map(1, 32).tolist() == [0]


def test_mapping_keeps_the_fitted_statistics() -> None:
    """Same shape: the fitted parameters unchanged. Same experts, other depth: each layer's
    popularity and repetition are its source layer's, and rebalanced transitions keep rows
    stochastic. Other expert count: the Lorenz curve is kept (the hottest 1/8 of 128 experts
    get the hottest real expert's share), experts in a seeded random order."""
    _, fitted = fitted_bundled()
    rng = np.random.default_rng(0)
    same, _ = map_params(fitted, 32, 8, 2, rng)
    for name in ("first_popularity", "rest_popularity", "transition", "keep_first",
                 "avoid_rest", "cross_prob", "concentration"):
        assert np.allclose(getattr(same, name), getattr(fitted, name)), name
    deep, src = map_params(fitted, 56, 8, 2, rng)
    assert np.allclose(deep.first_popularity, fitted.first_popularity[src])
    assert np.array_equal(deep.keep_first, fitted.keep_first[src])
    assert np.allclose(deep.transition.sum(axis=2), 1.0) and deep.cross_prob[0] == 0
    wide, src = map_params(fitted, 48, 128, 8, np.random.default_rng(0))
    hottest = np.sort(wide.first_popularity, axis=1)[:, ::-1][:, :16].sum(axis=1)
    assert np.allclose(hottest, fitted.first_popularity[src].max(axis=1))
    assert np.all(wide.cross_prob == 0) and wide.top_k == 8
    again, _ = map_params(fitted, 48, 128, 8, np.random.default_rng(0))
    assert np.array_equal(again.first_popularity, wide.first_popularity)


def test_fit_cache_round_trip(_fit_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fit is kept on disk: a new process (here: a cleared memo) reads the same bits; the
    cache can be switched off."""
    files = list(_fit_cache.glob("fit-*.npz"))
    assert len(files) == 1
    _, fitted = fitted_bundled()
    fallback._fitted.cache_clear()
    _, cached = fitted_bundled()
    assert cached is not fitted
    for name in ("first_popularity", "rest_popularity", "transition", "keep_rest",
                 "segment_concentration"):
        assert np.array_equal(getattr(cached, name), getattr(fitted, name)), name
    assert cached.notes == fitted.notes and cached.segment_tokens == fitted.segment_tokens
    monkeypatch.setenv("MOESIM_CACHE_DIR", "off")
    assert fit_cache_dir() is None
    files[0].write_bytes(b"not an npz")
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(_fit_cache))
    assert fallback._read_params(files[0]) is None
