"""Packed (padding-free) attention without the flash-attn package, as a transformers attention implementation.

`use_remove_padding` concatenates a micro batch's sequences into one row. Transformers' `sdpa` honours that only
through a materialised block-diagonal mask (T x T per micro batch), which made packing slower than padding on the
GPU. This module registers `dsrl_packed` with transformers' `AttentionInterface` and `AttentionMaskInterface`:

* a forward that receives the cumulative sequence lengths (`cu_seq_lens_q` / `max_length_q`, the keyword arguments
  transformers' flash-attention path uses, passed through the model call by `workers._response_rows`) runs each
  sequence causally without any mask: on CUDA in 16 bits with PyTorch's own variable-length flash attention
  (`torch.nn.attention.varlen.varlen_attn`, else `aten::_flash_attention_forward`, which it wraps), elsewhere (CPU,
  fp32) and if both fail with a per-sequence `sdpa` reference. Each CUDA kernel is probed at its first use
  (forward and backward on small sequences against textbook attention, `self_check`), so a kernel that is missing,
  has no backward in this torch or gets this head layout wrong is skipped before it can spoil an update;
* every other call (padded batches with an attention mask, `generate` with its KV cache) is plain `sdpa`, so the
  model behaves exactly as with `attn_implementation=sdpa` outside packed forwards.

The mask function builds no mask when none is given (as flash attention's does) and `sdpa`'s otherwise.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

NAME = "dsrl_packed"
"""The `attn_implementation` value that selects this module's attention."""

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_state: dict[str, dict[str, Any]] = {"failed": {}, "calls": {}}


def cu_seqlens(lens: Sequence[int]) -> list[int]:
    """Cumulative sequence lengths [0, l0, l0 + l1, ...]: where each packed sequence starts, plus the total."""
    out = [0]
    for n in lens:
        if n <= 0:
            raise ValueError(f"packed sequence lengths must be positive, got {list(lens)}")
        out.append(out[-1] + int(n))
    return out


def packed_kwargs(lens: Sequence[int], device: torch.device | str) -> dict[str, Any]:
    """The flash-attention keyword arguments transformers forwards to the attention function of every layer."""
    cu = torch.tensor(cu_seqlens(lens), dtype=torch.int32).to(device, non_blocking=True)
    longest = max(int(n) for n in lens)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def cu_seqlens_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """Sequence boundaries of one packed row from its position ids (a sequence starts where the position is 0)."""
    pos = position_ids.reshape(-1)
    starts = torch.nonzero(pos == 0).flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    return torch.cat([starts, starts.new_tensor([pos.numel()])]).to(torch.int32)


def reference_varlen(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: Sequence[int], scale: float | None
) -> torch.Tensor:
    """Causal attention per packed sequence with `sdpa`; [T, H, D] in and out, K/V heads shared by query groups."""
    groups = query.shape[1] // key.shape[1]
    outs = []
    for start, end in zip(cu[:-1], cu[1:], strict=True):
        q = query[start:end].transpose(0, 1)
        k = key[start:end].transpose(0, 1).repeat_interleave(groups, dim=0)
        v = value[start:end].transpose(0, 1).repeat_interleave(groups, dim=0)
        outs.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale))
    return torch.cat([o.transpose(0, 1) for o in outs])


