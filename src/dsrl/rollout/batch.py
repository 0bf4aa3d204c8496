"""A rollout's output as the workers' padded tensors, and the sampler-vs-trainer log-prob check."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def assemble_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    n: int,
    pad_id: int,
    response_length: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Left-pad prompts (repeated n times) and right-pad responses into the workers' batch layout.

    `prompt_lens` / `response_lens` stay on the host: the workers slice micro batches without device syncs.
    """
    if len(responses) != len(prompts) * n:
        raise ValueError(
            f"expected {len(prompts) * n} responses for {len(prompts)} prompts x n={n}, got {len(responses)}"
        )
    rows = [list(p) for p in prompts for _ in range(n)]
    plen = max(len(p) for p in rows)
    total = plen + response_length
    ids = torch.full((len(rows), total), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), total), dtype=torch.long)
    for i, (p, r) in enumerate(zip(rows, responses, strict=True)):
        r = list(r)[:response_length]
        ids[i, plen - len(p) : plen] = torch.tensor(p, dtype=torch.long)
        mask[i, plen - len(p) : plen] = 1
        if r:
            ids[i, plen : plen + len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, plen : plen + len(r)] = 1
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    host = {
        "prompt_lens": torch.tensor([len(p) for p in rows], dtype=torch.long),
        "response_lens": torch.tensor([min(len(r), response_length) for r in responses], dtype=torch.long),
    }
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": position_ids,
        "responses": ids[:, plen:].clone(),
        "response_mask": mask[:, plen:].float(),
    }
    return {**{k: v.to(device) for k, v in batch.items()}, **host}


def rollout_probs_diff(
    sampler_log_probs: Sequence[Sequence[float]], old_log_probs: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, float]:
    """verl's `training/rollout_probs_diff_{max,mean,std}`: |p_sampler - p_trainer| per response token, over all
    ranks. Near zero means the sampler ran the trainer's current weights; a stale server shows up at once."""
    from dsrl import dist

    sampler = torch.zeros_like(old_log_probs)
    for i, row in enumerate(sampler_log_probs):
        row = list(row)[: sampler.shape[1]]
        sampler[i, : len(row)] = torch.tensor(row, dtype=sampler.dtype)
    mask = response_mask.bool()
    diff = (sampler.exp() - old_log_probs.float().exp()).abs()[mask].double()
    total, count, squares = dist.all_reduce_scalars(
        [diff.sum().item(), float(diff.numel()), diff.square().sum().item()], "sum"
    )
    (top,) = dist.all_reduce_scalars([diff.max().item() if diff.numel() else 0.0], "max")
    mean = total / max(count, 1.0)
    var = max(squares / max(count, 1.0) - mean * mean, 0.0)
    return {
        "training/rollout_probs_diff_max": top,
        "training/rollout_probs_diff_mean": mean,
        "training/rollout_probs_diff_std": var**0.5,
    }
