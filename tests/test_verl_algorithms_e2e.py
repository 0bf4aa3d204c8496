"""verl's algorithm recipes end to end on CPU (2 ranks, 2 steps each): Dr.GRPO, DAPO's clip-higher, and ReMax's
greedy baseline rollout (vLLM server) with a GSPO loss and a straight-through KL loss."""

from __future__ import annotations

import pytest

pytest.importorskip("deepspeed")

from trainer_runs import TOY_REWARD, run_dsrl  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]

COMMON = [
    f"custom_reward_function.path={TOY_REWARD}",
    "trainer.total_training_steps=2",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.optim.lr=1e-2",
]
RECIPES = {
    "dr_grpo": [
        "algorithm.adv_estimator=grpo",
        "algorithm.norm_adv_by_std_in_grpo=False",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm",
    ],
    "dapo_clip_higher": [
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.actor.clip_ratio_low=0.2",
        "actor_rollout_ref.actor.clip_ratio_high=0.28",
        "actor_rollout_ref.actor.loss_agg_mode=token-mean",
    ],
    "remax_gspo": [  # the greedy baseline through the vLLM server (the HF backend's greedy path is validation's)
        "actor_rollout_ref.rollout.name=vllm",
        "algorithm.adv_estimator=remax",
        "actor_rollout_ref.actor.policy_loss.loss_mode=gspo",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_type=k3+",
    ],
}


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    return {name: run_dsrl(root / name, *COMMON, *args) for name, args in RECIPES.items()}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_trains(recipe_runs, name):
    run = recipe_runs[name]
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert [m["step"] for m in run.metrics] == [1, 2]
    resolved = run.info["config"]
    for arg in RECIPES[name]:
        key, value = arg.split("=", 1)
        node = resolved
        for part in key.split("."):
            node = node[part]
        assert str(node) == value
    for m in run.metrics:
        assert m["actor/grad_norm"] > 0  # the toy reward varies within groups: the update moves the policy
        assert all(v == v for v in m.values() if isinstance(v, float)), "NaN metric"


def test_remax_scores_a_greedy_rollout_per_prompt(recipe_runs):
    run = recipe_runs["remax_gspo"]
    assert all("timing_s/gen_max" in m for m in run.metrics)
    assert all("actor/kl_loss" in m for m in run.metrics)
    # ReMax keeps undiscounted returns (not whitened): the score sits in every position before the reward token
    assert run.step(1)["critic/returns/max"] <= 1.0


def test_dr_grpo_advantages_are_centred_not_scaled(recipe_runs):
    """Without the std division an advantage is score - group mean: inside [-1, 1] for the toy reward's [0, 1]."""
    for m in recipe_runs["dr_grpo"].metrics:
        assert -1.0 <= m["critic/advantages/min"] <= m["critic/advantages/max"] <= 1.0
