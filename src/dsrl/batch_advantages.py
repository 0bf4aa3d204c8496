"""One step's advantages over the whole batch: every rank gathers every row, as verl's driver holds the whole batch.

GAE whitening, group baselines and the logged `critic/*` statistics then match verl's exactly; each rank keeps its
own rows' advantages and returns for its updates.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from dsrl import algorithms as algos
from dsrl import dist
from dsrl.advantages import compute_advantage


def whole_batch_advantages(
    batch: dict[str, torch.Tensor],
    global_idx: list[int],
    entropy: torch.Tensor,
    cfg: DictConfig,
    n: int,
    kl_ctrl: Any,
    rank: int,
) -> dict[str, float]:
    """Fill this rank's `advantages` and `returns` into `batch`; return the batch metrics (same on every rank)."""
    mask = dist.all_gather_rows(batch["response_mask"])
    scores = dist.all_gather_rows(batch["token_level_scores"])
    metrics: dict[str, float] = {}
    rewards = scores
    if cfg.algorithm.use_kl_in_reward:
        old = dist.all_gather_rows(batch["old_log_probs"])
        ref = dist.all_gather_rows(batch["ref_log_prob"])
        rewards, kl_metrics = algos.apply_kl_penalty(scores, old, ref, mask, kl_ctrl, cfg.algorithm.kl_penalty)
        metrics.update(kl_metrics)
    values = dist.all_gather_rows(batch["values"]) if "values" in batch else None
    baselines = dist.all_gather_rows(batch["reward_baselines"]) if "reward_baselines" in batch else None
    adv, ret = compute_advantage(
        cfg.algorithm.adv_estimator,
        rewards,
        mask,
        [i for i in global_idx for _ in range(n)],
        values=values,
        reward_baselines=baselines,
        gamma=float(cfg.algorithm.gamma),
        lam=float(cfg.algorithm.lam),
        norm_adv_by_std_in_grpo=cfg.algorithm.norm_adv_by_std_in_grpo,
    )
    rows = batch["response_mask"].shape[0]
    lo = rank * rows
    batch["advantages"], batch["returns"] = adv[lo : lo + rows], ret[lo : lo + rows]
    prompt_lens = dist.all_gather_rows(batch["prompt_lens"])
    max_p = cfg.data.max_prompt_length
    prompt_mask = (torch.arange(max_p)[None, :] < prompt_lens[:, None]).float().to(mask.device)
    metrics.update(
        algos.compute_data_metrics(
            token_level_scores=scores,
            token_level_rewards=rewards,
            advantages=adv,
            returns=ret,
            response_mask=mask,
            prompt_mask=prompt_mask,
            max_response_length=cfg.data.max_response_length,
            max_prompt_length=max_p,
            values=values,
        )
    )
    ent = algos.masked_mean(entropy, batch["response_mask"]).item()
    metrics["actor/entropy"] = dist.all_reduce_scalars([ent], "mean")[0]
    return metrics
