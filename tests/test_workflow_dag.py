"""The Snakemake workflow through its CLI: DAG shape, config errors, lint/format, and reruns after a failure.

Training is done by a fake trainer that writes the trainer contract's outputs, so these tests exercise the DAG
and rerun logic only; tests/test_workflow_e2e.py runs the real trainer.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = BIN / "snakemake"
if not SNAKEMAKE.exists():
    pytest.skip("needs the workflow environment (snakemake)", allow_module_level=True)

FAKE_TRAINER = """\
#!{python}
# Fake `dsrl train`: writes the contract's outputs; fails for "<case> <seed>" lines in ./fail_runs and stalls
# after step 1 for those in ./slow_runs.
import json, pathlib, sys
args = dict(a.split("=", 1) for a in sys.argv[4:])
run_dir = pathlib.Path(args["trainer.run_dir"])
case, seed = args["trainer.experiment_name"], int(args["trainer.seed"])
steps = int(args["trainer.total_training_steps"])
with open("calls.log", "a") as calls:
    calls.write(f"{{case}} {{seed}}\\n")
run_dir.mkdir(parents=True, exist_ok=True)
fail = pathlib.Path("fail_runs")
if fail.exists() and f"{{case}} {{seed}}" in fail.read_text().splitlines():
    print("RuntimeError: injected failure", flush=True)
    (run_dir / "run.json").write_text(json.dumps({{"status": "failed", "last_step": 0, "error": "injected"}}))
    sys.exit(1)
slow = pathlib.Path("slow_runs")
with open(run_dir / "metrics.jsonl", "w") as out:
    for step in range(1, steps + 1):
        if step == 2 and slow.exists() and f"{{case}} {{seed}}" in slow.read_text().splitlines():
            out.flush()
            import time; time.sleep(120)  # a long run, for tests that kill the driver mid-job
        row = {{"step": step, "critic/score/mean": seed % 7 / 10, "perf/throughput": 100.0 * step,
               "perf/max_memory_reserved_gb": 1.0, "timing_s/gen": 0.5, "timing_s/update_actor": 0.25}}
        out.write(json.dumps(row) + "\\n")
        print(f"step:{{step}} - critic/score/mean:{{row['critic/score/mean']}}")
(run_dir / "run.json").write_text(json.dumps({{"status": "completed", "last_step": steps, "error": None}}))
"""


def default_config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def make_workdir(tmp_path):
    """A working directory with config/ (schema included) and a fake trainer at bin/dsrl."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    trainer = tmp_path / "bin" / "dsrl"
    trainer.parent.mkdir()
    trainer.write_text(FAKE_TRAINER.format(python=sys.executable))
    trainer.chmod(0o755)
    return tmp_path


@pytest.fixture
def workdir(tmp_path):
    return make_workdir(tmp_path)


def write_config(workdir, config):
    config["trainer_command"] = "bin/dsrl"
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(workdir, *args, check=True):
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    if check and proc.returncode:
        pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def job_counts(workdir, *targets, options=()):
    """Rule -> job count from a dry run's first 'Job stats' table."""
    out = snakemake(workdir, "--dry-run", *options, "--quiet", "rules", "--", *targets).stdout
    table = out.split("Job stats:", 1)[1] if "Job stats:" in out else out
    counts = {}
    for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M):
        counts.setdefault(name, int(count))
    return counts


def test_default_dag_job_counts(workdir):
    write_config(workdir, default_config())
    counts = job_counts(workdir)
    runs = 6 * 1 + 2 * 3  # zero_six: 6 cases x 1 seed; zero12_gate: 2 cases x 3 seeds
    assert counts == {
        "prepare_data": 1,
        "train": runs,
        "parse_run": runs,
        "summary": 2,
        "compare": 1,
        "parity": 2,
        "suite_overall": 2,
        "overall": 1,
        "plot_curves": 2 * 2,
        "plot_resources": 2,
        "plot_memory": 2,
        "plot_timings": 2,
        "plot_deltas": 1,
        "all": 1,
        "total": 1 + 2 * runs + 2 + 1 + 2 + 2 + 1 + 4 + 2 + 2 + 2 + 1 + 1,
    }


def matrix_config(seeds=10):
    """3 ZeRO stages x 2 offload modes x `seeds` seeds x 2 algorithms in one gated suite."""
    config = default_config()
    cases = [f"zero{stage}_{off}_offload" for stage in (1, 2, 3) for off in ("no", "cpu")]
    config["suites"] = {
        "matrix": {
            "cases": cases,
            "algos": ["grpo", "ppo"],
            "seeds": list(range(100, 100 + seeds)),
            "steps": 2,
            "gate": {"baseline": "zero1_no_offload", "candidate": "zero2_no_offload"},
        }
    }
    config["run_suites"] = ["matrix"]
    return config


