"""One summary row per run: score, throughput and memory at the target step and over the last steps."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TAIL = 5
"""Steps averaged by the ``*_tail5`` columns: the last TAIL logged steps up to the target step."""

SCORE = "critic/score/mean"
THROUGHPUT = "perf/throughput"
MEM_ALLOCATED = "perf/max_memory_allocated_gb"
MEM_RESERVED = "perf/max_memory_reserved_gb"
MFU_ACTOR = "perf/mfu/actor"
UPDATE_THROUGHPUT = "perf/update_actor_throughput"
TIMING_PREFIX = "timing_s/"

SUMMARY_COLUMNS = [
    "case",
    "algo",
    "seed",
    "status",
    "last_step",
    "step_target_score_mean",
    "avg_score_tail5",
    "step_target_throughput",
    "avg_throughput_tail5",
    "step_target_mem_allocated_gb",
    "avg_mem_allocated_gb_tail5",
    "step_target_mem_reserved_gb",
    "avg_mem_reserved_gb_tail5",
    "peak_mem_reserved_gb",
    "peak_mem_allocated_gb",
    "predicted_model_states_gpu_gb",
    "predicted_model_states_cpu_gb",
    "avg_mfu_actor_tail5",
    "avg_update_actor_throughput_tail5",
]
"""Fixed leading columns; ``timing_<phase>_mean_s`` columns, ``malformed_lines`` and ``last_error`` follow."""


@dataclass
class RunRecord:
    """Everything the summary needs about one run: its identity, per-step table and ``run.json``."""

    case: str
    algo: str
    seed: int
    metrics: pd.DataFrame
    info: Mapping[str, Any] = field(default_factory=dict)
    malformed: int = 0


def read_run_record(case: str, algo: str, seed: int, metrics_parquet: str | Path, run_json: str | Path) -> RunRecord:
    """Load a run from its parsed ``metrics.parquet`` (malformed count kept in its attrs) and ``run.json``."""
    metrics = pd.read_parquet(metrics_parquet)
    info = json.loads(Path(run_json).read_text())
    return RunRecord(case, algo, int(seed), metrics, info, int(metrics.attrs.get("malformed_lines", 0)))


def _at(table: pd.DataFrame, step: int, column: str) -> float:
    if column not in table.columns or step not in table.index:
        return np.nan
    return float(table.at[step, column])


def _tail(table: pd.DataFrame, target_step: int, column: str) -> float:
    if column not in table.columns:
        return np.nan
    return float(table.loc[table.index <= target_step, column].dropna().tail(TAIL).mean())


def _peak(table: pd.DataFrame, column: str) -> float:
    return float(table[column].max()) if column in table.columns else np.nan


def _predicted(info: Mapping[str, Any]) -> dict[str, float]:
    """DeepSpeed's model-state estimate recorded by the trainer (absent for imported runs: NaN)."""
    total = info.get("memory_estimate", {}).get("total", {})
    return {
        "predicted_model_states_gpu_gb": float(total.get("gpu_gb", np.nan)),
        "predicted_model_states_cpu_gb": float(total.get("cpu_gb_per_node", np.nan)),
    }


def summarize_run(record: RunRecord, target_step: int) -> dict[str, Any]:
    """Summarize one run; values the run never logged (e.g. past its last step) are NaN, not zero."""
    table = record.metrics
    last_logged = int(table.index.max()) if len(table) else 0
    row: dict[str, Any] = {
        "case": record.case,
        "algo": record.algo,
        "seed": record.seed,
        "status": record.info.get("status", "unknown"),
        "last_step": int(record.info.get("last_step", last_logged)),
        "step_target_score_mean": _at(table, target_step, SCORE),
        "avg_score_tail5": _tail(table, target_step, SCORE),
        "step_target_throughput": _at(table, target_step, THROUGHPUT),
        "avg_throughput_tail5": _tail(table, target_step, THROUGHPUT),
        "step_target_mem_allocated_gb": _at(table, target_step, MEM_ALLOCATED),
        "avg_mem_allocated_gb_tail5": _tail(table, target_step, MEM_ALLOCATED),
        "step_target_mem_reserved_gb": _at(table, target_step, MEM_RESERVED),
        "avg_mem_reserved_gb_tail5": _tail(table, target_step, MEM_RESERVED),
        "peak_mem_reserved_gb": _peak(table, MEM_RESERVED),
        "peak_mem_allocated_gb": _peak(table, MEM_ALLOCATED),
        **_predicted(record.info),
        "avg_mfu_actor_tail5": _tail(table, target_step, MFU_ACTOR),
        "avg_update_actor_throughput_tail5": _tail(table, target_step, UPDATE_THROUGHPUT),
    }
    for column in sorted(c for c in table.columns if c.startswith(TIMING_PREFIX)):
        row[f"timing_{column[len(TIMING_PREFIX) :]}_mean_s"] = float(table[column].mean())
    row["malformed_lines"] = record.malformed
    row["last_error"] = record.info.get("error") or ""
    return row


def summarize_runs(records: Iterable[RunRecord], target_step: int) -> pd.DataFrame:
    """The suite's ``summary.tsv`` table, sorted by case, algo and seed."""
    rows = [summarize_run(record, target_step) for record in records]
    if not rows:
        raise ValueError("summarize_runs: no runs given")
    frame = pd.DataFrame(rows)
    timing = sorted(c for c in frame.columns if c.startswith("timing_"))
    frame = frame[[*SUMMARY_COLUMNS, *timing, "malformed_lines", "last_error"]]
    return frame.sort_values(["case", "algo", "seed"], kind="stable").reset_index(drop=True)


def timing_phases(summary: pd.DataFrame) -> dict[str, str]:
    """Map phase name -> summary column for the per-phase mean timings.

    ``step`` is the total and ``<phase>/<part>`` a part of a phase (ZeRO-3's ``gen/gather_params``), so both are
    left out: the phases returned add up to the step.
    """
    phases = {
        c[len("timing_") : -len("_mean_s")]: c for c in summary.columns if c.startswith("timing_") and "/" not in c
    }
    phases.pop("step", None)
    return phases
