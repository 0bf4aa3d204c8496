"""How a training job's shell command is spelled: override values in verl/Hydra syntax and the GPU-lease prefix."""

from __future__ import annotations

import sys
from typing import Any


def format_value(value: Any) -> str:
    """Render a YAML value as a verl/Hydra override value (True, null, [a,b])."""
    if isinstance(value, bool):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def lease_argv(slots: int, gpus_per_job: int) -> list[str]:
    """The `gpu-run` prefix that holds a job's GPUs when ``gpu_slots`` shares one machine's GPUs; else nothing."""
    if not (slots and gpus_per_job):
        return []
    return [
        sys.executable,
        "-m",
        "dsrl.workflow.gpu_lease",
        "gpu-run",
        "--slots",
        str(slots),
        "--count",
        str(gpus_per_job),
        "--",
    ]
