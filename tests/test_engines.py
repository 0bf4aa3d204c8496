"""Stage-aware offload, the effective DeepSpeed config and model loading details (no engine is built here)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from dsrl.batching import plan_batches  # noqa: E402
from dsrl.config import load_config  # noqa: E402
from dsrl.engines import (  # noqa: E402
    _rebuild_rotary_buffers,
    build_spec,
    lr_lambda,
    model_states_estimate,
    param_counts,
)

pytestmark = pytest.mark.train


def _spec(stage: int, offload: str, param_offload: bool = False, device: str = "cuda", **extra: str):
    overrides = [
        f"actor_rollout_ref.actor.deepspeed.zero_stage={stage}",
        f"actor_rollout_ref.actor.deepspeed.offload={offload}",
        f"actor_rollout_ref.actor.deepspeed.param_offload={param_offload}",
        "data.train_batch_size=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        "critic.ppo_micro_batch_size_per_gpu=1",
        *(f"{k}={v}" for k, v in extra.items()),
    ]
    cfg = load_config(overrides, environ={})
    actor = cfg.actor_rollout_ref.actor
    return build_spec("actor", actor.deepspeed, actor.optim, plan_batches(cfg, 2).actor, 2, device, actor.grad_clip)


def test_zero1_cpu_offload_is_normalised_to_no_offload_and_says_so():
    spec = _spec(1, "cpu")
    zero = spec.ds_config["zero_optimization"]
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert spec.offload_requested == "cpu"
    assert spec.offload_effective == {"optimizer": "none", "param": "none"}
    assert any("no effective offload" in n for n in spec.notes)


def test_zero2_cpu_offloads_the_optimizer_only():
    spec = _spec(2, "cpu", param_offload=True)
    zero = spec.ds_config["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in zero
    assert spec.offload_effective == {"optimizer": "cpu", "param": "none"}
    assert any("no effect at zero_stage=2" in n for n in spec.notes)


def test_zero3_cpu_offloads_params_only_when_enabled():
    without = _spec(3, "cpu")
    assert "offload_param" not in without.ds_config["zero_optimization"]
    assert any("VERL_ENABLE_PARAM_OFFLOAD" in n for n in without.notes)
    with_params = _spec(3, "cpu", param_offload=True)
    assert with_params.ds_config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert with_params.offload_effective == {"optimizer": "cpu", "param": "cpu"}


def test_zero3_keeps_torch_linear_unless_asked():
    """DeepSpeed's memory-efficient linear patches torch.nn.functional.linear process-wide: off by default."""
    assert _spec(3, "none").ds_config["zero_optimization"]["memory_efficient_linear"] is False
    on = _spec(3, "none", **{"actor_rollout_ref.actor.deepspeed.stage3_memory_efficient_linear": "true"})
    assert on.ds_config["zero_optimization"]["memory_efficient_linear"] is True
    assert "memory_efficient_linear" not in _spec(2, "none").ds_config["zero_optimization"]


def test_precision_is_explicit_and_batch_sizes_match_plan():
    spec = _spec(2, "none")
    assert spec.ds_config["bf16"] == {"enabled": True}
    assert spec.ds_config["train_batch_size"] == 1 * 2 * 2
    assert spec.ds_config["gradient_accumulation_steps"] == 2
    fp32 = _spec(2, "none", **{"actor_rollout_ref.actor.deepspeed.mixed_precision": "fp32"})
    assert "bf16" not in fp32.ds_config and "fp16" not in fp32.ds_config


def test_zero2_fp32_accumulation_knob_sets_grad_accum_dtype():
    spec = _spec(2, "none", **{"actor_rollout_ref.actor.deepspeed.zero2_fp32_grad_accum": "True"})
    assert spec.ds_config["data_types"] == {"grad_accum_dtype": "fp32"}
    assert (
        "data_types"
        not in _spec(1, "none", **{"actor_rollout_ref.actor.deepspeed.zero2_fp32_grad_accum": "True"}).ds_config
    )


