"""The byte buffer a sending rank fills and its vLLM server reads: one small class per transport.

GPU: a CUDA tensor whose IPC handle (torch's own reduction) the server opens once in its own CUDA context.
CPU: a file in /dev/shm both sides map. Either way `handle` is JSON-safe: it travels with every bucket's
description in the `/update_weights` request.
"""

from __future__ import annotations

import base64
import inspect
import os
import pickle
import tempfile
from typing import Protocol

import torch


class StagingBuffer(Protocol):
    tensor: torch.Tensor
    handle: dict

    def unlink(self) -> None: ...


class CudaIpcBuffer:
    """A CUDA tensor on this rank's GPU, shared with the server through a CUDA IPC handle."""

    def __init__(self, nbytes: int, device: torch.device):
        from torch.multiprocessing.reductions import reduce_tensor

        self.tensor = torch.empty(nbytes, dtype=torch.uint8, device=device)
        rebuild, args = reduce_tensor(self.tensor)
        self.handle = {"kind": "cuda_ipc", "payload": base64.b64encode(pickle.dumps((rebuild, args))).decode()}

    def unlink(self) -> None:
        """Nothing to remove: the handle lives as long as the tensor."""


class ShmBuffer:
    """A file in /dev/shm (or the temp dir) mapped by the trainer and the server."""

    def __init__(self, nbytes: int):
        fd, self.path = tempfile.mkstemp(prefix="dsrl-weights-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.ftruncate(fd, nbytes)
        os.close(fd)
        self.tensor = torch.from_file(self.path, shared=True, size=nbytes, dtype=torch.uint8)
        self.handle = {"kind": "shm", "path": self.path, "nbytes": nbytes}

    def unlink(self) -> None:
        """Drop the name once the server has mapped it; both mappings stay valid."""
        if self.path is not None:
            os.unlink(self.path)
            self.path = None


def staging_buffer(nbytes: int, device: torch.device) -> StagingBuffer:
    return CudaIpcBuffer(nbytes, device) if device.type == "cuda" else ShmBuffer(nbytes)


def open_cuda_ipc(handle: dict, device_index: int) -> torch.Tensor:
    """Server side: map the trainer's buffer; the device index is the server's own (its CUDA_VISIBLE_DEVICES differ)."""
    rebuild, args = pickle.loads(base64.b64decode(handle["payload"]))
    args = list(args)
    args[list(inspect.signature(rebuild).parameters).index("storage_device")] = device_index
    return rebuild(*args)
