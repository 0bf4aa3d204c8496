"""Pure PPO/GRPO math on [batch, response_len] tensors.

The numerical conventions follow verl's ``core_algos.py`` and ``torch_functional.py`` so that results are
comparable with verl runs; this module imports only torch so it can be tested without DeepSpeed. It is one module
of ~400 lines on purpose: it mirrors verl's ``core_algos`` function for function, so a reader (and the parity tests)
can set the two side by side.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

# verl's names, owned by the torch-free config module that validates them. "<type>+" KL: the forward value of
# <type> with the gradient of k2 (straight-through, verl's unbiased KL gradient).
from dsrl.config import KL_PENALTY_TYPES, LOSS_AGG_MODES

KL_CONTROLLER_KINDS = ("fixed", "adaptive")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is set; NaN/inf outside the mask cannot leak into the sum."""
    valid = torch.where(mask.bool(), values, torch.zeros_like(values))
    return (valid * mask).sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean over masked elements; the 1e-8 keeps an all-masked row at 0 instead of NaN."""
    return masked_sum(values, mask, dim) / (mask.sum(dim=dim) + 1e-8)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all masked elements, with Bessel's correction when ``unbiased``."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count == 0:
            raise ValueError("masked_var: the mask selects no element; at least two are needed.")
        if count == 1:
            raise ValueError("masked_var: the mask selects one element; the unbiased variance needs two or more.")
        variance = variance * (count / (count - 1))
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to unit variance over the masked elements (and zero mean when ``shift_mean``)."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def compute_gae_advantage_return(
    token_level_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages (whitened over the batch) and returns (from the raw advantages).

    Masked positions carry the running value and GAE through unchanged, so a masked token between two valid
    ones is skipped rather than treated as an episode boundary (verl's handling of observation tokens).
    """
    mask = response_mask.to(values.dtype)
    with torch.no_grad():
        next_value = torch.zeros_like(values[:, 0])
        last_gae = torch.zeros_like(values[:, 0])
        reversed_adv = []
        for t in reversed(range(token_level_rewards.shape[-1])):
            delta = token_level_rewards[:, t] + gamma * next_value - values[:, t]
            gae_t = delta + gamma * lam * last_gae
            next_value = values[:, t] * mask[:, t] + (1 - mask[:, t]) * next_value
            last_gae = gae_t * mask[:, t] + (1 - mask[:, t]) * last_gae
            reversed_adv.append(last_gae)
        advantages = torch.stack(reversed_adv[::-1], dim=1)
        returns = advantages + values
        advantages = masked_whiten(advantages, mask)
    return advantages, returns


def compute_grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Hashable],
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative outcome advantage: each sequence score against its prompt group's mean (and std).

    A group of one has nothing to compare against, so it keeps its raw score (mean 0, std 1) as verl does.
    """
    scores = token_level_rewards.sum(dim=-1)
    if len(index) != scores.shape[0]:
        raise ValueError(f"index has {len(index)} entries but the batch has {scores.shape[0]} sequences.")
    groups: dict[Hashable, list[int]] = {}
    for row, key in enumerate(index):
        groups.setdefault(key, []).append(row)
    with torch.no_grad():
        mean = torch.zeros_like(scores)
        # verl's group of one: score / (float32(1.0) + epsilon), the float32 sum included, in every dtype.
        std_eps = torch.full_like(scores, float(torch.tensor(1.0) + epsilon))
        for rows in groups.values():
            if len(rows) > 1:
                group_scores = scores[rows]
                mean[rows] = torch.mean(group_scores)
                std_eps[rows] = torch.std(group_scores) + epsilon
        centred = scores - mean
        normalised = centred / std_eps if norm_adv_by_std_in_grpo else centred
        advantages = normalised.unsqueeze(-1) * response_mask
    return advantages, advantages


def agg_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str,
    dp_size: int = 1,
    batch_num_tokens: int | torch.Tensor | None = None,
    global_batch_size: int | torch.Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """Reduce a [batch, len] loss to a scalar with verl's global-batch normalisation.

    A micro batch's loss is divided by the token / sequence count of the whole mini batch across ranks
    (``batch_num_tokens`` / ``global_batch_size``) and multiplied by ``dp_size``, so summing micro-batch
    gradients and averaging them over ranks gives the mini-batch loss's gradient, however the batch was split.
    Without them (one rank) the counts are this batch's own: bare counts as in verl, so an all-masked batch is
    NaN rather than silently 0. Fully masked sequences never count in a sequence mean.
    """
    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            if dp_size > 1:
                raise ValueError("agg_loss: token-mean over several ranks needs batch_num_tokens (global count)")
            batch_num_tokens = loss_mask.sum()
        return masked_sum(loss_mat, loss_mask) / batch_num_tokens * dp_size
    if loss_agg_mode == "token-sum":
        return masked_sum(loss_mat, loss_mask) * dp_size
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"):
        token_counts = torch.sum(loss_mask, dim=-1)
        seq_losses = masked_sum(loss_mat, loss_mask, dim=-1)
        if loss_agg_mode == "seq-mean-token-mean":
            seq_losses = seq_losses / (token_counts + 1e-8)
        seq_mask = (token_counts > 0).float()
        if global_batch_size is None:
            if dp_size > 1:
                raise ValueError(f"agg_loss: {loss_agg_mode} over several ranks needs global_batch_size")
            global_batch_size = seq_mask.sum()
        loss = masked_sum(seq_losses, seq_mask) / global_batch_size * dp_size
        if loss_agg_mode == "seq-mean-token-sum-norm":
            # Dr.GRPO: a constant horizon instead of each sequence's length
            loss = loss / (loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)
        return loss
    raise ValueError(f"Unknown loss_agg_mode {loss_agg_mode!r}; valid modes: {', '.join(LOSS_AGG_MODES)}.")


def compute_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio: float = 0.2,
    clip_ratio_low: float | None = None,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    **global_batch: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dual-clip PPO policy loss; returns (pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower).

    The dual clip bounds the loss of negative-advantage tokens at ``-A * clip_ratio_c`` so one huge ratio
    cannot dominate the update (https://arxiv.org/abs/1912.09729). ``global_batch`` goes to `agg_loss`.
    """
    if clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1.0 for dual-clip PPO, got {clip_ratio_c}.")
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high

    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    ppo_kl = masked_mean(-log_ratio, response_mask)

    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
    ppo_losses = torch.maximum(unclipped, clipped)
    pg_clipfrac = masked_mean(torch.gt(clipped, unclipped).float(), response_mask)

    dual_bound = -advantages * clip_ratio_c
    negative = advantages < 0
    pg_clipfrac_lower = masked_mean((torch.gt(ppo_losses, dual_bound) & negative).float(), response_mask)

    pg_losses = torch.where(negative, torch.minimum(dual_bound, ppo_losses), ppo_losses)
    pg_loss = agg_loss(pg_losses, response_mask, loss_agg_mode, **global_batch)
    return pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower


def compute_value_loss(
    vpreds: torch.Tensor,
    returns: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    cliprange_value: float,
    loss_agg_mode: str = "token-mean",
    **global_batch: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 * agg(max(unclipped, clipped) squared error)`` and the clipped fraction."""
    vpred_clipped = torch.maximum(torch.minimum(vpreds, values + cliprange_value), values - cliprange_value)
    unclipped = (vpreds - returns) ** 2
    clipped = (vpred_clipped - returns) ** 2
    vf_loss = 0.5 * agg_loss(torch.maximum(unclipped, clipped), response_mask, loss_agg_mode, **global_batch)
    vf_clipfrac = masked_mean(torch.gt(clipped, unclipped).float(), response_mask)
    return vf_loss, vf_clipfrac


def kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """Per-token KL estimate (Schulman's k1/k2/k3, http://joschu.net/blog/kl-approx.html).

    k1 and k3 estimate the KL's value without bias but not its gradient; ``<type>+`` keeps the value of <type>
    and takes the gradient of k2, which is the unbiased one.
    """
    if kl_penalty not in KL_PENALTY_TYPES:
        raise ValueError(f"Unknown kl_penalty {kl_penalty!r}; valid: {', '.join(KL_PENALTY_TYPES)}.")
    straight_through = kl_penalty.endswith("+")
    forward = _kl_forward(logprob, ref_logprob, kl_penalty.rstrip("+"))
    if not straight_through:
        return forward
    k2 = 0.5 * (logprob - ref_logprob).square()
    return k2 - k2.detach() + forward.detach()


def _kl_forward(logprob: torch.Tensor, ref_logprob: torch.Tensor, kind: str) -> torch.Tensor:
    if kind in ("kl", "k1"):
        return logprob - ref_logprob
    if kind == "abs":
        return (logprob - ref_logprob).abs()
    if kind in ("mse", "k2"):
        return 0.5 * (logprob - ref_logprob).square()
    log_ratio = torch.clamp(ref_logprob - logprob, min=-20, max=20)  # low_var_kl / k3
    return torch.clamp(torch.exp(log_ratio) - log_ratio - 1, min=-10, max=10)


# apply_kl_penalty's ``kl_penalty`` argument (verl's name) shadows the function inside it.
_kl_estimate = kl_penalty


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax over the last dim as ``logsumexp(z) - sum(p * z)``: stable for large logits."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(probs * logits, dim=-1)


class FixedKLController:
    """Constant KL coefficient; ``update`` is a no-op kept for a uniform controller interface."""

    kind = "fixed"

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Leave the coefficient unchanged."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _checked_value(state, self.kind)


class AdaptiveKLController:
    """Proportional controller steering the observed KL towards ``target_kl`` (https://arxiv.org/abs/1909.08593)."""

    kind = "adaptive"

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: float) -> None:
        self.value = float(init_kl_coef)
        self.target = float(target_kl)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Scale the coefficient by ``1 + clip(kl/target - 1, +-0.2) * n_steps / horizon``."""
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _checked_value(state, self.kind)


def _checked_value(state: dict[str, Any], kind: str) -> float:
    """Reject a checkpoint written by the other controller kind, which would silently change the schedule."""
    if state.get("kind") != kind or "value" not in state:
        raise ValueError(
            f"KL controller state {state!r} does not belong to a {kind!r} controller "
            f"(expected keys 'kind'={kind!r} and 'value')."
        )
    return float(state["value"])


def make_kl_controller(
    kind: str, kl_coef: float, target_kl: float | None = None, horizon: float | None = None
) -> FixedKLController | AdaptiveKLController:
    """Build the KL controller named by ``kind`` (``fixed`` or ``adaptive``)."""
    if kind == "fixed":
        return FixedKLController(kl_coef)
    if kind == "adaptive":
        if target_kl is None or target_kl <= 0:
            raise ValueError(f"adaptive KL controller needs target_kl > 0, got {target_kl}.")
        if horizon is None or horizon <= 0:
            raise ValueError(f"adaptive KL controller needs horizon > 0, got {horizon}.")
        return AdaptiveKLController(kl_coef, target_kl, horizon)
    raise ValueError(f"Unknown KL controller kind {kind!r}; valid: {', '.join(KL_CONTROLLER_KINDS)}.")


def apply_kl_penalty(
    token_level_scores: torch.Tensor,
    old_log_prob: torch.Tensor,
    ref_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    kl_ctrl: FixedKLController | AdaptiveKLController,
    kl_penalty: str,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Subtract ``beta * KL`` from the token scores, then feed the batch KL back to the controller.

    The metrics report the coefficient used for this batch, before the controller update.
    """
    kld = _kl_estimate(old_log_prob, ref_log_prob, kl_penalty) * response_mask
    beta = kl_ctrl.value
    token_level_rewards = token_level_scores - beta * kld
    current_kl = torch.mean(masked_mean(kld, response_mask, dim=-1)).item()
    kl_ctrl.update(current_kl=current_kl, n_steps=token_level_scores.shape[0])
    return token_level_rewards, {"actor/reward_kl_penalty": current_kl, "actor/reward_kl_penalty_coeff": beta}


def scores_to_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Place each sequence score on its last valid response token; rows with no valid token stay zero."""
    if scores.dim() != 1 or scores.shape[0] != response_mask.shape[0]:
        raise ValueError(
            f"scores must be 1-D with one entry per row of response_mask "
            f"{tuple(response_mask.shape)}, got shape {tuple(scores.shape)}."
        )
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    valid = response_mask.bool()
    positions = torch.arange(valid.shape[-1], device=valid.device).expand_as(valid)
    last = torch.where(valid, positions, -1).max(dim=-1).values
    rewards = torch.zeros(valid.shape, dtype=dtype, device=scores.device)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    rewards[rows, last[rows]] = scores[rows].to(dtype)
    return rewards


def _stats(name: str, values: torch.Tensor) -> dict[str, float]:
    values = values.detach().float()
    return {
        f"{name}/mean": values.mean().item(),
        f"{name}/max": values.max().item(),
        f"{name}/min": values.min().item(),
    }


def compute_data_metrics(
    *,
    token_level_scores: torch.Tensor,
    token_level_rewards: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_response_length: int,
    max_prompt_length: int,
    values: torch.Tensor | None = None,
) -> dict[str, float]:
    """Batch statistics under verl's metric names.

    Like verl, score/reward statistics skip aborted (empty) responses, token statistics use valid tokens only,
    and ``critic/vf_explained_var`` is reported alongside the values.
    """
    valid = response_mask.bool()
    response_length = valid.sum(dim=-1).float()
    prompt_length = prompt_mask.bool().sum(dim=-1).float()
    not_aborted = response_length > 0
    if not bool(not_aborted.any()):
        raise ValueError("compute_data_metrics: every response is empty (response_mask is all zero).")

    metrics = {
        **_stats("critic/score", token_level_scores.sum(dim=-1)[not_aborted]),
        **_stats("critic/rewards", token_level_rewards.sum(dim=-1)[not_aborted]),
        **_stats("critic/advantages", torch.masked_select(advantages, valid)),
        **_stats("critic/returns", torch.masked_select(returns, valid)),
    }
    if values is not None:
        valid_values = torch.masked_select(values, valid).detach().float()
        valid_returns = torch.masked_select(returns, valid).detach().float()
        explained = 1.0 - torch.var(valid_returns - valid_values) / (torch.var(valid_returns) + 1e-5)
        metrics.update(_stats("critic/values", valid_values))
        metrics["critic/vf_explained_var"] = explained.item()
    metrics.update(_stats("response_length", response_length))
    metrics["response_length/clip_ratio"] = torch.eq(response_length, max_response_length).float().mean().item()
    metrics.update(_stats("prompt_length", prompt_length))
    metrics["prompt_length/clip_ratio"] = torch.eq(prompt_length, max_prompt_length).float().mean().item()
    return metrics
