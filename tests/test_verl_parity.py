"""dsrl's RL math against verl 0.9.1's own functions: values and gradients equal to 1e-12 in float64 and exactly
(verl's own rounding) in float32, on random and edge-case batches."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from verl_reference import ActorConfig, AlgoConfig, PolicyLossConfig, core_algos, gsm8k, verl  # noqa: E402

from dsrl import advantages as adv  # noqa: E402
from dsrl import algorithms as alg  # noqa: E402
from dsrl import config as dsrl_config  # noqa: E402
from dsrl import policy_losses as pl  # noqa: E402
from dsrl import reward  # noqa: E402

pytestmark = pytest.mark.train

DTYPES = [torch.float64, torch.float32]
AGG_MODES = alg.LOSS_AGG_MODES


def same(ours, theirs, dtype):
    """float64: within 1e-12; float32: bit for bit. NaN where verl gives NaN."""
    tol = 1e-12 if dtype == torch.float64 else 0.0
    torch.testing.assert_close(
        torch.as_tensor(ours).to(dtype), torch.as_tensor(theirs).to(dtype), rtol=0, atol=tol, equal_nan=True
    )


def test_verl_is_the_pinned_release():
    assert verl.__version__ == "0.9.1"


def test_config_accepts_exactly_the_implemented_names():
    assert tuple(pl.POLICY_LOSSES) == dsrl_config.POLICY_LOSS_MODES
    assert set(adv.ADV_ESTIMATORS) - {"gae"} <= set(core_algos.ADV_ESTIMATOR_REGISTRY)
    assert set(pl.POLICY_LOSSES) <= set(core_algos.POLICY_LOSS_REGISTRY)


def batch(dtype, seed=0, rows=8, length=6):
    """Random logprobs/advantages with ragged masks: a fully masked row and a one-token row included."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (rows,), generator=g)
    lengths[0], lengths[1] = 0, 1
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(dtype)
    old = -torch.rand(rows, length, generator=g, dtype=torch.float64).to(dtype) * 3
    new = old + torch.randn(rows, length, generator=g, dtype=torch.float64).to(dtype) * 0.3
    advantages = torch.randn(rows, length, generator=g, dtype=torch.float64).to(dtype)
    return old, new, advantages, mask


def grad_of(fn, x):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    (out if out.dim() == 0 else out.sum()).backward()
    return out.detach(), x.grad


# ---- agg_loss ----------------------------------------------------------------------------------------


GLOBAL = [
    {},
    {"dp_size": 2, "batch_num_tokens": 37, "global_batch_size": 16},
    {"loss_scale_factor": 512},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("scale", GLOBAL)
def test_agg_loss_value_and_gradient(dtype, mode, scale):
    _, loss_mat, _, mask = batch(dtype, seed=1)
    ours, g_ours = grad_of(lambda x: alg.agg_loss(x, mask, mode, **scale), loss_mat)
    theirs, g_theirs = grad_of(lambda x: core_algos.agg_loss(x, mask, mode, **scale), loss_mat)
    same(ours, theirs, dtype)
    same(g_ours, g_theirs, dtype)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_agg_loss_all_masked_batch(mode):
    loss_mat, mask = torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    same(alg.agg_loss(loss_mat, mask, mode), core_algos.agg_loss(loss_mat, mask, mode), torch.float64)


def test_dr_grpo_aggregation_of_two_one_token_sequences():
    loss_mat, mask = torch.ones(2, 1), torch.ones(2, 1)
    assert alg.agg_loss(loss_mat, mask, "seq-mean-token-sum-norm").item() == 1.0
    assert core_algos.agg_loss(loss_mat, mask, "seq-mean-token-sum-norm").item() == 1.0


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batch_shares_sum_to_verls_mini_batch_loss(mode):
    """How the workers split a mini batch: two ranks, uneven micro batches, each micro loss normalised by the mini
    batch's global counts x dp. Summed over micro batches and averaged over ranks (DeepSpeed's gradient average),
    loss and gradient are verl's for the whole mini batch, whatever the split."""
    _, loss_mat, _, mask = batch(torch.float64, seed=6, rows=8)
    mask[0, 0] = 1  # verl's global_batch_size counts every sequence; keep none empty to compare with one batch
    whole, g_whole = grad_of(lambda x: core_algos.agg_loss(x, mask, mode), loss_mat)
    scale = {"dp_size": 2, "batch_num_tokens": mask.sum(), "global_batch_size": 8}
    splits = [[[0], [1, 2, 3]], [[4, 5], [6, 7]]]  # rank 0: micro batches of 1 and 3 rows; rank 1: 2 and 2

    def split_loss(x):
        per_rank = [sum(alg.agg_loss(x[idx], mask[idx], mode, **scale) for idx in micros) for micros in splits]
        return sum(per_rank) / len(splits)

    split, g_split = grad_of(split_loss, loss_mat)
    same(split, whole, torch.float64)
    same(g_split, g_whole, torch.float64)


# ---- KL, policy and value losses ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", alg.KL_PENALTY_TYPES)
def test_kl_penalty_value_and_gradient(dtype, kind):
    old, new, _, _ = batch(dtype, seed=2)
    ours, g_ours = grad_of(lambda x: alg.kl_penalty(x, old, kind), new)
    theirs, g_theirs = grad_of(lambda x: core_algos.kl_penalty(x, old, kind), new)
    same(ours, theirs, dtype)
    same(g_ours, g_theirs, dtype)


def test_straight_through_kl_has_the_value_of_its_type_and_the_gradient_of_k2():
    old, new, _, _ = batch(torch.float64, seed=3)
    value, grad = grad_of(lambda x: alg.kl_penalty(x, old, "k3+"), new)
    same(value, alg.kl_penalty(new, old, "k3"), torch.float64)
    same(grad, grad_of(lambda x: alg.kl_penalty(x, old, "k2"), new)[1], torch.float64)


def actor_config(mode="vanilla", low=None, high=None, **policy_loss):
    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio=0.2,
        clip_ratio_low=low,
        clip_ratio_high=high,
        policy_loss=PolicyLossConfig(loss_mode=mode, **policy_loss),
    )


