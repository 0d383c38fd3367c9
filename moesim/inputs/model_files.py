"""Model files: a preset name, a Hugging Face `config.json` or a ModelSpec YAML/JSON to a ModelSpec.

`load_model` is the one entry point; Hugging Face configs of Mixtral, Qwen2/3-MoE, OLMoE,
DeepSeek-V2/V3 (and Kimi-K2, which uses DeepSeek-V3's config class) and gpt-oss are read by
`model_from_hf_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moesim.errors import ModelError
from moesim.inputs.config import load_model_file, read_mapping
from moesim.inputs.models import SIZE_LIMITS, ModelSpec, get_model, model_spec_from_mapping

__all__ = ["load_model", "model_from_hf_config"]

# ---- Hugging Face config.json ------------------------------------------------------------
# Key names follow transformers' MixtralConfig, Qwen2MoeConfig/Qwen3MoeConfig, OlmoeConfig,
# GptOssConfig and DeepSeek's configuration_deepseek.py (DeepseekV2Config/DeepseekV3Config).

_MOE_KEYS = ("n_routed_experts", "num_local_experts", "num_experts")
_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def model_from_hf_config(
    path_or_mapping: str | Path | dict[str, Any], name: str | None = None
) -> ModelSpec:
    """A ModelSpec from a Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3, Kimi-K2 or gpt-oss
    `config.json`."""
    if isinstance(path_or_mapping, dict):
        cfg, source, path = path_or_mapping, "Hugging Face config", None
    else:
        path = Path(path_or_mapping)
        cfg, source = read_mapping(path, "Hugging Face config"), f"Hugging Face config {path}"
    if not any(k in cfg for k in _MOE_KEYS) and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]  # multimodal wrappers keep the language model here
    if not any(k in cfg for k in _MOE_KEYS):
        raise ModelError(
            f"{source} has no MoE key: expected 'num_local_experts' (Mixtral, gpt-oss), "
            "'num_experts' (Qwen2/3-MoE, OLMoE) or 'n_routed_experts' (DeepSeek-V2/V3); "
            "moesim models Mixture-of-Experts models only"
        )
    fields = {"name": name or _hf_name(cfg, path), **_hf_common_fields(cfg, source),
              **_sliding_window_fields(cfg, source)}
    if "n_routed_experts" in cfg:
        fields.update(_deepseek_fields(cfg, source))
    elif "num_local_experts" in cfg:  # Mixtral, gpt-oss: intermediate_size is per expert
        fields.update(num_experts=_need(cfg, "num_local_experts", source),
                      expert_ffn_size=_need(cfg, "intermediate_size", source))
        if cfg.get("model_type") == "gpt_oss":
            # GptOssAttention always has sinks; GptOssExperts always has gate_up_proj_bias
            # and down_proj_bias and GptOssTopKRouter a bias: no config key switches them.
            fields.update(attention_sinks=True, expert_bias=True)
    elif "moe_intermediate_size" in cfg:
        fields.update(_qwen_moe_fields(cfg, source))
    else:  # OLMoE: num_experts, and intermediate_size is the per-expert size
        fields.update(num_experts=_need(cfg, "num_experts", source),
                      expert_ffn_size=_need(cfg, "intermediate_size", source))
    return model_spec_from_mapping(fields, source)


# Each integer key's ModelSpec field, whose SIZE_LIMITS bound (models.py: generous, e.g. hidden
# 2^20, 4096 layers, 32768 experts) the key must respect; and the keys that must be >= 1.
_HF_FIELD = {
    "hidden_size": "hidden_size", "num_hidden_layers": "num_layers", "vocab_size": "vocab_size",
    "num_attention_heads": "num_attention_heads", "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim", "num_experts_per_tok": "top_k", "experts_per_token": "top_k",
    "num_local_experts": "num_experts", "num_experts": "num_experts",
    "n_routed_experts": "num_experts", "intermediate_size": "expert_ffn_size",
    "moe_intermediate_size": "expert_ffn_size",
    "shared_expert_intermediate_size": "shared_expert_ffn_size",
    "n_shared_experts": "num_shared_experts", "first_k_dense_replace": "first_dense_layers",
    "n_group": "num_expert_groups", "sliding_window": "sliding_window",
    "q_lora_rank": "q_lora_rank", "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_nope_head_dim", "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim", "decoder_sparse_step": "num_layers",
    "moe_layer_freq": "num_layers",
}
_POSITIVE = {"hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads",
             "num_key_value_heads", "head_dim", "num_experts_per_tok", "experts_per_token",
             "num_local_experts", "num_experts", "n_routed_experts", "intermediate_size",
             "moe_intermediate_size", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
             "decoder_sparse_step", "moe_layer_freq"}


def _show(value: Any) -> str:
    """A short repr of a config value for a message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(value: Any, key: str, source: str) -> int:
    """`value` of HF key `key` as a whole number in range, or a ModelError naming the key."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 4096.0: a whole number written as a float
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"{source}: '{key}' must be a whole number, got "
                         f"{type(value).__name__} {_show(value)}")
    low = 1 if key in _POSITIVE else 0
    if value < low:
        raise ModelError(f"{source}: '{key}' must be >= {low}, got {value}")
    limit = SIZE_LIMITS.get(_HF_FIELD.get(key, ""))
    if limit is not None and value > limit:
        shown = value if value.bit_length() < 64 else f"a {value.bit_length()}-bit integer"
        raise ModelError(f"{source}: '{key}' is {shown}, above moesim's limit of {limit} "
                         f"(ModelSpec {_HF_FIELD[key]}); check the config")
    return value


def _need(cfg: dict[str, Any], key: str, source: str) -> int:
    """cfg[key] as a whole number, or a ModelError naming the missing or ill-typed key."""
    if cfg.get(key) is None:
        raise ModelError(f"{source} has no '{key}', which this model family needs")
    return _whole(cfg[key], key, source)


def _opt(cfg: dict[str, Any], key: str, source: str, default: Any = 0) -> Any:
    """cfg[key] checked as `default` is typed (a boolean or a whole number), with `default`
    where it is missing or null."""
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ModelError(f"{source}: '{key}' must be true or false, got {_show(value)}")
        return value
    return _whole(value, key, source)


def _int_list(cfg: dict[str, Any], key: str, source: str) -> list[int]:
    """cfg[key] as a list of whole numbers ([] where missing or null)."""
    value = cfg.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ModelError(f"{source}: '{key}' must be a list of block indices, got "
                         f"{type(value).__name__} {_show(value)}")
    return [_whole(item, key, source) for item in value]


def _hf_name(cfg: dict[str, Any], path: Path | None) -> str:
    """A readable name: the repo id it was saved from, else its folder or file name."""
    if cfg.get("_name_or_path"):
        return str(cfg["_name_or_path"]).rstrip("/").rsplit("/", 1)[-1]
    if path is not None:
        return path.parent.name if path.name == "config.json" and path.parent.name else path.stem
    return str(cfg.get("model_type", "hf-model"))


def _hf_common_fields(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """Fields every family spells the same way."""
    hidden = _need(cfg, "hidden_size", source)
    heads = _need(cfg, "num_attention_heads", source)
    if cfg.get("head_dim") is not None:
        head_dim = _need(cfg, "head_dim", source)
    elif hidden % heads:
        raise ModelError(f"{source} has no 'head_dim' and hidden_size / num_attention_heads "
                         f"({hidden} / {heads}) is not a whole number; add head_dim")
    else:
        head_dim = hidden // heads
    # gpt-oss's config carries both num_experts_per_tok and its own experts_per_token.
    top_k_key = ("experts_per_token" if cfg.get("num_experts_per_tok") is None
                 and cfg.get("experts_per_token") is not None else "num_experts_per_tok")
    return {
        "hidden_size": hidden,
        "num_layers": _need(cfg, "num_hidden_layers", source),
        "vocab_size": _need(cfg, "vocab_size", source),
        # These families' config classes default to untied embeddings.
        "tie_embeddings": _opt(cfg, "tie_word_embeddings", source, False),
        "num_attention_heads": heads,
        "num_kv_heads": _opt(cfg, "num_key_value_heads", source, heads),
        "head_dim": head_dim,
        "top_k": _need(cfg, top_k_key, source),
        # q, k, v and o biases where the config class has attention_bias (gpt-oss: true).
        "attention_bias": _opt(cfg, "attention_bias", source, False),
    }


def _sliding_window_fields(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """sliding_window and layer_types; none when every block attends to the whole context.

    `layer_types` (gpt-oss; newer transformers write it for other families too) names each
    block; without it Mistral's rule holds, a set `sliding_window` applies to every block.
    Qwen2/3 with `use_sliding_window: true` slide blocks chosen by `max_window_layers` in a
    way that has changed between transformers versions, so there layer_types is asked for.
    """
    window = _opt(cfg, "sliding_window", source)
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list):
            raise ModelError(f"{source}: layer_types must be a list, one entry per block")
        unknown = sorted({str(t) for t in types} - set(_LAYER_TYPES))
        if unknown:
            raise ModelError(f"{source}: layer_types {', '.join(unknown)} are not modelled; "
                             f"moesim models {' and '.join(_LAYER_TYPES)} blocks")
        kinds = tuple(_LAYER_TYPES[t] for t in types)
        if "sliding" not in kinds:  # sliding_window is then unused
            return {}
        return {"sliding_window": _need(cfg, "sliding_window", source), "layer_types": kinds}
    if not window or cfg.get("use_sliding_window") is False:
        return {}
    if "use_sliding_window" in cfg:
        raise ModelError(f"{source}: use_sliding_window with max_window_layers and no "
                         "layer_types; add layer_types (one 'full_attention' or "
                         "'sliding_attention' per block) to the config")
    layers = _need(cfg, "num_hidden_layers", source)
    if not isinstance(layers, int):
        return {}  # num_hidden_layers itself is then reported by the ModelSpec check
    return {"sliding_window": window, "layer_types": ("sliding",) * layers}


def _qwen_moe_fields(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """Qwen2-MoE / Qwen3-MoE: routed experts, an optional shared expert, leading dense blocks."""
    if _opt(cfg, "decoder_sparse_step", source, 1) != 1:
        raise ModelError(f"{source}: decoder_sparse_step {cfg['decoder_sparse_step']} interleaves "
                         "dense and MoE blocks; ModelSpec models leading dense blocks only")
    dense = sorted(_int_list(cfg, "mlp_only_layers", source))
    if dense != list(range(len(dense))):
        raise ModelError(f"{source}: mlp_only_layers {dense} are not the leading blocks "
                         "0..k-1; ModelSpec models leading dense blocks only")
    shared_ffn = _opt(cfg, "shared_expert_intermediate_size", source)
    return {
        "num_experts": _need(cfg, "num_experts", source),
        "expert_ffn_size": _need(cfg, "moe_intermediate_size", source),
        "num_shared_experts": 1 if shared_ffn else 0,
        "shared_expert_ffn_size": shared_ffn,
        "first_dense_layers": len(dense),
        "dense_ffn_size": _need(cfg, "intermediate_size", source) if dense else 0,
    }


def _deepseek_fields(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """DeepSeek-V2/V3: routed and shared experts, leading dense blocks, MLA when configured."""
    if _opt(cfg, "moe_layer_freq", source, 1) != 1:
        raise ModelError(f"{source}: moe_layer_freq {cfg['moe_layer_freq']} interleaves dense "
                         "and MoE blocks; ModelSpec models leading dense blocks only")
    expert_ffn = _need(cfg, "moe_intermediate_size", source)
    shared = _opt(cfg, "n_shared_experts", source)
    dense = _opt(cfg, "first_k_dense_replace", source)
    fields: dict[str, Any] = {
        "num_experts": _need(cfg, "n_routed_experts", source),
        "expert_ffn_size": expert_ffn,
        "num_shared_experts": shared,
        "shared_expert_ffn_size": expert_ffn if shared else 0,
        "first_dense_layers": dense,
        "dense_ffn_size": _need(cfg, "intermediate_size", source) if dense else 0,
        "num_expert_groups": _opt(cfg, "n_group", source) or 1,
    }
    if cfg.get("kv_lora_rank"):
        fields.update(_mla_fields(cfg, source))
    return fields


def _mla_fields(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """MLA sizes; K/V are expanded to every head, q.k uses the nope and rope parts."""
    nope = _need(cfg, "qk_nope_head_dim", source)
    rope = _need(cfg, "qk_rope_head_dim", source)
    heads = _need(cfg, "num_attention_heads", source)
    return {
        "attention": "mla",
        "q_lora_rank": _opt(cfg, "q_lora_rank", source),
        "kv_lora_rank": _need(cfg, "kv_lora_rank", source),
        "qk_nope_head_dim": nope,
        "qk_rope_head_dim": rope,
        "v_head_dim": _need(cfg, "v_head_dim", source),
        "head_dim": nope + rope if isinstance(nope, int) and isinstance(rope, int) else nope,
        "num_kv_heads": heads,
    }


# ---- any model file ----------------------------------------------------------------------


def load_model(spec: str) -> ModelSpec:
    """A preset name, an HF config.json (or its folder), or a YAML/JSON file of ModelSpec fields."""
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.is_file():
        return _load_model_path(path)
    if not _is_preset(spec) and path.suffix.lower() in (".json", ".yaml", ".yml"):
        raise ModelError(f"model file {spec} does not exist")
    return get_model(spec)


def _load_model_path(path: Path) -> ModelSpec:
    """Load a model file: ModelSpec fields (YAML or JSON) or a Hugging Face config.json."""
    if path.suffix.lower() in (".yaml", ".yml"):
        return load_model_file(ModelSpec, path, "model")
    data = read_mapping(path, "model")
    if "expert_ffn_size" in data:  # our own schema written as JSON
        return model_spec_from_mapping(data, f"model file {path}")
    return model_from_hf_config(path)


def _is_preset(name: str) -> bool:
    """Whether `name` names a built-in preset."""
    try:
        get_model(name)
    except ModelError:
        return False
    return True
