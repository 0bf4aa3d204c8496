"""A training job's GPUs on a shared machine (profiles/local-gpu): exclusive leases held for the job's lifetime.

python -m dsrl.workflow.gpu_lease gpu-run --slots N --count K -- command ...
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path


def default_lock_dir() -> Path:
    """Machine-wide per user: GPUs are shared by every workflow a user runs on the host."""
    return Path(tempfile.gettempdir()) / f"dsrl-gpu-slots-{os.getuid()}"


def slot_devices(slots: int, environ: Mapping[str, str] | None = None) -> list[str]:
    """Device ids of the slots: the first ``slots`` of an inherited CUDA_VISIBLE_DEVICES, else 0..slots-1."""
    environ = os.environ if environ is None else environ
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible:
        if len(visible) < slots:
            raise ValueError(f"gpu_slots={slots} but CUDA_VISIBLE_DEVICES lists only {visible}")
        return [d.strip() for d in visible[:slots]]
    return [str(i) for i in range(slots)]


def _try_lock(path: Path, stack: ExitStack) -> bool:
    """Lock ``path`` without waiting; on success the handle (and so the lock) lives as long as ``stack``."""
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    stack.enter_context(handle)
    return True


@contextmanager
def lease_gpus(
    count: int,
    devices: Sequence[str],
    lock_dir: Path | None = None,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> Iterator[list[str]]:
    """Hold ``count`` of ``devices`` exclusively until the block ends.

    Each device is an flock'ed file; the kernel drops the lock when the holder exits, so a crashed job never
    leaves a GPU leased. A pool lock makes picking all ``count`` devices atomic, so two jobs cannot each grab
    half of what they need and wait on each other.
    """
    if not 1 <= count <= len(devices):
        raise ValueError(f"cannot lease {count} GPU(s) from {len(devices)} slot(s) {list(devices)}")
    lock_dir = lock_dir or default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        stack = ExitStack()
        held: list[str] = []
        with (lock_dir / "pool.lock").open("w") as pool:
            fcntl.flock(pool, fcntl.LOCK_EX)
            for device in devices:
                if len(held) < count and _try_lock(lock_dir / f"gpu{device}.lock", stack):
                    held.append(device)
        if len(held) == count:
            break
        stack.close()
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no {count} free GPU(s) among {list(devices)} within {timeout_s}s")
        time.sleep(poll_s)
    with stack:
        yield held


def gpu_run(argv: Sequence[str] | None = None) -> int:
    """``python -m dsrl.workflow.gpu_lease gpu-run --slots N --count K -- cmd ...``: cmd on K leased GPUs."""
    parser = argparse.ArgumentParser(prog="python -m dsrl.workflow.gpu_lease gpu-run")
    parser.add_argument("--slots", type=int, required=True, help="GPUs on this machine the workflow may use")
    parser.add_argument("--count", type=int, required=True, help="GPUs this job needs")
    parser.add_argument("--lock-dir", type=Path, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    with lease_gpus(args.count, slot_devices(args.slots), args.lock_dir) as leased:
        visible = ",".join(leased)
        print(f"[dsrl gpu-run] CUDA_VISIBLE_DEVICES={visible}", file=sys.stderr, flush=True)
        return subprocess.call(command, env={**os.environ, "CUDA_VISIBLE_DEVICES": visible})


if __name__ == "__main__":
    if sys.argv[1:2] != ["gpu-run"]:
        sys.exit("usage: python -m dsrl.workflow.gpu_lease gpu-run --slots N --count K -- command ...")
    sys.exit(gpu_run(sys.argv[2:]))
