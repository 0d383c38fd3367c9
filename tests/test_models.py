"""Model presets, derived sizes and loading from Hugging Face configs and YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from moesim.errors import ConfigError, ModelError
from moesim.inputs.model_files import load_model, model_from_hf_config
from moesim.inputs.models import (
    ModelSpec,
    get_model,
    list_models,
    model_spec_from_mapping,
)

HF_CONFIGS = Path(__file__).parent / "data" / "hf_configs"
B = 1e9


def _sizes(spec: ModelSpec) -> dict:
    """Every field except the name, to compare specs loaded from different sources."""
    return spec.model_dump(exclude={"name"})


# ---- published totals -----------------------------------------------------------------------
# Every preset against its publisher's figures. A count agrees when it is within 1% of the
# figure or, where the figure is printed coarser than 1% of itself ("1T", "37B"), when it
# rounds to the figure at that precision; " cut" marks a figure its publisher truncated.
# Which property a publisher's "active" means differs (see ModelSpec.active_params and
# active_compute_params): Mistral and Qwen count both embedding matrices, gpt-oss counts the
# unembedding but not the embedding, and DeepSeek's and Moonshot's figures match that too.

PUBLISHED = [
    # mistral.ai/news/mixtral-of-experts: 46.7B total, 12.9B used per token (the paper,
    # arXiv 2401.04088, rounds them to 47B / 13B).
    ("Mixtral-8x7B", "46.7B", "12.9B", "active_params"),
    # mistral.ai/news/mixtral-8x22b: "only 39B active parameters out of 141B".
    ("Mixtral-8x22B", "141B", "39B", "active_params"),
    # DeepSeek-V3 README_WEIGHTS.md, main model without MTP: 671B total, 36.7B activated
    # (the paper, arXiv 2412.19437, rounds it to 37B).
    ("DeepSeek-V3", "671B", "36.7B", "active_compute_params"),
    # DeepSeek-R1 README, "Model Downloads": 671B total, 37B activated.
    ("DeepSeek-R1", "671B", "37B", "active_compute_params"),
    # Qwen3-30B-A3B model card: "30.5B in total and 3.3B activated"; counting both
    # embeddings gives 3.353B, which the card cuts to 3.3B (3.04B without the input
    # embedding would not print as 3.3B either way).
    ("Qwen3-30B-A3B", "30.5B", "3.3B cut", "active_params"),
    # Qwen3-235B-A22B model card: "235B in total and 22B activated".
    ("Qwen3-235B-A22B", "235B", "22B", "active_params"),
    # gpt-oss model card (arXiv 2508.10925), Table 1: 116.83B total, 5.13B active,
    # "Unembedding parameters are counted towards active, but not embeddings".
    ("gpt-oss-120b", "116.83B", "5.13B", "active_compute_params"),
    # ibid.: 20.91B total, 3.61B active.
    ("gpt-oss-20b", "20.91B", "3.61B", "active_compute_params"),
    # Kimi-K2-Instruct model card, "Model Summary": 1T total, 32B activated (1026.4B from
    # the config; Kimi K2 report, arXiv 2507.20534: 32B activated of 1T).
    ("Kimi-K2", "1T", "32B", "active_compute_params"),
]


def _agrees(count: int, figure: str) -> bool:
    """Whether `count` reproduces a published figure such as "46.7B", "1T" or "3.3B cut"."""
    printed, _, how = figure.partition(" ")
    scale = {"B": 1e9, "T": 1e12}[printed[-1]]
    value = float(printed[:-1]) * scale
    unit = scale / 10 ** len(printed[:-1].partition(".")[2])  # one step of the last digit
    if abs(count - value) <= 0.01 * value:
        return True
    if unit <= 0.01 * value:
        return False
    steps = count / unit
    return (int(steps) if how == "cut" else round(steps)) == round(value / unit)


def test_every_preset_has_published_figures():
    """The table below covers every preset, so a new preset needs its publisher's counts."""
    assert sorted(row[0] for row in PUBLISHED) == sorted(list_models())


@pytest.mark.parametrize(("preset", "total", "active", "active_property"), PUBLISHED,
                         ids=[row[0] for row in PUBLISHED])
