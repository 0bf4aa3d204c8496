"""Command-line overrides and verl's environment knobs applied to a config: parsing only, no value checks.

Hydra's syntax as verl users type it (`key=value`, `+key=value`, `++key=value`, `-cn name`), with an unknown key
failing here with a did-you-mean; whether a value is valid is dsrl.config.checks' job.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from dsrl.config.schema import (
    DS_SECTIONS,
    ENV_KNOBS,
    GROUP_SELECTORS,
    IGNORED_ARGS,
    OPEN_MAPS,
    UNSUPPORTED,
    ConfigError,
)


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


def in_open_map(key: str) -> bool:
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


def apply_overrides(cfg: DictConfig, overrides: Iterable[str], known: Sequence[str]) -> None:
    """Apply command-line overrides in order; `known` are the defaults' keys (for did-you-mean)."""
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
        if mode == "+" and exists and not in_open_map(key):
            raise ConfigError(f"+{key}: the key already exists; set it without '+' ({key}={value!r})")
        if not exists and not in_open_map(key) and mode != "++":
            hint = _did_you_mean(key, known)
            raise ConfigError(f"unknown config key {key!r}{hint}")
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        if not exists and mode == "++" and parent and not _exists(cfg, parent):
            raise ConfigError(f"++{key}: parent {parent!r} does not exist{_did_you_mean(parent, known)}")
        if exists and isinstance(OmegaConf.select(cfg, key), str) and isinstance(value, int | float):
            value = str(value)  # experiment_name=123 names a string key
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
