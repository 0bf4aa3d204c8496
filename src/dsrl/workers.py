"""Actor, critic and reference computations on DeepSpeed engines: log-probs, values and PPO updates.

A rollout batch is a dict of tensors on the rank's device:
  input_ids / attention_mask / position_ids  [B, P+R]  prompt left-padded to P, response right-padded to R
  responses / response_mask                  [B, R]
and the per-token tensors the trainer adds (old_log_probs, ref_log_prob, values, advantages, returns).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from dsrl import algorithms as algos
from dsrl import dist
from dsrl import policy_losses as PL
from dsrl.batching import UpdatePlan, fixed_micro_batches, min_token_bins, pack_by_tokens
from dsrl.logprob import chunked_log_probs
from dsrl.packed_attention import packed_kwargs

Batch = dict[str, torch.Tensor]

LOG_PROB_CHUNK_ROWS: int | None = None
"""Rows per chunk of `logprob.chunked_log_probs` (no whole-micro-batch fp32 logits); None: fp32 `cross_entropy` over
the whole micro batch. A process-wide switch so benchmarks/update_breakdown.py can time both on one engine."""


def select(batch: Batch, idx: Sequence[int]) -> Batch:
    index = torch.as_tensor(list(idx), dtype=torch.long)
    out = {}
    for k, v in batch.items():
        out[k] = v.index_select(0, index if v.device.type == "cpu" else index.to(v.device, non_blocking=True))
    return out


def _layout(mb: Batch, resp_len: int) -> tuple[int, int, int, list[int], list[int]]:
    """Host-side trimming: (first kept column, prompt columns kept, response columns kept, per-row lengths)."""
    prompt_lens = mb["prompt_lens"].tolist()
    resp_lens = mb["response_lens"].tolist()
    prompt_cols = mb["input_ids"].shape[1] - resp_len
    keep_prompt = max(max(prompt_lens), 1)  # the last prompt position predicts the first response token
    keep_resp = max(max(resp_lens), 1)
    return prompt_cols - keep_prompt, keep_prompt, keep_resp, prompt_lens, resp_lens


def _response_rows(
    model: torch.nn.Module, mb: Batch, resp_len: int, remove_padding: bool, lm: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run the model; return the output rows that predict each response token ([b, r, H]) and their labels.

    Causal LMs get `logits_to_keep`, so the vocabulary projection runs only on response-predicting positions.
    """
    first, p_cols, keep, prompt_lens, resp_lens = _layout(mb, resp_len)
    ids = mb["input_ids"][:, first : first + p_cols + keep]
    labels = ids[:, p_cols:]
    b, width = ids.shape
    if remove_padding:
        # packed order: row by row, each row's valid span [p_cols - p_i, p_cols + r_i)
        starts = [i * width + p_cols - p for i, p in enumerate(prompt_lens)]
        lens = [p + r for p, r in zip(prompt_lens, resp_lens, strict=True)]
        gather = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lens, strict=True)])
        pos = torch.cat([torch.arange(n) for n in lens])
        offsets = torch.tensor([0, *lens[:-1]]).cumsum(0)
        # packed index of the position predicting response token j of row i: offset_i + p_i - 1 + j (clamped to row)
        want = (offsets + torch.tensor(prompt_lens) - 1)[:, None] + torch.arange(keep)[None, :]
        last = (offsets + torch.tensor(lens) - 1)[:, None]
        src = torch.minimum(want, last).flatten()
        dev = ids.device
        packed_ids = ids.flatten().index_select(0, gather.to(dev, non_blocking=True)).unsqueeze(0)
        kwargs = {
            "position_ids": pos.to(dev, non_blocking=True).unsqueeze(0),
            "use_cache": False,
            **packed_kwargs(lens, dev),  # sequence boundaries for dsrl_packed and flash_attention_2
        }
        if lm:
            out = model(input_ids=packed_ids, logits_to_keep=src.to(dev, non_blocking=True), **kwargs).logits[0]
        else:
            out = model(input_ids=packed_ids, **kwargs).logits[0].index_select(0, src.to(dev, non_blocking=True))
        rows = out.view(b, keep, -1)
    else:
        mask = mb["attention_mask"][:, first : first + p_cols + keep]
        pos = mb["position_ids"][:, first : first + p_cols + keep]
        if lm:
            out = model(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=keep + 1
            ).logits
            rows = out[:, :keep]
        else:
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
            rows = out[:, p_cols - 1 : p_cols - 1 + keep]
    return rows, labels, keep


