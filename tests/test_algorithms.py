"""Hand-computed checks of the PPO/GRPO math against verl's conventions."""

import math

import pytest

torch = pytest.importorskip("torch")

from dsrl import algorithms as alg  # noqa: E402

pytestmark = pytest.mark.train


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(actual, expected, **kw):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), **kw)


# ---- masked statistics -------------------------------------------------------------------------------


def test_masked_stats_ignore_masked_values_even_nan():
    values = t([1.0, 2.0, float("nan")], [3.0, 100.0, 6.0])
    mask = t([1, 1, 0], [1, 0, 1])
    close(alg.masked_sum(values, mask), 12.0)
    close(alg.masked_mean(values, mask), 3.0)
    close(alg.masked_mean(values, mask, dim=-1), [1.5, 4.5])
    # unbiased: squared deviations from 3 are 4,1,0,9 -> 14 / 3
    close(alg.masked_var(values, mask), 14 / 3)
    close(alg.masked_var(values, mask, unbiased=False), 14 / 4)


def test_masked_var_rejects_too_few_elements():
    with pytest.raises(ValueError, match="no element"):
        alg.masked_var(t([1.0, 2.0]), t([0, 0]))
    with pytest.raises(ValueError, match="one element"):
        alg.masked_var(t([1.0, 2.0]), t([0, 1]))


def test_masked_whiten_uses_bessel_variance_and_optionally_keeps_mean():
    values, mask = t([1.0, 3.0, 50.0]), t([1, 1, 0])
    # mean 2, unbiased var 2 -> (v - 2) / sqrt(2 + 1e-8)
    scale = 1 / math.sqrt(2 + 1e-8)
    close(alg.masked_whiten(values, mask)[0, :2], [-scale, scale])
    close(alg.masked_whiten(values, mask, shift_mean=False)[0, :2], [2 - scale, 2 + scale])


# ---- GAE -------------------------------------------------------------------------------------------


def test_gae_gamma_lam_one_by_hand():
    rewards, values, mask = t([0.0, 0.0, 1.0]), t([0.1, 0.2, 0.3]), t([1, 1, 1])
    advantages, returns = alg.compute_gae_advantage_return(rewards, values, mask, gamma=1.0, lam=1.0)
    # raw advantages are 1 - V_t = [0.9, 0.8, 0.7]; returns = raw + V = 1; whitened: mean 0.8, std 0.1
    close(returns, [[1.0, 1.0, 1.0]])
    close(advantages, [[1.0, 0.0, -1.0]], atol=1e-5, rtol=1e-5)


def test_gae_skips_masked_tokens_and_excludes_them_from_whitening():
    rewards, values, mask = t([0.0, 5.0, 1.0]), t([0.1, 9.0, 0.3]), t([1, 0, 1])
    advantages, returns = alg.compute_gae_advantage_return(rewards, values, mask, gamma=0.5, lam=1.0)
    # t=2: A=1-0.3=0.7; t=1 masked: carries A=0.7 and V=0.3; t=0: delta=0.5*0.3-0.1=0.05, A=0.05+0.5*0.7=0.4
    close(returns, [[0.4 + 0.1, 0.7 + 9.0, 0.7 + 0.3]])
    std = math.sqrt(2 * 0.15**2 + 1e-8)
    close(advantages, [[-0.15 / std, 0.15 / std, 0.15 / std]], atol=1e-5, rtol=1e-5)


def test_gae_accepts_bool_mask():
    rewards, values = t([0.0, 1.0], [1.0, 0.0]), t([0.2, 0.4], [0.1, 0.5])
    float_mask = t([1, 1], [1, 0])
    expected = alg.compute_gae_advantage_return(rewards, values, float_mask, gamma=0.9, lam=0.8)
    actual = alg.compute_gae_advantage_return(rewards, values, float_mask.bool(), gamma=0.9, lam=0.8)
    torch.testing.assert_close(actual, expected)


# ---- GRPO ------------------------------------------------------------------------------------------


def grpo_inputs():
    rewards = t([0, 0, 1.0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0.5, 0, 0])
    mask = t([1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0])
    return rewards, mask, ["a", "a", "a", 7]


