"""A failure inside the ranks: one console line from the rank that failed first, every traceback in a file.

When one rank fails, its peers fail next with secondary errors (gloo's "Connection closed by peer", a collective
timeout); printed together they bury the cause. The first rank to fail creates `<run_dir>/errors/first` (O_EXCL, so
exactly one rank wins on a node), prints one `dsrl: rank R failed: ...` line and writes `run.json`; every rank's
traceback goes to `<run_dir>/errors/rank<R>.txt`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

FIRST = "first"
log = logging.getLogger("dsrl")


def errors_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "errors"


def clear(run_dir: str | os.PathLike) -> None:
    """Forget an earlier attempt's errors (called by rank 0 before the ranks first synchronise)."""
    shutil.rmtree(errors_dir(run_dir), ignore_errors=True)


def summary(exc: BaseException) -> str:
    """`Type: message` on one line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def claim_first(run_dir: str | os.PathLike, rank: int, text: str) -> bool:
    """True for the rank whose failure came first; asking again gives the same answer."""
    folder = errors_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FIRST
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return path.read_text().startswith(f"rank {rank}:")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"rank {rank}: {text}\n")
    return True


def report(run_dir: str | os.PathLike, rank: int, exc: BaseException, prefix: str = "failed") -> bool:
    """Write this rank's traceback to its file; print one line if this rank failed first. Returns that."""
    text = summary(exc)
    try:
        first = claim_first(run_dir, rank, text)
        path = errors_dir(run_dir) / f"rank{rank}.txt"
        path.write_text("".join(traceback.format_exception(exc)))
    except OSError:  # the run directory itself is the problem: say everything on the console
        traceback.print_exception(exc)
        return True
    if first:
        print(f"dsrl: rank {rank} {prefix}: {text} (every rank's traceback: {path.parent}/)", file=sys.stderr)
    return first


def inject_faults(trainer: Any, step: int, rank: int) -> None:
    """Fault injection for reliability tests (`trainer.fail_at_step`, `trainer.hang_at_step` / `hang_rank`): fail
    every rank, or stall one rank inside the step."""
    if trainer.fail_at_step is not None and step == trainer.fail_at_step:
        raise RuntimeError(f"trainer.fail_at_step={step}: injected failure")
    if trainer.hang_at_step is not None and step == trainer.hang_at_step and rank == trainer.hang_rank:
        log.warning("trainer.hang_at_step=%d: rank %d stalls (injected)", step, rank)
        while True:
            time.sleep(3600)
