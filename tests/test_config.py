"""Config: the verl reference commands parse, env knobs and overrides stack, bad input fails clearly."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from dsrl.config import ConfigError, load_config, parse_value

# A copy of ../shared/reference/verl-deepspeed-worker-integration.md: a fresh clone has no ../shared.
REFERENCE = Path(__file__).parent / "data" / "reference" / "verl-deepspeed-worker-integration.md"

BASE_TEXT = """
actor@actor_rollout_ref.actor=ds_actor critic=ds_critic actor_rollout_ref.actor.strategy=deepspeed
trainer.use_legacy_worker_impl=enable actor_rollout_ref.rollout.name=vllm
actor_rollout_ref.rollout.mode=async actor_rollout_ref.rollout.load_format=auto
actor_rollout_ref.rollout.tensor_model_parallel_size=1 actor_rollout_ref.rollout.max_model_len=512
actor_rollout_ref.rollout.max_num_seqs=8 actor_rollout_ref.rollout.max_num_batched_tokens=1024
actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1
actor_rollout_ref.rollout.gpu_memory_utilization=0.2 actor_rollout_ref.model.path=random:tiny
critic.model.path=random:tiny actor_rollout_ref.model.trust_remote_code=True
critic.model.trust_remote_code=True actor_rollout_ref.model.enable_gradient_checkpointing=True
actor_rollout_ref.model.use_remove_padding=True actor_rollout_ref.actor.ppo_mini_batch_size=32
critic.ppo_mini_batch_size=32 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2
critic.ppo_micro_batch_size_per_gpu=2 actor_rollout_ref.actor.ppo_max_token_len_per_gpu=2048
critic.ppo_max_token_len_per_gpu=2048 actor_rollout_ref.actor.use_kl_loss=False
algorithm.use_kl_in_reward=False data.train_files=../data/gsm8k_ppo/train.parquet
data.val_files=../data/gsm8k_ppo/test.parquet data.train_batch_size=64 data.max_prompt_length=256
data.max_response_length=256 data.trust_remote_code=True trainer.n_gpus_per_node=2 trainer.nnodes=1
trainer.save_freq=0 trainer.test_freq=-1 trainer.val_before_train=False
trainer.total_training_steps=60 trainer.logger=[console]
"""
BASE_ARGS = shlex.split(BASE_TEXT)


def _bash_blocks(text: str) -> list[str]:
    blocks, inside, cur = [], False, []
    for line in text.splitlines():
        if line.startswith("```bash"):
            inside, cur = True, []
        elif line.startswith("```") and inside:
            inside = False
            blocks.append("\n".join(cur))
        elif inside:
            cur.append(line)
    return blocks


def _reference_commands() -> list[list[str]]:
    """The six ZeRO-case commands and the GRPO command from the users' guide, model swapped for random:tiny."""
    cmds = []
    for block in _bash_blocks(REFERENCE.read_text()):
        if "verl.trainer.main_ppo" not in block:
            continue
        words = shlex.split(block.replace("\\\n", " "))
        args = words[words.index("verl.trainer.main_ppo") + 1 :]
        args = [a for a in args if a != "${BASE_ARGS}"]
        if "${BASE_ARGS}" in block:
            args = BASE_ARGS + args
        args = [
            "actor_rollout_ref.model.path=random:tiny" if a.startswith("actor_rollout_ref.model.path=") else a
            for a in args
        ]
        args = [a.replace("${DATA_TRAIN}", "train.parquet").replace("${DATA_VAL}", "test.parquet") for a in args]
        cmds.append(args)
    return cmds


def test_reference_document_has_the_seven_commands():
    assert len(_reference_commands()) == 7


@pytest.mark.parametrize("index", range(7))
def test_reference_commands_parse(index):
    args = _reference_commands()[index]
    cfg = load_config(args, environ={})
    stage = next(int(a.split("=")[1]) for a in args if a.startswith("actor_rollout_ref.actor.deepspeed.zero_stage="))
    assert cfg.actor_rollout_ref.actor.deepspeed.zero_stage == stage
    assert cfg.actor_rollout_ref.model.path == "random:tiny"
    assert list(cfg.trainer.logger) == ["console"]


def test_grpo_reference_command_sets_reward_kwargs_and_disables_critic():
    grpo = _reference_commands()[-1]
    cfg = load_config(grpo, environ={})
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.critic.enable is False
    assert dict(cfg.reward.reward_kwargs) == {"method": "flexible", "format_score": 0.1, "score": 1.0}
    assert cfg.actor_rollout_ref.rollout.n == 4


