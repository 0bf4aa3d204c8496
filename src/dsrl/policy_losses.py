"""verl's policy-loss modes (`actor.policy_loss.loss_mode`): vanilla PPO plus GSPO, Clip-Cov, KL-Cov, GPG, GMPO
(geo_mean) and CISPO.

Each follows verl 0.9.1's ``core_algos`` operation by operation (parity-tested to 1e-12 in float64, gradients too)
and returns (pg_loss, metrics). ``global_batch`` holds `agg_loss`'s global-batch normalisation (dp_size,
batch_num_tokens, global_batch_size, loss_scale_factor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dsrl.algorithms import agg_loss, compute_policy_loss, masked_mean

Metrics = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PolicyLossConfig:
    """The actor keys the loss modes read (verl's names and defaults)."""

    clip_ratio: float = 0.2
    clip_ratio_low: float | None = None
    clip_ratio_high: float | None = None
    clip_ratio_c: float = 3.0
    clip_cov_ratio: float = 0.0002
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 0.0002
    ppo_kl_coef: float = 0.1

    @property
    def low(self) -> float:
        return self.clip_ratio if self.clip_ratio_low is None else self.clip_ratio_low

    @property
    def high(self) -> float:
        return self.clip_ratio if self.clip_ratio_high is None else self.clip_ratio_high


def vanilla(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, cfg, **global_batch):
    """Dual-clip PPO, with DAPO's asymmetric clip through clip_ratio_low / clip_ratio_high."""
    pg_loss, clipfrac, ppo_kl, clipfrac_lower = compute_policy_loss(
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        clip_ratio=cfg.clip_ratio,
        clip_ratio_low=cfg.clip_ratio_low,
        clip_ratio_high=cfg.clip_ratio_high,
        clip_ratio_c=cfg.clip_ratio_c,
        loss_agg_mode=loss_agg_mode,
        **global_batch,
    )
    return pg_loss, {"actor/pg_clipfrac": clipfrac, "actor/ppo_kl": ppo_kl, "actor/pg_clipfrac_lower": clipfrac_lower}


def gspo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, cfg, **global_batch):
    """GSPO (https://arxiv.org/abs/2507.18071): a clipped sequence-level ratio, the geometric mean of token ratios,
    carried to every token with the token's own gradient."""
    negative_approx_kl = log_prob - old_log_prob
    seq_lengths = torch.sum(response_mask, dim=-1).clamp(min=1)
    negative_approx_kl_seq = torch.sum(negative_approx_kl * response_mask, dim=-1) / seq_lengths
    log_ratio = log_prob - log_prob.detach() + negative_approx_kl_seq.detach().unsqueeze(-1)
    ratio = torch.exp(torch.clamp(log_ratio, max=10.0))
    losses1 = -advantages * ratio
    losses2 = -advantages * torch.clamp(ratio, 1 - cfg.low, 1 + cfg.high)
    pg_loss = agg_loss(torch.maximum(losses1, losses2), response_mask, loss_agg_mode, **global_batch)
    return pg_loss, {
        "actor/pg_clipfrac": masked_mean(torch.gt(losses2, losses1).float(), response_mask),
        "actor/ppo_kl": masked_mean(-negative_approx_kl, response_mask),
        "actor/pg_clipfrac_lower": torch.tensor(0.0, device=pg_loss.device),
    }


def gpg(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, cfg, **global_batch):
    """GPG (https://arxiv.org/abs/2504.02546): plain policy gradient ``-log_prob * A``, no ratio, no clip."""
    return agg_loss(-log_prob * advantages, response_mask, loss_agg_mode, **global_batch), {}


def clip_cov(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, cfg, **global_batch):
    """Clip-Cov (https://arxiv.org/abs/2505.22617): besides PPO's clip, drop the gradient of a random
    ``clip_cov_ratio`` share of the tokens whose advantage x log-prob covariance lies in (lb, ub)."""
    if cfg.clip_cov_ratio <= 0:
        raise ValueError(f"policy_loss.clip_cov_ratio must be > 0, got {cfg.clip_cov_ratio}")
    negative_approx_kl = log_prob - old_log_prob
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = masked_mean(-negative_approx_kl, response_mask)
    losses1 = -advantages * ratio
    losses2 = -advantages * torch.clamp(ratio, 1 - cfg.low, 1 + cfg.high)
    clip_by_origin = (losses2 > losses1) & (response_mask > 0)
    cov_all = (advantages - masked_mean(advantages, response_mask)) * (
        log_prob - masked_mean(log_prob.detach(), response_mask)
    )
    cov_all[response_mask == 0] = -torch.inf
    cov_all[clip_by_origin] = -torch.inf
    clip_num = max(int(cfg.clip_cov_ratio * response_mask.sum().item()), 1)
    candidates = torch.nonzero((cov_all < cfg.clip_cov_ub) & (cov_all > cfg.clip_cov_lb) & (response_mask > 0))
    if len(candidates) > 0:
        candidates = candidates[torch.randperm(len(candidates))[: min(clip_num, len(candidates))]]
    corr = torch.ones_like(advantages)
    corr[candidates[:, 0], candidates[:, 1]] = 0
    pg_loss = agg_loss(torch.maximum(losses1, losses2) * corr, response_mask, loss_agg_mode, **global_batch)
    return pg_loss, {"actor/pg_clipfrac": masked_mean((corr == 0).float(), response_mask), "actor/ppo_kl": ppo_kl}


