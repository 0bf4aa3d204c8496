"""The trainer end to end on CPU: 2 ranks under torchrun, gloo, DeepSpeed ZeRO 1/2/3 with and without offload."""

from __future__ import annotations

import json
import math
import re

import pytest

pytest.importorskip("deepspeed")

from logger_files import mlflow_run, tensorboard_scalars, wandb_history  # noqa: E402
from trainer_runs import TOY_REWARD, run_dsrl  # noqa: E402

from dsrl.analysis.logs import load_metrics  # noqa: E402
from dsrl.analysis.parity import TOLERANCES, parity_table  # noqa: E402
from dsrl.analysis.summary import RunRecord  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]

CASES = [(stage, offload) for offload in ("none", "cpu") for stage in (1, 2, 3)]
ALGOS = {
    # PPO: critic, GAE, KL in the reward through a reference model (adaptive controller), token-budget micro batches
    "ppo": [
        "algorithm.adv_estimator=gae",
        "algorithm.use_kl_in_reward=True",
        "algorithm.kl_ctrl.type=adaptive",
        "actor_rollout_ref.actor.use_dynamic_bsz=True",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=200",
    ],
    # GRPO: actor only, KL as a loss through a reference model
    "grpo": [
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.use_kl_loss=True",
    ],
}
COMMON = [
    "trainer.total_training_steps=2",
    "actor_rollout_ref.model.use_remove_padding=True",
    "actor_rollout_ref.model.enable_gradient_checkpointing=True",
    "actor_rollout_ref.actor.optim.lr=1e-3",
]


def _case_args(stage: int, offload: str) -> list[str]:
    return [
        f"actor_rollout_ref.actor.deepspeed.zero_stage={stage}",
        f"critic.deepspeed_config.zero_stage={stage}",
        f"actor_rollout_ref.actor.deepspeed.offload={offload}",
        f"critic.deepspeed_config.offload={offload}",
    ]