def test_preset_matches_published_totals(preset, total, active, active_property):
    """Total and active parameter counts reproduce the publisher's figures (see PUBLISHED)."""
    m = get_model(preset)
    assert _agrees(m.total_params, total), f"{m.total_params / B:.3f}B vs {total}"
    count = getattr(m, active_property)
    assert _agrees(count, active), f"{active_property} {count / B:.3f}B vs {active}"


def test_published_figure_rule():
    """1% where the figure is that precise, else its printed precision: no looser."""
    assert _agrees(int(46.3 * B), "46.7B") and not _agrees(int(46.2 * B), "46.7B")
    assert _agrees(int(36.63 * B), "37B") and not _agrees(int(36.4 * B), "37B")
    assert _agrees(int(1.3e12), "1T") and not _agrees(int(1.6e12), "1T")
    assert _agrees(int(3.353 * B), "3.3B cut") and not _agrees(int(3.353 * B), "3.3B")


def test_deepseek_active_figures_exclude_the_input_embedding():
    """DeepSeek-V3's 36.7B and Kimi-K2's 32B match active_compute_params (36.63B, 31.69B);
    with the input embedding (active_params: 37.55B, 32.86B) neither is within 1%, although
    README_WEIGHTS.md says its 36.7B includes the 0.9B embedding and the 0.9B output head."""
    v3, kimi = get_model("DeepSeek-V3"), get_model("Kimi-K2")
    assert v3.active_params - v3.active_compute_params == 129280 * 7168  # the 0.9B lookup table
    assert v3.active_compute_params == pytest.approx(36.7 * B, rel=0.01)
    assert v3.active_params != pytest.approx(36.7 * B, rel=0.01)
    assert kimi.active_compute_params == pytest.approx(32 * B, rel=0.01)
    assert kimi.active_params != pytest.approx(32 * B, rel=0.01)


def test_qwen3_non_embedding_excludes_both_embedding_matrices():
    """Qwen's "Non-Embedding" figures, 29.9B (30B-A3B) and 234B (235B-A22B), leave out both
    the input embedding and the untied output head (model cards), within 1%."""
    assert get_model("Qwen3-30B-A3B").non_embedding_params == pytest.approx(29.9 * B, rel=0.01)
    assert get_model("Qwen3-235B-A22B").non_embedding_params == pytest.approx(234 * B, rel=0.01)


def test_gpt_oss_matches_published_breakdown():
    """gpt-oss model card, Table 1 (arXiv 2508.10925): MLP 114.71B / 19.12B (experts with
    their biases, and the routers), attention 0.96B / 0.64B (q, k, v, o with biases and the
    sinks), embedding + unembedding 1.16B, each within 1%."""
    for preset, mlp, attention in (("gpt-oss-120b", 114.71, 0.96), ("gpt-oss-20b", 19.12, 0.64)):
        m = get_model(preset)
        moe = m.num_moe_layers * (m.num_experts * m.params_per_expert + m.router_params_per_layer)
        assert moe == pytest.approx(mlp * B, rel=0.01)
        assert m.num_layers * m.attention_params_per_layer == pytest.approx(attention * B, rel=0.01)
        assert m.embedding_params == pytest.approx(1.16 * B, rel=0.01)


# ---- hand-worked sizes ----------------------------------------------------------------------


def test_mixtral_params_per_expert_by_hand():
    """A Mixtral-8x7B expert is SwiGLU: 3 * 4096 * 14336 weights, 2 FLOPs per weight per token."""
    m = get_model("Mixtral-8x7B")
    assert m.params_per_expert == 3 * 4096 * 14336 == 176_160_768
    assert m.expert_flops_per_token == 2 * 176_160_768
    assert m.expert_weight_bytes(2) == 2 * 176_160_768


def test_mixtral_attention_and_total_by_hand():
    """GQA q,o are 4096x4096 and k,v 4096x1024; the total is the closed-form sum of every block."""
    m = get_model("Mixtral-8x7B")
    attention = 2 * 4096 * 4096 + 2 * 4096 * 1024
    assert m.attention_params_per_layer == attention == 41_943_040
    assert m.attention_proj_flops_per_token == 2 * attention
    block = attention + 2 * 4096 + 8 * 176_160_768 + 4096 * 8  # + norms, experts, router
    assert m.total_params == 32 * block + 2 * 32000 * 4096 + 4096  # + embeddings, final norm
    assert m.active_params == m.total_params - 32 * 6 * 176_160_768  # 6 of 8 experts idle
    assert m.weight_bytes(2) == 2 * m.total_params