CLIPS = [(None, None), (0.2, 0.28)]  # symmetric, DAPO's clip-higher


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", list(pl.POLICY_LOSSES))
@pytest.mark.parametrize("agg_mode", AGG_MODES)
@pytest.mark.parametrize("clip", CLIPS)
def test_policy_loss_modes_value_metrics_and_gradient(dtype, mode, agg_mode, clip):
    old, new, advantages, mask = batch(dtype, seed=4, rows=16, length=12)
    # cov ratios large enough that Clip-Cov / KL-Cov select tokens in a batch this small
    knobs = {"clip_cov_ratio": 0.2, "clip_cov_lb": -5.0, "kl_cov_ratio": 0.2}
    ours_cfg = pl.PolicyLossConfig(clip_ratio_low=clip[0], clip_ratio_high=clip[1], **knobs)
    verl_cfg = actor_config(mode, *clip, **knobs)
    fn = pl.get_policy_loss_fn(mode)

    def ours_fn(x):
        torch.manual_seed(7)  # Clip-Cov draws a random subset of tokens: both draw the same one
        return fn(old, x, advantages, mask, agg_mode, ours_cfg)

    def verl_fn(x):
        torch.manual_seed(7)
        return core_algos.get_policy_loss_fn(mode)(old, x, advantages, mask, agg_mode, verl_cfg)

    x_ours = new.detach().clone().requires_grad_(True)
    loss_ours, metrics_ours = ours_fn(x_ours)
    loss_ours.backward()
    x_verl = new.detach().clone().requires_grad_(True)
    loss_verl, metrics_verl = verl_fn(x_verl)
    loss_verl.backward()
    same(loss_ours.detach(), loss_verl.detach(), dtype)
    same(x_ours.grad, x_verl.grad, dtype)
    assert set(metrics_ours) == set(metrics_verl)
    for key, value in metrics_verl.items():
        assert float(torch.as_tensor(metrics_ours[key]).detach()) == pytest.approx(value, abs=1e-12)


def test_unknown_policy_loss_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match="vanilla, gspo, gpg, clip_cov, kl_cov, geo_mean, cispo"):
        pl.get_policy_loss_fn("dppo")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_value_loss(dtype, mode):
    values, vpreds, returns, mask = batch(dtype, seed=5)
    scale = {"dp_size": 2, "batch_num_tokens": 37, "global_batch_size": 16}

    def ours(x):
        return alg.compute_value_loss(x, returns, values, mask, 0.2, mode, **scale)

    def theirs(x):
        return core_algos.compute_value_loss(x, returns, values, mask, 0.2, mode, **scale)

    (o_loss, o_frac), (t_loss, t_frac) = ours(vpreds), theirs(vpreds)
    same(o_loss, t_loss, dtype)
    same(o_frac, t_frac, dtype)
    same(grad_of(lambda x: ours(x)[0], vpreds)[1], grad_of(lambda x: theirs(x)[0], vpreds)[1], dtype)


