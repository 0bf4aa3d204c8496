"""The dsrl vs TRL tables of docs/benchmarks.md from benchmarks/vs_trl/run.py's results.jsonl files.

    python benchmarks/vs_trl/table.py docs/benchmarks/vs-trl-h200x2/results*.jsonl [--write tables.md]

Figures are medians over steps 2..N (step 1 holds warm-up: CUDA/NCCL set-up, DeepSpeed's first step, vLLM's first
weight load); peak memory is the maximum over all steps. Where a (case, system) pair was run more than once, the
last line wins. The ratio is dsrl / TRL: below 1 means dsrl takes less time (or memory); for tokens/s it is
TRL / dsrl, so that below 1 still means dsrl is better.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# (column, key in the step records, how steps combine)
COLUMNS = (
    ("step s", "step_s", "median"),
    ("gen s", "gen_s", "median"),
    ("weight sync s", "update_weights_s", "median"),
    ("old log-prob s", "old_log_prob_s", "median"),
    ("update s", "update_s", "median"),
    ("tok/s/GPU", "tok_s_gpu", "median"),
    ("peak alloc GiB", "peak_alloc_gb", "max"),
)
SYSTEMS = ("trl", "dsrl")


def load(paths: Iterable[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last result line of each (case, system)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row["case"], row["system"])] = row
    return rows


def summarise(row: dict[str, Any]) -> dict[str, float]:
    """Medians over steps 2..N (all steps when there is only one) and the peak over all steps."""
    steps = row.get("steps_records") or []
    tail = [s for s in steps if s.get("step", 0) >= 2] or steps
    out: dict[str, float] = {}
    for column, key, how in COLUMNS:
        pool = steps if how == "max" else tail
        values = [float(s[key]) for s in pool if s.get(key) is not None]
        if values:
            out[column] = max(values) if how == "max" else statistics.median(values)
    return out


def _fmt(value: float | None, column: str) -> str:
    if value is None:
        return "-"
    if column == "tok/s/GPU":
        return f"{value:,.0f}"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _case_order(cases: Iterable[str]) -> list[str]:
    def key(case: str) -> tuple[str, int, int]:
        rollout, zero, tokens = case.split("-")
        return rollout != "hf", int(tokens), int(zero[1:])

    return sorted(set(cases), key=key)


def runs_table(rows: dict[tuple[str, str], dict[str, Any]]) -> str:
    header = ["case", "system", "status", "steps", *(c for c, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--"] * 3 + ["--:"] * (len(header) - 3)) + "|"]
    for case in _case_order(c for c, _ in rows):
        for system in SYSTEMS:
            row = rows.get((case, system))
            if row is None:
                continue
            summary = summarise(row)
            cells = [case, system, row["status"], str(len(row.get("steps_records") or []))]
            cells += [_fmt(summary.get(c), c) for c, _, _ in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(rows: dict[tuple[str, str], dict[str, Any]]) -> str:
    columns = [c for c, _, _ in COLUMNS if c != "weight sync s"]
    header = ["case", *(f"{c} dsrl/TRL" if c != "tok/s/GPU" else "tok/s/GPU TRL/dsrl" for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|:--|" + "|".join(["--:"] * len(columns)) + "|"]
    for case in _case_order(c for c, _ in rows):
        trl, ours = rows.get((case, "trl")), rows.get((case, "dsrl"))
        if trl is None or ours is None:
            continue
        a, b = summarise(trl), summarise(ours)
        cells = [case]
        for c in columns:
            num, den = (a.get(c), b.get(c)) if c == "tok/s/GPU" else (b.get(c), a.get(c))
            cells.append(f"{num / den:.2f}" if num is not None and den else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results.jsonl files of benchmarks/vs_trl/run.py")
    parser.add_argument("--write", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    rows = load(args.results)
    text = f"{runs_table(rows)}\n\n{ratio_table(rows)}\n"
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
