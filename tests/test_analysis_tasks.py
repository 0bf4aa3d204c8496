"""File-level analysis entry points: parquet round trip, imports, TSV outputs and plot files."""

import json

import pandas as pd
import pytest

pytest.importorskip("matplotlib", reason="plots need the workflow environment")

from dsrl.analysis import plots, tasks  # noqa: E402
from dsrl.analysis.imports import discover_runs  # noqa: E402

STEP_LINE = "step:{s} - critic/score/mean:np.float64({score}) - perf/throughput:{tp:.3f} - timing_s/gen:1.0"


def write_run(run_dir, steps, score_shift=0.0, status="completed", bad_line=False):
    """A dsrl run folder as the trainer contract describes it."""
    run_dir.mkdir(parents=True)
    lines = [
        json.dumps(
            {
                "step": s,
                "critic/score/mean": s / 10 + score_shift,
                "perf/throughput": 100.0 * s,
                "perf/max_memory_reserved_gb": 2.0,
                "timing_s/gen": 1.0,
                "timing_s/update_actor": 0.5,
            }
        )
        for s in steps
    ]
    if bad_line:
        lines.append('{"step": 9, "crit')
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "run.json").write_text(json.dumps({"status": status, "last_step": max(steps), "error": None}))


def test_parse_run_keeps_malformed_count_in_parquet(tmp_path):
    write_run(tmp_path / "run", [1, 2, 3], bad_line=True)
    with pytest.warns(UserWarning, match="1 malformed"):
        assert tasks.parse_run(tmp_path / "run", tmp_path / "run" / "metrics.parquet") == 1
    table = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert table.attrs["malformed_lines"] == 1
    assert table.index.tolist() == [1, 2, 3]
    assert not list(tmp_path.glob("run/*.tmp-*"))


def test_gate_files_end_to_end(tmp_path):
    runs, parquets, infos = [], [], []
    for case, shift in [("zero1_no_offload", 0.0), ("zero2_no_offload", 0.01)]:
        for seed in (1234, 2024):
            run_dir = tmp_path / case / f"seed{seed}"
            write_run(run_dir, [1, 2, 3, 4], score_shift=shift)
            tasks.parse_run(run_dir, run_dir / "metrics.parquet")
            runs.append({"case": case, "algo": "grpo", "seed": seed})
            parquets.append(run_dir / "metrics.parquet")
            infos.append(run_dir / "run.json")
    tasks.write_summary(runs, parquets, infos, 4, tmp_path / "summary.tsv")
    summary = tasks.read_tsv(tmp_path / "summary.tsv")
    assert summary["step_target_score_mean"].tolist() == pytest.approx([0.4, 0.4, 0.41, 0.41])
    assert summary["timing_update_actor_mean_s"].tolist() == [0.5] * 4

    tasks.write_compare(tmp_path / "summary.tsv", "zero1_no_offload", "zero2_no_offload", tmp_path / "c.tsv")
    tasks.write_overall(tmp_path / "summary.tsv", 4, tmp_path / "o.tsv", tmp_path / "c.tsv", threshold=0.02)
    overall = tasks.read_tsv(tmp_path / "o.tsv").set_index("metric")["value"]
    assert overall["gate_pass"] == "True"
    assert float(overall["mean_delta"]) == pytest.approx(0.01)
    tasks.write_combined_overall({"zero12_gate": tmp_path / "o.tsv"}, tmp_path / "overall.tsv")
    assert tasks.read_tsv(tmp_path / "overall.tsv")["suite"].unique().tolist() == ["zero12_gate"]

    score = "critic/score/mean"
    for name, call in {
        "curves": lambda out: tasks.plot_curves(runs, parquets, infos, score, "score", "t", out),
        "resources": lambda out: plots.plot_resources(tasks.read_tsv(tmp_path / "summary.tsv"), out),
        "memory": lambda out: plots.plot_memory(tasks.read_tsv(tmp_path / "summary.tsv"), out),
        "deltas": lambda out: plots.plot_deltas(tasks.read_tsv(tmp_path / "c.tsv"), out),
        "timings": lambda out: plots.plot_timings(tasks.read_tsv(tmp_path / "summary.tsv"), out),
    }.items():
        png, svg = tmp_path / "plots" / f"{name}.png", tmp_path / "plots" / f"{name}.svg"
        call([png, svg])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in svg.read_bytes()[:2000]
    assert not list(tmp_path.glob("plots/*.tmp-*"))


def test_import_external_tree(tmp_path):
    root = tmp_path / "outputs" / "zero_six_60_seed7777_fix_20250101"
    for case, last in [("zero1_no_offload", 3), ("zero3_cpu_offload_seed42", 2)]:
        (root / case).mkdir(parents=True)
        lines = [STEP_LINE.format(s=s, score=s / 10, tp=10.0 * s) for s in range(1, last + 1)]
        if last < 3:
            lines.append("torch.OutOfMemoryError: CUDA out of memory.")
        (root / case / "train.log").write_text("\n".join(lines) + "\n")
    (root / "summary.tsv").write_text("ignored\n")
    found = discover_runs(root)
    assert [(r.case, r.seed) for r in found] == [("zero1_no_offload", None), ("zero3_cpu_offload", 42)]

    out = tmp_path / "imp"
    tasks.import_log(found[1].log, 3, out / "metrics.parquet", out / "run.json")
    info = json.loads((out / "run.json").read_text())
    assert info == {
        "status": "incomplete",
        "last_step": 2,
        "error": "torch.OutOfMemoryError: CUDA out of memory.",
        "source": str(found[1].log),
    }
    assert pd.read_parquet(out / "metrics.parquet")["perf/throughput"].tolist() == [10.0, 20.0]


def test_discover_runs_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_runs(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no <case>/train.log"):
        discover_runs(tmp_path)
