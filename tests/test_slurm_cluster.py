"""Against a real single-node SLURM cluster (tests/slurm/cluster.sh): job submission, and the workflow run
through the CPU variant of the slurm profile, where one failing seed is the only job a rerun resubmits."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
GPU_PROFILE = REPO / "slurm" / "config.yaml"
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
SLURM_TOOLS = ("slurmctld", "slurmd", "sbatch", "squeue", "munged")
SNAKEMAKE = REPO / ".venv" / "bin" / "snakemake"
TRAINER = REPO / ".venv-train" / "bin" / "dsrl"
SEEDS = (101, 202)  # tests/slurm/profile-cpu/tiny.yaml
FAILING_SEED = 202
WRAPPER = """#!/usr/bin/env bash
# The real trainer, except that one seed raises at step 1 while the marker exists (deleting it is the fix).
args=("$@")
if [[ -e {marker} && " $* " == *" trainer.seed={seed} "* ]]; then
    args+=(trainer.fail_at_step=1)
fi
exec {trainer} "${{args[@]}}"
"""
GPU_TRAINER_STUB = """#!/usr/bin/env bash
# Stands in for `dsrl train` on the test node, whose GPUs cannot compute: records the GPUs SLURM gave this
# job step and the process count torchrun would start, as the run's outputs.
while (($#)); do
    case $1 in
        --nproc-per-node) nproc=$2; shift ;;
        trainer.run_dir=*) run_dir=${1#*=} ;;
    esac
    shift
done
mkdir -p "$run_dir"
printf '{"slurm_gpus": "%s", "nproc_per_node": "%s"}' "${SLURM_GPUS_ON_NODE:-}" "$nproc" >"$run_dir/run.json"
: >"$run_dir/metrics.jsonl"
"""
Job = dict[str, str]  # one squeue row: id, name, state, time_limit, comment

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _unavailable_reason() -> str | None:
    """Why this machine cannot run the cluster at all (not root, nothing to install with), or None."""
    if os.geteuid() != 0:
        return "the test SLURM cluster needs root (its daemons run as SlurmUser=root)"
    if not all(shutil.which(tool) for tool in SLURM_TOOLS) and not shutil.which("apt-get"):
        return "slurm-wlm/munge are not installed and apt-get is missing"
    return None


def _cluster(action: str, timeout_s: int) -> None:
    """Run one cluster.sh action; a failure raises with the script's output so the reason is visible."""
    proc = subprocess.run(
        ["bash", str(CLUSTER_SH), action], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cluster.sh {action} failed (rc={proc.returncode}):\n{proc.stdout}{proc.stderr}")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """Install and start the cluster once per session and stop it afterwards.

    In CI (CI=true) not getting a cluster fails the test; locally, a machine without root/apt skips with why.
    """
    reason = _unavailable_reason()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs the SLURM test cluster: {reason}")
        pytest.skip(reason)
    try:
        _cluster("install", timeout_s=900)
        _cluster("start", timeout_s=120)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        _cluster("stop", timeout_s=120)
        pytest.fail(str(err))
    yield
    _cluster("stop", timeout_s=120)


def _squeue_jobs() -> list[Job]:
    """Every job slurmctld still remembers (its MinJobAge keeps finished ones for an hour)."""
    fields = ("id", "name", "state", "time_limit", "comment")
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i|%j|%T|%l|%k"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [dict(zip(fields, line.split("|", 4), strict=True)) for line in out.splitlines() if line.strip()]


def _wait_for_end(job_id: str, timeout_s: float = 60) -> str:
    """Poll squeue until the job leaves the pending/running states; return its final state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = next((job["state"] for job in _squeue_jobs() if job["id"] == job_id), None)
        if state not in (None, "PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still not finished after {timeout_s}s: {_squeue_jobs()}")


def _sbatch(*args: str) -> str:
    return subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True).stdout.strip()


def test_sbatch_runs_a_job_step_on_the_node(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    job_id = _sbatch(f"--output={out}", "--wrap", "srun --ntasks=1 hostname")
    assert _wait_for_end(job_id) == "COMPLETED"
    assert out.read_text().split() == [socket.gethostname()]


def test_failing_job_is_reported_failed(slurm_cluster, tmp_path):
    job_id = _sbatch(f"--output={tmp_path / 'job.out'}", "--wrap", "exit 3")
    assert _wait_for_end(job_id) == "FAILED"


@pytest.fixture
def workflow_copy(tmp_path) -> Path:
    """The repository's working tree without ignored files (venvs, results), so the runs write under tmp."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    copy = tmp_path / "repo"
    for name in filter(None, listing.split("\0")):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, copy / name)
    return copy


def _run_workflow(workdir: Path, trainer: Path) -> tuple[subprocess.CompletedProcess[str], list[Job]]:
    """One `snakemake --profile tests/slurm/profile-cpu` run and the SLURM jobs it submitted (the plugin
    names every job after the run ID it logs)."""
    proc = subprocess.run(
        [
            str(SNAKEMAKE),
            "--profile",
            "tests/slurm/profile-cpu",
            "--config",
            f"trainer_command={trainer}",
            "--",
            "results/overall.tsv",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    match = re.search(r"SLURM run ID: (\S+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    return proc, [job for job in _squeue_jobs() if job["name"] == match.group(1)]


def _train_jobs_by_seed(jobs: list[Job]) -> dict[int, list[Job]]:
    """Training jobs by seed, in submission order; the plugin comments them with the rule and wildcards:
    rule_train_wildcards_<suite>_<algo>_<case>_<seed>."""
    by_seed: dict[int, list[Job]] = {}
    for job in sorted(jobs, key=lambda job: int(job["id"])):
        if job["comment"].startswith("rule_train_wildcards_"):
            by_seed.setdefault(int(job["comment"].rsplit("_", 1)[1]), []).append(job)
    return by_seed


def _minutes(time_limit: str) -> int:
    """squeue's %l ([days-]hours:minutes:seconds or minutes:seconds) in minutes."""
    days, _, clock = time_limit.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    seconds = sum(value * 60**power for power, value in enumerate(reversed(parts)))
    return int(days or 0) * 1440 + seconds // 60


def test_rerun_resubmits_only_the_failed_seed(slurm_cluster, workflow_copy, tmp_path):
    if not (SNAKEMAKE.is_file() and TRAINER.is_file()):
        pytest.fail(f"needs the workflow env ({SNAKEMAKE}) and the trainer env ({TRAINER})")
    marker = tmp_path / "break-seed"
    marker.touch()
    trainer = tmp_path / "dsrl-wrapper"
    trainer.write_text(WRAPPER.format(marker=marker, seed=FAILING_SEED, trainer=TRAINER))
    trainer.chmod(0o755)
    overall = workflow_copy / "results" / "overall.tsv"

    first, first_jobs = _run_workflow(workflow_copy, trainer)
    assert first.returncode != 0, first.stdout + first.stderr
    assert not overall.exists()
    train = _train_jobs_by_seed(first_jobs)
    assert sorted(train) == sorted(SEEDS), first_jobs
    good_seed = next(seed for seed in SEEDS if seed != FAILING_SEED)
    assert [job["state"] for job in train[good_seed]] == ["COMPLETED"]
    # retries: 1 in the profile, and each attempt gets a longer time limit (runtime: attempt * 10).
    assert [job["state"] for job in train[FAILING_SEED]] == ["FAILED", "FAILED"]
    limits = [_minutes(job["time_limit"]) for job in train[FAILING_SEED]]
    assert limits[0] < limits[1], limits
    failed_log = next((workflow_copy / "results" / "runs").glob(f"*/*/*/seed{FAILING_SEED}/train.log"))
    assert "trainer.fail_at_step=1: injected failure" in failed_log.read_text()

    marker.unlink()
    second, second_jobs = _run_workflow(workflow_copy, trainer)
    assert second.returncode == 0, second.stdout + second.stderr
    assert overall.is_file()
    train = _train_jobs_by_seed(second_jobs)
    assert list(train) == [FAILING_SEED], second_jobs
    assert [job["state"] for job in train[FAILING_SEED]] == ["COMPLETED"]


def _gpu_profile_for_test_node(directory: Path) -> Path:
    """slurm/config.yaml with only what the 2-CPU test node forces changed: no account (no accounting
    daemon), one CPU per GPU, and squeue for job states."""
    profile = yaml.safe_load(GPU_PROFILE.read_text())
    del profile["default-resources"]["slurm_account"]
    profile["set-resources"]["train"]["cpus_per_gpu"] = 1
    profile["slurm-status-command"] = "squeue"
    profile["slurm-init-seconds-before-status-checks"] = 2
    directory.mkdir()
    (directory / "config.yaml").write_text(yaml.safe_dump(profile))
    return directory


def test_gpu_profile_gives_training_the_gpus_torchrun_starts(slurm_cluster, workflow_copy, tmp_path):
    profile = _gpu_profile_for_test_node(tmp_path / "profile-gpu")
    trainer = tmp_path / "dsrl-stub"
    trainer.write_text(GPU_TRAINER_STUB)
    trainer.chmod(0o755)
    # The first run of the matrix (config/gpu.yaml changes suite steps, not the matrix), and its GPU count.
    cpu_config = yaml.safe_load((workflow_copy / "config" / "config.yaml").read_text())
    gpu_config = yaml.safe_load((workflow_copy / "config" / "gpu.yaml").read_text())
    suite = cpu_config["run_suites"][0]
    spec = cpu_config["suites"][suite]
    run_dir = f"results/runs/{suite}/{spec['algos'][0]}/{spec['cases'][0]}/seed{spec['seeds'][0]}"
    gpus = str(gpu_config.get("processes_per_job", cpu_config["processes_per_job"]))

    proc = subprocess.run(
        [
            str(SNAKEMAKE),
            "--profile",
            str(profile),
            "--config",
            f"trainer_command={trainer}",
            "--",
            f"{run_dir}/run.json",
        ],
        cwd=workflow_copy,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recorded = json.loads((workflow_copy / run_dir / "run.json").read_text())
    assert recorded == {"slurm_gpus": gpus, "nproc_per_node": gpus}
