"""Trainer side of the weight push to vLLM: the actor's HF-named parameters, gathered one transformer layer at a
time (a ZeRO-3 gather is a collective), packed into one staging buffer per rank that the server maps once.

The buffer is a CUDA tensor shared through a CUDA IPC handle on GPUs and a file in /dev/shm on CPU; either way the
server copies each bucket straight into its model (`dsrl.rollout.vllm_receiver`), and only a small JSON
description of the bucket travels over HTTP. Nothing here depends on a vLLM version.
"""

from __future__ import annotations

import base64
import inspect
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch

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


class StagingBuffer:
    """A byte buffer this rank fills and its vLLM server reads, described by `handle` (JSON-safe)."""

    def __init__(self, nbytes: int, device: torch.device):
        self.nbytes = nbytes
        self.path: str | None = None
        if device.type == "cuda":
            self.tensor = torch.empty(nbytes, dtype=torch.uint8, device=device)
            self.handle = cuda_ipc_handle(self.tensor)
        else:
            fd, self.path = tempfile.mkstemp(prefix="dsrl-weights-", dir=_shm_dir())
            os.ftruncate(fd, nbytes)
            os.close(fd)
            self.tensor = torch.from_file(self.path, shared=True, size=nbytes, dtype=torch.uint8)
            self.handle = {"kind": "shm", "path": self.path, "nbytes": nbytes}

    def unlink(self) -> None:
        """Drop the /dev/shm name once the server has mapped it; both mappings stay valid."""
        if self.path is not None:
            os.unlink(self.path)
            self.path = None


def cuda_ipc_handle(tensor: torch.Tensor) -> dict:
    """torch's own IPC reduction of the tensor, pickled; `open_cuda_ipc` in the server undoes it."""
    from torch.multiprocessing.reductions import reduce_tensor

    rebuild, args = reduce_tensor(tensor)
    return {"kind": "cuda_ipc", "payload": base64.b64encode(pickle.dumps((rebuild, args))).decode()}


def open_cuda_ipc(handle: dict, device_index: int) -> torch.Tensor:
    """Map the trainer's buffer; the device index is the server's own (its CUDA_VISIBLE_DEVICES differ)."""
    rebuild, args = pickle.loads(base64.b64decode(handle["payload"]))
    args = list(args)
    args[list(inspect.signature(rebuild).parameters).index("storage_device")] = device_index
    return rebuild(*args)


def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


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
