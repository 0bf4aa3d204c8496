"""Reruns after what clusters and people do: a killed Snakemake driver, and a changed config."""

import os
import signal
import subprocess
import time

import pandas as pd
import pytest
from test_workflow_dag import REPO, SNAKEMAKE, default_config, job_counts, make_workdir, snakemake, write_config

pytestmark = pytest.mark.workflow

TARGET = "results/zero12_gate/overall.tsv"


@pytest.fixture
def workdir(tmp_path):
    return make_workdir(tmp_path)


def _gate_only(seeds: list[int]) -> dict:
    config = default_config()
    config["suites"] = {k: v for k, v in config["suites"].items() if k == "zero12_gate"}
    config["suites"]["zero12_gate"].update(seeds=seeds, steps=2)
    config["run_suites"] = ["zero12_gate"]
    return config


def test_killed_driver_recovers_with_rerun_incomplete(workdir):
    write_config(workdir, _gate_only([1]))
    (workdir / "slow_runs").write_text("zero2_no_offload 1\n")
    # The driver builds the slow run alone: which of two ready runs Snakemake starts first is not ours to fix.
    run = "results/runs/zero12_gate/grpo/zero2_no_offload/seed1/metrics.jsonl"
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "-c1", run]
    driver = subprocess.Popen(
        cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    partial = workdir / run
    deadline = time.monotonic() + 180
    while not (partial.exists() and partial.read_text()):
        assert driver.poll() is None and time.monotonic() < deadline, "the slow run never started"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its job die together, as on a lost login node
    driver.wait(timeout=60)

    (workdir / "slow_runs").unlink()
    snakemake(workdir, "--unlock", TARGET)  # a killed driver may leave its directory lock behind
    refused = snakemake(workdir, "-n", TARGET, check=False)
    assert refused.returncode != 0 and "incomplete" in (refused.stdout + refused.stderr).lower()
    assert job_counts(workdir, run, options=["--rerun-incomplete"])["train"] == 1
    snakemake(workdir, "-c1", "--rerun-incomplete", TARGET)
    metrics = pd.read_json(partial, lines=True)
    assert metrics["step"].tolist() == [1, 2]


def test_changed_trainer_config_reruns_every_affected_run(workdir):
    config = _gate_only([1, 2])
    write_config(workdir, config)
    snakemake(workdir, "-c2", TARGET)
    calls = (workdir / "calls.log").read_text().splitlines()
    assert len(calls) == 4

    config["trainer_overrides"]["data.max_response_length"] = 16
    write_config(workdir, config)
    assert job_counts(workdir, TARGET)["train"] == 4  # nothing from the earlier config is reused
    snakemake(workdir, "-c2", TARGET)
    assert len((workdir / "calls.log").read_text().splitlines()) == 8
    for run_json in workdir.glob("results/runs/zero12_gate/grpo/*/seed*/run.json"):
        assert run_json.stat().st_mtime >= (workdir / "calls.log").stat().st_mtime - 60
