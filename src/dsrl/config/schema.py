"""What dsrl's config accepts: the packaged defaults and the tables every check and override reads.

verl's key names throughout. Four kinds of verl key are treated specially: group selectors (`critic=ds_critic`), keys
dsrl rejects (`UNSUPPORTED`), keys limited to the values dsrl implements (`CHOICES`), and keys accepted so pasted verl
commands run but which change nothing in dsrl (`NO_EFFECT`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message names the key and the valid choices."""


# verl group selectors that the reference commands use, mapped to what dsrl accepts.
GROUP_SELECTORS: dict[str, set[str]] = {
    "actor@actor_rollout_ref.actor": {"ds_actor", "deepspeed_actor"},
    "critic": {"ds_critic", "deepspeed_critic"},
}

# verl keys (or subtrees) that exist upstream but that dsrl deliberately does not implement.
UNSUPPORTED: dict[str, str] = {
    "actor_rollout_ref.actor.fsdp_config": "dsrl trains with DeepSpeed only; use actor_rollout_ref.actor.deepspeed.*",
    "critic.model.fsdp_config": "dsrl trains with DeepSpeed only; use critic.deepspeed_config.*",
    "actor_rollout_ref.actor.megatron": "dsrl trains with DeepSpeed only",
    "critic.megatron": "dsrl trains with DeepSpeed only",
    "actor_rollout_ref.model.lora_rank": "LoRA is not supported in dsrl",
    "actor_rollout_ref.model.lora_alpha": "LoRA is not supported in dsrl",
    "actor_rollout_ref.model.target_modules": "LoRA is not supported in dsrl",
    "actor_rollout_ref.rollout.multi_turn": "multi-turn rollout is not supported in dsrl",
    "actor_rollout_ref.rollout.agent": "agent loops are not supported in dsrl",
    "reward_model.model": "model-based rewards are not supported in dsrl; use custom_reward_function",
    "ray_init": "dsrl does not use Ray (torchrun inside a job, SLURM across jobs)",
    "trainer.ray_wait_register_center_timeout": "dsrl does not use Ray",
}

# verl's names for the RL math, owned here (torch-free, for the workflow environment) and imported by
# dsrl.advantages and dsrl.algorithms; a train test checks dsrl.policy_losses' registry against them.
ADV_ESTIMATORS = (
    "gae",
    "grpo",
    "rloo",
    "reinforce_plus_plus",
    "reinforce_plus_plus_baseline",
    "opo",
    "gpg",
    "grpo_passk",
    "remax",
)
_KL_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
KL_PENALTY_TYPES = _KL_TYPES + tuple(f"{t}+" for t in _KL_TYPES)
LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
POLICY_LOSS_MODES = ("vanilla", "gspo", "gpg", "clip_cov", "kl_cov", "geo_mean", "cispo")

