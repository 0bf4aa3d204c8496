"""Stage-aware offload and the effective DeepSpeed config (no engine is built here)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from dsrl.batching import plan_batches  # noqa: E402
from dsrl.config import load_config  # noqa: E402
from dsrl.engines import build_spec, lr_lambda  # noqa: E402

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
