"""Run many small two-rank CPU jobs back to back and count rank aborts (SIGABRT, `terminate called ...`).

    PYTHONPATH=src nice -n 19 .venv-train/bin/python benchmarks/stress_rank_abort.py --runs 300 --out /tmp/stress

Each job is the lightest run that still takes the failing path: `dsrl train` under torchrun, 2 gloo ranks, DeepSpeed
ZeRO-1 engine set-up, two GRPO steps (rollout, all-gathers, an optimizer step) and the process-group teardown.
Jobs run with `ulimit -c unlimited` in their own folder, so an abort leaves a core file there for gdb. One line per
job goes to `<out>/runs.tsv` as it finishes (a partial campaign still counts); failed jobs keep their folder and
console output; clean ones are removed. `--parallel 2` runs jobs in pairs, as two CI jobs sharing two cores do.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DSRL = Path(sys.executable).parent / "dsrl"
JOB = [
    "--nproc-per-node",
    "2",
    "trainer.device=cpu",
    "algorithm.adv_estimator=grpo",
    "actor_rollout_ref.rollout.n=2",
    "data.train_batch_size=4",
    "data.max_prompt_length=128",
    "data.max_response_length=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
    "trainer.total_training_steps=2",
    "trainer.save_freq=0",
    "trainer.test_freq=-1",
    "trainer.val_before_train=False",
]
ABORT_MARKERS = ("terminate called", "exitcode  : -6", "Fatal Python error: Aborted")


def one_job(index: int, out: Path, data: Path) -> tuple[int, int, float, bool, str]:
    folder = out / f"job{index:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        str(DSRL),
        "train",
        *JOB,
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'test.parquet'}",
        f"trainer.run_dir={folder / 'run'}",
    ]
    start = time.monotonic()
    shell = "ulimit -c unlimited; exec " + " ".join(argv)
    proc = subprocess.run(["bash", "-c", shell], cwd=folder, capture_output=True, text=True)
    seconds = time.monotonic() - start
    console = proc.stdout + proc.stderr
    aborted = any(marker in console for marker in ABORT_MARKERS) or any(folder.glob("core*"))
    if proc.returncode == 0 and not aborted:
        shutil.rmtree(folder)
    else:
        (folder / "console.txt").write_text(console)
    first = next((line for line in console.splitlines() if any(m in line for m in ABORT_MARKERS)), "")
    return index, proc.returncode, seconds, aborted, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=1, help="jobs at a time")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    if not (data / "train.parquet").exists():
        subprocess.run([str(DSRL), "prepare-data", "--source", "synthetic", "--out-dir", str(data)], check=True)
    table = args.out / "runs.tsv"
    if not table.exists():
        table.write_text("job\treturncode\tseconds\taborted\tabort_line\n")
    done = len(table.read_text().splitlines()) - 1
    counts = {"ok": 0, "failed": 0, "aborted": 0}
    with ThreadPoolExecutor(args.parallel) as pool:
        jobs = [pool.submit(one_job, i, args.out, data) for i in range(done, done + args.runs)]
        for job in jobs:
            index, rc, seconds, aborted, line = job.result()
            counts["aborted" if aborted else "ok" if rc == 0 else "failed"] += 1
            with table.open("a") as fh:
                fh.write(f"{index}\t{rc}\t{seconds:.1f}\t{aborted}\t{line}\n")
            print(f"job {index}: rc={rc} {seconds:.0f}s aborted={aborted} {counts}", flush=True)
    print(f"{sum(counts.values())} jobs: {counts}")
    return 1 if counts["aborted"] or counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
