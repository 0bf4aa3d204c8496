"""Benchmark figures (PNG for the report, SVG for papers); matplotlib's Agg backend, no display needed."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from dsrl.analysis.summary import RunRecord, timing_phases
from dsrl.atomic import atomic_output

matplotlib.use("Agg")  # headless: cluster nodes have no display; pyplot picks its backend lazily

PathLike = str | os.PathLike[str]


def save_figure(fig: plt.Figure, paths: Iterable[PathLike]) -> None:
    """Write the figure to each path atomically, the format taken from the path's suffix."""
    for path in paths:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip("."), bbox_inches="tight", dpi=120)
    plt.close(fig)


def stack_metrics(records: Iterable[RunRecord], metric: str) -> pd.DataFrame:
    """Long table (case, algo, seed, step, value) of one metric across runs, for curve plots."""
    frames = [
        pd.DataFrame(
            {
                "case": r.case,
                "algo": r.algo,
                "seed": r.seed,
                "step": r.metrics.index,
                "value": r.metrics[metric],
            }
        )
        for r in records
        if metric in r.metrics.columns
    ]
    if not frames:
        return pd.DataFrame(columns=["case", "algo", "seed", "step", "value"])
    return pd.concat(frames, ignore_index=True)


def plot_curves(curves: pd.DataFrame, ylabel: str, title: str, paths: Sequence[PathLike]) -> None:
    """Mean across seeds per case (line) with the min-max band; one panel per algorithm."""
    algos = sorted(curves["algo"].unique()) or ["(no data)"]
    fig, axes = plt.subplots(
        1, len(algos), figsize=(6 * len(algos), 4), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, algo in zip(axes[0], algos, strict=True):
        stats = (
            curves[curves["algo"] == algo].groupby(["case", "step"])["value"].agg(["mean", "min", "max"]).reset_index()
        )
        for case, group in stats.groupby("case"):
            (line,) = ax.plot(group["step"], group["mean"], label=case, marker="o", markersize=3)
            ax.fill_between(group["step"], group["min"], group["max"], color=line.get_color(), alpha=0.2)
        ax.set(title=f"{title} ({algo})", xlabel="step", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(stats):
            ax.legend(fontsize="small")
    save_figure(fig, paths)


def _per_case(summary: pd.DataFrame, column: str) -> pd.DataFrame:
    return summary.pivot_table(index="case", columns="algo", values=column, aggfunc="mean", dropna=False)


def plot_resources(summary: pd.DataFrame, paths: Sequence[PathLike]) -> None:
    """Peak reserved memory and tail-5 throughput per case (mean across seeds), grouped by algorithm."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    panels = [
        ("peak_mem_reserved_gb", "peak reserved memory (GB)"),
        ("avg_throughput_tail5", "throughput, tail-5 mean (tokens/s/GPU)"),
    ]
    for ax, (column, label) in zip(axes, panels, strict=True):
        _per_case(summary, column).plot.bar(ax=ax, rot=30)
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        ax.set(ylabel=label, xlabel="")
        ax.grid(axis="y", alpha=0.3)
    save_figure(fig, paths)


MEMORY_BARS = [
    ("predicted_model_states_gpu_gb", "predicted model states (DeepSpeed estimator)"),
    ("peak_mem_allocated_gb", "measured peak allocated"),
    ("peak_mem_reserved_gb", "measured peak reserved"),
]


def plot_memory(summary: pd.DataFrame, paths: Sequence[PathLike]) -> None:
    """Per-GPU memory per case: DeepSpeed's model-state prediction beside the measured peaks (mean across seeds).

    The gap between the first bar and the others is what the estimator leaves out (activations, logits, the
    rollout's KV cache, allocator slack): size jobs from the measured bars of the closest case.
    """
    columns = [c for c, _ in MEMORY_BARS]
    means = summary.groupby(["case", "algo"])[columns].mean()
    means.columns = [label for _, label in MEMORY_BARS]
    means.index = [f"{case} ({algo})" for case, algo in means.index]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(means)), 4.5), layout="constrained")
    means.plot.bar(ax=ax, rot=30, color=["tab:gray", "tab:blue", "tab:orange"])
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    ax.set(ylabel="GB per GPU", xlabel="")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(fig, paths)


def _equivalence_band(ax: plt.Axes, compare: pd.DataFrame, column: str) -> str:
    """Shade the gate's [-threshold, +threshold] band and add each algorithm's mean delta with its 90 % CI (the
    TOST interval: equivalent iff it lies inside the band); returns the verdicts for the panel title."""
    threshold = float(compare["threshold"].iat[0])
    ax.axhspan(-threshold, threshold, color="tab:green", alpha=0.15, label=f"equivalence band +-{threshold:g}")
    verdicts = []
    for i, (algo, rows) in enumerate(compare.groupby("algo")):
        mean = float(rows[column].mean())
        low, high = float(rows["equivalence_ci90_low"].iat[0]), float(rows["equivalence_ci90_high"].iat[0])
        error = [[mean - low], [high - mean]] if np.isfinite([low, high]).all() else None
        label = "mean delta, 90 % CI" if i == 0 else None
        ax.errorbar([f"{algo} mean"], [mean], yerr=error, fmt="D", color="black", capsize=6, label=label)
        verdict = rows["equivalence_verdict"].iat[0]
        p_value = float(rows["equivalence_p"].iat[0])
        verdicts.append(f"{algo}: {verdict}" + ("" if np.isnan(p_value) else f" (p={p_value:.2g})"))
    ax.legend(fontsize="small", loc="lower right")
    return "\n".join(verdicts)


def plot_deltas(compare: pd.DataFrame, paths: Sequence[PathLike]) -> None:
    """Paired candidate-minus-baseline deltas per seed for score, throughput and reserved memory.

    The gate metric's panel also shows the equivalence band and each algorithm's mean with its 90 % CI, so the
    reader sees why the verdict (in the panel title) is what it is.
    """
    panels = [
        ("delta_avg_score_tail5", "score, tail-5"),
        ("delta_step_target_score_mean", "score at target step"),
        ("delta_avg_throughput_tail5", "throughput, tail-5"),
        ("delta_peak_mem_reserved_gb", "peak reserved memory (GB)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.5), layout="constrained")
    title = f"{compare['candidate'].iat[0]} - {compare['baseline'].iat[0]}" if len(compare) else "no pairs"
    gate_column = f"delta_{compare['gate_metric'].iat[0]}" if len(compare) else None
    labels = [f"{a}/{s}" for a, s in zip(compare["algo"], compare["seed"], strict=True)]
    for ax, (column, label) in zip(axes, panels, strict=True):
        values = compare[column].to_numpy(dtype=float)
        ax.bar(labels, values, color=np.where(values >= 0, "tab:blue", "tab:red"))
        ax.axhline(0, color="black", linewidth=0.8)
        if column == gate_column:
            label = f"{label} (gate)\n{_equivalence_band(ax, compare, column)}"
        ax.set(title=label, xlabel="algo/seed")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    save_figure(fig, paths)


def plot_timings(summary: pd.DataFrame, paths: Sequence[PathLike]) -> None:
    """Stacked mean phase timings (seconds per step) per case and algorithm."""
    phases = timing_phases(summary)
    means = summary.groupby(["case", "algo"])[list(phases.values())].mean()
    means.columns = list(phases)
    means.index = [f"{case} ({algo})" for case, algo in means.index]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(means)), 4.5), layout="constrained")
    if len(phases):
        means.plot.bar(ax=ax, stacked=True, rot=30)
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        ax.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set(ylabel="mean seconds per step", xlabel="")
    save_figure(fig, paths)
