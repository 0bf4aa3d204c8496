"""A verl reference command runs as pasted (model path and data files changed, 2 steps) with its vLLM rollout on
CPU. benchmarks/reference_commands_cpu.py runs all seven (docs/reference_commands_cpu.md)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytest.importorskip("vllm")

from reference_commands import localised, reference_commands  # noqa: E402
from trainer_runs import DSRL  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]


def test_zero3_cpu_offload_reference_command_runs_as_pasted(tmp_path):
    """The ZeRO cases ask for 512 prompt + 512 response tokens in a 512-token vLLM context: verl's per-request cap."""
    cmd = next(c for c in reference_commands() if c.name == "zero3_cpu_offload")
    subprocess.run([str(DSRL), "prepare-data", "--source", "synthetic", "--out-dir", str(tmp_path)], check=True)
    args = localised(cmd.args, "random:tiny", str(tmp_path / "train.parquet"), str(tmp_path / "test.parquet"))
    run_dir = tmp_path / "run"
    env = {**os.environ, **{k: v for k, v in cmd.env.items() if k != "CUDA_VISIBLE_DEVICES"}}
    proc = subprocess.run(
        [str(DSRL), "train", *args, "trainer.total_training_steps=2", f"trainer.run_dir={run_dir}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "min(max_response_length, max_model_len - prompt length) new tokens" in proc.stderr
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["response_length/max"] <= 512 - m["prompt_length/min"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["config"]["actor_rollout_ref"]["rollout"]["name"] == "vllm"
    assert info["deepspeed"]["actor"]["offload_effective"] == {"optimizer": "cpu", "param": "cpu"}
