"""Run `dsrl train` for real (2 CPU ranks under torchrun) and read back what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DSRL = Path(sys.executable).parent / "dsrl"
TOY_REWARD = Path(__file__).parent / "data" / "toy_reward.py"

# Small shapes that still exercise gradient accumulation (mini 4 per rank, micro 2 -> GAS 2).
SMALL = [
    "trainer.device=cpu",
    "data.train_batch_size=8",
    "data.max_prompt_length=128",
    "data.max_response_length=16",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "critic.ppo_micro_batch_size_per_gpu=2",
    "trainer.val_before_train=False",
]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    run_dir: Path

    @property
    def metrics(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @property
    def info(self) -> dict:
        return json.loads((self.run_dir / "run.json").read_text())

    def step(self, n: int) -> dict:
        return next(m for m in self.metrics if m["step"] == n)


def run_dsrl(run_dir: Path, *overrides: str, nproc: int = 2, timeout: int = 600, env: dict | None = None) -> Run:
    cmd = [
        str(DSRL),
        "train",
        "--nproc-per-node",
        str(nproc),
        f"trainer.run_dir={run_dir}",
        *SMALL,
        *overrides,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return Run(proc.returncode, proc.stdout, proc.stderr, run_dir)
