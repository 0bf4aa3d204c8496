"""Chunked log-probs over the vocabulary: the same values and gradients as the whole-batch fp32 path."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dsrl import algorithms as algos  # noqa: E402
from dsrl.logprob import chunked_log_probs  # noqa: E402


def _plain(logits, labels, temperature):
    x = logits / temperature
    lp = -torch.nn.functional.cross_entropy(x, labels, reduction="none")
    return lp, algos.entropy_from_logits(x)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_log_probs_equal_cross_entropy(temperature, chunk):
    """Both paths in fp32 against the float64 truth: the chunked one is about as close as the plain one."""
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(13, 50, generator=gen)).requires_grad_()
    labels = torch.randint(0, 50, (13,), generator=gen)
    w_lp, w_ent = torch.randn(13, generator=gen), torch.randn(13, generator=gen)

    def run(fn, x):
        lp, ent = fn(x, labels, temperature)
        (g,) = torch.autograd.grad((lp * w_lp).sum() + (ent * w_ent).sum(), x)
        return lp.double(), ent.double(), g.double()

    truth = run(_plain, logits.detach().double().requires_grad_())
    plain = run(_plain, logits)
    chunked = run(lambda a, b, t: chunked_log_probs(a, b, t, chunk, True), logits)
    for got, ref, want in zip(chunked, plain, truth, strict=True):
        assert (got - want).abs().max() <= max(4 * (ref - want).abs().max(), 1e-6)  # fp32 rounding, same order
        torch.testing.assert_close(got, want, atol=3e-5, rtol=1e-5)


def test_bf16_logits_get_bf16_gradients_of_the_fp32_math():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 40, generator=gen).bfloat16().requires_grad_()
    labels = torch.randint(0, 40, (9,), generator=gen)
    lp, ent = chunked_log_probs(logits, labels, 1.0, 4, False)
    assert ent is None and lp.dtype == torch.float32
    lp.sum().backward()
    ref = logits.detach().float().requires_grad_()
    _plain(ref, labels, 1.0)[0].sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(lp, _plain(ref.detach(), labels, 1.0)[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits.grad, ref.grad.bfloat16(), atol=0, rtol=0)


@pytest.mark.parametrize("remove_padding", [False, True])
def test_log_probs_of_is_unchanged_by_chunking(monkeypatch, remove_padding):
    pytest.importorskip("transformers")
    from tiny_models import tiny_causal_lm

    from dsrl import workers as W
    from dsrl.rollout.batch import assemble_batch

    model = tiny_causal_lm()
    b = assemble_batch([[11, 12, 13], [21]], [[41, 42], [51, 52, 53]], 1, 0, 4, torch.device("cpu"))
    outs = []
    for chunk in (None, 3):
        monkeypatch.setattr(W, "LOG_PROB_CHUNK_ROWS", chunk)
        model.zero_grad()
        lp, ent = W.log_probs_of(model, b, 0.9, remove_padding, with_entropy=True)
        (lp.sum() + 0.1 * ent.sum()).backward()
        outs.append((lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-5)
    for a, c in zip(outs[1][2], outs[0][2], strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
