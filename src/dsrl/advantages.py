"""verl's outcome-reward advantage estimators beside GAE and GRPO, selected by `algorithm.adv_estimator`.

Each function follows verl 0.9.1's ``core_algos`` operation by operation (the parity tests compare outputs to
1e-12 in float64), so runs are comparable with verl's. Inputs are [batch, response_len]; ``index`` names each row's
prompt group. All return (advantages, returns).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from dsrl.algorithms import compute_gae_advantage_return, compute_grpo_outcome_advantage, masked_whiten
from dsrl.config import ADV_ESTIMATORS

# Estimators that compare the n responses of a prompt with each other (they need rollout.n >= 2).
GROUP_ESTIMATORS = ("grpo", "rloo", "opo", "grpo_passk")


def _groups(index: Sequence[Hashable], size: int) -> list[list[int]]:
    if len(index) != size:
        raise ValueError(f"index has {len(index)} entries but the batch has {size} sequences.")
    groups: dict[Hashable, list[int]] = {}
    for row, key in enumerate(index):
        groups.setdefault(key, []).append(row)
    return list(groups.values())


@torch.no_grad()
def compute_rloo_outcome_advantage(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Sequence[Hashable]
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO (https://arxiv.org/abs/2402.14740): each score against the mean of the other samples of its prompt."""
    scores = token_level_rewards.sum(dim=-1)
    for rows in _groups(index, scores.shape[0]):
        k = len(rows)
        if k > 1:
            mean = torch.mean(scores[rows])
            scores[rows] = scores[rows] * k / (k - 1) - mean * k / (k - 1)
    advantages = scores.unsqueeze(-1) * response_mask
    return advantages, advantages


@torch.no_grad()
def compute_opo_outcome_advantage(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Sequence[Hashable]
) -> tuple[torch.Tensor, torch.Tensor]:
    """OPO (https://arxiv.org/abs/2505.23585): the baseline is the group's length-weighted mean score."""
    lengths = response_mask.sum(dim=-1)
    scores = token_level_rewards.sum(dim=-1)
    for rows in _groups(index, scores.shape[0]):
        if len(rows) > 1:
            scores[rows] = scores[rows] - (lengths[rows] * scores[rows]).sum() / lengths[rows].sum()
    advantages = scores.unsqueeze(-1) * response_mask
    return advantages, advantages


@torch.no_grad()
def compute_gpg_outcome_advantage(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Sequence[Hashable], f_norm: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPG (https://arxiv.org/abs/2504.02546): group-centred scores scaled by batch size / rows with a reward."""
    scores = token_level_rewards.sum(dim=-1)
    alpha = scores.shape[0] / torch.count_nonzero(scores).clamp(min=1)
    for rows in _groups(index, scores.shape[0]):
        mean = torch.mean(scores[rows]) if len(rows) > 1 else 0.0
        scores[rows] = alpha * (scores[rows] - mean) / f_norm
    advantages = scores.unsqueeze(-1) * response_mask
    return advantages, advantages


@torch.no_grad()
def compute_grpo_passk_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Hashable],
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass@k (https://arxiv.org/abs/2503.19595): only a group's best response is credited, by its lead."""
    scores = token_level_rewards.sum(dim=-1)
    advantages = torch.zeros_like(scores)
    for rows in _groups(index, scores.shape[0]):
        if len(rows) < 2:
            raise ValueError(f"grpo_passk needs at least 2 samples per prompt group, got {len(rows)}.")
        group = scores[rows]
        top, top_idx = torch.topk(group, 2)
        advantage = top[0] - top[1]
        if norm_adv_by_std_in_grpo:
            advantage = advantage / (torch.std(group) + epsilon)
        advantages[rows[int(top_idx[0])]] = advantage
    advantages = advantages.unsqueeze(-1) * response_mask
    return advantages, advantages


@torch.no_grad()
def compute_reinforce_plus_plus_baseline_outcome_advantage(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Sequence[Hashable]
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline (https://arxiv.org/abs/2501.03262): group-centred scores whitened over the batch."""
    scores = token_level_rewards.sum(dim=-1)
    for rows in _groups(index, scores.shape[0]):
        if len(rows) > 1:
            scores[rows] = scores[rows] - torch.mean(scores[rows])
    scores = scores.unsqueeze(-1).tile([1, token_level_rewards.shape[-1]]) * response_mask
    scores = masked_whiten(scores, response_mask) * response_mask
    return scores, scores


@torch.no_grad()
def compute_reinforce_plus_plus_outcome_advantage(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (https://arxiv.org/abs/2501.03262): discounted returns whitened over the batch.

    Masked positions carry the running return through, as in verl's handling of observation tokens.
    """
    returns = torch.zeros_like(token_level_rewards)
    running: torch.Tensor | int = 0
    for t in reversed(range(token_level_rewards.shape[1])):
        new_running = token_level_rewards[:, t] + gamma * running
        returns[:, t] = new_running * response_mask[:, t]
        running = new_running * response_mask[:, t] + running * (1 - response_mask[:, t])
    advantages = masked_whiten(returns, response_mask) * response_mask
    return advantages, returns


@torch.no_grad()
def compute_remax_outcome_advantage(
    token_level_rewards: torch.Tensor, reward_baselines: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ReMax (https://arxiv.org/abs/2310.10505): returns minus the reward of the prompt's greedy response."""
    returns = (token_level_rewards * response_mask).flip(dims=[-1]).cumsum(dim=-1).flip(dims=[-1])
    advantages = returns - reward_baselines.unsqueeze(-1) * response_mask
    return advantages, returns


def compute_advantage(
    estimator: str,
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Hashable],
    *,
    values: torch.Tensor | None = None,
    reward_baselines: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    norm_adv_by_std_in_grpo: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch on verl's `algorithm.adv_estimator` name."""
    if estimator == "gae":
        if values is None:
            raise ValueError("adv_estimator=gae needs the critic's values")
        return compute_gae_advantage_return(token_level_rewards, values, response_mask, gamma, lam)
    if estimator == "grpo":
        return compute_grpo_outcome_advantage(
            token_level_rewards, response_mask, index, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo
        )
    if estimator == "grpo_passk":
        return compute_grpo_passk_outcome_advantage(
            token_level_rewards, response_mask, index, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo
        )
    if estimator == "reinforce_plus_plus":
        return compute_reinforce_plus_plus_outcome_advantage(token_level_rewards, response_mask, gamma)
    if estimator == "remax":
        if reward_baselines is None:
            raise ValueError("adv_estimator=remax needs reward_baselines (the greedy responses' scores)")
        return compute_remax_outcome_advantage(token_level_rewards, reward_baselines, response_mask)
    grouped = {
        "rloo": compute_rloo_outcome_advantage,
        "opo": compute_opo_outcome_advantage,
        "gpg": compute_gpg_outcome_advantage,
        "reinforce_plus_plus_baseline": compute_reinforce_plus_plus_baseline_outcome_advantage,
    }
    if estimator in grouped:
        return grouped[estimator](token_level_rewards, response_mask, index)
    raise ValueError(f"Unknown adv_estimator {estimator!r}; valid: {', '.join(ADV_ESTIMATORS)}.")