def test_deepseek_v3_mla_attention_by_hand():
    """MLA per block: q down/up, kv down (latent + rope key), kv up, o, and the two latent norms."""
    m = get_model("DeepSeek-V3")
    q = 7168 * 1536 + 1536 * 128 * (128 + 64)
    kv = 7168 * (512 + 64) + 512 * 128 * (128 + 128)
    o = 128 * 128 * 7168
    assert m.attention_params_per_layer == q + kv + o + 1536 + 512 == 187_107_328
    assert m.attention_proj_flops_per_token == 2 * (q + kv + o)
    assert m.num_moe_layers == 58
    assert m.shared_expert_flops_per_token == 2 * 3 * 7168 * 2048


def test_gpt_oss_biases_and_sinks_by_hand():
    """gpt-oss-120b (openai/gpt-oss gpt_oss/torch/model.py): q, k, v, o with biases and one
    sink per head; each expert SwiGLU plus gate-up (2 * 2880) and down (2880) biases; the
    router 2880 x 128 plus a bias of 128."""
    m = get_model("gpt-oss-120b")
    weights = 2880 * 64 * 64 * 2 + 2880 * 8 * 64 * 2
    biases = 64 * 64 + 2 * 8 * 64 + 2880
    assert m.attention_params_per_layer == weights + biases + 64 == 26_550_144
    assert m.attention_proj_flops_per_token == 2 * weights  # biases and sinks multiply nothing
    assert m.params_per_expert == 3 * 2880 * 2880 + 2 * 2880 + 2880 == 24_891_840
    assert m.router_params_per_layer == 2880 * 128 + 128
    block = m.attention_params_per_layer + 2 * 2880 + m.router_params_per_layer
    embeddings = 2 * 201088 * 2880
    assert m.total_params == 36 * (block + 128 * m.params_per_expert) + embeddings + 2880
    assert m.active_params == 36 * (block + 4 * m.params_per_expert) + embeddings + 2880
    assert m.active_compute_params == m.active_params - 201088 * 2880


def test_biases_and_sinks_split_under_tensor_parallelism():
    """Under TP, q bias and sinks split with the heads, k/v bias with the KV heads, o's bias
    (hidden) stays whole; an expert's gate-up bias splits, its down bias (hidden) does not.
    Each rank's share at TP1 is the whole."""
    m = get_model("gpt-oss-120b")
    assert m.attention_params_per_rank(1) == m.attention_params_per_layer
    plain = m.model_copy(update={"attention_bias": False, "attention_sinks": False})
    for tp in (2, 8, 16):  # at 16, each KV head is on two ranks
        extra = m.attention_params_per_rank(tp) - plain.attention_params_per_rank(tp)
        kv_shards = min(tp, 8)
        assert extra == 64 * 64 // tp + 2 * 8 * 64 // kv_shards + 2880 + 64 // tp
    assert m.expert_params_per_shard(1) == m.params_per_expert
    assert m.expert_params_per_shard(4) == (3 * 2880 * 2880 + 2 * 2880) // 4 + 2880


def test_sliding_window_layers():
    """gpt-oss alternates sliding (window 128, from block 0) and full attention: a sliding
    block keeps at most 128 tokens of KV cache; the per-token KV bytes are every block's."""
    m = get_model("gpt-oss-20b")
    assert (m.sliding_window, m.num_sliding_layers) == (128, 12)
    assert m.layer_types[:2] == ("sliding", "full")
    assert m.kv_cache_tokens_per_layer(1000) == [128, 1000] * 12
    assert m.kv_cache_tokens_per_layer(100) == [100] * 24
    assert m.kv_bytes_per_token() == 24 * 2 * 8 * 64 * 2
    mixtral = get_model("Mixtral-8x7B")
    assert mixtral.num_sliding_layers == 0 and mixtral.layer_types == ()
    assert mixtral.kv_cache_tokens_per_layer(4096) == [4096] * 32