def _pad_to(t: torch.Tensor, length: int) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    return torch.nn.functional.pad(t, (0, length - t.shape[1]))


def log_probs_of(
    model: torch.nn.Module,
    mb: Batch,
    temperature: float,
    remove_padding: bool,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of the sampled responses (and entropy), [b, R], zero past each response's end."""
    resp_len = mb["responses"].shape[1]
    logits, labels, _ = _response_rows(model, mb, resp_len, remove_padding, lm=True)
    mask = mb["response_mask"]
    if LOG_PROB_CHUNK_ROWS:
        lp, ent = chunked_log_probs(
            logits.flatten(0, 1), labels.flatten(), temperature, LOG_PROB_CHUNK_ROWS, with_entropy
        )
        lp = _pad_to(lp.view(labels.shape), resp_len) * mask
        return lp, None if ent is None else _pad_to(ent.view(labels.shape), resp_len) * mask
    logits = logits.float()
    if temperature and temperature != 1.0:
        logits = logits / temperature
    # fused log-softmax + gather (and a single softmax-minus-onehot kernel in backward)
    flat = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    lp = -flat.view(labels.shape)
    lp = _pad_to(lp, resp_len) * mask
    ent = None
    if with_entropy:
        ent = _pad_to(algos.entropy_from_logits(logits), resp_len) * mask
    return lp, ent


def values_of(model: torch.nn.Module, mb: Batch, remove_padding: bool) -> torch.Tensor:
    """Critic values at the positions that predict each response token (verl's alignment), [b, R]."""
    resp_len = mb["responses"].shape[1]
    rows, _, _ = _response_rows(model, mb, resp_len, remove_padding, lm=False)
    return _pad_to(rows.squeeze(-1).float(), resp_len) * mb["response_mask"]


def _micro_batches(mb_len: Sequence[int], micro: int, max_tokens: int | None) -> list[list[int]]:
    """Fixed-size micro batches, or token-budget packing with the bin count agreed across ranks."""
    if max_tokens is None:
        return fixed_micro_batches(len(mb_len), micro)
    bins = int(dist.all_reduce_scalars([min_token_bins(mb_len, max_tokens)], "max")[0])
    while True:
        packed = pack_by_tokens(mb_len, max_tokens, bins)
        agreed = int(dist.all_reduce_scalars([len(packed)], "max")[0])
        if agreed == len(packed) and int(dist.all_reduce_scalars([len(packed)], "min")[0]) == agreed:
            return packed
        bins = agreed


def seq_lengths(batch: Batch) -> list[int]:
    return (batch["prompt_lens"] + batch["response_lens"]).tolist()


@torch.no_grad()
def forward_in_micro_batches(
    fn: Callable[[Batch], torch.Tensor | tuple[torch.Tensor, ...]],
    batch: Batch,
    micro: int,
    max_tokens: int | None,
) -> list[torch.Tensor]:
    """Run a no-grad forward over the batch in micro batches and reassemble outputs in the original order."""
    groups = _micro_batches(seq_lengths(batch), micro, max_tokens)
    outs: list[list[torch.Tensor]] = []
    order: list[int] = []
    for idx in groups:
        res = fn(select(batch, idx))
        res = res if isinstance(res, tuple) else (res,)
        outs.append([r for r in res])
        order.extend(idx)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.as_tensor(order)] = torch.arange(len(order))
    merged = []
    for j in range(len(outs[0])):
        if outs[0][j] is None:
            merged.append(None)
            continue
        cat = torch.cat([o[j] for o in outs])
        merged.append(cat.index_select(0, inverse.to(cat.device)))
    return merged