def test_grpo_group_normalisation_with_unbiased_std_and_singleton_group():
    rewards, mask, index = grpo_inputs()
    advantages, returns = alg.compute_grpo_outcome_advantage(rewards, mask, index)
    # group a: scores 1, 0, 0 -> mean 1/3, unbiased std sqrt(1/3); group 7 is a singleton: mean 0, std 1
    std = math.sqrt(1 / 3) + 1e-6
    per_seq = torch.tensor([(2 / 3) / std, (-1 / 3) / std, (-1 / 3) / std, 0.5 / (1 + 1e-6)])
    close(advantages, per_seq.unsqueeze(-1) * mask)
    torch.testing.assert_close(returns, advantages)


def test_grpo_without_std_normalisation_only_centres():
    rewards, mask, index = grpo_inputs()
    advantages, _ = alg.compute_grpo_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=False)
    close(advantages, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.5]).unsqueeze(-1) * mask)


def test_grpo_index_length_must_match_batch():
    rewards, mask, _ = grpo_inputs()
    with pytest.raises(ValueError, match="index has 2 entries"):
        alg.compute_grpo_outcome_advantage(rewards, mask, ["a", "b"])


# ---- loss aggregation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 7 / 3),  # (1 + 2 + 4) / 3 valid tokens
        ("seq-mean-token-sum", 3.5),  # (3 + 4) / 2 non-empty sequences
        ("seq-mean-token-mean", 2.75),  # (1.5 + 4) / 2
        ("seq-mean-token-sum-norm", 3.5 / 4),  # Dr.GRPO: (3 + 4) / 2 non-empty sequences / response length 4
        ("token-sum", 7.0),
    ],
)
def test_agg_loss_modes(mode, expected):
    loss = t([1, 2, float("nan"), 10], [4, 5, 6, 10], [7, 8, 9, 10])
    mask = t([1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0])
    close(alg.agg_loss(loss, mask, mode), expected)


def test_agg_loss_unknown_mode_lists_valid_ones():
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        alg.agg_loss(t([1.0]), t([1]), "mean")


# ---- policy / value loss -------------------------------------------------------------------------


def policy_case():
    # tokens: clipped high (A>0), clipped low (A<0), dual-clipped (A<0, ratio 5), unclipped, masked out
    ratios = [1.5, 0.5, 5.0, 1.0, 100.0]
    old = torch.zeros(1, 5)
    new = torch.log(torch.tensor([ratios]))
    adv = t([1.0, -1.0, -1.0, 1.0, -1.0])
    mask = t([1, 1, 1, 1, 0])
    return old, new, adv, mask, ratios


def test_policy_loss_each_clip_branch():
    old, new, adv, mask, ratios = policy_case()
    pg_loss, clipfrac, ppo_kl, clipfrac_lower = alg.compute_policy_loss(old, new, adv, mask)
    # per-token losses: -1.2 (clip 1+eps), 0.8 (clip 1-eps), 3.0 (dual clip c=3), -1.0
    close(pg_loss, (-1.2 + 0.8 + 3.0 - 1.0) / 4)
    close(clipfrac, 2 / 4)
    close(clipfrac_lower, 1 / 4)
    close(ppo_kl, -sum(math.log(r) for r in ratios[:4]) / 4)


def test_policy_loss_asymmetric_clip_and_agg_mode():
    old, new, adv, mask, _ = policy_case()
    pg_loss, *_ = alg.compute_policy_loss(
        old, new, adv, mask, clip_ratio_low=0.1, clip_ratio_high=0.3, loss_agg_mode="seq-mean-token-sum"
    )
    close(pg_loss, -1.3 + 0.9 + 3.0 - 1.0)


def test_policy_loss_clamps_log_ratio():
    pg_loss, _, ppo_kl, _ = alg.compute_policy_loss(t([0.0]), t([30.0]), t([1.0]), t([1]))
    close(ppo_kl, -20.0)
    close(pg_loss, -1.2)


def test_policy_loss_rejects_clip_ratio_c_not_above_one():
    old, new, adv, mask, _ = policy_case()
    with pytest.raises(ValueError, match="clip_ratio_c"):
        alg.compute_policy_loss(old, new, adv, mask, clip_ratio_c=1.0)


