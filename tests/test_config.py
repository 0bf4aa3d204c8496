"""Config: the verl reference commands parse, env knobs and overrides stack, bad input fails clearly."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from reference_commands import localised, reference_commands

from dsrl.config import NO_EFFECT, ConfigError, load_config, parse_value

COMMANDS = reference_commands()


def _pasted(index: int) -> tuple[list[str], dict[str, str]]:
    cmd = COMMANDS[index]
    return localised(cmd.args, "random:tiny", "train.parquet", "test.parquet"), cmd.env


def test_reference_document_has_the_seven_commands():
    assert [c.name for c in COMMANDS] == [
        "zero1_no_offload",
        "zero2_no_offload",
        "zero3_no_offload",
        "zero1_cpu_offload",
        "zero2_cpu_offload",
        "zero3_cpu_offload",
        "grpo_fix_60",
    ]


@pytest.mark.parametrize("index", range(7))
def test_reference_commands_parse(index):
    args, env = _pasted(index)
    cfg = load_config(args, environ=env)
    stage = next(int(a.split("=")[1]) for a in args if a.startswith("actor_rollout_ref.actor.deepspeed.zero_stage="))
    assert cfg.actor_rollout_ref.actor.deepspeed.zero_stage == stage
    assert cfg.actor_rollout_ref.model.path == "random:tiny"
    assert list(cfg.trainer.logger) == ["console"]
    if index < 6:  # the ZeRO cases ask for 512 + 512 tokens in a 512 context: verl caps new tokens per request
        assert cfg.data.max_prompt_length + cfg.data.max_response_length > cfg.actor_rollout_ref.rollout.max_model_len


def test_reference_env_knobs_reach_the_config():
    args, env = _pasted(5)  # zero3_cpu_offload: VERL_ENABLE_PARAM_OFFLOAD=1 on its command line
    assert load_config(args, environ=env).actor_rollout_ref.actor.deepspeed.param_offload is True
    assert load_config(args, environ={}).actor_rollout_ref.actor.deepspeed.param_offload is False


def test_grpo_reference_command_sets_reward_kwargs_and_disables_critic():
    args, env = _pasted(6)
    cfg = load_config(args, environ=env)
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
        (["algorithm.adv_estimator=grpo_passk"], "grpo_passk needs actor_rollout_ref.rollout.n >= 2"),
        (["algorithm.adv_estimator=rloo", "critic.enable=True"], "critic.enable=True has no use with .*rloo"),
        (["algorithm.adv_estimator=vtrace"], r"valid: gae, grpo, rloo, reinforce_plus_plus, .*remax\)"),
        (["actor_rollout_ref.actor.policy_loss.loss_mode=sapo"], r"valid: vanilla, gspo, .*cispo\)"),
        (["actor_rollout_ref.actor.kl_loss_type=full"], r"valid: kl, k1, .*low_var_kl\+, k3\+\)"),
        (["algorithm.adv_estimator=gae", "critic.enable=False"], "needs a critic"),
        (["actor_rollout_ref.rollout.max_model_len=1"], "max_model_len=1 must be >= 2"),
        (["trainer.resume_mode=resume_path"], "needs trainer.resume_from_path"),
        (["actor_rollout_ref.actor.clip_ratio_c=1.0"], "clip_ratio_c=1.0 must be > 1"),
    ],
)
def test_inconsistent_configs_fail(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides, environ={})


def test_no_effect_keys_are_verl_keys_with_defaults():
    """Every key marked accepted-without-effect exists, so a pasted verl command setting it still runs."""
    cfg = load_config()
    for key in NO_EFFECT:
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key
