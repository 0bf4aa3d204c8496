"""`use_remove_padding`: packed (padding-free) forwards, used only where the model's attention is shown to honour them.

Checked once at start-up on every rank against the padded result; any rank's doubt falls back to padded batches.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from dsrl import dist
from dsrl import workers as W
from dsrl.engines import EngineSpec
from dsrl.rollout.batch import assemble_batch

log = logging.getLogger("dsrl")


def check_remove_padding(
    cfg: DictConfig, actor: Any, actor_spec: EngineSpec, pad_id: int, device: torch.device
) -> bool:
    """Packed (padding-free) forwards need an attention path that honours packed position_ids: verify it."""
    model_cfg = cfg.actor_rollout_ref.model
    if not model_cfg.use_remove_padding:
        return False
    attn = dict(model_cfg.override_config).get("attn_implementation", "sdpa")
    if device.type == "cuda" and "flash" not in str(attn):
        log.warning(
            "use_remove_padding=True: attn_implementation=%s would materialise a block-diagonal mask "
            "on the GPU; falling back to padded batches (set actor_rollout_ref.model.override_config."
            "attn_implementation=flash_attention_2 where flash-attn is installed)",
            attn,
        )
        return False
    ids = [[5, 6, 7, 8, 9], [10, 11, 12]]
    batch = assemble_batch([i[:2] for i in ids], [i[2:] for i in ids], 1, pad_id, 3, device)
    with torch.no_grad():
        packed, _ = W.log_probs_of(actor, batch, 1.0, True)
        padded, _ = W.log_probs_of(actor, batch, 1.0, False)
    tol = 1e-3 if actor_spec.ds_config.get("bf16") is None else 5e-2
    ok = bool(torch.allclose(packed, padded, atol=tol))
    ok = bool(dist.all_reduce_scalars([float(ok)], "min")[0])
    if not ok:
        log.warning(
            "use_remove_padding=True: this model's attention does not honour packed sequences; "
            "falling back to padded batches"
        )
    else:
        log.info("use_remove_padding=True: log-prob, value and update forwards run on packed sequences")
    return ok