def test_matrix_dag_job_counts(workdir):
    write_config(workdir, matrix_config())
    counts = job_counts(workdir)
    assert counts["train"] == counts["parse_run"] == 3 * 2 * 10 * 2
    assert {k: counts[k] for k in ("summary", "compare", "suite_overall", "plot_deltas", "overall")} == dict.fromkeys(
        ("summary", "compare", "suite_overall", "plot_deltas", "overall"), 1
    )


def test_gpu_overlay_sets_gpu_run_settings(workdir):
    write_config(workdir, default_config())
    target = "results/runs/zero12_gate/grpo/zero2_no_offload/seed2024/metrics.jsonl"
    out = snakemake(workdir, "-n", "-p", "--configfile", str(workdir / "config/gpu.yaml"), "--", target).stdout
    command = next(line for line in out.splitlines() if "bin/dsrl train" in line)
    for expected in (
        "actor_rollout_ref.model.path=random:qwen3-0.6b",
        "actor_rollout_ref.model.enable_gradient_checkpointing=True",
        "data.train_batch_size=64",
        "actor_rollout_ref.rollout.n=4",
        "trainer.total_training_steps=60",
        "trainer.device=cuda",
        "--nproc-per-node 2",
    ):
        assert expected in command
    assert re.search(r"resources: .*gpu=2", out)


def test_local_gpu_profile_leases_gpus_per_job(workdir):
    write_config(workdir, default_config())
    shutil.copytree(REPO / "profiles", workdir / "profiles")
    target = "results/runs/zero_six/grpo/zero3_cpu_offload/seed7777/metrics.jsonl"
    out = snakemake(workdir, "--profile", "profiles/local-gpu", "-n", "--config", "processes_per_job=4", "--", target)
    command = next(line for line in out.stdout.splitlines() if "bin/dsrl train" in line)
    assert "-m dsrl.workflow.gpu_lease gpu-run --slots 8 --count 4 -- " in command
    assert "--nproc-per-node 4" in command and "trainer.device=cuda" in command


def test_gpu_overlay_restates_every_cpu_override():
    cpu = default_config()["trainer_overrides"]
    gpu = yaml.safe_load((REPO / "config" / "gpu.yaml").read_text())["trainer_overrides"]
    assert set(cpu) <= set(gpu), f"config/gpu.yaml keeps CPU values for {sorted(set(cpu) - set(gpu))}"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["suites"]["zero12_gate"].update(seeds=[1234, 2024, 1234]),
            "seeds lists [1234] more than once",
        ),
        (lambda c: c["suites"]["zero_six"]["cases"].append("zero9_no_offload"), "zero9_no_offload"),
        (lambda c: c.update(run_suites=["zero_six", "zero7"]), "run_suites: unknown name(s) ['zero7']"),
        (lambda c: c["suites"]["zero_six"].update(steps=0), "'steps'"),
        (
            lambda c: c["trainer_overrides"].update({"trainer.total_epoch": 1}),
            "unknown config key 'trainer.total_epoch'",
        ),
    ],
)
def test_bad_config_fails_at_dag_build(workdir, edit, message):
    config = default_config()
    edit(config)
    write_config(workdir, config)
    proc = snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_missing_trainer_is_named_before_any_job(workdir):
    write_config(workdir, default_config())
    proc = snakemake(workdir, "-n", "--config", "trainer_command=.venv-nope/bin/dsrl", check=False)
    assert proc.returncode != 0
    assert "trainer_command='.venv-nope/bin/dsrl'" in proc.stdout + proc.stderr


def test_unknown_suite_target_is_rejected(workdir):
    write_config(workdir, default_config())
    proc = snakemake(workdir, "-n", "results/zero7/summary.tsv", check=False)
    assert proc.returncode != 0
    assert "MissingRuleException" in proc.stdout + proc.stderr


