"""Config errors the workflow can find before any job starts: when the DAG is built, or when the workflow starts.

Everything that can be wrong in a config is checked here, once, so a typo fails in a second instead of after an
hour in the queue.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsrl.config import ConfigError
from dsrl.workflow import paths

# Keys the workflow sets per job; setting them in config overrides would silently lose to the workflow.
WORKFLOW_KEYS = {
    "trainer.run_dir": f"the run directory is {paths.RUN_DIR}",
    "trainer.experiment_name": "the experiment name is the case name",
    "trainer.seed": "use suites.<suite>.seeds",
    "trainer.total_training_steps": "use suites.<suite>.steps",
    "trainer.n_gpus_per_node": "use processes_per_job",
    "trainer.nnodes": "runs are single-node",
    "trainer.device": "use device",
    "data.train_files": "use data.source",
    "data.val_files": "use data.source",
}


def not_workflow_keys(where: str, overrides: Mapping[str, Any]) -> None:
    for key in overrides:
        if key in WORKFLOW_KEYS:
            raise ConfigError(f"{where}: {key} is set by the workflow for every run ({WORKFLOW_KEYS[key]})")


def unique(where: str, values: Sequence[Any]) -> None:
    dupes = sorted({v for v in values if list(values).count(v) > 1}, key=str)
    if dupes:
        raise ConfigError(f"{where} lists {dupes} more than once")


def known(where: str, names: Sequence[str], valid: Mapping[str, Any] | Sequence[str]) -> None:
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"{where}: unknown name(s) {unknown} (valid: {', '.join(valid)})")


def gate(where: str, gate: Mapping[str, Any] | None, cases: Sequence[str]) -> None:
    if gate:
        for role in ("baseline", "candidate"):
            if gate[role] not in cases:
                raise ConfigError(f"{where}.gate.{role}={gate[role]!r} is not one of the suite's cases {list(cases)}")


def suite_names(names: Sequence[str]) -> None:
    for name in names:
        if name in paths.RESERVED_SUITE_NAMES:
            raise ConfigError(f"suite name {name!r} is reserved ({paths.RESULTS}/{name}/ is used by the workflow)")


def data_source(source: str, workdir: Path) -> None:
    path = (workdir / source).expanduser()
    if path.is_dir():
        missing = [f for f in ("train.jsonl", "test.jsonl") if not (path / f).is_file()]
        if missing:
            raise ConfigError(f"data.source={source!r} is a folder without {missing}")
    elif source.startswith(("/", ".", "~")):
        raise ConfigError(f"data.source={source!r} does not exist (use synthetic, a GSM8K folder or a hub id)")


def trainer_executable(config: Mapping[str, Any], workdir: Path) -> str:
    """The ``trainer_command`` as run: a path is checked and made absolute, a bare name is left to PATH."""
    command = str(config["trainer_command"])
    if "/" not in command:
        return command
    path = (workdir / command).expanduser()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ConfigError(
            f"trainer_command={command!r}: {path} is not an executable file; point it at the trainer "
            "environment's dsrl (e.g. .venv-train/bin/dsrl), or to 'dsrl' with "
            "--software-deployment-method conda"
        )
    return str(path.resolve())


def gpus_for_local_jobs(device: str, local_exec: bool, dryrun: bool, trains: bool, visible: int, needed: int) -> None:
    """A GPU config run by the local executor on a machine without GPUs fails here, before any job starts.

    Cluster executors (the slurm profile) place jobs on GPU nodes, dry runs start nothing, and a run with no
    training job left (tables and plots from finished or imported runs) needs no GPU: all of these pass.
    """
    if device != "cuda" or not local_exec or dryrun or not trains:
        return
    if visible < needed:
        raise ConfigError(
            f"device=cuda needs {needed} GPU(s) per training job but this machine shows {visible} "
            "(CUDA_VISIBLE_DEVICES / nvidia-smi); submit to GPU nodes with --profile slurm, or run the GPU config "
            "on a GPU machine (profiles/local-gpu)"
        )
