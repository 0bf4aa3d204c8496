"""What clusters do to jobs: SIGKILL mid-run, SIGTERM preemption, two jobs on one machine, a stuck rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

from trainer_runs import DSRL, SMALL, run_dsrl  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]

GRPO = ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=4", "actor_rollout_ref.actor.optim.lr=1e-3"]


def _start(run_dir: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [str(DSRL), "train", "--nproc-per-node", "2", f"trainer.run_dir={run_dir}", *SMALL, *overrides]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill reaches torchrun and both ranks
        env={**os.environ, **(env or {})},
    )


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early (rc={proc.returncode}): {proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("timed out waiting for the run")


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip().endswith("}")]


def _same_learning_metrics(a: dict, b: dict) -> None:
    for key in a:
        if not key.startswith(("timing_s/", "perf/")):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_sigkill_after_a_checkpoint_resumes_to_the_same_metrics(tmp_path, stage):
    args = [
        *GRPO,
        f"actor_rollout_ref.actor.deepspeed.zero_stage={stage}",
        "trainer.total_training_steps=3",
        "trainer.save_freq=1",
    ]
    whole = run_dsrl(tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    proc = _start(killed_dir, *args)
    marker = killed_dir / "checkpoints" / "global_step_1" / "COMPLETE"
    _wait_for(marker.exists, 300, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    resumed = run_dsrl(killed_dir, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert [m["step"] for m in resumed.metrics] == [1, 2, 3]
    for step in (2, 3):
        _same_learning_metrics(whole.step(step), resumed.step(step))


def test_sigterm_checkpoints_then_exits_nonzero_and_the_rerun_resumes(tmp_path):
    args = [*GRPO, "trainer.total_training_steps=500", "trainer.save_on_preempt=True"]
    proc = _start(tmp_path, *args)
    _wait_for(lambda: len(_steps(tmp_path)) >= 2, 300, proc)
    proc.send_signal(signal.SIGTERM)  # what SLURM sends the job step at preemption or time limit
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "preempted", (info["error"], err[-3000:])
    last = info["last_step"]
    assert (tmp_path / "checkpoints" / f"global_step_{last}" / "COMPLETE").exists()

    resumed = run_dsrl(tmp_path, *GRPO, f"trainer.total_training_steps={last + 1}", "trainer.save_on_preempt=True")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {last})" in resumed.stderr
    assert [m["step"] for m in resumed.metrics] == list(range(1, last + 2))


def test_two_jobs_on_one_machine_do_not_clash(tmp_path):
    """Fresh model cache and extension dir: both jobs build the model and DeepSpeed's op at the same time."""
    env = {"DSRL_CACHE_DIR": str(tmp_path / "models"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    procs = {name: _start(tmp_path / name, *GRPO, "trainer.total_training_steps=2", env=env) for name in "ab"}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
        assert _steps(tmp_path / name) == [1, 2]
    built = [p for p in (tmp_path / "models").iterdir() if p.is_dir() and p.name.startswith("tiny-")]
    assert len(built) == 1


def test_a_stuck_rank_ends_the_job_with_a_clear_message(tmp_path):
    start = time.monotonic()
    run = run_dsrl(
        tmp_path,
        *GRPO,
        "trainer.total_training_steps=3",
        "trainer.hang_at_step=2",
        "trainer.dist_timeout=15",
        timeout=300,
    )
    assert run.returncode != 0
    assert time.monotonic() - start < 240
    info = run.info
    assert info["status"] == "failed"
    assert "trainer.dist_timeout=15" in info["error"] and "stuck or died" in info["error"]
    lines = [line for line in run.stderr.splitlines() if line.startswith("dsrl: ")]
    assert len(lines) == 1 and lines[0].startswith("dsrl: rank 0 failed: RuntimeError: a collective waited"), lines
    assert [m["step"] for m in run.metrics] == [1]