def test_kv_bytes_per_token():
    """KV bytes per token per layer: GQA 2*kv_heads*head_dim*bytes, MLA (kv_lora + rope)*bytes."""
    mixtral = get_model("Mixtral-8x7B")
    assert mixtral.kv_bytes_per_token_per_layer() == 2 * 8 * 128 * 2 == 4096
    assert mixtral.kv_bytes_per_token_per_layer(kv_dtype_bytes=1) == 2048
    assert mixtral.kv_bytes_per_token() == 32 * 4096
    deepseek = get_model("DeepSeek-V3")
    assert deepseek.kv_bytes_per_token_per_layer() == (512 + 64) * 2 == 1152
    qwen = get_model("Qwen3-30B-A3B")
    assert qwen.kv_bytes_per_token_per_layer() == 2 * 4 * 128 * 2


def test_tied_embeddings_count_once():
    """With tied embeddings the one matrix is counted once and is also the output head."""
    fields = _sizes(get_model("Mixtral-8x7B"))
    untied = model_spec_from_mapping({"name": "untied", **fields})
    tied = model_spec_from_mapping({"name": "tied", **fields, "tie_embeddings": True})
    assert untied.total_params - tied.total_params == 32000 * 4096
    assert tied.embedding_params == 32000 * 4096
    assert tied.active_compute_params == tied.active_params


# ---- presets and names ----------------------------------------------------------------------


def test_preset_names_are_case_insensitive_and_accept_repo_ids():
    """Aliases, any case and HF repo ids resolve to the same preset."""
    names = ["mixtral-8x7b", "Mixtral-8x7B", "MIXTRAL-8X7B", "mistralai/Mixtral-8x7B-v0.1",
             "mistralai/Mixtral-8x7B-Instruct-v0.1"]
    assert {id(get_model(n)) for n in names} == {id(get_model("Mixtral-8x7B"))}
    assert get_model("deepseek-ai/DeepSeek-V3").name == "DeepSeek-V3"
    assert get_model("Qwen/Qwen3-30B-A3B").name == "Qwen3-30B-A3B"
    repo_ids = {
        "Qwen/Qwen3-235B-A22B-Instruct-2507": "Qwen3-235B-A22B",
        "openai/gpt-oss-120b": "gpt-oss-120b",
        "openai/gpt-oss-20b": "gpt-oss-20b",
        "deepseek-ai/DeepSeek-R1": "DeepSeek-R1",
        "deepseek-ai/DeepSeek-R1-0528": "DeepSeek-R1",
        "moonshotai/Kimi-K2-Instruct": "Kimi-K2",
        "mistralai/Mixtral-8x22B-Instruct-v0.1": "Mixtral-8x22B",
    }
    assert {repo: get_model(repo).name for repo in repo_ids} == repo_ids


def test_deepseek_r1_is_deepseek_v3_shaped():
    """DeepSeek-R1's config.json differs from DeepSeek-V3's only in transformers_version."""
    assert _sizes(get_model("DeepSeek-R1")) == _sizes(get_model("DeepSeek-V3"))


def test_list_models_names_resolve():
    """list_models gives every preset, each loadable by its own name."""
    names = list_models()
    assert names == ["Mixtral-8x7B", "Mixtral-8x22B", "DeepSeek-V3", "DeepSeek-R1",
                     "Qwen3-30B-A3B", "Qwen3-235B-A22B", "gpt-oss-120b", "gpt-oss-20b", "Kimi-K2"]
    assert [load_model(n).name for n in names] == names


def test_unknown_model_lists_presets():
    """An unknown name raises ModelError naming it and listing every preset."""
    with pytest.raises(ModelError) as err:
        load_model("llama-3-70b")
    message = str(err.value)
    assert "llama-3-70b" in message
    assert all(name in message for name in list_models())


def test_missing_model_file_is_reported_as_a_file():
    """A path-like name that does not exist says the file is missing."""
    with pytest.raises(ModelError, match="does not exist"):
        load_model("nowhere/model.yaml")


