"""Trainer configuration: packaged YAML defaults + verl-style overrides + verl environment knobs.

Precedence (lowest first): `defaults.yaml`, verl environment knobs (`VERL_*`), explicit overrides. Every error is a
`ConfigError` raised before any process group starts, naming the key and what would be valid.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = [
    "ConfigError",
    "load_config",
    "parse_override",
    "validate",
    "to_container",
]


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


@functools.cache
def _default_tree() -> dict[str, Any]:
    return yaml.safe_load(resources.files("dsrl.config").joinpath("defaults.yaml").read_text())


def _defaults() -> DictConfig:
    """A fresh config from the packaged defaults (parsed once per process; the workflow validates many runs)."""
    return OmegaConf.create(copy.deepcopy(_default_tree()))


def _flat_keys(node: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, child in node.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        keys.append(full)
        if isinstance(child, Mapping):
            keys.extend(_flat_keys(child, full))
    return keys


def parse_value(text: str) -> Any:
    """Parse an override's value the way Hydra users expect: 1e-6 is a float, [console] a list, True a bool."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_override(arg: str) -> tuple[str, str, Any]:
    """Split one command-line override into (mode, key, value); mode is '', '+' or '++'."""
    if arg.startswith("~"):
        raise ConfigError(f"override {arg!r}: deleting keys with '~' is not supported in dsrl")
    if "=" not in arg:
        raise ConfigError(f"override {arg!r} is not of the form key=value (e.g. trainer.total_training_steps=10)")
    key, raw = arg.split("=", 1)
    mode = ""
    if key.startswith("++"):
        mode, key = "++", key[2:]
    elif key.startswith("+"):
        mode, key = "+", key[1:]
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {arg!r} has an empty key segment")
    return mode, key, parse_value(raw)


def _exists(cfg: DictConfig, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
    return True


def _unsupported_reason(key: str) -> str | None:
    for prefix, reason in UNSUPPORTED.items():
        if key == prefix or key.startswith(prefix + "."):
            return reason
    return None


def _in_open_map(key: str) -> bool:
    return any(key.startswith(m + ".") for m in OPEN_MAPS)


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in known if k.rsplit(".", 1)[-1] == leaf][:1]
    return f"; did you mean {close[0]!r}?" if close else ""


def _apply_selector(key: str, value: Any) -> None:
    allowed = GROUP_SELECTORS[key]
    if value not in allowed:
        raise ConfigError(
            f"{key}={value} is not supported in dsrl: its actor and critic are DeepSpeed engines "
            f"(valid: {', '.join(sorted(allowed))})"
        )


def _bool_env(name: str, raw: str) -> bool:
    if raw in ("1", "true", "True"):
        return True
    if raw in ("0", "false", "False"):
        return False
    raise ConfigError(f"environment variable {name}={raw!r} is not valid (use 0 or 1)")


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, Any]]:
    """The verl environment knobs as (key, value) pairs; they win over defaults but lose to explicit overrides."""
    pairs: list[tuple[str, Any]] = []
    for name, leaf in ENV_KNOBS.items():
        if name in environ and environ[name] != "":
            value = _bool_env(name, environ[name])
            pairs.extend((f"{section}.{leaf}", value) for section in DS_SECTIONS)
    return pairs


def load_config(overrides: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> DictConfig:
    """Build the resolved config from defaults, environment knobs and command-line overrides."""
    environ = os.environ if environ is None else environ
    cfg = _defaults()
    known = _flat_keys(OmegaConf.to_container(cfg, resolve=False))
    for key, value in env_overrides(environ):
        OmegaConf.update(cfg, key, value, merge=False)

    args = list(overrides)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in IGNORED_ARGS:
            i += 1  # its value (the verl config name) goes with it
            continue
        mode, key, value = parse_override(arg)
        if key in GROUP_SELECTORS and mode == "":
            _apply_selector(key, value)
            continue
        reason = _unsupported_reason(key)
        if reason:
            raise ConfigError(f"{key} is not supported in dsrl: {reason}")
        exists = _exists(cfg, key)
        if mode == "+" and exists and not _in_open_map(key):
            raise ConfigError(f"+{key}: the key already exists; set it without '+' ({key}={value!r})")
        if not exists and not _in_open_map(key) and mode != "++":
            hint = _did_you_mean(key, known)
            raise ConfigError(f"unknown config key {key!r}{hint}")
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        if not exists and mode == "++" and parent and not _exists(cfg, parent):
            raise ConfigError(f"++{key}: parent {parent!r} does not exist{_did_you_mean(parent, known)}")
        if exists and isinstance(OmegaConf.select(cfg, key), str) and isinstance(value, int | float):
            value = str(value)  # experiment_name=123 names a string key
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)

    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:  # interpolation errors name the key themselves
        raise ConfigError(f"cannot resolve config: {exc}") from exc
    validate(cfg)
    return cfg


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
    defaults = _defaults()
    for key in _flat_keys(OmegaConf.to_container(defaults, resolve=False)):
        default = OmegaConf.select(defaults, key)
        if isinstance(default, DictConfig | ListConfig) or _in_open_map(key):
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


def save_hf_model(cfg: DictConfig) -> bool:
    """dsrl's `trainer.save_hf_model`, or verl's `hf_model` in the actor's `checkpoint.save_contents`."""
    return bool(cfg.trainer.save_hf_model) or "hf_model" in cfg.actor_rollout_ref.actor.checkpoint.save_contents


def use_critic(cfg: DictConfig) -> bool:
    """verl's rule: a critic exists for GAE; `critic.enable` may say so explicitly."""
    if cfg.critic.enable is not None:
        return bool(cfg.critic.enable)
    return cfg.algorithm.adv_estimator == "gae"


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
