"""Summary, paired comparison and gate on hand-made per-step tables."""

import math

import numpy as np
import pandas as pd
import pytest

from dsrl.analysis.gate import bootstrap_mean_ci, combine_overall, compare_pairs, overall_rows, with_equivalence
from dsrl.analysis.summary import RunRecord, summarize_run, summarize_runs, timing_phases


def metrics(steps, score=lambda s: s / 10, throughput=lambda s: 100.0 * s, **extra):
    """A run's per-step table: score s/10 and throughput 100*s by default."""
    frame = pd.DataFrame(
        {
            "critic/score/mean": [score(s) for s in steps],
            "perf/throughput": [throughput(s) for s in steps],
            "perf/max_memory_allocated_gb": [1.0 + s for s in steps],
            "perf/max_memory_reserved_gb": [2.0 + s for s in steps],
            **{k: [v(s) for s in steps] for k, v in extra.items()},
        },
        index=pd.Index(steps, name="step"),
    )
    return frame


def record(case, seed, steps, algo="grpo", status="completed", **kw):
    return RunRecord(case, algo, seed, metrics(steps, **kw), {"status": status, "last_step": max(steps)})


def test_summarize_run_target_and_tail():
    row = summarize_run(record("zero1", 1, list(range(1, 9))), target_step=6)
    assert row["step_target_score_mean"] == pytest.approx(0.6)
    assert row["avg_score_tail5"] == pytest.approx((0.2 + 0.3 + 0.4 + 0.5 + 0.6) / 5)
    assert row["step_target_throughput"] == 600.0
    assert row["avg_throughput_tail5"] == pytest.approx(400.0)
    assert row["step_target_mem_allocated_gb"] == 7.0
    assert row["avg_mem_reserved_gb_tail5"] == pytest.approx(6.0)
    assert row["peak_mem_reserved_gb"] == 10.0
    assert row["last_step"] == 8
    assert row["last_error"] == ""


def test_summarize_run_short_of_target_has_nan_at_target():
    info = {"status": "failed", "last_step": 3, "error": "OOM"}
    rec = RunRecord("zero3", "ppo", 2, metrics([1, 2, 3]), info)
    row = summarize_run(rec, target_step=10)
    assert math.isnan(row["step_target_score_mean"])
    assert row["avg_score_tail5"] == pytest.approx(0.2)
    assert row["status"] == "failed"
    assert row["last_error"] == "OOM"


def test_summarize_runs_timing_columns_and_order():
    runs = [
        record("zero2", 5, [1, 2], **{"timing_s/gen": lambda s: 2.0 * s, "timing_s/step": lambda s: 9.0}),
        record("zero1", 9, [1, 2], **{"timing_s/update_actor": lambda s: 1.0}),
        record("zero1", 3, [1, 2]),
    ]
    table = summarize_runs(runs, target_step=2)
    assert list(table[["case", "seed"]].itertuples(index=False, name=None)) == [
        ("zero1", 3),
        ("zero1", 9),
        ("zero2", 5),
    ]
    assert table.columns[-2:].tolist() == ["malformed_lines", "last_error"]
    assert table.loc[2, "timing_gen_mean_s"] == pytest.approx(3.0)
    assert math.isnan(table.loc[0, "timing_gen_mean_s"])
    assert table.loc[1, "timing_update_actor_mean_s"] == 1.0


def test_summary_memory_prediction_and_mfu_columns():
    info = {
        "status": "completed",
        "last_step": 6,
        "memory_estimate": {"actor": {"gpu_bytes": 1}, "total": {"gpu_gb": 6.5, "cpu_gb_per_node": 1.25}},
    }
    mfu = {"perf/mfu/actor": lambda s: 0.1 * s, "perf/update_actor_throughput": lambda s: 1000.0 * s}
    row = summarize_run(RunRecord("zero2", "grpo", 1, metrics(list(range(1, 7)), **mfu), info), target_step=6)
    assert row["predicted_model_states_gpu_gb"] == 6.5
    assert row["predicted_model_states_cpu_gb"] == 1.25
    assert row["peak_mem_allocated_gb"] == 7.0
    assert row["avg_mfu_actor_tail5"] == pytest.approx(0.4)
    assert row["avg_update_actor_throughput_tail5"] == pytest.approx(4000.0)
    imported = summarize_run(record("zero2", 1, [1, 2]), target_step=2)
    assert math.isnan(imported["predicted_model_states_gpu_gb"])
    assert math.isnan(imported["avg_mfu_actor_tail5"])


