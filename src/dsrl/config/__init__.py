"""Trainer configuration: packaged YAML defaults + verl environment knobs + verl-style overrides, then checks.

Precedence (lowest first): `defaults.yaml`, verl environment knobs (`VERL_*`), explicit overrides. Every error is a
`ConfigError` raised before any process group starts, naming the key and what would be valid. What is accepted:
`schema`; how overrides apply: `overrides`; what is valid: `checks`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dsrl.config.checks import validate
from dsrl.config.overrides import apply_overrides, env_overrides, parse_override, parse_value
from dsrl.config.schema import (
    ADV_ESTIMATORS,
    KL_PENALTY_TYPES,
    LOSS_AGG_MODES,
    NO_EFFECT,
    POLICY_LOSS_MODES,
    ConfigError,
    defaults,
    flat_keys,
)

__all__ = [
    "ADV_ESTIMATORS",
    "KL_PENALTY_TYPES",
    "LOSS_AGG_MODES",
    "NO_EFFECT",
    "POLICY_LOSS_MODES",
    "ConfigError",
    "load_config",
    "parse_override",
    "parse_value",
    "save_hf_model",
    "to_container",
    "use_critic",
    "validate",
]


def load_config(overrides: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> DictConfig:
    """Build the resolved config from defaults, environment knobs and command-line overrides."""
    environ = os.environ if environ is None else environ
    cfg = defaults()
    known = flat_keys(OmegaConf.to_container(cfg, resolve=False))
    for key, value in env_overrides(environ):
        OmegaConf.update(cfg, key, value, merge=False)
    apply_overrides(cfg, overrides, known)
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:  # interpolation errors name the key themselves
        raise ConfigError(f"cannot resolve config: {exc}") from exc
    validate(cfg)
    return cfg


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
