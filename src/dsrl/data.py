"""Prepared prompt files (verl's parquet schema): reading, epoch-wise batching that survives resume, encoding.

Kept torch-free at import time: `dsrl train`'s preflight checks the files before any process starts. Writing the
files is dsrl.data_prep's job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

REQUIRED_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")


def as_list(files: str | list[str] | None) -> list[str]:
    """`data.train_files` / `val_files`: one path or a list of them, as verl accepts."""
    if files is None:
        return []
    return [str(files)] if isinstance(files, str) else [str(f) for f in files]


def prompt_file_rows(path: str | os.PathLike) -> int:
    """Rows of a verl-schema parquet, from its footer alone; fails on a missing file, columns or rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt parquet not found: {path} (create it with `dsrl prepare-data`)")
    try:
        meta = pq.read_metadata(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a file that is not parquet
        raise ValueError(f"{path}: not a parquet file ({exc})") from exc
    missing = [col for col in REQUIRED_COLUMNS if col not in meta.schema.to_arrow_schema().names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected columns {list(REQUIRED_COLUMNS)}")
    if meta.num_rows == 0:
        raise ValueError(f"{path}: file has no rows")
    return meta.num_rows


def read_prompts(path: str | os.PathLike) -> list[dict]:
    """Rows of a verl-schema parquet as plain Python objects (lists/dicts, not numpy arrays)."""
    prompt_file_rows(path)
    return pq.read_table(path, columns=list(REQUIRED_COLUMNS)).to_pylist()


class PromptBatcher:
    """Epoch-wise shuffled, drop-last batches of row indices whose order survives checkpoint/resume.

    Each epoch's permutation depends only on (seed, epoch), so the state is just (epoch, position).
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, shuffle: bool = True) -> None:
        if num_rows <= 0 or batch_size <= 0:
            raise ValueError(f"num_rows ({num_rows}) and batch_size ({batch_size}) must be positive")
        if batch_size > num_rows:
            raise ValueError(f"batch_size ({batch_size}) is larger than the number of prompt rows ({num_rows})")
        self.num_rows, self.batch_size, self.seed, self.shuffle = num_rows, batch_size, seed, shuffle
        self.batches_per_epoch = num_rows // batch_size
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def next_batch(self) -> list[int]:
        """Global row indices of the next batch, moving to the next epoch when this one is used up."""
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        start = self.position * self.batch_size
        self.position += 1
        return self._order[start : start + self.batch_size].tolist()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "num_rows": self.num_rows,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the position; refuses a state from a batcher over different data or settings."""
        for key in ("num_rows", "batch_size", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"PromptBatcher state has {key}={state[key]!r} but this run has "
                    f"{key}={getattr(self, key)!r}; "
                    "resume with the same data and batch settings"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.batches_per_epoch:
            raise ValueError(
                f"PromptBatcher state epoch={epoch}, position={position} is out of range "
                f"(position must be in [0, {self.batches_per_epoch}])"
            )
        self.epoch, self.position = epoch, position
        self._order = self._epoch_order(epoch)


def encode_prompts(
    rows: Sequence[Mapping[str, Any]], tokenizer: Any, max_prompt_length: int, filter_overlong: bool
) -> tuple[list[list[int]], list[int]]:
    """Chat-templated prompt token ids and the indices of the rows kept after the length filter."""
    encoded: list[list[int]] = []
    kept: list[int] = []
    for index, row in enumerate(rows):
        out = tokenizer.apply_chat_template(list(row["prompt"]), add_generation_prompt=True, tokenize=True)
        ids = [int(i) for i in (out["input_ids"] if isinstance(out, Mapping) else out)]
        if len(ids) > max_prompt_length:
            if filter_overlong:
                continue
            raise ValueError(
                f"prompt row {index} has {len(ids)} tokens > data.max_prompt_length={max_prompt_length}; "
                "raise the limit or enable data.filter_overlong_prompts"
            )
        encoded.append(ids)
        kept.append(index)
    if not kept:
        raise ValueError(f"all {len(rows)} prompts exceed data.max_prompt_length={max_prompt_length}")
    return encoded, kept


def load_prompts(
    files: Sequence[str], tokenizer: Any, max_prompt_length: int, filter_overlong: bool
) -> tuple[list[dict], list[list[int]]]:
    """The rows of every file that survive the length filter, and their prompt token ids."""
    rows = [row for path in files for row in read_prompts(path)]
    ids, kept = encode_prompts(rows, tokenizer, max_prompt_length, filter_overlong)
    return [rows[i] for i in kept], ids
