"""File-level entry points, one per workflow script: read inputs, analyse, write outputs atomically."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from dsrl.analysis import gate, parity, plots
from dsrl.analysis.logs import ParseResult, last_error_line, load_metrics, parse_console_log
from dsrl.analysis.summary import RunRecord, read_run_record, summarize_runs
from dsrl.atomic import atomic_output, write_json, write_tsv

PathLike = str | os.PathLike[str]


def log_to(path: PathLike) -> None:
    """Send logging and warnings (e.g. malformed metric lines) to a Snakemake rule's log file."""
    logging.basicConfig(filename=path, level=logging.INFO, force=True, format="%(asctime)s %(message)s")
    logging.captureWarnings(True)


def _write_parquet(result: ParseResult, out: PathLike) -> None:
    table = result.table.copy()
    table.attrs = {"malformed_lines": result.malformed, "source": str(result.source)}
    with atomic_output(out) as tmp:
        table.to_parquet(tmp)


def parse_run(run_dir: PathLike, out_parquet: PathLike) -> int:
    """Per-run ``metrics.parquet`` from ``metrics.jsonl`` (else ``train.log``); returns malformed lines."""
    result = load_metrics(run_dir)
    _write_parquet(result, out_parquet)
    return result.malformed


def import_log(log: PathLike, target_step: int, out_parquet: PathLike, out_run_json: PathLike) -> int:
    """``metrics.parquet`` and a synthesized ``run.json`` for a run made outside dsrl.

    An external run has no recorded exit status, so it counts as completed iff it logged the target step.
    """
    result = parse_console_log(log)
    last_step = int(result.table.index.max()) if len(result.table) else 0
    completed = last_step >= target_step
    info = {
        "status": "completed" if completed else "incomplete",
        "last_step": last_step,
        "error": None if completed else last_error_line(log),
        "source": str(log),
    }
    _write_parquet(result, out_parquet)
    write_json(out_run_json, info)
    return result.malformed


def _records(runs: Sequence[Mapping], metrics: Sequence[PathLike], run_jsons: Sequence[PathLike]) -> list[RunRecord]:
    if not len(runs) == len(metrics) == len(run_jsons):
        raise ValueError(f"{len(runs)} runs but {len(metrics)} metrics files and {len(run_jsons)} run.json files")
    return [
        read_run_record(run["case"], run["algo"], run["seed"], parquet, info)
        for run, parquet, info in zip(runs, metrics, run_jsons, strict=True)
    ]


def write_summary(
    runs: Sequence[Mapping],
    metrics: Sequence[PathLike],
    run_jsons: Sequence[PathLike],
    target_step: int,
    out: PathLike,
) -> None:
    """``summary.tsv``: ``runs[i]`` (case, algo, seed) describes ``metrics[i]`` and ``run_jsons[i]``."""
    write_tsv(summarize_runs(_records(runs, metrics, run_jsons), target_step), out)


def write_parity(
    runs: Sequence[Mapping],
    metrics: Sequence[PathLike],
    run_jsons: Sequence[PathLike],
    baseline: str,
    device: str,
    out: PathLike,
) -> None:
    """``parity.tsv``: step 1 of every case vs ``baseline``, at the tolerance for ``device`` (cpu or cuda)."""
    records = _records(runs, metrics, run_jsons)
    write_tsv(parity.parity_table(records, baseline, parity.TOLERANCES[device]), out)


def read_tsv(path: PathLike) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["nan", "NaN", ""])


def write_compare(
    summary_tsv: PathLike,
    baseline: str,
    candidate: str,
    out: PathLike,
    threshold: float = 0.02,
    metric: str = "avg_score_tail5",
) -> None:
    pairs = gate.compare_pairs(read_tsv(summary_tsv), baseline, candidate)
    write_tsv(gate.with_equivalence(pairs, metric, threshold), out)


def write_overall(
    summary_tsv: PathLike,
    target_step: int,
    out: PathLike,
    compare_tsv: PathLike | None = None,
    threshold: float = 0.02,
    metric: str = "avg_score_tail5",
) -> None:
    compare = read_tsv(compare_tsv) if compare_tsv else None
    write_tsv(gate.overall_rows(read_tsv(summary_tsv), target_step, compare, threshold, metric), out)


def write_combined_overall(per_suite: Mapping[str, PathLike], out: PathLike) -> None:
    """Top-level ``overall.tsv`` from ``{suite: its overall.tsv}``."""
    write_tsv(gate.combine_overall({suite: read_tsv(path) for suite, path in per_suite.items()}), out)


def plot_curves(
    runs: Sequence[Mapping],
    metrics: Sequence[PathLike],
    run_jsons: Sequence[PathLike],
    metric: str,
    ylabel: str,
    title: str,
    out: Sequence[PathLike],
) -> None:
    curves = plots.stack_metrics(_records(runs, metrics, run_jsons), metric)
    plots.plot_curves(curves, ylabel, title, [Path(p) for p in out])