def test_value_loss_clipping_by_hand():
    vpreds, values, returns = t([2.0, 0.5, 50.0]), t([1.0, 1.0, 0.0]), t([3.0, 0.0, 0.0])
    mask = t([1, 1, 0])
    vf_loss, vf_clipfrac = alg.compute_value_loss(vpreds, returns, values, mask, cliprange_value=0.5)
    # token 0: vpred clipped to 1.5 -> max((2-3)^2, (1.5-3)^2) = 2.25; token 1: 0.25 both ways
    close(vf_loss, 0.5 * (2.25 + 0.25) / 2)
    close(vf_clipfrac, 0.5)


# ---- KL ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("kl", [0.5, -1.0]),
        ("k1", [0.5, -1.0]),
        ("abs", [0.5, 1.0]),
        ("mse", [0.125, 0.5]),
        ("k2", [0.125, 0.5]),
        ("low_var_kl", [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]),
        ("k3", [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]),
    ],
)
def test_kl_penalty_closed_forms(kind, expected):
    logprob, ref = t([-1.0, -2.0]), t([-1.5, -1.0])
    close(alg.kl_penalty(logprob, ref, kind), [expected])


def test_low_var_kl_is_clamped_to_ten():
    close(alg.kl_penalty(t([-30.0]), t([0.0]), "low_var_kl"), [[10.0]])


def test_kl_penalty_unknown_lists_valid_names():
    with pytest.raises(ValueError, match="low_var_kl"):
        alg.kl_penalty(t([0.0]), t([0.0]), "full")


def test_entropy_from_logits_matches_categorical_and_is_stable():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Categorical(logits=logits).entropy()
    close(alg.entropy_from_logits(logits), expected)
    close(alg.entropy_from_logits(t([1000.0, 1000.0, 1000.0, 1000.0])), [math.log(4)])


# ---- KL controllers and reward shaping ---------------------------------------------------------------


def test_adaptive_kl_controller_update_formula():
    ctrl = alg.make_kl_controller("adaptive", 0.1, target_kl=0.05, horizon=100)
    ctrl.update(current_kl=0.055, n_steps=10)  # error 0.1 -> x1.01
    assert ctrl.value == pytest.approx(0.1 * 1.01)
    ctrl.update(current_kl=5.0, n_steps=10)  # error clipped to +0.2 -> x1.02
    assert ctrl.value == pytest.approx(0.1 * 1.01 * 1.02)
    ctrl.update(current_kl=0.0, n_steps=50)  # error clipped to -0.2 -> x0.9
    assert ctrl.value == pytest.approx(0.1 * 1.01 * 1.02 * 0.9)


def test_fixed_kl_controller_never_changes():
    ctrl = alg.make_kl_controller("fixed", 0.3)
    ctrl.update(current_kl=10.0, n_steps=100)
    assert ctrl.value == 0.3


def test_kl_controller_state_round_trip_and_kind_check():
    ctrl = alg.make_kl_controller("adaptive", 0.1, target_kl=0.05, horizon=10)
    ctrl.update(current_kl=1.0, n_steps=5)
    resumed = alg.make_kl_controller("adaptive", 0.1, target_kl=0.05, horizon=10)
    resumed.load_state_dict(ctrl.state_dict())
    assert resumed.value == ctrl.value != 0.1
    with pytest.raises(ValueError, match="'fixed'"):
        alg.FixedKLController(0.1).load_state_dict(ctrl.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "adaptive", "kl_coef": 0.1, "horizon": 10}, "target_kl"),
        ({"kind": "adaptive", "kl_coef": 0.1, "target_kl": 0.1, "horizon": 0}, "horizon"),
        ({"kind": "pid", "kl_coef": 0.1}, "fixed, adaptive"),
    ],
)
def test_make_kl_controller_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        alg.make_kl_controller(**kwargs)


def kl_inputs():
    scores = t([0, 0, 1.0], [0, 2.0, 0])
    old = t([0.1, 0.2, 0.3], [0.4, 0.5, 9.0])
    mask = t([1, 1, 1], [1, 1, 0])
    return scores, old, torch.zeros_like(old), mask