def test_env_knobs_beat_defaults_but_lose_to_overrides():
    env = {
        "VERL_ENABLE_PARAM_OFFLOAD": "1",
        "VERL_DS_ZERO2_FP32_ACCUM_PATCH": "1",
        "VERL_DS_ZERO2_STEP_EACH_MICRO": "1",
    }
    cfg = load_config([], environ=env)
    for ds in (cfg.actor_rollout_ref.actor.deepspeed, cfg.critic.deepspeed_config):
        assert ds.param_offload and ds.zero2_fp32_grad_accum and ds.zero2_step_each_micro
    cfg = load_config(["actor_rollout_ref.actor.deepspeed.zero2_step_each_micro=False"], environ=env)
    assert cfg.actor_rollout_ref.actor.deepspeed.zero2_step_each_micro is False
    assert cfg.critic.deepspeed_config.zero2_step_each_micro is True


def test_bad_env_knob_is_named():
    with pytest.raises(ConfigError, match="VERL_DS_ZERO2_STEP_EACH_MICRO"):
        load_config([], environ={"VERL_DS_ZERO2_STEP_EACH_MICRO": "yes"})


def test_interpolated_defaults_follow_overrides():
    cfg = load_config(["actor_rollout_ref.model.path=/models/m", "trainer.run_dir=/tmp/x"], environ={})
    assert cfg.critic.model.path == "/models/m"
    assert cfg.trainer.default_local_dir == "/tmp/x/checkpoints"


def test_verl_config_name_flag_is_ignored():
    cfg = load_config(["-cn", "ppo_trainer", "trainer.total_training_steps=3"], environ={})
    assert cfg.trainer.total_training_steps == 3


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-6", 1e-6),
        ("[console]", ["console"]),
        ("True", True),
        ("null", None),
        ("none", "none"),
        ("7", 7),
        ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B"),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "actor_rollout_ref.actor.ppo_mini_bach_size=3",
            "did you mean 'actor_rollout_ref.actor.ppo_mini_batch_size'",
        ),
        ("trainer.total_training_steps=ten", "trainer.total_training_steps='ten' must be an integer"),
        (
            "actor_rollout_ref.actor.deepspeed.zero_stage=5",
            r"zero_stage=5 is not supported in dsrl \(valid: 0, 1, 2, 3\)",
        ),
        ("actor_rollout_ref.actor.deepspeed.offload=gpu", "valid: none, cpu, nvme"),
        ("critic=dp_critic", "critic=dp_critic is not supported in dsrl"),
        ("actor_rollout_ref.actor.fsdp_config.param_offload=True", "not supported in dsrl"),
        ("actor_rollout_ref.actor.strategy=fsdp", "valid: deepspeed"),
        ("actor_rollout_ref.actor.ulysses_sequence_parallel_size=2", "ulysses_sequence_parallel_size=2"),
        ("+trainer.seed=3", r"already exists; set it without '\+'"),
        ("trainer.total_training_steps", "not of the form key=value"),
        ("actor_rollout_ref.rollout.n=0", "rollout.n=0 must be >= 1"),
        ("algorithm.adv_estimator=reinforce", "valid: gae, grpo"),
        ("critic.enable=maybe", "critic.enable='maybe' must be a boolean"),
        ("trainer.logger=[console,swanlab]", "'swanlab' is not supported"),
        ("actor_rollout_ref.actor.checkpoint.save_contents=[model,hf_model]", "always hold model, optimizer and extra"),
        ("~trainer.seed", "not supported"),
    ],
)
def test_bad_overrides_fail_with_a_clear_message(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([override], environ={})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [
                "actor_rollout_ref.actor.deepspeed.offload=nvme",
                "actor_rollout_ref.actor.deepspeed.zero_stage=3",
            ],
            "needs actor_rollout_ref.actor.deepspeed.nvme_path",
        ),
        (
            ["actor_rollout_ref.actor.deepspeed.offload=nvme"],
            "needs actor_rollout_ref.actor.deepspeed.zero_stage=3",
        ),
        (["algorithm.adv_estimator=grpo"], "needs actor_rollout_ref.rollout.n >= 2"),
        (["algorithm.adv_estimator=gae", "critic.enable=False"], "needs a critic"),
        (
            [
                "actor_rollout_ref.rollout.max_model_len=256",
                "data.max_prompt_length=200",
                "data.max_response_length=100",
            ],
            "exceeds actor_rollout_ref.rollout.max_model_len=256",
        ),
        (["trainer.resume_mode=resume_path"], "needs trainer.resume_from_path"),
        (["actor_rollout_ref.actor.clip_ratio_c=1.0"], "clip_ratio_c=1.0 must be > 1"),
    ],
)
def test_inconsistent_configs_fail(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides, environ={})
