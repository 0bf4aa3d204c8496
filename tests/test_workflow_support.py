"""Run matrix, trainer command lines, config errors and GPU leases of dsrl.workflow (no Snakemake)."""

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dsrl.config import ConfigError
from dsrl.workflow.checks import gpus_for_local_jobs
from dsrl.workflow.commands import format_value, lease_argv
from dsrl.workflow.gpu_lease import gpu_run, lease_gpus, slot_devices
from dsrl.workflow.plan import Plan

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tmp_path):
    """The shipped CPU config, with trainer_command pointing at an executable in tmp_path."""
    trainer = tmp_path / "bin" / "dsrl"
    trainer.parent.mkdir()
    trainer.write_text("#!/bin/sh\n")
    trainer.chmod(0o755)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["trainer_command"] = "bin/dsrl"
    return cfg


def overrides(plan, run):
    return dict(item.split("=", 1) for item in plan.overrides(run))


def test_default_matrix(config, tmp_path):
    plan = Plan(config, tmp_path)
    assert plan.active == ["zero_six", "zero12_gate"]
    assert len(plan.suite("zero_six").runs) == 6
    gate_runs = plan.suite("zero12_gate").runs
    assert sorted({(r.case, r.seed) for r in gate_runs}) == sorted(
        (c, s) for c in ("zero1_no_offload", "zero2_no_offload") for s in (1234, 2024, 3407)
    )
    assert plan.trainer == str((tmp_path / "bin" / "dsrl").resolve())


def test_overrides_precedence_and_workflow_keys(config, tmp_path):
    config["trainer_overrides"]["data.train_batch_size"] = 8
    suite_overrides = {"data.train_batch_size": 16, "actor_rollout_ref.rollout.n": 8}
    config["suites"]["zero_six"]["overrides"] = suite_overrides
    config["cases"]["zero3_cpu_offload"]["overrides"] = {"data.train_batch_size": 32}
    plan = Plan(config, tmp_path)
    z3 = overrides(plan, plan.run("zero_six", "grpo", "zero3_cpu_offload", 7777))
    assert z3["data.train_batch_size"] == "32"
    assert z3["actor_rollout_ref.rollout.n"] == "8"
    assert z3["actor_rollout_ref.actor.deepspeed.param_offload"] == "True"
    assert z3["critic.deepspeed_config.zero_stage"] == "3"
    assert z3["critic.deepspeed_config.offload"] == "cpu"
    assert z3["trainer.run_dir"] == "results/runs/zero_six/grpo/zero3_cpu_offload/seed7777"
    assert z3["trainer.seed"] == "7777"
    assert z3["trainer.total_training_steps"] == str(config["suites"]["zero_six"]["steps"])
    assert z3["trainer.logger"] == "[console]"
    z1 = overrides(plan, plan.run("zero_six", "grpo", "zero1_no_offload", 7777))
    assert z1["data.train_batch_size"] == "16"
    assert "actor_rollout_ref.actor.deepspeed.param_offload" not in z1
    assert z1["critic.enable"] == "False"


def test_ppo_runs_use_gae(config, tmp_path):
    config["suites"]["zero12_gate"]["algos"] = ["grpo", "ppo"]
    plan = Plan(config, tmp_path)
    ppo = overrides(plan, plan.run("zero12_gate", "ppo", "zero2_no_offload", 2024))
    assert ppo["algorithm.adv_estimator"] == "gae"
    assert "critic.enable" not in ppo
    assert len(plan.suite("zero12_gate").runs) == 12


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["suites"]["zero12_gate"].update(seeds=[1, 2, 1]), r"gate\.seeds lists \[1\] more"),
        (lambda c: c["suites"]["zero_six"]["cases"].append("zero4"), r"zero_six\.cases: unknown.*zero4"),
        (lambda c: c["suites"]["zero_six"].update(algos=["dpo"]), r"zero_six\.algos: unknown.*dpo"),
        (lambda c: c.update(run_suites=["zero_six", "nope"]), r"run_suites: unknown name\(s\) \['nope'\]"),
        (lambda c: c["trainer_overrides"].update({"trainer.seed": 3}), r"overrides: trainer\.seed is set"),
        (lambda c: c["suites"]["zero12_gate"]["gate"].update(candidate="zero3"), r"gate\.candidate"),
        (lambda c: c.update(trainer_command="missing/dsrl"), r"trainer_command='missing/dsrl'"),
        (lambda c: c["trainer_overrides"].update({"critic.ppo_mini_bs": 4}), r"unknown config key"),
        (lambda c: c["data"].update(source="./no/such/dir"), r"data\.source='\./no/such/dir' does not exist"),
        (lambda c: c["suites"].update(plots=copy.deepcopy(c["suites"]["zero_six"])), r"'plots' is reserved"),
        # The launcher's preflight config checks, for processes_per_job ranks: before any job is submitted.
        (lambda c: c["trainer_overrides"].update({"data.train_batch_size": 3}), r"train_batch_size=3 .*dp=2"),
        (
            lambda c: c["trainer_overrides"].update({"actor_rollout_ref.model.path": "/no/such/model"}),
            r"model\.path=/no/such/model does not exist",
        ),
        (
            lambda c: c["trainer_overrides"].update({"custom_reward_function.path": "no_reward.py"}),
            r"custom_reward_function\.path=no_reward\.py",
        ),
    ],
)
def test_bad_config_fails_with_named_key(config, tmp_path, edit, message):
    edit(config)
    with pytest.raises(ConfigError, match=message):
        Plan(config, tmp_path)


