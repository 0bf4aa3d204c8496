"""The bodies a rank posts to its server's token-in/token-out route (`vllm_server.GENERATE`): pure, torch-free.

One request per prompt carrying all n samples, so the server shares the prompt's prefill among them. The
benchmarks (benchmarks/vllm_request_modes.py) send exactly these bodies, so what they time is what the trainer asks.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from dsrl.rollout import Sampling, new_token_cap

FINAL_ONLY = 2
"""vLLM's RequestOutputKind.FINAL_ONLY: one answer with all n samples. The route's default (cumulative) sends the
newest samples only, so a request could come back with fewer than n (seen on vLLM 0.24)."""


def generate_requests(
    prompts: Sequence[Sequence[int]],
    n: int,
    sampling: Sampling,
    seed: int,
    eos_ids: Collection[int],
    log_probs: bool,
) -> list[dict[str, Any]]:
    """One `/inference/v1/generate` body per prompt.

    vLLM seeds the n samples of a request with seed, seed+1, ..., seed+n-1, so each prompt gets its own range (or
    prompts would share random streams); seeded sampling makes a resumed run sample what an uninterrupted one did.
    A tokens-only server has no tokenizer and so no EOS of its own: it stops on the trainer's `eos_ids`.
    """
    params: dict[str, Any] = {
        "n": n,
        "ignore_eos": sampling.ignore_eos,
        "stop_token_ids": [] if sampling.ignore_eos else sorted(eos_ids),
        "detokenize": False,
        "skip_special_tokens": False,
        "output_kind": FINAL_ONLY,
    }
    if log_probs:
        params["logprobs"] = 0  # the sampled token's log-prob only
    if sampling.do_sample and sampling.temperature > 0:
        params.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
    else:
        params.update(temperature=0.0)
    return [
        {
            "token_ids": list(p),
            "sampling_params": {
                **params,
                "max_tokens": new_token_cap(len(p), sampling),
                "seed": (seed + i * n) % 2**63,
            },
        }
        for i, p in enumerate(prompts)
    ]
