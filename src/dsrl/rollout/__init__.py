"""Rollout backends behind one narrow seam: prompt token ids in, response token ids out.

A backend implements `Rollout`; `dsrl.rollout.batch.assemble_batch` turns its output into the padded tensors the
workers use, so a new backend (vLLM over HTTP) never touches training code. This module stays torch-free: the
launcher's preflight imports the vLLM layout and version checks below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    do_sample: bool = True
    ignore_eos: bool = False
    max_model_len: int | None = None


def sampling_from(cfg: Any, val: bool = False) -> Sampling:
    """The rollout's sampling knobs (`rollout.*`, or `rollout.val_kwargs.*` for validation) from a dsrl config."""
    r = cfg.actor_rollout_ref.rollout
    src = r.val_kwargs if val else r
    return Sampling(
        max_new_tokens=cfg.data.max_response_length,
        temperature=float(src.temperature),
        top_p=float(src.top_p),
        top_k=src.top_k,
        do_sample=src.do_sample,
        ignore_eos=r.ignore_eos,
        max_model_len=r.max_model_len,
    )


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
    log_probs: list[list[float]] | None
    """The sampler's log-probs of the last `generate`'s response tokens, when the backend reports them."""

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


def eos_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's EOS as a set: `eos_token_id` is an int, a list (several end tokens) or None."""
    eos = tokenizer.eos_token_id
    return {eos} if isinstance(eos, int) else set(eos or [])


def trim_response(tokens: Sequence[int], eos_ids: set[int], ignore_eos: bool = False) -> list[int]:
    """Cut a generated continuation after its first EOS (kept, as verl does); what follows is padding."""
    out = list(tokens)
    if ignore_eos:
        return out
    for i, t in enumerate(out):
        if t in eos_ids:
            return out[: i + 1]
    return out