# ---- advantage estimators ----------------------------------------------------------------------------


def outcome_batch(dtype, seed=0):
    """Four prompts with 4, 3, 1 (a group of one) and 2 responses; scores on the last valid token."""
    g = torch.Generator().manual_seed(seed)
    _, _, _, mask = batch(dtype, seed=seed, rows=10, length=5)
    mask[0, 0] = 1  # every row has a token: the estimators put the score on the last one
    scores = torch.randint(0, 3, (10,), generator=g).to(dtype) / 2
    scores[8] = scores[9]  # a tie inside the last group
    rewards = alg.scores_to_token_rewards(scores, mask).to(dtype)
    index = np.array(["a"] * 4 + ["b"] * 3 + ["c"] + ["d"] * 2, dtype=object)
    return rewards, mask, index


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", [True, False])
def test_grpo_with_a_group_of_one(dtype, norm):
    rewards, mask, index = outcome_batch(dtype)
    ours = alg.compute_grpo_outcome_advantage(rewards.clone(), mask, list(index), norm_adv_by_std_in_grpo=norm)
    theirs = core_algos.compute_grpo_outcome_advantage(rewards.clone(), mask, index, norm_adv_by_std_in_grpo=norm)
    same(ours[0], theirs[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gae(dtype):
    rewards, mask, _ = outcome_batch(dtype)
    values = torch.randn(rewards.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64).to(dtype)
    ours = adv.compute_advantage("gae", rewards, mask, [], values=values, gamma=0.99, lam=0.95)
    theirs = core_algos.compute_gae_advantage_return(rewards, values, mask, 0.99, 0.95)
    same(ours[0], theirs[0], dtype)
    same(ours[1], theirs[1], dtype)


def verl_estimator(name, rewards, mask, index, norm=True):
    config = AlgoConfig(gamma=0.9, norm_adv_by_std_in_grpo=norm)
    fn = core_algos.get_adv_estimator_fn(name)
    if name == "remax":
        return fn(token_level_rewards=rewards, reward_baselines=baselines(rewards), response_mask=mask, config=config)
    return fn(token_level_rewards=rewards, response_mask=mask, index=index, config=config)


def baselines(rewards):
    return rewards.sum(-1).flip(0) * 0.5  # any per-row greedy score


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [e for e in adv.ADV_ESTIMATORS if e not in ("gae", "grpo")])
@pytest.mark.parametrize("norm", [True, False])
def test_outcome_estimators(dtype, name, norm):
    rewards, mask, index = outcome_batch(dtype, seed=3)
    if name == "grpo_passk":  # needs two samples in every group
        index = np.array(["a"] * 4 + ["b"] * 3 + ["b"] + ["d"] * 2, dtype=object)
    ours = adv.compute_advantage(
        name,
        rewards.clone(),
        mask,
        list(index),
        reward_baselines=baselines(rewards),
        gamma=0.9,
        norm_adv_by_std_in_grpo=norm,
    )
    theirs = verl_estimator(name, rewards.clone(), mask, index, norm)
    same(ours[0], theirs[0], dtype)
    same(ours[1], theirs[1], dtype)


def test_unknown_estimator_lists_the_valid_ones():
    rewards, mask, index = outcome_batch(torch.float32)
    with pytest.raises(ValueError, match="gae, grpo, rloo, reinforce_plus_plus"):
        adv.compute_advantage("vtrace", rewards, mask, list(index))


# ---- GSM8K reward --------------------------------------------------------------------------------------


SOLUTIONS = [
    "#### 72",
    "so 48 + 24 = 72.\n#### 72",
    "The total is 72.",
    "I do not know.",
    "Well. Hmm. . .",
    "no answer at all",
    "#### 1,234",
    "It costs $18 in total, from 3 items",
    "Answer 42." + " filler text." * 40,
    "",
]


@pytest.mark.parametrize("method", ["strict", "flexible"])
@pytest.mark.parametrize("text", SOLUTIONS)
def test_gsm8k_score(method, text):
    for truth in ("72", "1234", "."):
        kwargs = {"method": method, "format_score": 0.1, "score": 1.0}
        assert reward.gsm8k_compute_score(text, truth, **kwargs) == gsm8k.compute_score(text, truth, **kwargs)
    assert reward.extract_solution(text, method) == gsm8k.extract_solution(text, method)
