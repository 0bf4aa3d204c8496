"""Model FLOPs and MFU for the update phases, with verl's conventions (torch-free, so it tests without a GPU).

Training FLOPs of a decoder are 6 x (dense parameters) per token plus the attention score/value products, which
grow with each sequence's length squared. Recomputation from gradient checkpointing is not counted (the usual MFU
convention: work the model needs, not work the implementation does), nor are padding tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PEAK_DENSE_TFLOPS_16BIT: dict[str, float] = {
    "H100": 989.4,
    "H100 PCIE": 756.0,
    "H200": 989.4,
    "H800": 989.4,
    "H20": 148.0,
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.1,
    "A10G": 125.0,
}
"""Vendor peak dense bf16/fp16 tensor-core throughput (no sparsity) per GPU; keys are words of the device name."""


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of one GPU for 16-bit training, or None when the device or precision has no figure here."""
    if precision not in ("bf16", "fp16"):
        return None
    words = set(device_name.upper().replace("-", " ").split())
    # the most specific key whose words are all in the name ("H100 PCIE" before "H100")
    for key in sorted(PEAK_DENSE_TFLOPS_16BIT, key=lambda k: len(k.split()), reverse=True):
        if set(key.split()) <= words:
            return PEAK_DENSE_TFLOPS_16BIT[key] * 1e12
    return None


def _get(config: Any, key: str, default: Any = None) -> Any:
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def _shape(config: Any) -> dict[str, int]:
    hidden = int(_get(config, "hidden_size"))
    heads = int(_get(config, "num_attention_heads"))
    return {
        "hidden": hidden,
        "layers": int(_get(config, "num_hidden_layers")),
        "heads": heads,
        "kv_heads": int(_get(config, "num_key_value_heads", heads)),
        "head_dim": int(_get(config, "head_dim", None) or hidden // heads),
        "intermediate": int(_get(config, "intermediate_size")),
        "vocab": int(_get(config, "vocab_size")),
    }


def dense_params(config: Any) -> int:
    """Parameters that take part in a token's matrix products (embedding and LM head counted once each)."""
    d = _shape(config)
    attention = d["hidden"] * d["head_dim"] * (2 * d["heads"] + 2 * d["kv_heads"])  # q, o and k, v projections
    mlp = 3 * d["hidden"] * d["intermediate"]  # gate, up, down
    return d["layers"] * (attention + mlp) + 2 * d["vocab"] * d["hidden"]


def train_flops(config: Any, seq_lens: Iterable[int]) -> float:
    """Forward + backward FLOPs of one pass over sequences of these lengths (verl's FlopsCounter formula)."""
    lens = [int(n) for n in seq_lens]
    d = _shape(config)
    dense = 6 * dense_params(config) * sum(lens)
    attention = 12 * sum(n * n for n in lens) * d["head_dim"] * d["heads"] * d["layers"]
    return float(dense + attention)


def mfu(flops: float, seconds: float, n_gpus: int, peak_per_gpu: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of all GPUs that did the work."""
    if not peak_per_gpu or seconds <= 0 or n_gpus <= 0:
        return None
    return flops / (seconds * n_gpus * peak_per_gpu)
