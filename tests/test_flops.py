"""Model FLOPs and MFU: the formula against a hand count, the peak table against real device names."""

import pytest

from dsrl.flops import dense_params, mfu, peak_flops, train_flops
from dsrl.models import PRESETS

QWEN3 = PRESETS["qwen3-0.6b"]
QWEN3_06B = {**QWEN3.config, "vocab_size": QWEN3.vocab_size}


def test_dense_params_hand_count():
    cfg = {
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 4,
        "intermediate_size": 16,
        "vocab_size": 10,
    }
    q, k, v, o = 8 * 8, 8 * 4, 8 * 4, 8 * 8
    mlp = 3 * 8 * 16
    assert dense_params(cfg) == 2 * (q + k + v + o + mlp) + 2 * 10 * 8


def test_qwen3_shape_is_about_the_published_size():
    # Qwen3-0.6B: 0.44B non-embedding parameters, 151936 x 1024 embeddings (tied, but counted as two matmuls)
    non_embedding = dense_params(QWEN3_06B) - 2 * 151936 * 1024
    assert non_embedding == pytest.approx(0.44e9, rel=0.01)


def test_train_flops_dense_plus_quadratic_attention():
    lens = [100, 300]
    dense = 6 * dense_params(QWEN3_06B) * 400
    attention = 12 * (100**2 + 300**2) * 128 * 16 * 28
    assert train_flops(QWEN3_06B, lens) == dense + attention
    # the same tokens in one sequence cost more (attention grows with length squared)
    assert train_flops(QWEN3_06B, [400]) > train_flops(QWEN3_06B, lens)


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.1),
    ],
)
def test_peak_flops_by_device_name(name, tflops):
    assert peak_flops(name, "bf16") == pytest.approx(tflops * 1e12)


def test_no_peak_for_unknown_devices_or_fp32():
    assert peak_flops("NVIDIA GeForce GTX 1080", "bf16") is None
    assert peak_flops("NVIDIA H100 80GB HBM3", "fp32") is None
    assert mfu(1e15, 1.0, 2, None) is None


def test_mfu_is_achieved_over_peak_of_all_gpus():
    assert mfu(1e15, 2.0, 2, 1e15) == pytest.approx(0.25)
