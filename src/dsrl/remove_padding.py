"""`use_remove_padding`: packed (padding-free) forwards, used only where the model's attention is shown to honour them.

Checked once at start-up on every rank against the padded result; any rank's doubt falls back to padded batches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from dsrl import dist, packed_attention
from dsrl import workers as W
from dsrl.engines import EngineSpec
from dsrl.rollout.batch import assemble_batch

log = logging.getLogger("dsrl")


def check_remove_padding(
    cfg: DictConfig, actor: Any, actor_spec: EngineSpec, pad_id: int, device: torch.device, others: Sequence[Any]
) -> bool:
    """Packed (padding-free) forwards need an attention path that honours packed sequences: pick it, verify it.

    On CUDA, `sdpa`/`eager` would materialise a block-diagonal mask per micro batch, so the engines switch to
    `dsrl_packed` (PyTorch's variable-length flash attention; `sdpa` for every padded call). The start-up
    check, packed log-probs equal to padded ones on every rank, decides; if it fails the engines switch back.
    """
    model_cfg = cfg.actor_rollout_ref.model
    if not model_cfg.use_remove_padding:
        return False
    attn = str(dict(model_cfg.override_config).get("attn_implementation", "sdpa"))
    packed_attn = packed_attention.packed_implementation(device.type, attn)
    models = [actor, *others]  # the reference and the critic switch with the actor
    ids = [[5, 6, 7, 8, 9], [10, 11, 12]]
    batch = assemble_batch([i[:2] for i in ids], [i[2:] for i in ids], 1, pad_id, 3, device)
    try:  # a switch or packed forward that raises is a failed check, on this rank, not a failed start
        if packed_attn != attn:
            log.info("use_remove_padding=True: attn_implementation %s -> %s on %s", attn, packed_attn, device)
            packed_attention.set_implementation(models, packed_attn)
        with torch.no_grad():
            packed, _ = W.log_probs_of(actor, batch, 1.0, True)
            padded, _ = W.log_probs_of(actor, batch, 1.0, False)
        tol = 1e-3 if actor_spec.ds_config.get("bf16") is None else 5e-2
        ok = bool(torch.allclose(packed, padded, atol=tol))
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        log.warning("use_remove_padding=True: packed forward with %s failed: %s", packed_attn, exc)
        ok = False
    ok = bool(dist.all_reduce_scalars([float(ok)], "min")[0])
    if not ok:
        log.warning(
            "use_remove_padding=True: attn_implementation=%s does not honour packed sequences; "
            "falling back to padded batches",
            packed_attn,
        )
        if packed_attn != attn:
            packed_attention.set_implementation(models, attn)
    else:
        log.info("use_remove_padding=True: log-prob, value and update forwards run on packed sequences")
    return ok
