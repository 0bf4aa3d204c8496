"""What a run reports: verl's console line, `metrics.jsonl`, timers, perf/memory/MFU metrics and `run.json`.

The console line is verl's `step:N - key:value - ...` so logs parse with the same tools people already use.
Collectives come in as a `reduce` callable (dsrl.dist.all_reduce_scalars), so this module needs no process group.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import platform
import resource
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from dsrl.atomic import write_text
from dsrl.flops import mfu, train_flops

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

    from dsrl.batching import BatchPlan
    from dsrl.engines import EngineSpec

Reduce = Callable[[list[float], str], list[float]]


def console_line(step: int, metrics: Mapping[str, float]) -> str:
    """verl's format: numbers only, `repr`-exact values, keys in insertion order."""
    parts = [f"step:{step}"]
    for k, v in metrics.items():
        if isinstance(v, numbers.Number) and not isinstance(v, bool):
            parts.append(f"{k}:{float(v)!r}")
    return " - ".join(parts)


class MetricsWriter:
    """Appends one JSON object per step and flushes it, so a crash loses at most the step in flight.

    Rows are flat (`{"step": N, key: value, ...}`), or with `nest` verl's file-logger layout (`{"step": N, "data":
    {...}}`).
    """

    def __init__(self, path: Path, truncate_after_step: int | None = None, nest: bool = False):
        self.path = path
        self.nest = nest
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and path.exists():
            self._truncate(truncate_after_step)
        elif truncate_after_step is None and path.exists():
            path.unlink()
        self._fh: IO[str] = path.open("a")

    def _truncate(self, last_step: int) -> None:
        """On resume keep only steps up to the checkpoint; later ones will be recomputed."""
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the crash
            if row.get("step", math.inf) <= last_step:
                kept.append(line)
        write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        values = {k: _jsonable(v) for k, v in metrics.items()}
        row = {"step": step, "data": values} if self.nest else {"step": step, **values}
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _jsonable(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


class Timer:
    """Accumulates wall time per phase; on GPU it synchronises so asynchronous kernels are counted."""

    def __init__(self, sync=None):
        self.times: dict[str, float] = {}
        self._sync = sync

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._sync:
            self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                self._sync()
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

    def record(self, name: str, seconds: float) -> None:
        """Add a time measured elsewhere (a sub-phase such as `gen/gather_params`)."""
        self.times[name] = self.times.get(name, 0.0) + seconds

    def metrics(self) -> dict[str, float]:
        return {f"timing_s/{k}": v for k, v in self.times.items()}


def memory_metrics(device_type: str) -> dict[str, float]:
    """Peak device memory since the last reset; on CPU the process's peak RSS stands in for device memory."""
    import psutil

    gib = 1024**3
    out = {"perf/cpu_memory_used_gb": psutil.virtual_memory().used / gib}
    if device_type == "cuda":
        import torch

        out["perf/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / gib
        out["perf/max_memory_reserved_gb"] = torch.cuda.max_memory_reserved() / gib
        torch.cuda.reset_peak_memory_stats()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / gib
        out["perf/max_memory_allocated_gb"] = peak
        out["perf/max_memory_reserved_gb"] = peak
    return out


def parity_metrics(
    responses: torch.Tensor, response_mask: torch.Tensor, old_log_probs: torch.Tensor
) -> dict[str, float]:
    """Fingerprints of a step's rollout and old log-probs over the whole (gathered) batch.

    Two runs with the same seed that train the same model (ZeRO stages, offload modes) agree on them at step 1,
    exactly on CPU and within bf16 noise on GPU; `results/<suite>/parity.tsv` compares them at no extra training.
    A CRC32 is below 2**32, so it survives the float in metrics.jsonl and the console line exactly.
    """
    import torch

    mask = response_mask.bool()
    tokens = torch.where(mask, responses, -1).to("cpu", torch.int64).contiguous()
    log_probs = old_log_probs[mask].double()
    return {
        "parity/response_crc32": float(zlib.crc32(tokens.numpy().tobytes())),
        "parity/old_log_prob/mean": log_probs.mean().item(),
        "parity/old_log_prob/min": log_probs.min().item(),
        "parity/old_log_prob/max": log_probs.max().item(),
    }


def perf_metrics(tokens: float, times: Mapping[str, float], world_size: int, actor_epochs: int) -> dict[str, float]:
    """verl's `perf/*` of a step: tokens, time, throughput per GPU, and the peak memory of the busiest rank."""
    step_time = times["step"]
    out = {
        "perf/total_num_tokens": tokens,
        "perf/time_per_step": step_time,
        "perf/throughput": tokens / (step_time * world_size),
    }
    update_time = times.get("update_actor")
    if update_time:
        out["perf/update_actor_throughput"] = tokens * actor_epochs / (update_time * world_size)
    return out


def peak_memory_metrics(device_type: str, reduce: Reduce) -> dict[str, float]:
    """`memory_metrics` with the peaks maxed over ranks (the rank that runs out first is the one that matters)."""
    mem = memory_metrics(device_type)
    maxed = reduce([mem["perf/max_memory_allocated_gb"], mem["perf/max_memory_reserved_gb"]], "max")
    mem["perf/max_memory_allocated_gb"], mem["perf/max_memory_reserved_gb"] = maxed
    return mem


def mfu_metrics(
    engines: Mapping[str, tuple[Any, int]],
    seq_lens: Sequence[int],
    times: Mapping[str, float],
    world_size: int,
    peak: float | None,
    reduce: Reduce,
) -> dict[str, float]:
    """verl's `perf/mfu/actor` and `perf/mfu/critic`: model FLOPs of the update phase over the GPUs' peak.

    `engines` maps a role to (its engine or None, its ppo_epochs).
    """
    if peak is None:
        return {}
    out = {}
    for name, (engine, epochs) in engines.items():
        seconds = times.get(f"update_{name}")
        if engine is None or not seconds:
            continue
        flops = reduce([train_flops(engine.module.config, seq_lens) * epochs], "sum")[0]
        value = mfu(flops, seconds, world_size, peak)
        if value is not None:
            out[f"perf/mfu/{name}"] = value
    return out


def run_record(
    *,
    cfg: DictConfig,
    status: str,
    last_step: int,
    total_steps: int,
    error: str | None,
    specs: Mapping[str, EngineSpec],
    plan: BatchPlan,
    remove_padding: bool,
    memory_estimate: Mapping[str, Any],
    model_path: str,
    device_type: str,
) -> dict[str, Any]:
    """`run.json`: the resolved config, every engine's effective DeepSpeed config, the batch plan, versions, devices."""
    import deepspeed
    import torch
    import transformers

    import dsrl
    from dsrl.config import to_container

    devices = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if device_type == "cuda"
        else [platform.processor() or platform.machine()]
    )
    return {
        "status": status,
        "last_step": last_step,
        "total_steps": total_steps,
        "error": error,
        "seed": cfg.trainer.seed,
        "experiment_name": cfg.trainer.experiment_name,
        "config": to_container(cfg),
        "deepspeed": {name: spec.summary() for name, spec in specs.items()},
        "batch_plan": {
            "world_size": plan.world_size,
            "prompts_per_rank": plan.prompts_per_rank,
            "sequences_per_rank": plan.sequences_per_rank,
            "actor": vars(plan.actor),
            "critic": vars(plan.critic) if plan.critic else None,
        },
        "remove_padding_effective": remove_padding,
        "memory_estimate": memory_estimate,
        "model_path": model_path,
        "versions": {
            "dsrl": dsrl.__version__,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "transformers": transformers.__version__,
        },
        "devices": {"type": device_type, "world_size": plan.world_size, "names": devices},
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def progress_bar(mode: str, is_main: bool, total: int, start: int):
    """A tqdm bar on a terminal only: batch logs stay line-oriented."""
    if not is_main or mode == "off" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="dsrl", unit="step", file=sys.stderr)


def val_reward_means(parts: list[list[tuple[str, float]]]) -> dict[str, float]:
    """verl's `val-core/<data_source>/reward/mean@1` over every rank's (data_source, score) pairs."""
    by_source: dict[str, list[float]] = {}
    for part in parts:
        for source, score in part:
            by_source.setdefault(source, []).append(score)
    return {f"val-core/{k}/reward/mean@1": float(np.mean(v)) for k, v in sorted(by_source.items())}
