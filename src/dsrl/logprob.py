"""Per-token log-probs (and entropy) over the vocabulary in row chunks, without whole-batch fp32 logits.

The plain path (`logits.float()`, `/ temperature`, `cross_entropy`, and for the entropy a softmax) keeps several fp32
copies of the [tokens, vocabulary] logits alive for the backward: at 8k response tokens x 151,936 (Qwen3) each is
~5 GB. Here the forward keeps only the 16-bit logits the LM head produced and one log-sum-exp per token; the backward
recomputes each chunk's softmax in fp32 and writes the 16-bit gradient. Values and gradients are those of the plain
path up to floating-point summation order.
"""

from __future__ import annotations

import torch


class _ChunkedLogProbs(torch.autograd.Function):
    """log p(label) and entropy of softmax(logits / temperature), row chunk by row chunk."""

    @staticmethod
    def forward(ctx, logits, labels, temperature: float, chunk: int, with_entropy: bool):
        n = logits.shape[0]
        lp = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(lp)
        ent = torch.empty_like(lp) if with_entropy else lp.new_empty(0)
        for s in range(0, n, chunk):
            x = _scaled(logits[s : s + chunk], temperature)
            lse_c = torch.logsumexp(x, dim=-1)
            lse[s : s + chunk] = lse_c
            lp[s : s + chunk] = x.gather(-1, labels[s : s + chunk, None]).squeeze(-1) - lse_c
            if with_entropy:
                ent[s : s + chunk] = lse_c - (torch.exp(x - lse_c[:, None]) * x).sum(-1)
        ctx.save_for_backward(logits, labels, lse)
        ctx.temperature, ctx.chunk, ctx.with_entropy = temperature, chunk, with_entropy
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        logits, labels, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk):
            e = s + ctx.chunk
            x = _scaled(logits[s:e], ctx.temperature)
            p = torch.exp(x - lse[s:e, None])
            gx = p * -g_lp[s:e, None]  # d log p(label) / dx = onehot(label) - p
            gx.scatter_add_(-1, labels[s:e, None], g_lp[s:e, None])
            if ctx.with_entropy and g_ent is not None:
                mean_x = (p * x).sum(-1, keepdim=True)  # d entropy / dx = -p (x - E_p[x])
                gx -= p * (x - mean_x) * g_ent[s:e, None]
            if ctx.temperature != 1.0:
                gx /= ctx.temperature
            grad[s:e] = gx
        return grad, None, None, None, None


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature if x.dtype == logits.dtype else x.div_(temperature)
    return x


def chunked_log_probs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, chunk: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 log-probs of `labels` under softmax(logits / temperature) and (optionally) the entropy; [N, V] logits."""
    lp, ent = _ChunkedLogProbs.apply(logits, labels, float(temperature or 1.0), int(chunk), with_entropy)
    return lp, ent if with_entropy else None
