"""Per-step metric tables from dsrl's ``metrics.jsonl`` or verl-style console logs.

Malformed lines are counted and announced with a warning rather than silently skipped, so a truncated or
corrupted log shows up in the rule log instead of quietly shortening a curve.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# A verl console step line: "step:3 - critic/score/mean:0.25 - ...", possibly behind a prefix such as
# "(TaskRunner pid=12) ". "global_step:3" or "...step:3" inside a word are not step lines.
_STEP_LINE = re.compile(r"(?:^|[\s)\]|])step:(?P<step>\S+)(?P<rest>(?: - .*)?)$")
# numpy/torch scalar reprs printed by verl under numpy 2, e.g. np.float64(0.25) or np.int64(3).
_WRAPPED = re.compile(r"^(?:np|numpy|torch)\.\w+\((?P<inner>[^()]*)\)$|^tensor\((?P<tensor>[^(),]*)\)$")
_ERROR_LINE = re.compile(r"\b\w*(?:Error|Exception)\b[:(]|\bout of memory\b|\bKilled\b", re.IGNORECASE)


@dataclass(frozen=True)
class ParseResult:
    """A per-step table (index ``step``, one column per metric) and how many lines could not be read."""

    table: pd.DataFrame
    malformed: int
    source: Path


def parse_value(text: str) -> float:
    """Read one console metric value: plain or ``.3f`` floats, ints, bools, nan/inf, numpy/torch reprs."""
    text = text.strip()
    match = _WRAPPED.match(text)
    if match:
        text = (match.group("inner") if match.group("inner") is not None else match.group("tensor")).strip()
    if text in ("True", "False"):
        return float(text == "True")
    return float(text)


def parse_console_line(line: str) -> tuple[int, dict[str, float]] | None:
    """Parse one console line; None if it is not a step line, ValueError if it is one but malformed."""
    match = _STEP_LINE.search(line.rstrip("\r\n"))
    if match is None or not match.group("rest"):
        return None
    step = int(match.group("step"))
    values: dict[str, float] = {}
    for segment in match.group("rest")[len(" - ") :].split(" - "):
        key, sep, raw = segment.rpartition(":")
        if not sep or not key.strip():
            raise ValueError(f"segment {segment!r} is not key:value")
        values[key.strip()] = parse_value(raw)
    return step, values


def _table(rows: dict[int, dict[str, float]]) -> pd.DataFrame:
    table = pd.DataFrame.from_dict(rows, orient="index", dtype=float).sort_index()
    table.index = table.index.astype(int)
    table.index.name = "step"
    return table[sorted(table.columns)]


def _finish(rows: dict[int, dict[str, float]], bad: list[int], source: Path) -> ParseResult:
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        warnings.warn(f"{source}: {len(bad)} malformed metric line(s) skipped (line {shown})", stacklevel=3)
    return ParseResult(_table(rows), len(bad), source)


def parse_console_lines(lines: Iterable[str], source: Path = Path("<lines>")) -> ParseResult:
    """Collect step lines into a table; a step printed twice (e.g. after a resume) keeps its last values."""
    rows: dict[int, dict[str, float]] = {}
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        try:
            parsed = parse_console_line(line)
        except ValueError:
            bad.append(number)
            continue
        if parsed is not None:
            rows[parsed[0]] = parsed[1]
    return _finish(rows, bad, source)


def parse_console_log(path: str | Path) -> ParseResult:
    path = Path(path)
    with path.open(errors="replace") as handle:
        return parse_console_lines(handle, path)


def _json_row(line: str) -> tuple[int, dict[str, float]]:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    step = record.pop("step", None)
    if not isinstance(step, int) or isinstance(step, bool):
        raise ValueError("missing integer 'step'")
    values: dict[str, float] = {}
    for key, value in record.items():
        if value is None:
            values[key] = math.nan
        elif isinstance(value, int | float):
            values[key] = float(value)
        else:
            raise ValueError(f"{key!r} is not a number")
    return step, values


def read_metrics_jsonl(path: str | Path) -> ParseResult:
    """Read dsrl's ``metrics.jsonl`` (one object per step with an integer ``step``)."""
    path = Path(path)
    rows: dict[int, dict[str, float]] = {}
    bad: list[int] = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                step, values = _json_row(line)
            except ValueError:
                bad.append(number)
                continue
            rows[step] = values
    return _finish(rows, bad, path)


def load_metrics(run_dir: str | Path) -> ParseResult:
    """Prefer the run's ``metrics.jsonl`` (exact values); fall back to its console ``train.log``."""
    run_dir = Path(run_dir)
    jsonl = run_dir / "metrics.jsonl"
    if jsonl.is_file() and jsonl.stat().st_size > 0:
        return read_metrics_jsonl(jsonl)
    log = run_dir / "train.log"
    if log.is_file():
        return parse_console_log(log)
    raise FileNotFoundError(f"{run_dir}: neither metrics.jsonl nor train.log found")


def last_error_line(path: str | Path) -> str | None:
    """The last line of a console log that looks like an error, for the summary's ``last_error``."""
    found = None
    with Path(path).open(errors="replace") as handle:
        for line in handle:
            if _ERROR_LINE.search(line):
                found = line.strip()
    return found
