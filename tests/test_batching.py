"""verl's batch semantics and token-budget packing (pure; no torch)."""

from __future__ import annotations

import random

import pytest

from dsrl.batching import fixed_micro_batches, min_token_bins, pack_by_tokens, plan_batches
from dsrl.config import ConfigError, load_config


def _cfg(*overrides: str):
    return load_config(list(overrides), environ={})


def test_reference_batch_semantics_two_gpus_grpo():
    cfg = _cfg(
        "data.train_batch_size=64",
        "actor_rollout_ref.actor.ppo_mini_batch_size=32",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.rollout.n=4",
    )
    plan = plan_batches(cfg, world_size=2)
    assert plan.sequences_per_rank == 64 * 4 // 2
    assert plan.actor.mini_per_rank == 32 * 4 // 2
    assert plan.actor.gas == 64 // 2
    assert plan.actor.num_minis == 2
    assert plan.actor.ds_batch_sizes(2) == {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 32,
        "train_batch_size": 2 * 32 * 2,
    }
    assert plan.critic is None


def test_global_micro_batch_is_split_across_ranks_and_critic_planned_for_gae():
    cfg = _cfg(
        "data.train_batch_size=16",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.ppo_micro_batch_size=4",
        "critic.ppo_micro_batch_size_per_gpu=1",
    )
    plan = plan_batches(cfg, world_size=2)
    assert plan.actor.micro == 2 and plan.actor.gas == 2
    assert plan.critic is not None and plan.critic.micro == 1 and plan.critic.gas == 4
    assert plan.log_prob_micro == 2


@pytest.mark.parametrize(
    ("overrides", "world", "message"),
    [
        (
            [
                "data.train_batch_size=6",
                "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
            ],
            4,
            "train_batch_size=6 is not divisible by dp=4",
        ),
        (
            [
                "data.train_batch_size=8",
                "actor_rollout_ref.actor.ppo_mini_batch_size=3",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
                "critic.enable=True",
            ],
            2,
            "ppo_mini_batch_size \\* rollout.n = 3 \\* 1 is not divisible by dp=2",
        ),
        (
            [
                "data.train_batch_size=8",
                "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
                "critic.ppo_micro_batch_size_per_gpu=1",
            ],
            2,
            "ppo_micro_batch_size_per_gpu=4 is larger than the per-rank mini batch",
        ),
        (
            [
                "data.train_batch_size=12",
                "actor_rollout_ref.actor.ppo_mini_batch_size=12",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
                "critic.ppo_micro_batch_size_per_gpu=1",
            ],
            2,
            "does not divide the per-rank mini batch of 6",
        ),
        (
            ["data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=16"],
            2,
            "does not divide data.train_batch_size",
        ),
        (
            ["data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=4"],
            2,
            "set actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
        ),
        (
            [
                "data.train_batch_size=8",
                "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                "actor_rollout_ref.actor.use_dynamic_bsz=True",
                "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=100",
                "critic.ppo_micro_batch_size_per_gpu=1",
            ],
            2,
            "ppo_max_token_len_per_gpu=100 is smaller than one full sequence",
        ),
    ],
)
def test_bad_batch_shapes_name_the_key(overrides, world, message):
    with pytest.raises(ConfigError, match=message):
        plan_batches(_cfg(*overrides), world_size=world)


def test_fixed_micro_batches_cover_every_index_once():
    assert fixed_micro_batches(5, 2) == [[0, 1], [2, 3], [4]]


def test_pack_by_tokens_respects_budget_and_covers_all():
    rng = random.Random(0)
    lengths = [rng.randint(10, 300) for _ in range(64)]
    budget = 700
    bins = pack_by_tokens(lengths, budget, min_token_bins(lengths, budget))
    assert sorted(i for b in bins for i in b) == list(range(64))
    assert all(sum(lengths[i] for i in b) <= budget for b in bins)
    assert all(b == sorted(b) and b for b in bins)
    assert len(bins) >= min_token_bins(lengths, budget)


def test_pack_by_tokens_honours_a_larger_agreed_bin_count():
    lengths = [10, 10, 10, 10]
    assert len(pack_by_tokens(lengths, 1000, 3)) == 3


def test_pack_by_tokens_rejects_a_sequence_over_budget():
    with pytest.raises(ValueError, match="exceeds the micro batch budget"):
        pack_by_tokens([5, 50], 20, 1)
