"""Rollout backends behind one narrow seam: prompt token ids in, response token ids out.

A backend implements `Rollout`; `assemble_batch` turns its output into the padded tensors the workers use, so a
new backend (vLLM over HTTP) never touches training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    do_sample: bool = True
    ignore_eos: bool = False
    max_model_len: int | None = None


def new_token_cap(prompt_len: int, sampling: Sampling) -> int:
    """verl's per-request budget: ``min(response_length, max_model_len - len(prompt_ids))`` new tokens.

    A configuration whose prompt + response length exceeds the rollout's context stays valid; only prompts that
    leave no room for a single token are an error (as in verl's vLLM server).
    """
    if sampling.max_model_len is None:
        return sampling.max_new_tokens
    room = sampling.max_model_len - prompt_len
    if room < 1:
        raise ValueError(
            f"Prompt length ({prompt_len}) leaves no room to generate within "
            f"actor_rollout_ref.rollout.max_model_len={sampling.max_model_len}; need at least 1 token of headroom."
        )
    return min(sampling.max_new_tokens, room)


class Rollout(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: Sampling, seed: int) -> list[list[int]]:
        """Responses in prompt-major order: prompt 0's n samples, then prompt 1's, ..."""
        ...

    def sync_weights(self) -> None:
        """Make the next `generate` use the actor's current weights."""
        ...

    def timings(self) -> dict[str, float]:
        """Seconds spent in named sub-phases of the last `generate` (logged as `timing_s/gen/<name>`)."""
        ...

    def close(self) -> None: ...


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


def trim_response(tokens: Sequence[int], eos_ids: set[int], ignore_eos: bool = False) -> list[int]:
    """Cut a generated continuation after its first EOS (kept, as verl does); what follows is padding."""
    out = list(tokens)
    if ignore_eos:
        return out
    for i, t in enumerate(out):
        if t in eos_ids:
            return out[: i + 1]
    return out
