"""Small shared builders for tests: a tiny model and hand-made traces."""

from __future__ import annotations

import numpy as np

from moesim.inputs.models import ModelSpec
from moesim.trace.format import RouterTrace


def tiny_model(
    num_layers: int = 2, num_experts: int = 4, top_k: int = 2, hidden_size: int = 4
) -> ModelSpec:
    """A 2-layer, 4-expert, top-2 model with hidden 4 (8 bytes per bf16 vector)."""
    return ModelSpec(
        name="tiny",
        hidden_size=hidden_size,
        num_layers=num_layers,
        vocab_size=10,
        num_attention_heads=32,
        num_kv_heads=1,
        head_dim=2,
        num_experts=num_experts,
        top_k=top_k,
        expert_ffn_size=8,
    )


def trace_from(experts: list[list[list[int]]], seq_id: list[int] | None = None) -> RouterTrace:
    """A trace from nested lists `[L][T][k]`; one sequence with positions 0..T-1 by default."""
    arr = np.array(experts, dtype=np.int16)
    num_tokens = arr.shape[1]
    seq = np.zeros(num_tokens, dtype=np.int32) if seq_id is None else np.array(seq_id)
    return RouterTrace(experts=arr, seq_id=seq, pos=np.arange(num_tokens))
