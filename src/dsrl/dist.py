"""Thin torch.distributed helpers (gloo on CPU, NCCL on GPU) used by the trainer and workers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Launch:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_info(device_kind: str) -> Launch:
    """Read torchrun's environment; a plain `python -m dsrl.train` runs as a world of one."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = torch.device("cuda", local_rank) if device_kind == "cuda" else torch.device("cpu")
    return Launch(rank, local_rank, world, local_world, device)


def init(launch: Launch, timeout_s: float) -> None:
    """Initialise the process group through DeepSpeed so its comm layer and ours share one group."""
    import deepspeed

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ.setdefault("RANK", str(launch.rank))
    os.environ.setdefault("LOCAL_RANK", str(launch.local_rank))
    os.environ.setdefault("WORLD_SIZE", str(launch.world_size))
    if launch.device.type == "cuda":
        torch.cuda.set_device(launch.device)
    backend = "nccl" if launch.device.type == "cuda" else "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s), verbose=False)


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _comm_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_scalars(values: list[float], op: str = "mean") -> list[float]:
    """Reduce a list of floats across ranks in one collective (mean, max, min or sum)."""
    if world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    red = {
        "mean": dist.ReduceOp.SUM,
        "sum": dist.ReduceOp.SUM,
        "max": dist.ReduceOp.MAX,
        "min": dist.ReduceOp.MIN,
    }
    dist.all_reduce(t, op=red[op])
    if op == "mean":
        t /= world()
    return t.tolist()


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped per-rank tensors along dim 0, in rank order."""
    if world() == 1:
        return t
    src = t.to(_comm_device()).contiguous()
    out = [torch.empty_like(src) for _ in range(world())]
    dist.all_gather(out, src)
    return torch.cat(out).to(t.device)


def all_gather_objects(obj):
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
