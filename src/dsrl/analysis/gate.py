"""Paired candidate-minus-baseline deltas (ZeRO-2 minus ZeRO-1) and the per-suite ``overall.tsv``.

Gate rule (``gate_pass``): every run of the suite reached the target step, at least one (algo, seed) pair
exists, and ``|mean delta| <= threshold`` where delta = candidate - baseline of the gate metric
(``avg_score_tail5`` by default) per paired (algo, seed). The bootstrap CI is reported, not used by the rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

COMPARED = [
    "step_target_score_mean",
    "avg_score_tail5",
    "step_target_throughput",
    "avg_throughput_tail5",
    "step_target_mem_reserved_gb",
    "peak_mem_reserved_gb",
]
GATE_METRICS = ("avg_score_tail5", "step_target_score_mean")
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def compare_pairs(summary: pd.DataFrame, baseline: str, candidate: str) -> pd.DataFrame:
    """One row per (algo, seed) run by both cases: each compared metric for both and ``delta_<metric>``."""
    missing = {baseline, candidate} - set(summary["case"])
    if missing:
        raise ValueError(
            f"compare_pairs: case(s) {sorted(missing)} not in summary; have {sorted(set(summary['case']))}"
        )
    keys = ["algo", "seed"]
    base = summary.loc[summary["case"] == baseline, [*keys, *COMPARED]]
    cand = summary.loc[summary["case"] == candidate, [*keys, *COMPARED]]
    pairs = base.merge(cand, on=keys, suffixes=("_baseline", "_candidate"))
    for metric in COMPARED:
        pairs[f"delta_{metric}"] = pairs[f"{metric}_candidate"] - pairs[f"{metric}_baseline"]
    pairs.insert(2, "baseline", baseline)
    pairs.insert(3, "candidate", candidate)
    return pairs.sort_values(keys).reset_index(drop=True)


def bootstrap_mean_ci(
    values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile 95% CI of the mean by resampling with replacement (fixed seed: reruns give the same CI)."""
    if len(values) == 0:
        return np.nan, np.nan
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def overall_rows(
    summary: pd.DataFrame,
    target_step: int,
    compare: pd.DataFrame | None = None,
    threshold: float = 0.02,
    metric: str = "avg_score_tail5",
) -> pd.DataFrame:
    """``overall.tsv`` as metric/value rows; gate rows only when a ``compare`` table is given."""
    reached = bool((summary["last_step"] >= target_step).all())
    rows: dict[str, Any] = {
        "n_cases": summary["case"].nunique(),
        "n_runs": len(summary),
        "n_completed": int((summary["status"] == "completed").sum()),
        "target_step": target_step,
        "all_reached_target_step": reached,
    }
    if compare is not None:
        if metric not in GATE_METRICS:
            raise ValueError(f"gate metric {metric!r} is not one of {GATE_METRICS}")
        deltas = compare[f"delta_{metric}"].to_numpy(dtype=float)
        low, high = bootstrap_mean_ci(deltas[~np.isnan(deltas)])
        mean_delta = float(np.mean(deltas)) if len(deltas) else np.nan
        rows |= {
            "gate_metric": metric,
            "n_paired_seeds": len(compare),
            "mean_delta": mean_delta,
            "mean_abs_delta": float(np.mean(np.abs(deltas))) if len(deltas) else np.nan,
            "max_abs_delta": float(np.max(np.abs(deltas))) if len(deltas) else np.nan,
            "ci95_low": low,
            "ci95_high": high,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "threshold": threshold,
            "gate_pass": bool(reached and len(deltas) > 0 and abs(mean_delta) <= threshold),
        }
    return pd.DataFrame({"metric": list(rows), "value": list(rows.values())})


def combine_overall(per_suite: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The top-level ``results/overall.tsv``: every suite's rows with a leading ``suite`` column."""
    if not per_suite:
        raise ValueError("combine_overall: no suites given")
    return pd.concat(
        [frame.assign(suite=suite)[["suite", "metric", "value"]] for suite, frame in per_suite.items()],
        ignore_index=True,
    )