def test_bare_trainer_command_is_left_to_path(config, tmp_path):
    config["trainer_command"] = "dsrl"
    assert Plan(config, tmp_path).trainer == "dsrl"


def test_gpu_lease_wraps_the_command_only_on_cuda_with_slots(config, tmp_path):
    config["gpu_slots"] = 4
    plan = Plan(config, tmp_path)
    assert lease_argv(plan.gpu_slots, plan.gpus_per_job) == []
    config["device"] = "cuda"
    plan = Plan(config, tmp_path)
    argv = lease_argv(plan.gpu_slots, plan.gpus_per_job)
    assert argv[:4] == [sys.executable, "-m", "dsrl.workflow.gpu_lease", "gpu-run"]
    assert argv[4:] == ["--slots", "4", "--count", "2", "--"]
    assert plan.gpus_per_job == 2


def test_imported_runs(config, tmp_path):
    root = tmp_path / "outputs" / "tag_20250101"
    for case in ("zero1_no_offload", "zero2_no_offload_seed5"):
        (root / case).mkdir(parents=True)
        (root / case / "train.log").write_text("step:1 - critic/score/mean:0.1\n")
    config["imports"] = {"verl_ref": {"path": "outputs/tag_20250101", "steps": 60, "algo": "ppo", "seed": 7}}
    plan = Plan(config, tmp_path)
    runs = plan.suite("verl_ref").runs
    assert [(r.case, r.seed, r.algo) for r in runs] == [
        ("zero1_no_offload", 7, "ppo"),
        ("zero2_no_offload", 5, "ppo"),
    ]
    assert runs[0].metrics == "results/imports/verl_ref/ppo/zero1_no_offload/seed7/metrics.parquet"
    assert plan.active[-1] == "verl_ref"
    config["imports"]["verl_ref"]["path"] = "outputs/none"
    with pytest.raises(ConfigError, match=r"imports\.verl_ref\.path"):
        Plan(config, tmp_path)


@pytest.mark.parametrize(("value", "text"), [(True, "True"), (None, "null"), (["console", "a"], "[console,a]")])
def test_format_value(value, text):
    assert format_value(value) == text


def test_slot_devices_follow_visible_devices():
    assert slot_devices(3, {}) == ["0", "1", "2"]
    assert slot_devices(2, {"CUDA_VISIBLE_DEVICES": "4,5,6"}) == ["4", "5"]
    with pytest.raises(ValueError, match="lists only"):
        slot_devices(4, {"CUDA_VISIBLE_DEVICES": "4,5"})


def test_leases_are_exclusive_and_released(tmp_path):
    devices = ["0", "1", "2"]
    with lease_gpus(2, devices, tmp_path) as first:
        assert first == ["0", "1"]
        with pytest.raises(TimeoutError), lease_gpus(2, devices, tmp_path, poll_s=0.05, timeout_s=0.2):
            pass
        with lease_gpus(1, devices, tmp_path, timeout_s=0) as second:
            assert second == ["2"]
    with lease_gpus(3, devices, tmp_path, timeout_s=0) as all_three:
        assert all_three == devices
    with pytest.raises(ValueError, match="cannot lease 4"), lease_gpus(4, devices, tmp_path):
        pass


def test_lease_of_a_killed_holder_is_freed(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from dsrl.workflow.gpu_lease import lease_gpus\n"
            f"with lease_gpus(1, ['0'], __import__('pathlib').Path({str(tmp_path)!r})):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError), lease_gpus(1, ["0"], tmp_path, poll_s=0.05, timeout_s=0.2):
            pass
    finally:
        holder.kill()
        holder.wait()
    start = time.monotonic()
    with lease_gpus(1, ["0"], tmp_path, poll_s=0.05, timeout_s=5) as leased:
        assert leased == ["0"]
    assert time.monotonic() - start < 5


def test_gpu_run_sets_visible_devices_and_passes_exit_code(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")
    code = "import os, sys; print('seen', os.environ['CUDA_VISIBLE_DEVICES']); sys.exit(5)"
    args = ["--slots", "2", "--count", "2", "--lock-dir", str(tmp_path), "--", sys.executable, "-c", code]
    assert gpu_run(args) == 5
    assert "seen 3,7" in capfd.readouterr().out
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,7"


@pytest.mark.parametrize(
    ("device", "local_exec", "dryrun", "trains", "visible", "fails"),
    [
        ("cuda", True, False, True, 0, True),
        ("cuda", True, False, True, 1, True),  # a 2-GPU job on a 1-GPU machine
        ("cuda", True, False, True, 8, False),
        ("cuda", False, False, True, 0, False),  # a cluster executor places jobs on GPU nodes
        ("cuda", True, True, True, 0, False),  # a dry run starts nothing
        ("cuda", True, False, False, 0, False),  # only tables and plots left to make
        ("cpu", True, False, True, 0, False),
    ],
)
def test_gpu_jobs_need_visible_gpus_when_run_locally(device, local_exec, dryrun, trains, visible, fails):
    if fails:
        with pytest.raises(ConfigError, match="--profile slurm"):
            gpus_for_local_jobs(device, local_exec, dryrun, trains, visible, needed=2)
    else:
        gpus_for_local_jobs(device, local_exec, dryrun, trains, visible, needed=2)
