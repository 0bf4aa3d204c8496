"""The slurm profiles as Snakemake 9 reads them: lookup of `--profile slurm`, the settings users rely on, and
rule names that exist in the workflow (Snakemake ignores set-resources for unknown rules silently)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

snakemake_cli = pytest.importorskip("snakemake.cli", reason="needs the workflow environment (snakemake)")
from snakemake.profiles import ProfileConfigFileParser  # noqa: E402
from snakemake.resources import Resources  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GPU_PROFILE = REPO / "slurm" / "config.yaml"
CPU_PROFILE = REPO / "tests" / "slurm" / "profile-cpu" / "config.yaml"
SNAKEMAKE = REPO / ".venv" / "bin" / "snakemake"

pytestmark = pytest.mark.workflow


def _profile(path: Path) -> dict[str, object]:
    """The profile as Snakemake turns it into command-line arguments (values are CLI strings or lists)."""
    with path.open() as stream:
        return dict(ProfileConfigFileParser().parse(stream))


def _assignments(entries: list[str]) -> dict[str, str]:
    """`key=value` (default-resources) or `rule:key=value` (set-resources) strings as a mapping."""
    return dict(entry.split("=", 1) for entry in entries)


def _workflow_rules() -> set[str]:
    out = subprocess.run([str(SNAKEMAKE), "--list-rules"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def test_profile_name_resolves_to_the_repository_profile(monkeypatch):
    monkeypatch.chdir(REPO)
    _, config_file = snakemake_cli.get_profile_dir("slurm")
    assert (REPO / config_file).resolve() == GPU_PROFILE


def test_gpu_profile_submits_with_slurm_and_survives_failures():
    profile = _profile(GPU_PROFILE)
    assert profile["executor"] == "slurm"
    assert profile["keep-going"] == "True"
    assert profile["rerun-incomplete"] == "True"
    assert int(profile["retries"]) >= 1
    assert (REPO / profile["configfile"]).is_file()
    defaults = _assignments(profile["default-resources"])
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb"} <= defaults.keys()


@pytest.mark.parametrize("path", [GPU_PROFILE, CPU_PROFILE], ids=["gpu", "cpu"])
def test_profile_never_uses_slurm_extra(path):
    assert "slurm_extra" not in path.read_text()


@pytest.mark.parametrize("path", [GPU_PROFILE, CPU_PROFILE], ids=["gpu", "cpu"])
def test_profile_sets_resources_only_for_existing_rules(path):
    rules = {entry.split(":", 1)[0] for entry in _profile(path)["set-resources"]}
    assert rules <= _workflow_rules()


def test_gpu_profile_training_runtime_grows_with_attempt():
    expression = _assignments(_profile(GPU_PROFILE)["set-resources"])["train:runtime"]
    runtime = Resources.parse([f"runtime={expression}"], allow_expressions=True)["runtime"]
    minutes = [
        runtime.evaluate(wildcards={}, input=[], attempt=n, threads=1, rulename="train", async_run=None).value
        for n in (1, 2, 3)
    ]
    assert minutes[0] > 0
    assert minutes == sorted(set(minutes))


def test_gpu_profile_dry_run_requests_gpus_for_training():
    proc = subprocess.run(
        [str(SNAKEMAKE), "--profile", "slurm", "--dry-run", "results/overall.tsv"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train_resources = re.findall(r"rule train:\n(?:    .*\n)*?    resources: (.*)\n", proc.stdout)
    assert train_resources, proc.stdout
    for line in train_resources:
        assert re.search(r"\bgpu=[1-9]", line), line
        assert "cpus_per_gpu=" in line
