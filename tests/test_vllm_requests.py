"""The bodies ranks post to a tokens-only vLLM server: what the GPU benchmarks time is what the trainer sends."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dsrl.rollout import Sampling, eos_ids
from dsrl.rollout.vllm_requests import FINAL_ONLY, generate_requests


@pytest.mark.parametrize(("eos", "expected"), [(2, {2}), ([2, 7], {2, 7}), (None, set())])
def test_eos_ids_take_every_form_of_a_tokenizers_eos(eos, expected):
    """A server without a tokenizer stops only on these: an EOS list (several end tokens) must not lose any."""
    assert eos_ids(SimpleNamespace(eos_token_id=eos)) == expected


def test_each_prompt_gets_its_own_seed_range_and_budget():
    prompts = [[1, 2, 3], [4] * 10]
    sampling = Sampling(max_new_tokens=8, max_model_len=16)
    bodies = generate_requests(prompts, 4, sampling, seed=100, eos_ids={2, 7}, log_probs=False)
    assert [b["token_ids"] for b in bodies] == prompts
    params = [b["sampling_params"] for b in bodies]
    # vLLM seeds sample j of a request with seed + j: prompt i's range starts after prompt i-1's n samples
    assert [p["seed"] for p in params] == [100, 104]
    assert [p["max_tokens"] for p in params] == [8, 6]  # verl's min(response_length, max_model_len - prompt)
    assert all(p["n"] == 4 and p["stop_token_ids"] == [2, 7] for p in params)
    assert all(p["output_kind"] == FINAL_ONLY and p["detokenize"] is False for p in params)
    assert all("logprobs" not in p for p in params)


def test_log_probs_greedy_and_ignore_eos_reach_the_sampling_params():
    greedy = Sampling(max_new_tokens=4, do_sample=False, ignore_eos=True)
    (body,) = generate_requests([[5]], 1, greedy, seed=2**63 + 3, eos_ids={2}, log_probs=True)
    params = body["sampling_params"]
    assert params["logprobs"] == 0 and params["temperature"] == 0.0 and "top_p" not in params
    assert params["ignore_eos"] is True and params["stop_token_ids"] == []
    assert params["seed"] == 3  # seeds wrap into vLLM's signed 64-bit range

    sampled = Sampling(max_new_tokens=4, temperature=0.7, top_p=0.9, top_k=20)
    (body,) = generate_requests([[5]], 2, sampled, seed=0, eos_ids=set(), log_probs=False)
    assert {k: body["sampling_params"][k] for k in ("temperature", "top_p", "top_k")} == {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
    }


def test_a_prompt_that_leaves_no_room_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="max_model_len=4"):
        generate_requests([[1, 2, 3, 4]], 1, Sampling(max_new_tokens=2, max_model_len=4), 0, {2}, False)