def _mean_metrics(rows: list[dict[str, torch.Tensor | float]], device: torch.device) -> dict[str, float]:
    """Average per-micro-batch metrics on the device and read them back in one transfer (one host sync)."""
    acc: dict[str, list[torch.Tensor]] = defaultdict(list)
    for row in rows:
        for k, v in row.items():
            acc[k].append(torch.as_tensor(v, dtype=torch.float32, device=device).detach().reshape(()))
    keys = sorted(acc)
    if not keys:
        return {}
    means = torch.stack([torch.stack(acc[k]).mean() for k in keys]).tolist()
    return dict(zip(keys, dist.all_reduce_scalars(means, "mean"), strict=True))


def _minis(num: int, plan: UpdatePlan) -> list[list[int]]:
    return [list(range(s, s + plan.mini_per_rank)) for s in range(0, num, plan.mini_per_rank)]


LossFn = Callable[[Batch, dict], tuple[torch.Tensor, dict[str, torch.Tensor | float]]]
# Metrics that are the loss itself: each micro batch holds its share of the mini-batch loss (verl sums them).
_LOSS_KEYS = ("actor/pg_loss", "actor/entropy_loss", "actor/kl_loss", "critic/vf_loss")


def global_batch(mini: Batch, plan: UpdatePlan) -> dict[str, float | int]:
    """verl's normaliser for one mini batch: its valid tokens and sequences over all ranks, and the rank count."""
    world = dist.world()
    tokens = dist.all_reduce_scalars([float(mini["response_mask"].sum().item())], "sum")[0]
    return {"dp_size": world, "batch_num_tokens": tokens, "global_batch_size": plan.mini_per_rank * world}


def _optimize(
    engine, batch: Batch, plan: UpdatePlan, epochs: int, step_each_micro: bool, loss_fn: LossFn, prefix: str
) -> dict[str, float]:
    """Epochs over mini batches, one optimizer step per mini batch, whatever the number of micro batches.

    As in verl 0.9.1, each micro loss is normalised by the whole mini batch's token / sequence count across ranks
    (`global_batch`) times the rank count; DeepSpeed sums micro gradients (no GAS scaling) and averages over
    ranks, so the step sees the mini-batch loss's gradient however the batch was split into micro batches.
    The gradient-accumulation boundary is set explicitly (token-budget packing varies the micro-batch count).
    `step_each_micro` calls `engine.step()` after every micro batch (DeepSpeed's usual pattern) rather than only at
    the boundary (the verl knob VERL_DS_ZERO2_STEP_EACH_MICRO).
    """
    engine.train()
    rows: list[dict[str, torch.Tensor | float]] = []
    first_mini = 0
    for _ in range(epochs):
        for mini_idx in _minis(batch["input_ids"].shape[0], plan):
            mini = select(batch, mini_idx)
            scale = global_batch(mini, plan)
            micros = _micro_batches(seq_lengths(mini), plan.micro, plan.max_tokens if plan.dynamic else None)
            for i, idx in enumerate(micros):
                is_last = i == len(micros) - 1
                engine.set_gradient_accumulation_boundary(is_last)
                loss, row = loss_fn(select(mini, idx), scale)
                engine.backward(loss, scale_wrt_gas=False)
                if step_each_micro or is_last:
                    engine.step()
                # a loss share times the micro count averages (over micro batches, then ranks) to the mini-batch loss
                rows.append({k: v * len(micros) if k in _LOSS_KEYS else v for k, v in row.items()})
            norm = engine.get_global_grad_norm()
            if norm is not None:
                rows.append({f"{prefix}/grad_norm": norm})
            first_mini = first_mini or len(rows)
    # Losses and gradient norm of the first mini batch, before any optimizer step: cases that train the same
    # model agree on them exactly (parity.tsv), whereas later mini batches drift with the learning rate.
    parity = [
        {f"parity/{k}": v for k, v in row.items() if k.endswith(("_loss", "grad_norm"))} for row in rows[:first_mini]
    ]
    metrics = _mean_metrics(rows + parity, batch["input_ids"].device)
    metrics[f"{prefix}/lr"] = float(engine.get_lr()[0])
    return metrics