def test_timing_phases_leave_out_the_total_and_sub_phases():
    timings = {
        "timing_s/step": lambda s: 9.0,
        "timing_s/gen": lambda s: 5.0,
        "timing_s/gen/gather_params": lambda s: 0.5,
        "timing_s/update_actor": lambda s: 4.0,
    }
    table = summarize_runs([record("zero3", 1, [1, 2], **timings)], target_step=2)
    assert table.loc[0, "timing_gen/gather_params_mean_s"] == 0.5
    assert timing_phases(table) == {"gen": "timing_gen_mean_s", "update_actor": "timing_update_actor_mean_s"}


def gate_summary(score_shift, seeds=(1, 2, 3), steps=range(1, 6), seed_noise=None):
    """ZeRO-1 scores s/10 + seed_noise[seed]; ZeRO-2 scores shifted from those by score_shift[seed]."""
    runs = []
    for seed in seeds:
        noise = (seed_noise or {}).get(seed, 0.0)
        runs.append(record("zero1_no_offload", seed, list(steps), score=lambda s, n=noise: s / 10 + n))
        runs.append(
            record(
                "zero2_no_offload",
                seed,
                list(steps),
                score=lambda s, d=score_shift[seed] + noise: s / 10 + d,
                throughput=lambda s: 50.0 * s,
            )
        )
    return summarize_runs(runs, target_step=5)


def test_compare_pairs_deltas_per_seed():
    summary = gate_summary({1: 0.01, 2: -0.03, 3: 0.05})
    extra = summarize_runs([record("zero1_no_offload", 4, [1, 2, 3, 4, 5])], target_step=5)
    both = pd.concat([summary, extra], ignore_index=True)
    compare = compare_pairs(both, "zero1_no_offload", "zero2_no_offload")
    assert compare["seed"].tolist() == [1, 2, 3]
    assert compare["delta_avg_score_tail5"].to_numpy() == pytest.approx([0.01, -0.03, 0.05])
    assert compare["delta_step_target_throughput"].tolist() == [-250.0, -250.0, -250.0]
    assert compare["delta_peak_mem_reserved_gb"].tolist() == [0.0, 0.0, 0.0]


def test_compare_pairs_unknown_case_is_named():
    with pytest.raises(ValueError, match="zero9"):
        compare_pairs(gate_summary({1: 0, 2: 0, 3: 0}), "zero1_no_offload", "zero9")


def as_dict(overall):
    return dict(zip(overall["metric"], overall["value"], strict=True))


def test_overall_gate_pass_and_statistics():
    summary = gate_summary({1: 0.01, 2: -0.03, 3: 0.05})
    rows = as_dict(overall_rows(summary, 5, compare_pairs(summary, "zero1_no_offload", "zero2_no_offload")))
    assert rows["n_cases"] == 2 and rows["n_runs"] == 6 and rows["n_paired_seeds"] == 3
    assert rows["all_reached_target_step"] is True
    assert rows["mean_delta"] == pytest.approx(0.01)
    assert rows["mean_abs_delta"] == pytest.approx(0.03)
    assert rows["max_abs_delta"] == pytest.approx(0.05)
    assert -0.03 <= rows["ci95_low"] <= 0.01 <= rows["ci95_high"] <= 0.05
    assert rows["gate_pass"] is True


def test_overall_gate_fails_on_large_delta_or_missing_step():
    summary = gate_summary({1: 0.05, 2: 0.04, 3: 0.03})
    compare = compare_pairs(summary, "zero1_no_offload", "zero2_no_offload")
    assert as_dict(overall_rows(summary, 5, compare, threshold=0.02))["gate_pass"] is False
    assert as_dict(overall_rows(summary, 5, compare, threshold=0.05))["gate_pass"] is True
    short = gate_summary({1: 0.0, 2: 0.0, 3: 0.0}, steps=range(1, 5))
    rows = as_dict(overall_rows(short, 5, compare_pairs(short, "zero1_no_offload", "zero2_no_offload")))
    assert rows["all_reached_target_step"] is False
    assert rows["gate_pass"] is False


NOISE = {1: 0.05, 2: -0.04, 3: 0.0, 4: 0.02, 5: -0.03}
"""Seed-to-seed swings of the baseline score (several points, as GSM8K scores of small models do)."""


