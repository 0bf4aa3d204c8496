"""Tiny random-weight causal LMs for unit tests: grouped-query heads and a real head_dim, nothing larger."""

from __future__ import annotations

import torch
import transformers


def tiny_causal_lm(arch: str = "qwen3", kv_heads: int = 1) -> torch.nn.Module:
    """Two layers of 4 query heads of 16, `kv_heads` key/value heads (< 4: grouped-query attention), fp32, sdpa."""
    torch.manual_seed(0)
    config_cls, model_cls = {
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    }[arch]
    cfg = config_cls(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "sdpa"
    return model_cls(cfg).float()
