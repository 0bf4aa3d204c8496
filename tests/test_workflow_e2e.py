"""The default (CPU) workflow for real: data, 12 DeepSpeed runs in the trainer env, tables and plots."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
TRAINER = REPO / ".venv-train" / "bin" / "dsrl"


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="needs the workflow environment (snakemake)")
@pytest.mark.skipif(not TRAINER.exists(), reason="needs the trainer environment (.venv-train)")
def test_default_workflow_end_to_end(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    cmd = [
        str(SNAKEMAKE),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "-c2",
        "--config",
        f"trainer_command={TRAINER}",
        "--",
        "all",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    results = tmp_path / "results"
    overall = pd.read_csv(results / "overall.tsv", sep="\t")
    assert set(overall["suite"]) == {"zero_six", "zero12_gate"}
    rows = overall.set_index(["suite", "metric"])["value"]
    assert rows[("zero_six", "n_runs")] == "6" and rows[("zero12_gate", "n_paired_seeds")] == "3"
    assert rows[("zero_six", "all_reached_target_step")] == "True"
    assert rows[("zero12_gate", "gate_pass")] in {"True", "False"}
    # CPU ZeRO-1 and ZeRO-2 runs are deterministic and identical: every paired delta is 0, known exactly
    assert rows[("zero12_gate", "equivalence_verdict")] == "equivalent"
    assert float(rows[("zero12_gate", "delta_sd")]) == 0.0
    assert float(rows[("zero12_gate", "baseline_seed_sd")]) >= 0 and float(rows[("zero12_gate", "seeds_needed")]) >= 2

    # first-step parity: ZeRO-1/2/3 with and without offload train the same first step as the baseline
    for suite, baseline, cases in (
        ("zero_six", "zero1_no_offload", 5),
        ("zero12_gate", "zero1_no_offload", 3),
    ):
        parity = pd.read_csv(results / suite / "parity.tsv", sep="\t", dtype=str)
        assert len(parity) == cases and (parity["baseline"] == baseline).all()
        assert (parity["responses_match"] == "True").all() and (parity["parity_pass"] == "True").all(), parity

    six = pd.read_csv(results / "zero_six" / "summary.tsv", sep="\t")
    assert sorted(six["case"]) == sorted(f"zero{stage}_{off}_offload" for stage in (1, 2, 3) for off in ("no", "cpu"))
    assert (six["status"] == "completed").all() and (six["malformed_lines"] == 0).all()
    assert (six["avg_throughput_tail5"] > 0).all() and six["step_target_score_mean"].notna().all()
    assert six["timing_gen_mean_s"].gt(0).all()
    compare = pd.read_csv(results / "zero12_gate" / "compare.tsv", sep="\t")
    assert sorted(compare["seed"]) == [1234, 2024, 3407]

    run_dir = results / "runs" / "zero_six" / "grpo" / "zero3_cpu_offload" / "seed7777"
    log = (run_dir / "train.log").read_text()
    assert "step:1 - " in log
    for suite in ("zero_six", "zero12_gate"):
        for plot in ("score_curves", "throughput_curves", "resources", "timings"):
            for ext in ("png", "svg"):
                assert (results / "plots" / suite / f"{plot}.{ext}").stat().st_size > 0
    assert (results / "plots" / "zero12_gate" / "deltas.png").exists()

    report = subprocess.run([*cmd[:-2], "--report", "report.html"], cwd=tmp_path, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-4000:]
    assert "Per-step throughput of suite" in (tmp_path / "report.html").read_text()
