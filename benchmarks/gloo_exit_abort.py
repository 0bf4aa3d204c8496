"""The rank abort in miniature: a process that finalizes while gloo still holds work aborts with std::terminate.

    PYTHONPATH=src .venv-train/bin/python benchmarks/gloo_exit_abort.py --runs 20

Each job is two gloo ranks under torchrun. Rank 1 starts its all-reduces later, so rank 0's reach gloo's worker
threads while rank 0 is already exiting; no Python reference to the tensors is kept. A worker thread that finishes
such a work destroys it, which drops the tensor's Python object and so takes the GIL. During interpreter
finalization Python answers that with pthread_exit; the forced unwind runs into gloo's noexcept `~AsyncWork` and
libstdc++ calls std::terminate: "terminate called without an active exception", SIGABRT (gdb on the core:
runLoop -> ~AsyncAllreduceWork -> TensorImpl::decref_pyobject -> gil_scoped_acquire -> take_gil ->
PyThread_exit_thread -> _Unwind_ForcedUnwind -> __gxx_personality_v0 -> std::terminate).

`--exit sys` leaves the way a plain script does (sys.exit: interpreter finalization); `--exit os` the way
`dsrl.train` now does (atexit hooks, then os._exit: no finalization). Prints the abort count of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def rank_main(exit_mode: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        time.sleep(0.5)
    for _ in range(16):
        dist.all_reduce(torch.ones(1 << 18), async_op=True)  # in flight at exit; its tensor only gloo holds
    if exit_mode == "os":
        os._exit(0)
    sys.exit(0)


def count_aborts(exit_mode: str, runs: int) -> int:
    aborts = 0
    for _ in range(runs):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        cmd += [__file__, "--rank", "--exit", exit_mode]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        aborts += "terminate called without an active exception" in out.stdout + out.stderr
    return aborts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="two-rank jobs per exit mode")
    parser.add_argument("--exit", choices=("sys", "os"), default=None, help="one mode only")
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        rank_main(args.exit)
    for mode in [args.exit] if args.exit else ["sys", "os"]:
        label = {"sys": "sys.exit (finalization)", "os": "os._exit"}[mode]
        aborts = count_aborts(mode, args.runs)
        print(f"ranks leave via {label}: {aborts} aborts in {args.runs} two-rank jobs", flush=True)


if __name__ == "__main__":
    main()
