"""Runs inside the vLLM server: the `dsrl` weight-transfer backend, which loads buckets from the trainer's
staging buffer (`dsrl.rollout.weight_push`) into the model.

The server imports this module through `--worker-extension-cls`, which is what registers the backend in each
worker process; the trainer then drives it over HTTP with `/start_weight_update`, `/update_weights` (one bucket's
slots) and `/finish_weight_update`. The buffer is mapped once per worker and cached: a CUDA IPC handle on GPUs
(each TP worker maps the buffer of the trainer rank on its own GPU), a /dev/shm file on CPU.

Written against what vLLM 0.24 (CUDA) and 0.32 (CPU) share; where their engine APIs differ it accepts both:
- 0.24 constructs engines as (config, parallel_config, model), runs layerwise reload in the worker unless the
  trainer starts the update with `is_checkpoint_format=false`, and calls `receive_weights(info, load_weights)`.
- 0.32 constructs them as (config, vllm_config, device, model) and calls the engine's own `start_weight_update`,
  `update_weights(dict)` and `finish_weight_update`.
On GPUs the weights load in place (`model.load_weights`, which keeps CUDA graphs valid); vLLM's CPU backend
repacks linear weights after loading, so on CPU the update goes through vLLM's layerwise reload instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.distributed.weight_transfer.base import WeightTransferEngine
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

from dsrl.rollout.staging import open_cuda_ipc

BACKEND = "dsrl"


@dataclass
class BucketInfo:
    """One bucket: the buffers of the trainer ranks (by TP rank) and each tensor's slot in them."""

    buffers: list[dict]
    slots: list[list]  # [name, dtype, shape, offset]
    update_kind: str = "dense"  # vLLM 0.24's worker reads these two
    num_updates_list: list[int] | None = field(default=None)


class DsrlWeightTransferEngine(WeightTransferEngine):
    init_info_cls = dict
    update_info_cls = BucketInfo

    def __init__(self, config: Any, *context: Any):
        super().__init__(config, *context)
        self._mapped: dict[str, torch.Tensor] = {}
        self._layerwise = False

    def parse_init_info(self, init_dict: dict[str, Any]) -> dict[str, Any]:
        return init_dict

    def init_transfer_engine(self, init_info: dict[str, Any]) -> None:
        return None

    def start_weight_update(self) -> None:
        self._layerwise = self._device().type == "cpu"
        if self._layerwise:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        if self._layerwise:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)
        self._layerwise = False

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.receive_weights(self.parse_update_info(update_info))
        if self._device().type == "cuda":
            torch.cuda.synchronize()

    def receive_weights(self, update_info: BucketInfo, load_weights: Any = None) -> None:
        """`load_weights` (0.24) is ignored: the model's own loader takes HF names and fuses qkv / gate_up."""
        buf = self._buffer(update_info.buffers)
        weights = []
        for name, dtype, shape, offset in update_info.slots:
            dt = getattr(torch, dtype)
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
            weights.append((name, buf[offset : offset + nbytes].view(dt).view(shape)))
        self.model.load_weights(weights)

    def _buffer(self, handles: list[dict]) -> torch.Tensor:
        from vllm.distributed import get_tensor_model_parallel_rank

        handle = handles[get_tensor_model_parallel_rank() if len(handles) > 1 else 0]
        key = handle.get("payload") or handle["path"]
        if key not in self._mapped:
            if handle["kind"] == "cuda_ipc":
                self._mapped[key] = open_cuda_ipc(handle, torch.cuda.current_device())
            else:
                self._mapped[key] = torch.from_file(
                    handle["path"], shared=True, size=handle["nbytes"], dtype=torch.uint8
                )
        return self._mapped[key]

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def shutdown(self) -> None:
        self._mapped.clear()

    @staticmethod
    def trainer_send_weights(iterator: Any, trainer_args: Any) -> None:
        raise NotImplementedError("dsrl pushes weights itself: dsrl.rollout.weight_push")


class WorkerExtension:
    """Named by `--worker-extension-cls`; importing this module is its whole purpose."""


WeightTransferEngineFactory.register_engine(BACKEND, DsrlWeightTransferEngine)