@pytest.fixture(scope="module")
def six_case_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("six")
    runs = {}
    for algo, algo_args in ALGOS.items():
        for stage, offload in CASES:
            env = {"VERL_ENABLE_PARAM_OFFLOAD": "1"} if (stage, offload) == (3, "cpu") else {}
            runs[algo, stage, offload] = run_dsrl(
                root / f"{algo}-z{stage}-{offload}", *COMMON, *algo_args, *_case_args(stage, offload), env=env
            )
    return runs


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize(("stage", "offload"), CASES)
def test_six_cases_train_and_record(six_case_runs, algo, stage, offload):
    run = six_case_runs[algo, stage, offload]
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert [m["step"] for m in run.metrics] == [1, 2]
    info = run.info
    assert info["status"] == "completed" and info["last_step"] == 2
    assert info["remove_padding_effective"] is True
    actor = info["deepspeed"]["actor"]
    assert actor["ds_config"]["zero_optimization"]["stage"] == stage
    assert actor["ds_config"]["bf16"] == {"enabled": True}
    expected_opt = "cpu" if offload == "cpu" and stage >= 2 else "none"
    expected_param = "cpu" if offload == "cpu" and stage == 3 else "none"
    assert actor["offload_effective"] == {"optimizer": expected_opt, "param": expected_param}
    if (stage, offload) == (1, "cpu"):
        assert "no effective offload" in run.stderr
    estimate = info["memory_estimate"]
    estimator = "estimate_zero3_model_states_mem_needs" if stage == 3 else "estimate_zero2_model_states_mem_needs"
    assert estimate["actor"]["estimator"] == estimator
    assert estimate["total"]["gpu_gb"] > 0 and estimate["total"]["cpu_gb_per_node"] > 0
    step = run.step(2)
    for key in (
        "critic/score/mean",
        "actor/pg_loss",
        "actor/entropy",
        "actor/grad_norm",
        "perf/throughput",
        "timing_s/gen",
        "timing_s/update_actor",
        "perf/max_memory_allocated_gb",
    ):
        assert key in step and math.isfinite(step[key]), key
    if algo == "ppo":
        assert {"critic/vf_loss", "critic/values/mean", "actor/reward_kl_penalty_coeff"} <= set(step)
    else:
        assert "critic/vf_loss" not in step and "actor/kl_loss" in step
    console = [line for line in run.stdout.splitlines() if line.startswith("step:")]
    assert len(console) == 2 and re.match(r"step:2 - .*critic/score/mean:", console[1])


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_zero1_and_zero2_give_the_same_first_step(six_case_runs, algo):
    z1, z2 = six_case_runs[algo, 1, "none"].step(1), six_case_runs[algo, 2, "none"].step(1)
    keys = ["actor/pg_loss", "actor/ppo_kl", "actor/entropy", "actor/grad_norm", "response_length/mean"]
    keys += ["critic/vf_loss"] if algo == "ppo" else ["actor/kl_loss"]
    for key in keys:
        assert z1[key] == pytest.approx(z2[key], rel=1e-3, abs=1e-6), key


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_zero3_first_step_matches_zero1(six_case_runs, algo):
    """Same responses and gradients; later mini batches drift at bf16 precision, so only the first update's."""
    z1, z3 = six_case_runs[algo, 1, "none"].step(1), six_case_runs[algo, 3, "none"].step(1)
    assert z1["response_length/mean"] == z3["response_length/mean"]
    keys = ["actor/entropy", "actor/grad_norm"] + (["critic/vf_loss"] if algo == "ppo" else [])
    for key in keys:
        assert z1[key] == pytest.approx(z3[key], rel=1e-3, abs=1e-6), key


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_parity_table_passes_across_the_six_cases(six_case_runs, algo):
    """parity.tsv's check on real runs: each stage and offload mode trains ZeRO-1's first step, down to the
    checksum of the rollout (lr 1e-3 here: step-mean losses drift, the first mini batch's must not)."""
    records = [
        RunRecord(f"zero{stage}_{offload}", algo, 1, load_metrics(run.run_dir).table)
        for (run_algo, stage, offload), run in six_case_runs.items()
        if run_algo == algo
    ]
    table = parity_table(records, "zero1_none", TOLERANCES["cpu"])
    assert sorted(table["case"]) == sorted(f"zero{s}_{o}" for s, o in CASES if (s, o) != (1, "none"))
    assert table["responses_match"].tolist() == [True] * 5, table.to_string()
    assert table["parity_pass"].tolist() == [True] * 5, table.to_string()