def test_lint_and_format():
    lint = subprocess.run([str(SNAKEMAKE), "--lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Lints for" not in lint.stdout + lint.stderr
    files = [str(REPO / "Snakefile"), *map(str, sorted((REPO / "rules").glob("*.smk")))]
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", *files], capture_output=True, text=True, timeout=120)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_failed_run_reruns_alone(workdir):
    config = default_config()
    config["suites"] = {k: v for k, v in config["suites"].items() if k == "zero12_gate"}
    config["suites"]["zero12_gate"].update(seeds=[1, 2, 3], steps=2)
    config["run_suites"] = ["zero12_gate"]
    write_config(workdir, config)
    (workdir / "fail_runs").write_text("zero2_no_offload 2\n")
    target = "results/zero12_gate/overall.tsv"

    first = snakemake(workdir, "-c2", "--keep-going", target, check=False)
    assert first.returncode != 0
    failed = workdir / "results/runs/zero12_gate/grpo/zero2_no_offload/seed2"
    assert not (failed / "metrics.jsonl").exists() and not (failed / "run.json").exists()
    assert "injected failure" in (failed / "train.log").read_text()
    assert len((workdir / "calls.log").read_text().splitlines()) == 6
    assert len(list(workdir.glob("results/runs/zero12_gate/grpo/*/seed*/metrics.parquet"))) == 5
    assert not (workdir / "results/zero12_gate/summary.tsv").exists()

    (workdir / "fail_runs").unlink()
    assert job_counts(workdir, target)["train"] == 1
    snakemake(workdir, "-c2", target)
    assert (workdir / "calls.log").read_text().splitlines()[6:] == ["zero2_no_offload 2"]
    summary = pd.read_csv(workdir / "results/zero12_gate/summary.tsv", sep="\t")
    assert sorted(zip(summary["case"], summary["seed"], strict=True)) == sorted(
        (c, s) for c in ("zero1_no_offload", "zero2_no_offload") for s in (1, 2, 3)
    )
    overall = pd.read_csv(workdir / target, sep="\t").set_index("metric")["value"]
    assert overall["gate_pass"] == "True" and overall["n_paired_seeds"] == "3"
    assert json.loads((failed / "run.json").read_text())["status"] == "completed"
    assert "Nothing to be done" in snakemake(workdir, "-n", target).stdout + snakemake(workdir, "-n", target).stderr


def import_verl_folder(workdir) -> dict:
    """A verl benchmark folder (zero1_no_offload to step 3, zero3_cpu_offload cut at step 2) and a config importing
    it as the suite `verl_zero_six`."""
    root = workdir / "outputs" / "zero_six_60_seed7777_fix_20250101"
    for case, last in (("zero1_no_offload", 3), ("zero3_cpu_offload", 2)):
        (root / case).mkdir(parents=True)
        lines = [
            f"(TaskRunner pid=1) step:{s} - critic/score/mean:np.float64(0.{s}) - perf/throughput:1.5"
            for s in range(1, last + 1)
        ]
        (root / case / "train.log").write_text("\n".join(lines) + "\n")
    config = default_config()
    config["imports"] = {"verl_zero_six": {"path": str(root.relative_to(workdir)), "steps": 3, "seed": 7777}}
    return config


def test_imported_runs_are_summarized(workdir):
    write_config(workdir, import_verl_folder(workdir))
    snakemake(workdir, "-c2", "results/verl_zero_six/overall.tsv", "results/verl_zero_six/parity.tsv")
    summary = pd.read_csv(workdir / "results/verl_zero_six/summary.tsv", sep="\t").set_index("case")
    assert summary.loc["zero1_no_offload", "step_target_score_mean"] == 0.3
    assert summary.loc["zero3_cpu_offload", "status"] == "incomplete"
    assert (summary["algo"] == "ppo").all() and (summary["seed"] == 7777).all()
    parity = pd.read_csv(workdir / "results/verl_zero_six/parity.tsv", sep="\t", dtype=str)
    assert parity[["case", "baseline", "parity_pass"]].values.tolist() == [
        ["zero3_cpu_offload", "zero1_no_offload", "not logged"]  # verl logs carry no parity/* metrics
    ]
    assert not list(workdir.glob("calls.log"))


def test_gpu_config_without_gpus_fails_before_any_job(workdir, monkeypatch):
    """The GPU experiment with the local executor on a machine that shows no GPU: a clear error, nothing run."""
    write_config(workdir, default_config())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    proc = snakemake(workdir, "-c2", "--configfile", str(workdir / "config/gpu.yaml"), check=False)
    assert proc.returncode != 0
    assert "device=cuda needs 2 GPU(s) per training job but this machine shows 0" in proc.stdout + proc.stderr
    assert not (workdir / "results").exists() and not (workdir / "calls.log").exists()


def test_gpu_config_without_gpus_makes_tables_when_no_training_is_left(workdir, monkeypatch):
    """Tables of imported (or finished) runs need no GPU: the check above looks only at the jobs left to run."""
    write_config(workdir, import_verl_folder(workdir))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    target = "results/verl_zero_six/overall.tsv"
    snakemake(workdir, "-c2", "--configfile", str(workdir / "config/gpu.yaml"), "--", target)
    overall = pd.read_csv(workdir / target, sep="\t").set_index("metric")["value"]
    assert overall["n_runs"] == "2" and not (workdir / "calls.log").exists()
