"""First-step parity table on hand-made step-1 metrics (the real CPU runs: test_workflow_e2e, test_trainer)."""

import pandas as pd
import pytest

from dsrl.analysis.parity import NOT_LOGGED, TOLERANCES, compare_step, parity_table
from dsrl.analysis.summary import RunRecord

STEP1 = {
    "parity/response_crc32": 123456789.0,
    "parity/old_log_prob/mean": -6.2,
    "parity/old_log_prob/min": -9.5,
    "parity/old_log_prob/max": -0.3,
    "parity/actor/pg_loss": 0.003,
    "parity/actor/grad_norm": 0.54,
    "actor/pg_loss": 0.004,
    "critic/score/mean": 0.1,
}
CPU = TOLERANCES["cpu"]


def record(case, seed=7, algo="grpo", **changes):
    row = {k: v for k, v in (STEP1 | changes).items() if v is not None}
    table = pd.DataFrame([row, {**row, "actor/pg_loss": 1.0}], index=pd.Index([1, 2], name="step"))
    return RunRecord(case, algo, seed, table, {"status": "completed", "last_step": 2})


def test_identical_first_steps_pass():
    row = compare_step(STEP1, STEP1, CPU)
    assert row["responses_match"] is True and row["parity_pass"] is True and row["failed"] == ""
    assert row["old_log_prob_abs_diff"] == row["grad_norm_abs_diff"] == 0.0


def test_differences_within_and_beyond_the_tolerance():
    close = STEP1 | {"parity/actor/grad_norm": 0.54 * (1 + 0.5 * CPU.rtol)}
    assert compare_step(close, STEP1, CPU)["parity_pass"] is True
    far = STEP1 | {"parity/actor/grad_norm": 0.54 * (1 + 3 * CPU.rtol), "parity/old_log_prob/min": -9.6}
    row = compare_step(far, STEP1, CPU)
    assert row["parity_pass"] is False and row["failed"] == "old_log_prob,grad_norm"
    assert row["old_log_prob_abs_diff"] == pytest.approx(0.1)
    # the same drift is bf16 noise on a GPU
    assert compare_step(far | {"parity/old_log_prob/min": -9.5}, STEP1, TOLERANCES["cuda"])["parity_pass"] is True


def test_a_different_rollout_fails_even_with_equal_numbers():
    row = compare_step(STEP1 | {"parity/response_crc32": 1.0}, STEP1, CPU)
    assert row["responses_match"] is False and row["parity_pass"] is False and row["failed"] == "responses"


def test_runs_without_the_parity_metrics_say_not_logged():
    """GPU runs committed before the parity metrics existed, and imported verl logs."""
    old = {"actor/pg_loss": 0.004, "actor/grad_norm": 0.5}
    row = compare_step(old, STEP1, CPU)
    assert row["responses_match"] == row["grad_norm_abs_diff"] == row["parity_pass"] == NOT_LOGGED
    partial = {k: v for k, v in STEP1.items() if not k.startswith("parity/old_log_prob")}
    row = compare_step(partial, STEP1, CPU)
    assert row["old_log_prob_abs_diff"] == NOT_LOGGED and row["parity_pass"] is True


def test_parity_table_pairs_each_case_with_the_baseline_of_its_seed():
    records = [
        record("zero1_no_offload", seed=1),
        record("zero2_no_offload", seed=1),
        record("zero3_no_offload", seed=1, **{"parity/actor/pg_loss": 0.5}),
        record("zero1_no_offload", seed=2, **{"parity/response_crc32": 5.0}),
        record("zero2_no_offload", seed=2, **{"parity/response_crc32": 5.0}),
        record("zero2_no_offload", seed=3),  # no baseline run for seed 3: no row
        record("zero2_cpu_offload", seed=1, **{"parity/old_log_prob/mean": None}),
    ]
    table = parity_table(records, "zero1_no_offload", CPU)
    assert list(zip(table["seed"], table["case"], strict=True)) == [
        (1, "zero2_no_offload"),
        (1, "zero3_no_offload"),
        (1, "zero2_cpu_offload"),
        (2, "zero2_no_offload"),
    ]
    assert table["parity_pass"].tolist() == [True, False, True, True]
    assert table.loc[1, "failed"] == "pg_loss" and table.loc[1, "pg_loss_abs_diff"] == pytest.approx(0.497)
    assert table.loc[2, "old_log_prob_abs_diff"] == NOT_LOGGED
    assert (table["step"] == 1).all() and (table["rtol"] == CPU.rtol).all()
    with pytest.raises(ValueError, match="zero9"):
        parity_table(records, "zero9", CPU)