def test_apply_kl_penalty_with_fixed_coefficient():
    scores, old, ref, mask = kl_inputs()
    rewards, metrics = alg.apply_kl_penalty(scores, old, ref, mask, alg.FixedKLController(0.5), "kl")
    close(rewards, scores - 0.5 * t([0.1, 0.2, 0.3], [0.4, 0.5, 0.0]))
    # per-sequence mean KL 0.2 and 0.45, then batch mean
    assert metrics == {
        "actor/reward_kl_penalty": pytest.approx(0.325),
        "actor/reward_kl_penalty_coeff": 0.5,
    }


def test_apply_kl_penalty_updates_adaptive_controller_after_use():
    scores, old, ref, mask = kl_inputs()
    ctrl = alg.AdaptiveKLController(0.2, target_kl=0.25, horizon=20)
    rewards, metrics = alg.apply_kl_penalty(scores, old, ref, mask, ctrl, "kl")
    close(rewards, scores - 0.2 * t([0.1, 0.2, 0.3], [0.4, 0.5, 0.0]))
    assert metrics["actor/reward_kl_penalty_coeff"] == pytest.approx(0.2)
    assert ctrl.value == pytest.approx(0.2 * (1 + 0.2 * 2 / 20))  # error 0.3 clipped to 0.2, 2 sequences


def test_scores_to_token_rewards_uses_last_valid_token():
    mask = t([1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 1, 1, 0])
    rewards = alg.scores_to_token_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), mask.bool())
    close(rewards, t([0, 1.0, 0, 0], [0, 0, 0, 2.0], [0, 0, 0, 0], [0, 0, 4.0, 0]))


def test_scores_to_token_rewards_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="one entry per row"):
        alg.scores_to_token_rewards(torch.tensor([1.0]), t([1, 1], [1, 0]))


# ---- data metrics -------------------------------------------------------------------------------------


def metrics_inputs():
    return dict(
        token_level_scores=t([0, 0, 1.0], [0.5, 0, 0], [0, 0, 7.0]),
        token_level_rewards=t([0, -0.1, 0.9], [0.3, 0, 0], [0, 0, -5.0]),
        advantages=t([1.0, 2.0, 3.0], [4.0, 100.0, 100.0], [-100.0, -100.0, -100.0]),
        returns=t([0.5, 0.5, 0.5], [2.0, 9.0, 9.0], [9.0, 9.0, 9.0]),
        response_mask=t([1, 1, 1], [1, 0, 0], [0, 0, 0]),
        prompt_mask=t([1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]),
        max_response_length=3,
        max_prompt_length=4,
    )


def test_compute_data_metrics_by_hand():
    metrics = alg.compute_data_metrics(**metrics_inputs())
    expected = {
        "critic/score/mean": 0.75,  # the aborted third response is left out
        "critic/score/max": 1.0,
        "critic/score/min": 0.5,
        "critic/rewards/mean": 0.55,
        "critic/rewards/max": 0.8,
        "critic/rewards/min": 0.3,
        "critic/advantages/mean": 2.5,
        "critic/advantages/max": 4.0,
        "critic/advantages/min": 1.0,
        "critic/returns/mean": 0.875,
        "critic/returns/max": 2.0,
        "critic/returns/min": 0.5,
        "response_length/mean": 4 / 3,
        "response_length/max": 3.0,
        "response_length/min": 0.0,
        "response_length/clip_ratio": 1 / 3,
        "prompt_length/mean": 3.0,
        "prompt_length/max": 4.0,
        "prompt_length/min": 2.0,
        "prompt_length/clip_ratio": 1 / 3,
    }
    assert metrics == pytest.approx(expected)
    assert all(type(v) is float for v in metrics.values())


def test_compute_data_metrics_with_values():
    inputs = metrics_inputs()
    values = t([0.5, 0.5, 0.5], [2.0, -9.0, -9.0], [5.0, 5.0, 5.0])
    metrics = alg.compute_data_metrics(**inputs, values=values)
    assert metrics["critic/values/mean"] == pytest.approx(0.875)
    assert metrics["critic/values/max"] == pytest.approx(2.0)
    assert metrics["critic/values/min"] == pytest.approx(0.5)
    assert metrics["critic/vf_explained_var"] == pytest.approx(1.0)  # values equal returns on valid tokens


def test_compute_data_metrics_rejects_all_empty_responses():
    inputs = metrics_inputs()
    inputs["response_mask"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="every response is empty"):
        alg.compute_data_metrics(**inputs)
