"""Paired candidate-minus-baseline deltas (ZeRO-2 minus ZeRO-1) and the per-suite ``overall.tsv``.

Gate rule (``gate_pass``): every run of the suite reached the target step, at least one (algo, seed) pair
exists, and ``|mean delta| <= threshold`` where delta = candidate - baseline of the gate metric
(``avg_score_tail5`` by default) per paired (algo, seed). The bootstrap CI is reported, not used by the rule.

Beside it (``dsrl.analysis.equivalence``): a paired equivalence test (TOST) at the same threshold with its verdict,
the baseline's seed-to-seed standard deviation and the seeds that would settle the question at that noise, per
algorithm in ``compare.tsv`` and over all pairs in ``overall.tsv``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from dsrl.analysis.equivalence import ALPHA, pooled_sd, seeds_needed, tost

COMPARED = [
    "step_target_score_mean",
    "avg_score_tail5",
    "step_target_throughput",
    "avg_throughput_tail5",
    "step_target_mem_reserved_gb",
    "peak_mem_reserved_gb",
]
GATE_METRICS = ("avg_score_tail5", "step_target_score_mean")
EQUIVALENCE_COLUMNS = [
    "equivalence_verdict",
    "equivalence_p",
    "equivalence_ci90_low",
    "equivalence_ci90_high",
    "delta_sd",
    "baseline_seed_sd",
    "seeds_needed",
]
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


def _check_metric(metric: str) -> None:
    if metric not in GATE_METRICS:
        raise ValueError(f"gate metric {metric!r} is not one of {GATE_METRICS}")


def equivalence(pairs: pd.DataFrame, metric: str, threshold: float) -> dict[str, Any]:
    """TOST of the pairs' deltas, the baseline's seed-to-seed SD (within each algorithm) and the seeds needed."""
    test = tost(pairs[f"delta_{metric}"].to_numpy(dtype=float), threshold)
    seed_sd = pooled_sd(pairs[f"{metric}_baseline"].to_numpy(dtype=float), list(pairs["algo"]))
    values = [
        test.verdict,
        test.p_value,
        test.ci90_low,
        test.ci90_high,
        test.sd,
        seed_sd,
        seeds_needed(seed_sd, threshold),
    ]
    return dict(zip(EQUIVALENCE_COLUMNS, values, strict=True))


def with_equivalence(pairs: pd.DataFrame, metric: str, threshold: float) -> pd.DataFrame:
    """``compare.tsv``: the pairs plus, on every row, the gate metric, threshold and its algorithm's TOST."""
    _check_metric(metric)
    per_algo = pd.DataFrame(
        [{"algo": algo, **equivalence(rows, metric, threshold)} for algo, rows in pairs.groupby("algo")],
        columns=["algo", *EQUIVALENCE_COLUMNS],
    )
    return pairs.assign(gate_metric=metric, threshold=threshold).merge(per_algo, on="algo", how="left")


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
        _check_metric(metric)
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
            "equivalence_alpha": ALPHA,
            **equivalence(compare, metric, threshold),
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
