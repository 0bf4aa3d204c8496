"""Trainer side of the weight push to vLLM: the actor's HF-named parameters, gathered one transformer layer at a
time (a ZeRO-3 gather is a collective), packed into one staging buffer per rank that the server maps once.

The buffer (`dsrl.rollout.staging`: CUDA IPC on GPUs, /dev/shm on CPU) is mapped by the server, which copies each
bucket straight into its model (`dsrl.rollout.vllm_receiver`); only a small JSON description of the bucket travels
over HTTP. Nothing here depends on a vLLM version.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from dsrl.rollout.staging import StagingBuffer

ALIGN = 256  # bytes; keeps every slot's offset valid for a dtype view
_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def layer_groups(names: list[str]) -> list[list[str]]:
    """Parameter names grouped by transformer layer (`...layers.<i>.`); every other name is a group of its own."""
    groups: dict[str, list[str]] = {}
    for name in names:
        m = _LAYER.match(name)
        groups.setdefault(m.group(1) if m else name, []).append(name)
    return list(groups.values())


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def buffer_bytes(tensor_bytes: list[int], bucket_bytes: int) -> int:
    """Room for the largest tensor, and at most the bucket size asked for or the whole model, whichever is less."""
    sizes = [aligned(b) for b in tensor_bytes]
    return max(max(sizes), min(sum(sizes), aligned(bucket_bytes)))


@dataclass(frozen=True)
class Slot:
    """Where one tensor lies in the buffer; serialised as a JSON list for the server."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    def as_json(self) -> list:
        return [self.name, self.dtype, list(self.shape), self.offset]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class BucketPacker:
    """Fills a staging buffer layer group by layer group and calls `flush(slots)` whenever the next tensor would
    not fit.

    Every rank iterates in lockstep (ZeRO-3 gathers are collectives) and cuts buckets at the same tensors, since
    the capacity comes from the model and the config alone; only ranks with a buffer copy anything. `flush` must
    return only once the server has read the buffer, so it can be refilled.
    """

    def __init__(self, module: torch.nn.Module, zero3: bool, bucket_bytes: int):
        self.module, self.zero3 = module, zero3
        self.params = dict(module.named_parameters())
        self.groups = layer_groups(list(self.params))
        # ZeRO-3 parameters are empty placeholders here; `ds_shape` is their full shape.
        sizes = [torch.Size(getattr(p, "ds_shape", p.shape)).numel() * p.element_size() for p in self.params.values()]
        self.capacity = buffer_bytes(sizes, bucket_bytes)

    def push(self, flush: Callable[[list[Slot]], None], buffer: StagingBuffer | None) -> int:
        """Send every parameter once, in the actor's dtype (the server's loader casts); returns the bucket count."""
        slots: list[Slot] = []
        offset = buckets = 0

        def ship() -> None:
            if buffer is not None and buffer.tensor.is_cuda:
                torch.cuda.current_stream(buffer.tensor.device).synchronize()
            flush(slots)

        for names, tensors in self._gathered():
            for name, t in zip(names, tensors, strict=True):
                nbytes = t.numel() * t.element_size()
                if slots and offset + nbytes > self.capacity:
                    ship()
                    slots, offset, buckets = [], 0, buckets + 1
                if buffer is not None:
                    buffer.tensor[offset : offset + nbytes].view(t.dtype).view(t.shape).copy_(t, non_blocking=True)
                slots.append(Slot(name, dtype_name(t.dtype), tuple(t.shape), offset))
                offset += aligned(nbytes)
        if slots:
            ship()
            buckets += 1
        return buckets

    def _gathered(self) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
        import deepspeed

        for names in self.groups:
            chosen = [self.params[n] for n in names]
            with deepspeed.zero.GatheredParameters(chosen) if self.zero3 else nullcontext():
                yield names, [p.detach() for p in chosen]