# Values that dsrl accepts for verl keys whose other upstream values it does not implement.
CHOICES: dict[str, tuple[Any, ...]] = {
    "actor_rollout_ref.actor.strategy": ("deepspeed",),
    "critic.strategy": ("deepspeed",),
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size": (1,),
    "critic.ulysses_sequence_parallel_size": (1,),
    "actor_rollout_ref.rollout.name": ("hf", "vllm"),
    "actor_rollout_ref.rollout.mode": ("sync", "async"),
    "algorithm.adv_estimator": ADV_ESTIMATORS,
    "algorithm.kl_penalty": KL_PENALTY_TYPES,
    "actor_rollout_ref.actor.kl_loss_type": KL_PENALTY_TYPES,
    "algorithm.kl_ctrl.type": ("fixed", "adaptive"),
    "actor_rollout_ref.actor.loss_agg_mode": LOSS_AGG_MODES,
    "critic.loss_agg_mode": LOSS_AGG_MODES,
    "actor_rollout_ref.actor.policy_loss.loss_mode": POLICY_LOSS_MODES,
    "data.truncation": ("error",),
    "trainer.resume_mode": ("auto", "disable", "resume_path"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "trainer.progress": ("auto", "on", "off"),
    "reward_model.enable": (False,),
    "reward_model.reward_manager": ("naive",),
    "actor_rollout_ref.actor.optim.warmup_style": ("constant", "cosine"),
    "critic.optim.warmup_style": ("constant", "cosine"),
}

DS_SECTIONS = ("actor_rollout_ref.actor.deepspeed", "critic.deepspeed_config")
for _section in DS_SECTIONS:
    CHOICES[f"{_section}.zero_stage"] = (0, 1, 2, 3)
    CHOICES[f"{_section}.offload"] = ("none", "cpu", "nvme")
    CHOICES[f"{_section}.mixed_precision"] = ("bf16", "fp16", "fp32")
    CHOICES[f"{_section}.torch_adam"] = ("auto", True, False)

# verl's trainer.logger backends that dsrl implements (dsrl.loggers).
LOGGERS = ("console", "file", "tensorboard", "wandb", "mlflow")
# verl's checkpoint.save_contents entries; hf_model adds <run_dir>/actor_hf (as trainer.save_hf_model=True does).
SAVE_CONTENTS = ("model", "optimizer", "extra", "hf_model")

# verl environment knobs -> the config keys they set (for actor and critic alike).
ENV_KNOBS: dict[str, str] = {
    "VERL_ENABLE_PARAM_OFFLOAD": "param_offload",
    "VERL_DS_ZERO2_FP32_ACCUM_PATCH": "zero2_fp32_grad_accum",
    "VERL_DS_ZERO2_STEP_EACH_MICRO": "zero2_step_each_micro",
}

# Open maps: any child key may be set or added.
OPEN_MAPS = (
    "reward.reward_kwargs",
    "actor_rollout_ref.model.override_config",
    "critic.model.override_config",
)

# verl's launcher flags that a pasted command carries; dsrl has one config, so they are accepted and ignored.
IGNORED_ARGS = {"-cn", "--config-name"}


# verl keys that dsrl accepts (so a pasted verl command runs) but that change nothing here, and why.
NO_EFFECT: dict[str, str] = {
    "data.prompt_key": "prompts are always the verl schema's `prompt` column",
    "data.reward_fn_key": "the reward function is chosen by each row's `data_source`",
    "data.val_batch_size": "validation generates every prompt a rank holds in one call",
    "data.return_raw_chat": "prompts are always chat-templated token ids",
    "actor_rollout_ref.hybrid_engine": "the actor's weights always serve the rollout",
    "actor_rollout_ref.model.external_lib": "models load through transformers only",
    "critic.model.external_lib": "models load through transformers only",
    "actor_rollout_ref.rollout.mode": "sync and async both run the same per-rank requests",
    "actor_rollout_ref.rollout.prompt_length": "data.max_prompt_length bounds prompts",
    "actor_rollout_ref.rollout.response_length": "data.max_response_length bounds responses",
    "trainer.balance_batch": "each rank rolls out its own prompts; nothing is rebalanced",
    "trainer.log_val_generations": "validation logs scores, not generations",
    "trainer.default_hdfs_dir": "checkpoints are written to trainer.default_local_dir only",
    "trainer.use_legacy_worker_impl": "dsrl has one worker implementation",
}


@functools.cache
def _default_tree() -> dict[str, Any]:
    return yaml.safe_load(resources.files("dsrl.config").joinpath("defaults.yaml").read_text())


def defaults() -> DictConfig:
    """A fresh config from the packaged defaults (parsed once per process; the workflow validates many runs)."""
    return OmegaConf.create(copy.deepcopy(_default_tree()))


def flat_keys(node: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, child in node.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        keys.append(full)
        if isinstance(child, Mapping):
            keys.extend(flat_keys(child, full))
    return keys