def kl_cov(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, cfg, **global_batch):
    """KL-Cov (https://arxiv.org/abs/2505.22617): unclipped ratio loss, plus ``ppo_kl_coef * |log ratio|`` on the
    ``kl_cov_ratio`` share of tokens with the largest advantage x log-prob covariance."""
    if cfg.kl_cov_ratio <= 0:
        raise ValueError(f"policy_loss.kl_cov_ratio must be > 0, got {cfg.kl_cov_ratio}")
    negative_approx_kl = log_prob - old_log_prob
    abs_kl = negative_approx_kl.abs()
    ratio = torch.exp(negative_approx_kl)
    ppo_kl_abs = masked_mean(negative_approx_kl.abs(), response_mask)
    pg_losses = -advantages * ratio
    pg_losses_kl = -advantages * ratio + cfg.ppo_kl_coef * abs_kl
    valid = response_mask > 0
    valid_idx = torch.nonzero(valid.reshape(-1), as_tuple=True)[0]
    valid_adv = advantages[valid].detach().reshape(-1).cpu()
    valid_logp = log_prob[valid].detach().reshape(-1).cpu()
    if len(valid_adv) > 0:
        cov = (valid_adv - valid_adv.mean()) * (valid_logp - valid_logp.mean())
        top = torch.topk(cov, max(1, int(len(cov) * cfg.kl_cov_ratio)), largest=True).indices
        flat = valid_idx[top.to(valid_idx.device)]
        rows, cols = flat // advantages.shape[1], flat % advantages.shape[1]
        pg_losses[rows, cols] = pg_losses_kl[rows, cols]
    pg_loss = agg_loss(pg_losses, response_mask, loss_agg_mode, **global_batch)
    return pg_loss, {"actor/ppo_kl": ppo_kl_abs}


def geo_mean(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, cfg, **global_batch):
    """GMPO (https://arxiv.org/abs/2507.20673): a sequence's ratio is the geometric mean of its clipped token
    ratios; the loss is the mean over sequences whatever ``loss_agg_mode`` says (as in verl)."""
    negative_approx_kl = log_prob - old_log_prob
    ppo_kl = masked_mean(-negative_approx_kl, response_mask)
    sign = torch.sign(advantages)
    clamped = torch.clamp(negative_approx_kl, -cfg.low, cfg.high)
    kl_min = sign * torch.min(sign * negative_approx_kl, sign * clamped)
    lengths = response_mask.sum(dim=-1)
    ratio = torch.exp((kl_min * response_mask).sum(dim=-1) / (lengths + 1e-8))
    advantage = (advantages * response_mask).sum(dim=-1) / (lengths + 1e-8)
    pg_loss = torch.mean(-advantage * ratio)
    clipped = torch.ne(negative_approx_kl, clamped)
    return pg_loss, {
        "actor/pg_clipfrac": masked_mean((clipped * (advantages > 0)).float(), response_mask),
        "actor/ppo_kl": ppo_kl,
        "actor/pg_clipfrac_lower": masked_mean((clipped * (advantages < 0)).float(), response_mask),
    }


def cispo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, cfg, **global_batch):
    """CISPO (https://arxiv.org/abs/2506.13585): REINFORCE weighted by the clipped, stop-gradient ratio, so clipped
    tokens keep their gradient."""
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = masked_mean(-negative_approx_kl, response_mask)
    clipped_ratio = torch.clamp(ratio, 1 - cfg.low, 1 + cfg.high)
    pg_losses = -clipped_ratio.detach() * advantages * log_prob
    pg_loss = agg_loss(pg_losses, response_mask, loss_agg_mode, **global_batch)
    return pg_loss, {
        "actor/pg_clipfrac": masked_mean((ratio != clipped_ratio).float(), response_mask),
        "actor/ppo_kl": ppo_kl,
        "actor/pg_clipfrac_lower": torch.tensor(0.0, device=pg_loss.device),
    }


PolicyLossFn = Callable[..., tuple[torch.Tensor, Metrics]]
POLICY_LOSSES: dict[str, PolicyLossFn] = {
    "vanilla": vanilla,
    "gspo": gspo,
    "gpg": gpg,
    "clip_cov": clip_cov,
    "kl_cov": kl_cov,
    "geo_mean": geo_mean,
    "cispo": cispo,
}


def get_policy_loss_fn(loss_mode: str) -> PolicyLossFn:
    """The loss for verl's `actor.policy_loss.loss_mode` name."""
    if loss_mode not in POLICY_LOSSES:
        raise ValueError(f"Unknown policy loss_mode {loss_mode!r}; valid: {', '.join(POLICY_LOSSES)}.")
    return POLICY_LOSSES[loss_mode]


def policy_loss_config(actor_cfg: Any) -> PolicyLossConfig:
    """Read the loss modes' knobs from `actor_rollout_ref.actor` (and its `policy_loss` section)."""
    pl = actor_cfg.policy_loss
    return PolicyLossConfig(
        clip_ratio=float(actor_cfg.clip_ratio),
        clip_ratio_low=None if actor_cfg.clip_ratio_low is None else float(actor_cfg.clip_ratio_low),
        clip_ratio_high=None if actor_cfg.clip_ratio_high is None else float(actor_cfg.clip_ratio_high),
        clip_ratio_c=float(actor_cfg.clip_ratio_c),
        clip_cov_ratio=float(pl.clip_cov_ratio),
        clip_cov_lb=float(pl.clip_cov_lb),
        clip_cov_ub=float(pl.clip_cov_ub),
        kl_cov_ratio=float(pl.kl_cov_ratio),
        ppo_kl_coef=float(pl.ppo_kl_coef),
    )
