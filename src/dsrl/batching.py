"""Batch semantics (verl's): how a global batch of prompts becomes per-rank mini and micro batches.

Per-rank mini batch = `ppo_mini_batch_size * rollout.n / dp`; GAS = per-rank mini / micro; DeepSpeed
`train_batch_size = micro * GAS * dp`. With `use_dynamic_bsz`, micro batches are packed up to a token budget instead.
Pure functions: no torch, no DeepSpeed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from dsrl.config import ConfigError, use_critic


@dataclass(frozen=True)
class UpdatePlan:
    """How one model (actor or critic) consumes the per-rank batch in an update."""

    mini_per_rank: int  # sequences per rank per optimizer step
    micro: int  # sequences per forward/backward (nominal when dynamic)
    gas: int  # micro batches per mini batch (nominal when dynamic)
    num_minis: int  # optimizer steps per epoch
    dynamic: bool
    max_tokens: int  # token budget per micro batch when dynamic

    def ds_batch_sizes(self, world_size: int) -> dict[str, int]:
        return {
            "train_micro_batch_size_per_gpu": self.micro,
            "gradient_accumulation_steps": self.gas,
            "train_batch_size": self.micro * self.gas * world_size,
        }


@dataclass(frozen=True)
class BatchPlan:
    world_size: int
    n: int
    prompts_per_rank: int
    sequences_per_rank: int
    actor: UpdatePlan
    critic: UpdatePlan | None
    log_prob_micro: int
    ref_log_prob_micro: int
    values_micro: int
    # Token budgets of the forward-only passes (None: fixed micro batches of the sizes above).
    log_prob_max_tokens: int | None
    ref_log_prob_max_tokens: int | None
    values_max_tokens: int | None


def _per_gpu_micro(section: DictConfig, prefix: str, key: str, world_size: int) -> int | None:
    """verl accepts a global micro size (deprecated) or a per-GPU one; dsrl normalises to per-GPU."""
    per_gpu = section.get(f"{key}_per_gpu")
    if per_gpu is not None:
        if per_gpu < 1:
            raise ConfigError(f"{prefix}.{key}_per_gpu={per_gpu} must be >= 1")
        return int(per_gpu)
    total = section.get(key)
    if total is None:
        return None
    if total % world_size:
        raise ConfigError(f"{prefix}.{key}={total} is not divisible by the {world_size} ranks")
    return int(total // world_size)


def _update_plan(
    section: DictConfig, prefix: str, n: int, world_size: int, seqs_per_rank: int, max_seq: int
) -> UpdatePlan:
    mini_prompts = section.ppo_mini_batch_size
    if mini_prompts < 1:
        raise ConfigError(f"{prefix}.ppo_mini_batch_size={mini_prompts} must be >= 1")
    if (mini_prompts * n) % world_size:
        raise ConfigError(
            f"{prefix}.ppo_mini_batch_size * rollout.n = {mini_prompts} * {n} is not divisible by dp={world_size}"
        )
    mini = mini_prompts * n // world_size
    if mini > seqs_per_rank or seqs_per_rank % mini:
        raise ConfigError(
            f"{prefix}.ppo_mini_batch_size={mini_prompts} does not divide data.train_batch_size evenly "
            f"({seqs_per_rank} sequences per rank, {mini} per mini batch)"
        )
    dynamic = bool(section.use_dynamic_bsz)
    max_tokens = int(section.ppo_max_token_len_per_gpu)
    micro = _per_gpu_micro(section, prefix, "ppo_micro_batch_size", world_size)
    if dynamic:
        if max_tokens < max_seq:
            raise ConfigError(
                f"{prefix}.ppo_max_token_len_per_gpu={max_tokens} is smaller than one full sequence "
                f"(max_prompt_length + max_response_length = {max_seq})"
            )
        micro = micro or 1
        micro = min(micro, mini)
    else:
        if micro is None:
            raise ConfigError(f"set {prefix}.ppo_micro_batch_size_per_gpu (or use_dynamic_bsz=True)")
        if micro > mini:
            raise ConfigError(
                f"{prefix}.ppo_micro_batch_size_per_gpu={micro} is larger than the per-rank mini batch ({mini} = "
                f"ppo_mini_batch_size {mini_prompts} * n {n} / dp {world_size})"
            )
        if mini % micro:
            raise ConfigError(
                f"{prefix}.ppo_micro_batch_size_per_gpu={micro} does not divide the per-rank mini batch of {mini}"
            )
    return UpdatePlan(
        mini_per_rank=mini,
        micro=micro,
        gas=max(1, mini // micro),
        num_minis=seqs_per_rank // mini,
        dynamic=dynamic,
        max_tokens=max_tokens,
    )


def plan_batches(cfg: DictConfig, world_size: int) -> BatchPlan:
    """Derive every per-rank size from the config and the launch, or fail naming the key at fault."""
    n = int(cfg.actor_rollout_ref.rollout.n)
    prompts = int(cfg.data.train_batch_size)
    if prompts % world_size:
        raise ConfigError(
            f"data.train_batch_size={prompts} is not divisible by dp={world_size} (each rank rolls out whole prompts)"
        )
    seqs = prompts // world_size * n
    max_seq = int(cfg.data.max_prompt_length + cfg.data.max_response_length)
    actor = _update_plan(cfg.actor_rollout_ref.actor, "actor_rollout_ref.actor", n, world_size, seqs, max_seq)
    critic = None
    if use_critic(cfg):
        critic = _update_plan(cfg.critic, "critic", n, world_size, seqs, max_seq)
    rollout, ref = cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.ref
    log_prob = _per_gpu_micro(rollout, "actor_rollout_ref.rollout", "log_prob_micro_batch_size", world_size)
    ref_micro = _per_gpu_micro(ref, "actor_rollout_ref.ref", "log_prob_micro_batch_size", world_size)
    values = cfg.critic.forward_micro_batch_size_per_gpu
    return BatchPlan(
        world_size=world_size,
        n=n,
        prompts_per_rank=prompts // world_size,
        sequences_per_rank=seqs,
        actor=actor,
        critic=critic,
        log_prob_micro=log_prob or actor.micro,
        ref_log_prob_micro=ref_micro or log_prob or actor.micro,
        values_micro=int(values) if values else (critic.micro if critic else actor.micro),
        log_prob_max_tokens=rollout.log_prob_max_token_len_per_gpu if rollout.log_prob_use_dynamic_bsz else None,
        ref_log_prob_max_tokens=ref.log_prob_max_token_len_per_gpu if ref.log_prob_use_dynamic_bsz else None,
        values_max_tokens=cfg.critic.forward_max_token_len_per_gpu if cfg.critic.use_dynamic_bsz else None,
    )


def fixed_micro_batches(num: int, micro: int) -> list[list[int]]:
    """Consecutive index chunks of `micro` (the last may be smaller)."""
    return [list(range(start, min(start + micro, num))) for start in range(0, num, micro)]


def min_token_bins(lengths: Sequence[int], max_tokens: int) -> int:
    """The fewest bins this rank needs; ranks agree on the max of it before packing (all ranks step together)."""
    if not lengths:
        return 1
    return max(1, math.ceil(sum(lengths) / max_tokens))


def pack_by_tokens(lengths: Sequence[int], max_tokens: int, num_bins: int) -> list[list[int]]:
    """Split sequence indices into at least `num_bins` micro batches of at most `max_tokens` tokens each.

    Longest-first greedy onto the lightest bin balances work across micro batches; if a bin would overflow, one
    more bin is added and packing restarts, so the result can have more than `num_bins` bins: callers agree on the
    count across ranks and repack until every rank has the same number (all ranks must step together). Indices
    inside a bin keep their original order; no bin is empty.
    """
    if any(length > max_tokens for length in lengths):
        raise ValueError(f"a sequence of {max(lengths)} tokens exceeds the micro batch budget of {max_tokens}")
    bins = max(1, min(num_bins, len(lengths)) if lengths else 1)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    while True:
        heap = [(0, b) for b in range(bins)]
        members: list[list[int]] = [[] for _ in range(bins)]
        ok = True
        for i in order:
            load, b = heapq.heappop(heap)
            if load + lengths[i] > max_tokens:
                ok = False
                break
            members[b].append(i)
            heapq.heappush(heap, (load + lengths[i], b))
        if ok:
            return [sorted(m) for m in members]
        bins += 1
