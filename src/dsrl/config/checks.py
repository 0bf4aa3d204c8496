"""Checks of a built config that need no knowledge of the launch (the world size is `batching.plan_batches`' job).

Every error is a `ConfigError` naming the key and what would be valid.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dsrl.config.overrides import in_open_map
from dsrl.config.schema import (
    CHOICES,
    DS_SECTIONS,
    LOGGERS,
    SAVE_CONTENTS,
    ConfigError,
    defaults,
    flat_keys,
)


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def _check_type(key: str, value: Any, kinds: tuple[type, ...], what: str) -> None:
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{key}={value!r} must be {what}")
    if value is not None and not isinstance(value, kinds):
        raise ConfigError(f"{key}={value!r} must be {what}")


# Keys whose default is null, with the type a set value must have.
NULLABLE: dict[str, type] = {
    "data.val_batch_size": int,
    "data.seed": int,
    "actor_rollout_ref.actor.ppo_micro_batch_size": int,
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": int,
    "actor_rollout_ref.actor.clip_ratio_low": float,
    "actor_rollout_ref.actor.clip_ratio_high": float,
    "actor_rollout_ref.actor.loss_scale_factor": float,
    "critic.loss_scale_factor": float,
    "actor_rollout_ref.ref.log_prob_micro_batch_size": int,
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": int,
    "actor_rollout_ref.rollout.max_model_len": int,
    "actor_rollout_ref.rollout.log_prob_micro_batch_size": int,
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": int,
    "critic.enable": bool,
    "critic.ppo_micro_batch_size": int,
    "critic.ppo_micro_batch_size_per_gpu": int,
    "trainer.total_training_steps": int,
    "trainer.max_ckpt_to_keep": int,
    "trainer.max_actor_ckpt_to_keep": int,
    "trainer.max_critic_ckpt_to_keep": int,
    "trainer.fail_at_step": int,
    "trainer.hang_at_step": int,
}


def _check_types(cfg: DictConfig) -> None:
    """Every typed default keeps its type, so a typo like total_training_steps=ten fails here."""
    base = defaults()
    for key in flat_keys(OmegaConf.to_container(base, resolve=False)):
        default = OmegaConf.select(base, key)
        if isinstance(default, DictConfig | ListConfig) or in_open_map(key):
            continue
        value = _get(cfg, key)
        if default is None and key in NULLABLE:
            want = NULLABLE[key]
            names = {int: "an integer or null", float: "a number or null", bool: "a boolean or null"}
            _check_type(key, value, (int, float) if want is float else (want,), names[want])
        elif isinstance(default, bool):
            _check_type(key, value, (bool,), "a boolean (True/False)")
        elif isinstance(default, int):
            _check_type(key, value, (int,), "an integer")
        elif isinstance(default, float):
            _check_type(key, value, (int, float), "a number")


def validate(cfg: DictConfig) -> None:
    """Checks that need no knowledge of the launch (world size is checked by `batching.plan_batches`)."""
    _check_types(cfg)
    for key, valid in CHOICES.items():
        value = _get(cfg, key)
        if value not in valid:
            shown = ", ".join(str(v) for v in valid)
            raise ConfigError(f"{key}={value!r} is not supported in dsrl (valid: {shown})")
    for section in DS_SECTIONS:
        ds = _get(cfg, section)
        if ds.offload == "nvme":
            if ds.zero_stage != 3:
                raise ConfigError(f"{section}.offload=nvme needs {section}.zero_stage=3 (ZeRO-Infinity)")
            if not ds.nvme_path:
                raise ConfigError(f"{section}.offload=nvme needs {section}.nvme_path (a fast local directory)")
    rollout = cfg.actor_rollout_ref.rollout
    if rollout.n < 1:
        raise ConfigError(f"actor_rollout_ref.rollout.n={rollout.n} must be >= 1")
    estimator = cfg.algorithm.adv_estimator
    if estimator in ("grpo", "grpo_passk") and rollout.n < 2:
        raise ConfigError(
            f"algorithm.adv_estimator={estimator} needs actor_rollout_ref.rollout.n >= 2 (advantages compare "
            f"each prompt's group of responses; got n={rollout.n})"
        )
    if cfg.critic.enable is True and estimator != "gae":
        raise ConfigError(
            f"critic.enable=True has no use with algorithm.adv_estimator={estimator} (set critic.enable=False)"
        )
    if cfg.critic.enable is False and cfg.algorithm.adv_estimator == "gae":
        raise ConfigError("algorithm.adv_estimator=gae needs a critic: set critic.enable=True or use grpo")
    for key in ("data.max_prompt_length", "data.max_response_length", "data.train_batch_size"):
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key}={_get(cfg, key)} must be >= 1")
    if rollout.max_model_len is not None and rollout.max_model_len < 2:
        raise ConfigError(f"actor_rollout_ref.rollout.max_model_len={rollout.max_model_len} must be >= 2")
    if not 0 < rollout.top_p <= 1:
        raise ConfigError(f"actor_rollout_ref.rollout.top_p={rollout.top_p} must be in (0, 1]")
    if rollout.temperature < 0:
        raise ConfigError(f"actor_rollout_ref.rollout.temperature={rollout.temperature} must be >= 0")
    if cfg.actor_rollout_ref.actor.clip_ratio_c <= 1:
        raise ConfigError(
            f"actor_rollout_ref.actor.clip_ratio_c={cfg.actor_rollout_ref.actor.clip_ratio_c} must be > 1"
        )
    if cfg.trainer.total_training_steps is not None and cfg.trainer.total_training_steps < 1:
        raise ConfigError(f"trainer.total_training_steps={cfg.trainer.total_training_steps} must be >= 1 or null")
    if cfg.trainer.nnodes < 1 or cfg.trainer.n_gpus_per_node < 1:
        raise ConfigError("trainer.nnodes and trainer.n_gpus_per_node must be >= 1")
    if cfg.trainer.resume_mode == "resume_path" and not cfg.trainer.resume_from_path:
        raise ConfigError("trainer.resume_mode=resume_path needs trainer.resume_from_path")
    if cfg.trainer.dist_timeout <= 0:
        raise ConfigError(f"trainer.dist_timeout={cfg.trainer.dist_timeout} must be > 0 seconds")
    loggers = list(cfg.trainer.logger) if isinstance(cfg.trainer.logger, ListConfig) else [cfg.trainer.logger]
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(f"trainer.logger entry {name!r} is not supported in dsrl (valid: {', '.join(LOGGERS)})")
    contents = list(cfg.actor_rollout_ref.actor.checkpoint.save_contents)
    unknown = [c for c in contents if c not in SAVE_CONTENTS]
    lacking = [c for c in ("model", "optimizer", "extra") if c not in contents]
    if unknown or lacking:
        raise ConfigError(
            f"actor_rollout_ref.actor.checkpoint.save_contents={contents} is not supported in dsrl: checkpoints "
            f"always hold model, optimizer and extra (resumable); add hf_model for a Hugging Face folder"
        )