def gate_rows(shift, seeds=(1, 2, 3, 4, 5)):
    summary = gate_summary(shift, seeds=seeds, seed_noise=NOISE)
    compare = with_equivalence(compare_pairs(summary, "zero1_no_offload", "zero2_no_offload"), "avg_score_tail5", 0.02)
    return compare, as_dict(overall_rows(summary, 5, compare, threshold=0.02))


def test_equivalence_clear_parity_despite_seed_noise():
    """Paired deltas stay within a few thousandths while the baseline itself swings by several points."""
    compare, rows = gate_rows({1: 0.002, 2: -0.001, 3: 0.0, 4: 0.001, 5: -0.002})
    assert rows["gate_pass"] is True and rows["equivalence_verdict"] == "equivalent"
    assert rows["equivalence_p"] < 0.001
    assert rows["baseline_seed_sd"] == pytest.approx(np.std(list(NOISE.values()), ddof=1))
    assert rows["seeds_needed"] > 5  # had candidate and baseline varied independently, 5 seeds would not do
    assert compare["equivalence_verdict"].tolist() == ["equivalent"] * 5
    assert (compare["threshold"] == 0.02).all() and (compare["gate_metric"] == "avg_score_tail5").all()


def test_equivalence_clear_difference():
    compare, rows = gate_rows({1: 0.06, 2: 0.05, 3: 0.055, 4: 0.06, 5: 0.05})
    assert rows["gate_pass"] is False and rows["equivalence_verdict"] == "different"
    assert rows["equivalence_ci90_low"] > 0.02


def test_equivalence_too_few_seeds_where_the_old_gate_passes():
    compare, rows = gate_rows({1: 0.015, 2: -0.01}, seeds=(1, 2))
    assert rows["gate_pass"] is True  # |mean delta| = 0.0025 <= 0.02
    assert rows["equivalence_verdict"] == "inconclusive"
    assert rows["equivalence_ci90_low"] < -0.02 and rows["equivalence_ci90_high"] > 0.02
    compare, rows = gate_rows({1: 0.0}, seeds=(1,))
    assert rows["equivalence_verdict"] == "inconclusive" and math.isnan(rows["seeds_needed"])


def test_equivalence_per_algorithm_in_compare():
    runs = []
    for algo, shift in (("grpo", 0.0), ("ppo", 0.1)):
        for seed, noise in NOISE.items():
            runs.append(record("zero1_no_offload", seed, [1, 2, 3], algo=algo, score=lambda s, n=noise: n))
            runs.append(record("zero2_no_offload", seed, [1, 2, 3], algo=algo, score=lambda s, d=noise + shift: d))
    pairs = compare_pairs(summarize_runs(runs, target_step=3), "zero1_no_offload", "zero2_no_offload")
    compare = with_equivalence(pairs, "avg_score_tail5", 0.02)
    verdicts = compare.groupby("algo")["equivalence_verdict"].unique().to_dict()
    assert {algo: list(v) for algo, v in verdicts.items()} == {"grpo": ["equivalent"], "ppo": ["different"]}
    with pytest.raises(ValueError, match="gate metric"):
        with_equivalence(pairs, "avg_throughput_tail5", 0.02)


def test_overall_without_gate_has_no_gate_rows():
    rows = as_dict(overall_rows(gate_summary({1: 0, 2: 0, 3: 0}), 5))
    assert "gate_pass" not in rows
    assert rows["n_completed"] == 6


def test_bootstrap_ci_is_reproducible_and_degenerate_for_one_value():
    values = np.random.default_rng(5).normal(0.1, 1.0, size=40)
    low, high = bootstrap_mean_ci(values)
    assert (low, high) == bootstrap_mean_ci(values)
    assert low < values.mean() < high
    normal_width = 2 * 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert high - low == pytest.approx(normal_width, rel=0.15)
    assert bootstrap_mean_ci(np.array([0.25])) == (0.25, 0.25)
    assert all(math.isnan(v) for v in bootstrap_mean_ci(np.array([])))


def test_combine_overall_adds_suite_column():
    a = overall_rows(gate_summary({1: 0, 2: 0, 3: 0}), 5)
    combined = combine_overall({"zero_six": a, "zero12_gate": a})
    assert combined.columns.tolist() == ["suite", "metric", "value"]
    assert combined["suite"].value_counts().to_dict() == {"zero_six": len(a), "zero12_gate": len(a)}
