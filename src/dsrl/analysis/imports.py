"""Runs made outside dsrl: ``<folder>/<case>/train.log`` trees written by the verl benchmark scripts.

Discovery only (no pandas import), because the Snakefile calls it on every DAG build.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_SEEDED = re.compile(r"^(?P<case>.+?)_seed(?P<seed>\d+)$")


@dataclass(frozen=True)
class ImportedRun:
    """One external run: its case (the sub-folder name), seed if the folder says so, and its console log."""

    case: str
    seed: int | None
    log: Path


def discover_runs(root: str | Path) -> list[ImportedRun]:
    """Every ``<root>/<case>/train.log``; a folder named ``<case>_seed<N>`` also gives the seed."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"imported run folder {root} does not exist")
    runs = []
    for log in sorted(root.glob("*/train.log")):
        match = _SEEDED.match(log.parent.name)
        if match:
            runs.append(ImportedRun(match["case"], int(match["seed"]), log))
        else:
            runs.append(ImportedRun(log.parent.name, None, log))
    if not runs:
        raise FileNotFoundError(f"imported run folder {root} has no <case>/train.log files")
    return runs
