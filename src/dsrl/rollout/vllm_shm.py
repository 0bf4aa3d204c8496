"""Runs inside the vLLM server: a weight-transfer backend that loads safetensors buckets from shared memory.

vLLM's own backends (`nccl`, `ipc`) need CUDA. On CPU the trainer writes each gathered bucket to a safetensors
file in /dev/shm and posts its path to `/update_weights`; this engine loads it into the model. The server imports
this module through `--worker-extension-cls`, which is what registers the backend in the worker process.
"""

from __future__ import annotations

from dataclasses import dataclass

from safetensors.torch import load_file
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

BACKEND = "dsrl_shm"


@dataclass
class ShmInitInfo(WeightTransferInitInfo):
    pass


@dataclass
class ShmUpdateInfo(WeightTransferUpdateInfo):
    path: str


class ShmWeightTransferEngine(WeightTransferEngine[ShmInitInfo, ShmUpdateInfo]):
    """Checkpoint-format updates: every bucket of one session goes through vLLM's layerwise reload."""

    init_info_cls = ShmInitInfo
    update_info_cls = ShmUpdateInfo

    def init_transfer_engine(self, init_info: ShmInitInfo) -> None:
        return None

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        # The CPU backend repacks linear weights here, after the whole checkpoint arrived.
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict) -> None:
        # The base class ends with torch.accelerator.synchronize(), which fails without an accelerator; loading a
        # file is synchronous anyway.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: ShmUpdateInfo) -> None:
        self.model.load_weights(list(load_file(update_info.path).items()))

    def shutdown(self) -> None:
        return None


class ShmWorkerExtension:
    """Named by `--worker-extension-cls`; importing this module is its whole purpose."""


WeightTransferEngineFactory.register_engine(BACKEND, ShmWeightTransferEngine)