def test_torch_adam_on_cpu_and_ds_cpu_optimizer_not_forced():
    cpu = _spec(2, "cpu", device="cpu")
    assert cpu.ds_config["optimizer"]["params"]["torch_adam"] is True
    assert cpu.ds_config["zero_force_ds_cpu_optimizer"] is False
    gpu = _spec(2, "cpu", device="cuda")
    assert gpu.ds_config["optimizer"]["params"]["torch_adam"] is False


def test_warmup_schedule():
    cfg = load_config(["actor_rollout_ref.actor.optim.lr_warmup_steps=4"], environ={})
    fn = lr_lambda(cfg.actor_rollout_ref.actor.optim, total_steps=10)
    assert [round(fn(s), 2) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def _tied_model():
    import torch

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(100, 8)  # 800, the largest layer
            self.body = torch.nn.Linear(8, 8)  # 72
            self.head = torch.nn.Linear(8, 100, bias=False)
            self.head.weight = self.embed.weight  # tied: counted once

    return Tied()


def test_param_counts_count_shared_weights_once_and_read_zero3_full_sizes():
    model = _tied_model()
    assert param_counts(model) == (872, 800)
    for p in model.parameters():  # what a ZeRO-3 partitioned parameter looks like: empty data, full ds_numel
        p.ds_numel = p.numel()
        p.data = p.data.new_empty(0)
    assert param_counts(model) == (872, 800)


def test_model_state_estimates_follow_the_case():
    model, p = _tied_model(), 872
    # ZeRO-2, no offload, 2 GPUs: 16-bit params on every GPU + 18 bytes/param of the rest partitioned
    z2 = model_states_estimate(model, _spec(2, "none"), world_size=2, local_world_size=2)
    assert z2["estimator"] == "estimate_zero2_model_states_mem_needs"
    assert z2["gpu_bytes"] == 2 * p + 18 * p // 2
    # ZeRO-2 with optimizer offload keeps only the 16-bit params on the GPU
    assert model_states_estimate(model, _spec(2, "cpu"), 2, 2)["gpu_bytes"] == 2 * p
    # ZeRO-3 with parameter offload keeps only the largest layer's working copy
    z3 = model_states_estimate(model, _spec(3, "cpu", param_offload=True), 2, 2)
    assert z3["estimator"] == "estimate_zero3_model_states_mem_needs"
    assert z3["gpu_bytes"] == 4 * 800
    assert z3["cpu_bytes"] > 18 * p
    # more GPUs, less per GPU
    assert (
        model_states_estimate(model, _spec(3, "none"), 8, 8)["gpu_bytes"]
        < model_states_estimate(model, _spec(3, "none"), 2, 2)["gpu_bytes"]
    )
    # a frozen bf16 reference: 2 bytes per parameter, partitioned only under ZeRO-3
    cfg = load_config(["actor_rollout_ref.actor.deepspeed.zero_stage=3"], environ={})
    ref = build_spec("ref", cfg.actor_rollout_ref.actor.deepspeed, None, None, 2, "cuda")
    assert model_states_estimate(model, ref, 2, 2)["gpu_bytes"] == 2 * p // 2


def test_zero3_rotary_frequencies_are_rebuilt_in_fp32():
    """zero.Init leaves the rotary inverse frequencies in bf16: ZeRO-3 then sampled other responses than ZeRO-1/2."""
    import torch
    from tiny_models import tiny_causal_lm

    model = tiny_causal_lm()
    rotary = model.model.rotary_emb
    exact = rotary.inv_freq.clone()
    rotary.inv_freq, rotary.original_inv_freq = exact.bfloat16(), exact.bfloat16()  # as zero.Init builds them
    assert not torch.equal(rotary.inv_freq.float(), exact)
    _rebuild_rotary_buffers(model)
    assert rotary.inv_freq.dtype == torch.float32 and torch.equal(rotary.inv_freq, exact)
    assert torch.equal(rotary.original_inv_freq, exact)
    assert not any("inv_freq" in key for key in model.state_dict())  # still non-persistent buffers