# ---- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "preset"),
    [("Mixtral-8x7B-v0.1", "Mixtral-8x7B"), ("Mixtral-8x22B-v0.1", "Mixtral-8x22B"),
     ("Qwen3-30B-A3B", "Qwen3-30B-A3B"), ("Qwen3-235B-A22B", "Qwen3-235B-A22B"),
     ("DeepSeek-V3", "DeepSeek-V3"), ("DeepSeek-R1", "DeepSeek-R1"),
     ("Kimi-K2-Instruct", "Kimi-K2"), ("gpt-oss-120b", "gpt-oss-120b"),
     ("gpt-oss-20b", "gpt-oss-20b")],
)
def test_hf_config_gives_preset_sizes(folder, preset):
    """Loading the model's real config.json gives exactly the preset's sizes."""
    path = HF_CONFIGS / folder / "config.json"
    spec = model_from_hf_config(path)
    assert spec.name == folder
    assert _sizes(spec) == _sizes(get_model(preset))
    assert _sizes(load_model(str(path))) == _sizes(spec)  # file path
    assert _sizes(load_model(str(path.parent))) == _sizes(spec)  # its folder


@pytest.mark.parametrize("name", ["DeepSeek-V3", "gpt-oss-20b"])
def test_yaml_model_file_round_trip(tmp_path, name):
    """A preset written as a YAML file of ModelSpec fields loads back equal."""
    preset = get_model(name)
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(preset.model_dump()))
    assert load_model(str(path)) == preset


def test_olmoe_config_uses_intermediate_size_per_expert():
    """OLMoE has num_experts but no moe_intermediate_size: intermediate_size is per expert."""
    cfg = {  # huggingface.co/allenai/OLMoE-1B-7B-0924, config.json (sizes only)
        "model_type": "olmoe", "hidden_size": 2048, "intermediate_size": 1024,
        "num_attention_heads": 16, "num_key_value_heads": 16, "num_hidden_layers": 16,
        "num_experts": 64, "num_experts_per_tok": 8, "vocab_size": 50304,
    }
    spec = model_from_hf_config(cfg)
    assert (spec.num_experts, spec.top_k, spec.expert_ffn_size) == (64, 8, 1024)
    assert spec.num_shared_experts == 0 and spec.head_dim == 128


def test_qwen2_moe_shared_expert_and_leading_dense_layers():
    """Qwen2-MoE's shared_expert_intermediate_size is one shared expert; mlp_only_layers 0..k-1
    become leading dense blocks of intermediate_size."""
    cfg = {  # sizes of huggingface.co/Qwen/Qwen1.5-MoE-A2.7B, config.json, plus 2 dense blocks
        "model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632,
        "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
        "num_attention_heads": 16, "num_key_value_heads": 16, "num_hidden_layers": 24,
        "num_experts": 60, "num_experts_per_tok": 4, "vocab_size": 151936,
        "decoder_sparse_step": 1, "mlp_only_layers": [1, 0],
    }
    spec = model_from_hf_config(cfg)
    assert (spec.num_shared_experts, spec.shared_expert_ffn_size) == (1, 5632)
    assert (spec.first_dense_layers, spec.dense_ffn_size, spec.num_moe_layers) == (2, 5632, 22)
    with pytest.raises(ModelError, match="mlp_only_layers"):
        model_from_hf_config({**cfg, "mlp_only_layers": [3]})


def test_deepseek_v2_lite_without_q_compression():
    """q_lora_rank null (DeepSeek-V2-Lite) means q is projected straight from hidden."""
    cfg = {  # sizes of huggingface.co/deepseek-ai/DeepSeek-V2-Lite, config.json
        "hidden_size": 2048, "num_hidden_layers": 27, "vocab_size": 102400,
        "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 10944,
        "moe_intermediate_size": 1408, "n_routed_experts": 64, "n_shared_experts": 2,
        "num_experts_per_tok": 6, "first_k_dense_replace": 1, "moe_layer_freq": 1,
        "q_lora_rank": None, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "v_head_dim": 128,
    }
    spec = model_from_hf_config(cfg)
    q = 2048 * 16 * 192
    kv = 2048 * (512 + 64) + 512 + 512 * 16 * (128 + 128)
    assert spec.attention_params_per_layer == q + kv + 16 * 128 * 2048
    assert (spec.num_shared_experts, spec.shared_expert_ffn_size) == (2, 1408)