def update_actor(
    engine,
    batch: Batch,
    plan: UpdatePlan,
    actor_cfg,
    temperature: float,
    remove_padding: bool,
    step_each_micro: bool,
) -> dict[str, float]:
    """Policy loss (`policy_loss.loss_mode`, vanilla PPO by default) + entropy bonus + KL loss against the reference."""
    entropy_coeff = float(actor_cfg.entropy_coeff)
    kl_coef = float(actor_cfg.kl_loss_coef) if actor_cfg.use_kl_loss else None
    mode = actor_cfg.loss_agg_mode
    policy_loss = PL.get_policy_loss_fn(str(actor_cfg.policy_loss.loss_mode))
    loss_cfg = PL.policy_loss_config(actor_cfg)
    scale_factor = actor_cfg.loss_scale_factor

    def loss_fn(mb: Batch, scale: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        log_prob, entropy = log_probs_of(engine, mb, temperature, remove_padding, with_entropy=entropy_coeff != 0)
        mask = mb["response_mask"]
        agg = {**scale, "loss_scale_factor": scale_factor}
        pg_loss, pg_metrics = policy_loss(mb["old_log_probs"], log_prob, mb["advantages"], mask, mode, loss_cfg, **agg)
        loss = pg_loss
        row: dict[str, torch.Tensor | float] = {"actor/pg_loss": pg_loss, **pg_metrics}
        if entropy is not None:
            ent = algos.agg_loss(entropy, mask, mode, **agg)
            loss = loss - entropy_coeff * ent
            row["actor/entropy_loss"] = ent
        if kl_coef is not None:
            kld = algos.kl_penalty(log_prob, mb["ref_log_prob"], actor_cfg.kl_loss_type)
            kl_loss = algos.agg_loss(kld, mask, mode, **agg)
            loss = loss + kl_coef * kl_loss
            row["actor/kl_loss"] = kl_loss
            row["actor/kl_coef"] = kl_coef
        return loss, row

    return _optimize(engine, batch, plan, int(actor_cfg.ppo_epochs), step_each_micro, loss_fn, "actor")


def update_critic(
    engine,
    batch: Batch,
    plan: UpdatePlan,
    critic_cfg,
    remove_padding: bool,
    step_each_micro: bool,
) -> dict[str, float]:
    """Clipped value regression towards the GAE returns."""

    def loss_fn(mb: Batch, scale: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        vpreds = values_of(engine, mb, remove_padding)
        vf_loss, vf_clipfrac = algos.compute_value_loss(
            vpreds=vpreds,
            returns=mb["returns"],
            values=mb["values"],
            response_mask=mb["response_mask"],
            cliprange_value=float(critic_cfg.cliprange_value),
            loss_agg_mode=critic_cfg.loss_agg_mode,
            loss_scale_factor=critic_cfg.loss_scale_factor,
            **scale,
        )
        row = {
            "critic/vf_loss": vf_loss,
            "critic/vf_clipfrac": vf_clipfrac,
            "critic/vpred_mean": algos.masked_mean(vpreds, mb["response_mask"]),
        }
        return vf_loss, row

    return _optimize(engine, batch, plan, int(critic_cfg.ppo_epochs), step_each_micro, loss_fn, "critic")
