"""Atomic file writes: downstream steps (and Snakemake) must never see a half-written file."""

from __future__ import annotations

import os

import pandas as pd

from dsrl.atomic import atomic_output

__all__ = ["atomic_output", "write_tsv"]


def write_tsv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a tab-separated table without the index (the index never carries data here)."""
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="nan")
