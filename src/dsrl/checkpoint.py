"""Native DeepSpeed checkpoints per engine plus each rank's trainer state, published atomically.

A step is written into `.global_step_N.partial/` and renamed to `global_step_N/` only after every rank finished and
a `COMPLETE` marker exists, so a run killed mid-save never resumes from a half-written checkpoint.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dsrl import atomic, dist

PREFIX = "global_step_"
MARKER = "COMPLETE"
LATEST = "latest_checkpointed_iteration.txt"
TAG = "ckpt"


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
