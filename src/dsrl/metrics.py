"""Per-step metrics: verl's console line, `metrics.jsonl`, timers and memory readings.

The console line is verl's `step:N - key:value - ...` so logs parse with the same tools people already use.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import resource
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING

from dsrl.atomic import write_text

if TYPE_CHECKING:
    import torch


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