@pytest.mark.parametrize(
    ("algo", "args", "steps"),
    [
        (
            "grpo",
            [
                "algorithm.adv_estimator=grpo",
                "actor_rollout_ref.rollout.n=4",
                "actor_rollout_ref.actor.ppo_mini_batch_size=8",
                "actor_rollout_ref.actor.optim.lr=3e-3",
            ],
            30,
        ),
        (
            "ppo",
            [
                "algorithm.adv_estimator=gae",
                "data.train_batch_size=16",
                "actor_rollout_ref.actor.ppo_mini_batch_size=16",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
                "critic.ppo_micro_batch_size_per_gpu=8",
                "actor_rollout_ref.actor.optim.lr=5e-3",
                "critic.optim.lr=1e-2",
            ],
            30,
        ),
    ],
)
def test_toy_reward_is_learned(tmp_path, algo, args, steps):
    run = run_dsrl(
        tmp_path / algo,
        f"custom_reward_function.path={TOY_REWARD}",
        f"trainer.total_training_steps={steps}",
        *args,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    scores = [m["critic/score/mean"] for m in run.metrics]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > 3 * first and last - first > 0.02, scores


def test_resume_after_a_failure_reproduces_the_uninterrupted_run(tmp_path):
    args = [
        "algorithm.adv_estimator=gae",
        "trainer.total_training_steps=4",
        "trainer.save_freq=2",
        "trainer.test_freq=2",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "algorithm.use_kl_in_reward=True",
        "algorithm.kl_ctrl.type=adaptive",
    ]
    whole = run_dsrl(tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    # the interrupted run also logs to tensorboard, wandb and mlflow: the resumed one must continue those runs
    loggers = ["trainer.logger=[console,tensorboard,wandb,mlflow]"]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    broken = run_dsrl(tmp_path / "broken", *args, *loggers, "trainer.fail_at_step=3", env=env)
    assert broken.returncode != 0
    assert broken.info["status"] == "failed" and "injected failure" in broken.info["error"]
    # One console line from the rank that failed first; every rank's traceback in its file, none on the console.
    lines = [line for line in broken.stderr.splitlines() if line.startswith("dsrl: ")]
    assert len(lines) == 1 and "failed: RuntimeError: trainer.fail_at_step=3: injected failure" in lines[0], lines
    assert "Traceback" not in broken.stderr and "ChildFailedError" not in broken.stderr
    assert sorted(p.name for p in (tmp_path / "broken" / "errors").iterdir()) == ["first", "rank0.txt", "rank1.txt"]
    assert "injected failure" in (tmp_path / "broken" / "errors" / "rank1.txt").read_text()
    assert [m["step"] for m in broken.metrics] == [1, 2]
    ids = json.loads((tmp_path / "broken" / "loggers.json").read_text())
    resumed = run_dsrl(tmp_path / "broken", *args, *loggers, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "broken" / "loggers.json").read_text()) == ids
    _assert_loggers_continued(resumed, ids)
    assert "resumed from" in resumed.stderr
    assert not (tmp_path / "broken" / "errors").exists()  # the rerun forgot the failed attempt's errors
    assert [m["step"] for m in resumed.metrics] == [1, 2, 3, 4]
    assert "val-core/dsrl/synthetic_gsm8k/reward/mean@1" in resumed.step(4)
    for step in (3, 4):
        a, b = whole.step(step), resumed.step(step)
        for key in a:
            if key.startswith(("timing_s/", "perf/")):
                continue
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (step, key)


def _assert_loggers_continued(run, ids: dict[str, str]) -> None:
    """One wandb run and one mlflow run hold steps 1-4; tensorboard shows each step once, the resumed values."""
    key = "critic/score/mean"
    scalars = tensorboard_scalars(run.run_dir / "tensorboard")
    assert sorted(scalars) == [1, 2, 3, 4]
    for step in (3, 4):
        assert scalars[step][key] == pytest.approx(run.step(step)[key], abs=1e-6)
    history = wandb_history(run.run_dir)
    assert list(history) == [ids["wandb"]] and sorted(history[ids["wandb"]]) == [1, 2, 3, 4]
    client, mlrun = mlflow_run(run.run_dir, ids["mlflow"])
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, key)] == [1, 2, 3, 4]


def test_launch_shape_mismatch_fails_before_any_process_starts(tmp_path):
    run = run_dsrl(tmp_path / "bad", "trainer.n_gpus_per_node=4")
    assert run.returncode == 2
    assert "trainer.n_gpus_per_node=4 but --nproc-per-node 2" in run.stderr
    assert not (tmp_path / "bad").exists()


def test_a_failure_before_training_prints_one_line_and_records_it(tmp_path):
    """Every prompt too long (only the ranks' tokenizer can tell): both ranks fail in set-up; one line, run.json."""
    run = run_dsrl(tmp_path, "data.max_prompt_length=8", "data.filter_overlong_prompts=True")
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.startswith("dsrl: ")]
    assert len(lines) == 1 and "failed: ValueError: all 512 prompts exceed data.max_prompt_length=8" in lines[0]
    assert "Traceback" not in run.stderr
    assert run.info["status"] == "failed" and "data.max_prompt_length=8" in run.info["error"]