@functools.cache
def _varlen_fn() -> tuple[Callable[..., torch.Tensor], frozenset[str]] | None:
    """PyTorch's variable-length attention and its keyword names (they changed between 2.10 and 2.12), if any."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def varlen_plan(params: frozenset[str], scale: float | None, head_dim: int, groups: int) -> tuple[dict, float, int]:
    """How to call this torch's `varlen_attn`: (keyword arguments, factor for the queries, K/V head repeats).

    2.10 takes `is_causal` and no `scale` (its scale is 1/sqrt(head_dim): another one is folded into the queries),
    2.11 a causal (-1, 0) `window_size` and `scale`, 2.12+ also `enable_gqa`; without it K/V heads are repeated.
    """
    kwargs: dict[str, Any] = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    q_factor = 1.0
    if "scale" in params:
        kwargs["scale"] = scale
    elif scale is not None and not math.isclose(scale, head_dim**-0.5):
        q_factor = scale * head_dim**0.5
    repeats = 1
    if groups > 1:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            repeats = groups
    return kwargs, q_factor, repeats


def cuda_varlen(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: torch.Tensor, max_len: int, scale: float | None
) -> torch.Tensor:
    """`varlen_attn` on [T, H, D] tensors, called the way this torch version accepts."""
    found = _varlen_fn()
    if found is None:
        raise RuntimeError("torch.nn.attention.varlen is not available in this torch")
    fn, params = found
    kwargs, q_factor, repeats = varlen_plan(params, scale, query.shape[-1], query.shape[1] // key.shape[1])
    if q_factor != 1.0:
        query = query * q_factor
    if repeats > 1:
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
    return fn(query, key, value, cu, cu, max_len, max_len, **kwargs)


def aten_flash(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: torch.Tensor, max_len: int, scale: float | None
) -> torch.Tensor:
    """`aten::_flash_attention_forward` with cumulative lengths (what `varlen_attn` wraps; it has a derivative)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = torch.ops.aten._flash_attention_forward(
        query, key, value, cu, cu, max_len, max_len, 0.0, True, False, scale=scale
    )
    return out[0]


_CUDA_KERNELS: dict[str, Callable[..., torch.Tensor]] = {"varlen_attn": cuda_varlen, "aten_flash": aten_flash}


def backend(device: torch.device, dtype: torch.dtype) -> str:
    """The first kernel that has not failed in this process for tensors of this device and dtype."""
    if device.type == "cuda" and dtype in _FLASH_DTYPES:
        for name in _CUDA_KERNELS:
            if name not in _state["failed"]:
                return name
    return "sdpa_per_sequence"


def backends_used() -> dict[str, int]:
    """Packed attention calls per kernel in this process, and kernels that failed (benchmarks record both)."""
    return {**_state["calls"], **{f"failed:{k}": v for k, v in _state["failed"].items()}}


def _packed(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: torch.Tensor, max_len: int, scale):
    """One packed row: [1, H, T, D] in, [1, T, H, D] out (the layout transformers' attention functions return)."""
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    while True:
        kind = backend(q.device, q.dtype)
        if kind == "sdpa_per_sequence":
            out = reference_varlen(q, k, v, cu.tolist(), scale)
            break
        try:
            _probe(kind, str(q.device), q.dtype, q.shape[1], k.shape[1], q.shape[2], scale)
            out = _CUDA_KERNELS[kind](q, k, v, cu, max_len, scale)
            break
        except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
            _state["failed"][kind] = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("packed attention: %s failed (%s); trying the next kernel", kind, exc)
    _state["calls"][kind] = _state["calls"].get(kind, 0) + 1
    return out.unsqueeze(0)


PROBE_TOLERANCE = {torch.float16: 0.03, torch.bfloat16: 0.03, torch.float32: 1e-4}
"""Largest relative error `self_check` accepts: 16-bit kernels land near 0.005, a wrong scale near 0.1, a wrong
causal span or GQA head mapping near 1."""


@functools.cache
def _probe(kind: str, device: str, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int, scale) -> None:
    """Once per kernel and head layout: forward and backward on small sequences must match textbook attention.

    A kernel that runs but is wrong for this layout, or has no backward in this torch, fails here, at the first
    packed forward (the trainer's start-up check), rather than in the middle of an update.
    """
    scale = head_dim**-0.5 if scale is None else scale
    errors = self_check(kind, device, dtype, (37, 5, 64), heads, kv_heads, head_dim, scale)
    if max(errors.values()) > PROBE_TOLERANCE[dtype]:
        raise RuntimeError(f"{kind} disagrees with textbook attention: relative errors {errors}")


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: packed rows run per sequence, anything else is `sdpa`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    one_row = query.shape[0] == 1 and query.shape[2] == key.shape[2]
    if cu is None and attention_mask is None and one_row and kwargs.get("position_ids") is not None:
        cu = cu_seqlens_from_positions(kwargs["position_ids"])
        max_len = int((cu[1:] - cu[:-1]).max())
    if cu is None or attention_mask is not None or not one_row:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if sliding_window is not None or dropout:
        raise NotImplementedError(f"{NAME}: sliding-window attention and attention dropout are not supported")
    return _packed(query, key, value, cu.to(query.device), int(max_len), scaling), None


def mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """No mask without a padding mask (packed rows carry their boundaries in the kwargs); `sdpa`'s mask otherwise."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make `attn_implementation=dsrl_packed` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, mask)


def packed_implementation(device_type: str, attn: str) -> str:
    """The attention implementation packed forwards should use, given the configured one.

    Flash-attention implementations (and flex attention) handle packed rows themselves, and CPU `sdpa`'s
    block-diagonal mask is cheap at CPU sizes; on CUDA, `sdpa` and `eager` would materialise a T x T mask per
    micro batch, so they are replaced by this module's implementation.
    """
    if device_type == "cuda" and attn in ("sdpa", "eager"):
        return NAME
    return attn


def set_implementation(models: Iterable[torch.nn.Module], attn: str) -> None:
    """Switch loaded models (DeepSpeed engines or HF models) to another attention implementation in place."""
    if attn == NAME:
        register()
    for model in models:
        getattr(model, "module", model).set_attn_implementation(attn)


def _eager_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Textbook causal attention of one sequence, [L, H, D] in and out, K/V heads shared by query groups."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    future = torch.ones(q.shape[0], q.shape[0], dtype=torch.bool, device=q.device).triu(1)
    return torch.einsum("hqk,khd->qhd", scores.masked_fill(future, float("-inf")).softmax(-1), v)


def self_check(
    kernel: str,
    device: torch.device | str,
    dtype: torch.dtype,
    lens: Sequence[int] = (37, 5, 130, 64),
    heads: int = 16,
    kv_heads: int = 8,
    head_dim: int = 128,
    scale: float = 0.1,
) -> dict[str, float]:
    """Relative max errors of a packed kernel's output and q/k/v gradients against fp32 textbook attention.

    Qwen3-0.6B's head layout (16 query heads sharing 8 K/V heads of 128) and a non-default scale, so layout, GQA,
    scale and causality are all exercised; `kernel` is a `backend()` name.
    """
    gen = torch.Generator().manual_seed(0)
    total = sum(lens)
    shapes = {"q": (total, heads, head_dim), "k": (total, kv_heads, head_dim), "v": (total, kv_heads, head_dim)}
    base = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    grad_out = torch.randn(total, heads, head_dim, generator=gen)
    cu = cu_seqlens(lens)
    with torch.enable_grad():  # callers may be inside no_grad (log-prob forwards)
        inputs = [base[n].to(device, dtype).requires_grad_() for n in "qkv"]
        if kernel == "sdpa_per_sequence":
            out = reference_varlen(*inputs, cu, scale)
        else:
            cu_t = torch.tensor(cu, dtype=torch.int32, device=device)
            out = _CUDA_KERNELS[kernel](*inputs, cu_t, max(lens), scale)
        grads = torch.autograd.grad(out, inputs, grad_out.to(device, dtype))
        ref_in = [base[n].double().requires_grad_() for n in "qkv"]
        spans = zip(cu[:-1], cu[1:], strict=True)
        ref = torch.cat([_eager_causal(*(t[s:e] for t in ref_in), scale) for s, e in spans])
        ref_grads = torch.autograd.grad(ref, ref_in, grad_out.double())
    errors = {}
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), strict=True):
        errors[name] = float((got.detach().double().cpu() - want.detach()).abs().max() / want.detach().abs().max())
    return errors
