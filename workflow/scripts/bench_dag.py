"""Time DAG building for the 3 ZeRO stages x 2 offload x 10 seeds x 2 algorithms matrix (goal: < 3 s).

    .venv/bin/python workflow/scripts/bench_dag.py [--repeats 3] [--seeds 10]

Builds a throwaway working directory with that matrix as its config and a stub trainer, then times
(1) dsrl.workflow.plan.Plan (config checks + run matrix, in process) and (2) a full `snakemake --dry-run`
(interpreter start, parsing, DAG of every job), and prints min/median per stage.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dsrl.workflow.plan import Plan

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
GOAL_S = 3.0


def matrix_workdir(root: Path, seeds: int) -> Path:
    shutil.copytree(REPO / "config", root / "config")
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    config["trainer_command"] = "bin/dsrl"
    config["suites"] = {
        "matrix": {
            "cases": [f"zero{stage}_{off}_offload" for stage in (1, 2, 3) for off in ("no", "cpu")],
            "algos": ["grpo", "ppo"],
            "seeds": list(range(seeds)),
            "steps": 60,
            "gate": {"baseline": "zero1_no_offload", "candidate": "zero2_no_offload"},
        }
    }
    config["run_suites"] = ["matrix"]
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    trainer = root / "bin" / "dsrl"
    trainer.parent.mkdir()
    trainer.write_text("#!/bin/sh\nexit 1\n")
    trainer.chmod(0o755)
    return root


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsrl-bench-dag-") as tmp:
        root = matrix_workdir(Path(tmp), args.seeds)
        config = yaml.safe_load((root / "config" / "config.yaml").read_text())
        runs = len(Plan(config, root).train_runs())
        dry_run = [
            str(SNAKEMAKE),
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(root),
            "--dry-run",
            "--quiet",
        ]
        stages = {
            "Plan (checks + matrix)": lambda: Plan(config, root),
            "snakemake --dry-run": lambda: subprocess.run(dry_run, check=True, capture_output=True),
        }
        rows = [(name, [timed(fn) for _ in range(args.repeats)]) for name, fn in stages.items()]
    matrix = f"3 stages x 2 offload x {args.seeds} seeds x 2 algos"
    print(f"DAG build, {runs} training runs ({matrix}), {args.repeats} repeats")
    print(f"{'stage':<26}{'min s':>8}{'median s':>10}")
    for name, times in rows:
        print(f"{name:<26}{min(times):>8.2f}{statistics.median(times):>10.2f}")
    total = statistics.median(rows[-1][1])
    print(f"goal < {GOAL_S:.0f} s: {'met' if total < GOAL_S else 'MISSED'} (median dry run {total:.2f} s)")
    return 0 if total < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
