"""Forward math of the workers on a real tiny model, single process (no DeepSpeed engine needed)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dsrl import workers as W  # noqa: E402
from dsrl.models import resolve_model_path  # noqa: E402
from dsrl.rollout import Sampling, new_token_cap, trim_response  # noqa: E402
from dsrl.rollout.batch import assemble_batch  # noqa: E402
from dsrl.rollout.hf import HFRollout  # noqa: E402

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = resolve_model_path("random:tiny", cache_dir=tmp_path_factory.mktemp("models"))
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def _batch():
    prompts = [[11, 12, 13, 14, 15], [21, 22], [31, 32, 33]]
    responses = [[41, 42, 43], [51], [61, 62, 63, 64], [71, 72], [81, 82, 83], [91]]
    return assemble_batch(prompts, responses, n=2, pad_id=0, response_length=6, device=torch.device("cpu"))


def test_assemble_batch_layout():
    b = _batch()
    assert b["input_ids"].shape == (6, 5 + 6)
    assert b["response_mask"].sum(1).tolist() == [3, 1, 4, 2, 3, 1]
    # prompt 1 ([21, 22]) is left-padded and repeated n=2 times
    assert b["input_ids"][2, :5].tolist() == [0, 0, 0, 21, 22]
    assert b["input_ids"][3, :5].tolist() == [0, 0, 0, 21, 22]
    assert b["position_ids"][2, 3:6].tolist() == [0, 1, 2]
    assert b["responses"][0, :3].tolist() == [41, 42, 43]


def test_trim_response_keeps_first_eos():
    assert trim_response([5, 6, 2, 7, 2], {2}) == [5, 6, 2]
    assert trim_response([5, 6, 2, 7], {2}, ignore_eos=True) == [5, 6, 2, 7]


def test_new_token_cap_is_verls_per_request_budget():
    capped = Sampling(max_new_tokens=512, max_model_len=512)
    assert new_token_cap(100, capped) == 412  # min(512, 512 - 100)
    assert new_token_cap(3, Sampling(max_new_tokens=8, max_model_len=512)) == 8
    assert new_token_cap(600, Sampling(max_new_tokens=8)) == 8  # no max_model_len: the response length
    with pytest.raises(ValueError, match="no room to generate"):
        new_token_cap(512, capped)


def test_hf_rollout_caps_each_prompt_as_if_generated_alone(tiny):
    """One batched generate, each row cut at its own cap, equals generating every prompt with its own budget."""
    tokenizer = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1})()
    rollout = HFRollout(engine=None, tokenizer=tokenizer, device=torch.device("cpu"))
    rows = [[11, 12, 13, 14, 15, 16, 17], [21, 22], [31, 32, 33, 34]]
    s = Sampling(max_new_tokens=6, do_sample=False, ignore_eos=True, max_model_len=10)
    out = rollout._generate(tiny, rows, s)
    assert [len(r) for r in out] == [3, 6, 6]  # min(6, 10 - prompt length)
    for row, got in zip(rows, out, strict=True):
        alone = Sampling(max_new_tokens=new_token_cap(len(row), s), do_sample=False, ignore_eos=True)
        assert got == rollout._generate(tiny, [row], alone)[0]


def test_packed_and_padded_log_probs_agree(tiny):
    b = _batch()
    with torch.no_grad():
        packed, ent_packed = W.log_probs_of(tiny, b, 1.0, remove_padding=True, with_entropy=True)
        padded, ent_padded = W.log_probs_of(tiny, b, 1.0, remove_padding=False, with_entropy=True)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ent_packed, ent_padded, atol=1e-5, rtol=1e-4)
    assert (padded[b["response_mask"] == 0] == 0).all()
    assert (padded[b["response_mask"] == 1] < 0).all()


def test_log_probs_match_an_unbatched_reference(tiny):
    """Row 0 alone, no padding at all, scored token by token with plain log_softmax."""
    b = _batch()
    ids = torch.tensor([[11, 12, 13, 14, 15, 41, 42, 43]])
    with torch.no_grad():
        logits = tiny(input_ids=ids).logits[0]
        ref = torch.log_softmax(logits[4:7] / 0.7, -1).gather(-1, ids[0, 5:8, None]).squeeze(-1)
        got, _ = W.log_probs_of(tiny, b, 0.7, remove_padding=False)
    torch.testing.assert_close(got[0, :3], ref, atol=1e-5, rtol=1e-4)


def test_forward_in_micro_batches_restores_order(tiny):
    b = _batch()
    with torch.no_grad():
        whole, _ = W.log_probs_of(tiny, b, 1.0, remove_padding=False)
    (chunked,) = W.forward_in_micro_batches(lambda mb: W.log_probs_of(tiny, mb, 1.0, False)[0], b, 4, None)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)
    (packed,) = W.forward_in_micro_batches(lambda mb: W.log_probs_of(tiny, mb, 1.0, True)[0], b, 1, 12)
    torch.testing.assert_close(packed, whole, atol=1e-5, rtol=1e-4)
