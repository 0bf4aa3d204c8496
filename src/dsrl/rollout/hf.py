"""Rollout with Hugging Face `generate` on the actor engine's own module (ZeRO-3 parameters gathered once)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from dsrl.engines import full_parameters
from dsrl.rollout import Sampling, eos_ids, new_token_cap, trim_response


class HFRollout:
    """Generates with the training weights themselves, so `sync_weights` has nothing to move."""

    log_probs = None  # the trainer's own forward is the sampler here

    def __init__(self, engine, tokenizer, device: torch.device, micro_batch: int | None = None):
        self.engine = engine
        self.device = device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = eos_ids(tokenizer)
        self.micro_batch = micro_batch
        self._timings: dict[str, float] = {}

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: Sampling, seed: int) -> list[list[int]]:
        rows = [list(p) for p in prompts for _ in range(n)]
        chunk = self.micro_batch or len(rows)
        out: list[list[int]] = []
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        start = time.perf_counter()
        with full_parameters(self.engine) as model:
            if self.engine.zero_optimization_stage() == 3:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self._timings = {"gather_params": time.perf_counter() - start}
            was_training = model.training
            model.eval()
            try:
                for start in range(0, len(rows), chunk):
                    out.extend(self._generate(model, rows[start : start + chunk], sampling))
            finally:
                model.train(was_training)
        torch.random.set_rng_state(generator_state)
        return out

    def _generate(self, model, rows: list[list[int]], s: Sampling) -> list[list[int]]:
        plen = max(len(r) for r in rows)
        ids = torch.full((len(rows), plen), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, plen - len(r) :] = torch.tensor(r)
            mask[i, plen - len(r) :] = 1
        # One batched generate runs to the largest cap; cutting each row at its own cap afterwards gives exactly
        # the tokens a per-prompt budget would (a row's tokens never depend on later steps).
        caps = [new_token_cap(len(r), s) for r in rows]
        kwargs = {
            "max_new_tokens": max(caps),
            "pad_token_id": self.pad_id,
            "eos_token_id": None if s.ignore_eos else sorted(self.eos_ids),
            "use_cache": True,
        }
        if s.do_sample and s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k if s.top_k > 0 else 0)
        else:
            kwargs.update(do_sample=False)
        seqs = model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        return [
            trim_response(row[plen : plen + cap].tolist(), self.eos_ids, s.ignore_eos)
            for row, cap in zip(seqs, caps, strict=True)
        ]

    def sync_weights(self) -> None:
        return None

    def timings(self) -> dict[str, float]:
        """Sub-phases of the last `generate` (ZeRO-3: gathering the whole model once), in seconds."""
        return dict(self._timings)

    def close(self) -> None:
        return None