def test_gpt_oss_config_fields():
    """gpt-oss: experts_per_token alone is top_k; layer_types' sliding_attention blocks take
    sliding_window; attention_bias is read; sinks and expert biases are always on."""
    cfg = yaml.safe_load((HF_CONFIGS / "gpt-oss-20b" / "config.json").read_text())
    del cfg["num_experts_per_tok"]
    spec = model_from_hf_config(cfg)
    assert (spec.top_k, spec.sliding_window, spec.num_sliding_layers) == (4, 128, 12)
    assert spec.attention_bias and spec.attention_sinks and spec.expert_bias
    full = model_from_hf_config({**cfg, "layer_types": ["full_attention"] * 24})
    assert (full.layer_types, full.sliding_window) == ((), 0)  # the window is then unused
    with pytest.raises(ModelError, match="chunked_attention"):
        model_from_hf_config({**cfg, "layer_types": ["chunked_attention"] * 24})
    with pytest.raises(ConfigError, match="layer_types"):
        model_from_hf_config({**cfg, "layer_types": ["sliding_attention"] * 25})


def test_sliding_window_without_layer_types():
    """Without layer_types a set sliding_window slides every block (Mistral's rule), none
    when use_sliding_window is false (Qwen), and Qwen's use_sliding_window true is refused."""
    cfg = yaml.safe_load((HF_CONFIGS / "Mixtral-8x7B-v0.1" / "config.json").read_text())
    assert model_from_hf_config(cfg).sliding_window == 0  # "sliding_window": null
    spec = model_from_hf_config({**cfg, "sliding_window": 4096})
    assert (spec.sliding_window, spec.num_sliding_layers) == (4096, 32)
    qwen = yaml.safe_load((HF_CONFIGS / "Qwen3-30B-A3B" / "config.json").read_text())
    assert model_from_hf_config({**qwen, "sliding_window": 4096}).num_sliding_layers == 0
    with pytest.raises(ModelError, match="layer_types"):
        model_from_hf_config({**qwen, "sliding_window": 4096, "use_sliding_window": True})


def test_dense_config_names_missing_moe_key():
    """A config with no MoE keys (a dense Llama) raises ModelError naming the keys it lacks."""
    llama = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
             "num_hidden_layers": 32, "vocab_size": 128256, "intermediate_size": 14336}
    with pytest.raises(ModelError, match="num_local_experts"):
        model_from_hf_config(llama)


def test_hf_config_missing_key_is_named():
    """A Mixtral config without intermediate_size raises ModelError naming that key."""
    cfg = yaml.safe_load((HF_CONFIGS / "Mixtral-8x7B-v0.1" / "config.json").read_text())
    del cfg["intermediate_size"]
    with pytest.raises(ModelError, match="'intermediate_size'"):
        model_from_hf_config(cfg)


# ---- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"top_k": 9}, "top_k"),
        ({"first_dense_layers": 32, "dense_ffn_size": 14336}, "first_dense_layers"),
        ({"first_dense_layers": 1}, "dense_ffn_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_kv_heads": 5}, "num_kv_heads"),
        ({"attention": "mla"}, "kv_lora_rank"),
        ({"kv_lora_rank": 512}, "kv_lora_rank"),
        ({"num_shared_experts": 1}, "shared_expert_ffn_size"),
        ({"experts": 8}, "experts"),
        ({"layer_types": ["full", "sliding"]}, "layer_types"),
        ({"layer_types": ["sliding"] * 32}, "sliding_window"),
        ({"sliding_window": 128}, "sliding_window"),
        ({"layer_types": ["global"] * 32}, "layer_types"),
    ],
)
def test_invalid_spec_names_the_field(change, field):
    """Each broken rule raises one ConfigError whose message names the offending field."""
    data = {**get_model("Mixtral-8x7B").model_dump(), **change}
    with pytest.raises(ConfigError, match=field):
        model_spec_from_mapping(data)


def test_attention_bias_with_mla_is_refused():
    """attention_bias is modelled for GQA only; on an MLA spec the message names it."""
    data = {**get_model("DeepSeek-V3").model_dump(), "attention_bias": True}
    with pytest.raises(ConfigError, match="attention_bias"):
        model_spec_from_mapping(data)


def test_invalid_yaml_model_file_names_file_and_field(tmp_path):
    """A YAML model file with a bad value names the file and the field."""
    data = {**get_model("Qwen3-30B-A3B").model_dump(), "top_k": 200}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_model(str(path))
    assert str(path) in str(err.value) and "top_k" in str(err.value)


def test_spec_is_frozen():
    """ModelSpec is immutable, so presets cannot be changed by accident."""
    with pytest.raises(ValidationError, match="frozen"):
        get_model("Mixtral-8x7B").top_k = 3  # type: ignore[misc]
