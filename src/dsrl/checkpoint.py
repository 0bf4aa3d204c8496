"""Native DeepSpeed checkpoints per engine plus each rank's trainer state, published atomically.

A step is written into `.global_step_N.partial/` and renamed to `global_step_N/` only after every rank finished and
a `COMPLETE` marker exists, so a run killed mid-save never resumes from a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from dsrl import atomic, dist

PREFIX = "global_step_"
MARKER = "COMPLETE"
LATEST = "latest_checkpointed_iteration.txt"
TAG = "ckpt"
log = logging.getLogger("dsrl")


def complete_steps(root: Path) -> list[int]:
    """Steps with a complete checkpoint under `root`, ascending."""
    if not root.is_dir():
        return []
    steps = []
    for child in root.iterdir():
        m = re.fullmatch(rf"{PREFIX}(\d+)", child.name)
        if m and (child / MARKER).exists():
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest(root: Path) -> Path | None:
    steps = complete_steps(root)
    return root / f"{PREFIX}{steps[-1]}" if steps else None


def save(
    root: Path,
    step: int,
    engines: dict[str, Any],
    state: dict[str, Any],
    rank: int,
    keep: int | None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Collective: every rank calls it with the same engines; rank 0 adds `write_extra`'s files, publishes, prunes."""
    final = root / f"{PREFIX}{step}"
    tmp = root / f".{PREFIX}{step}.partial"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    for name, engine in engines.items():
        engine.save_checkpoint(str(tmp / name), tag=TAG, save_latest=False)
    torch.save(state, tmp / f"trainer_state_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        if write_extra is not None:
            write_extra(tmp)
        (tmp / MARKER).write_text(f"{step}\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        atomic.write_text(root / LATEST, f"{step}\n")
        if keep:
            for old in complete_steps(root)[:-keep]:
                shutil.rmtree(root / f"{PREFIX}{old}", ignore_errors=True)
    dist.barrier()
    return final


def load(path: Path, engines: dict[str, Any], rank: int) -> dict[str, Any]:
    """Restore engines (module, optimizer, scheduler) and this rank's trainer state from a complete checkpoint."""
    if not (path / MARKER).exists():
        raise FileNotFoundError(f"{path} is not a complete dsrl checkpoint (no {MARKER} marker)")
    for name, engine in engines.items():
        load_path, _ = engine.load_checkpoint(
            str(path / name), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise FileNotFoundError(f"DeepSpeed found no {name} checkpoint under {path / name}")
    state_file = path / f"trainer_state_rank{rank}.pt"
    if not state_file.exists():
        raise FileNotFoundError(f"{state_file} is missing: was the checkpoint written with a different world size?")
    return torch.load(state_file, weights_only=False)


def keep_count(trainer: DictConfig) -> int | None:
    """How many checkpoints to keep: the smallest of verl's limits that are set (None: all)."""
    values = [
        v for v in (trainer.max_ckpt_to_keep, trainer.max_actor_ckpt_to_keep, trainer.max_critic_ckpt_to_keep) if v
    ]
    return min(values) if values else None


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A stable per-(seed, step, rank) seed, so a resumed run samples exactly what an uninterrupted one did."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainer_state(step: int, batcher: Any, kl_ctrl: Any) -> dict[str, Any]:
    """What a rank needs besides the engines to continue as if never stopped: data position, KL controller, RNGs."""
    return {"step": step, "batcher": batcher.state_dict(), "kl_ctrl": kl_ctrl.state_dict(), "rng": rng_state()}


def restore_trainer_state(state: dict[str, Any], batcher: Any, kl_ctrl: Any) -> int:
    """Undo `trainer_state`; returns the step it was saved at."""
    batcher.load_state_dict(state["batcher"])
    kl_ctrl.load_state_dict(state["kl_ctrl"])
    set_rng_state(state["rng"])
    return int(state["step"])


def save_run(
    trainer: DictConfig,
    step: int,
    engines: dict[str, Any],
    batcher: Any,
    kl_ctrl: Any,
    rank: int,
    tokenizer: Any,
) -> Path:
    """`save` under `trainer.default_local_dir` with the trainer state and, beside the actor's DeepSpeed files, its
    HF config and tokenizer (`actor/huggingface/`, as verl writes them, for `dsrl export`)."""

    def write_hf_config(ckpt: Path) -> None:
        from dsrl import hf_export  # it reads this module's TAG: imported here, not at the top

        hf_export.save_config_and_tokenizer(engines["actor"].module.config, tokenizer, ckpt / "actor" / "huggingface")

    state = trainer_state(step, batcher, kl_ctrl)
    root, keep = Path(trainer.default_local_dir), keep_count(trainer)
    return save(root, step, engines, state, rank, keep, write_hf_config)


def resume_run(trainer: DictConfig, engines: dict[str, Any], batcher: Any, kl_ctrl: Any, rank: int) -> int:
    """Return the last completed step (0 for a fresh run) after restoring from a checkpoint if `resume_mode` asks."""
    if trainer.resume_mode == "disable":
        return 0
    root = Path(trainer.default_local_dir)
    path = Path(trainer.resume_from_path) if trainer.resume_mode == "resume_path" else latest(root)
    if path is None:
        return 0
    step = restore_trainer_state(load(path, engines, rank), batcher, kl_ctrl)
    log.info("resumed from %s (step %d)", path, step)
    return step
