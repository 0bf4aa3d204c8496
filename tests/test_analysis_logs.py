"""Log parsing on hand-written verl console lines and dsrl metrics.jsonl files."""

import json
import math

import pytest

from dsrl.analysis.logs import (
    last_error_line,
    load_metrics,
    parse_console_lines,
    parse_value,
    read_metrics_jsonl,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.25", 0.25),
        ("1234.500", 1234.5),
        ("3", 3.0),
        ("np.float64(0.25)", 0.25),
        ("np.float32(-1.5)", -1.5),
        ("np.int64(7)", 7.0),
        ("tensor(0.125)", 0.125),
        ("True", 1.0),
        ("1e-3", 0.001),
    ],
)
def test_parse_value_accepts_verl_formats(text, expected):
    assert parse_value(text) == expected


def test_parse_value_nan_and_rejects_words():
    assert math.isnan(parse_value("np.float64(nan)"))
    with pytest.raises(ValueError):
        parse_value("abc")


def test_console_lines_to_table():
    lines = [
        "Loading model...",
        "step:1 - critic/score/mean:0.100 - perf/throughput:np.float64(100.0)",
        "(TaskRunner pid=42) step:2 - critic/score/mean:np.float64(0.2) - perf/throughput:200",
        "global_step:99 - critic/score/mean:9.0",
        "step:3 - critic/score/mean:0.3 - timing_s/gen:1.5",
    ]
    result = parse_console_lines(lines)
    assert result.malformed == 0
    assert list(result.table.index) == [1, 2, 3]
    assert result.table["critic/score/mean"].tolist() == [0.1, 0.2, 0.3]
    assert result.table["perf/throughput"].tolist()[:2] == [100.0, 200.0]
    assert math.isnan(result.table.at[3, "perf/throughput"])
    assert result.table.at[3, "timing_s/gen"] == 1.5


def test_console_repeated_step_keeps_last_values():
    result = parse_console_lines(["step:1 - a:1.0", "step:2 - a:2.0", "step:2 - a:5.0"])
    assert result.table["a"].tolist() == [1.0, 5.0]


def test_console_malformed_lines_are_counted_and_warned():
    lines = [
        "step:1 - critic/score/mean:0.1",
        "step:2 - critic/score/mean:0.2 - perf/throughput:12o.5",
        "step:x - critic/score/mean:0.3",
        "step:4 - critic/score/mean:0.4 - truncated",
    ]
    with pytest.warns(UserWarning, match=r"3 malformed metric line\(s\).*line 2, 3, 4"):
        result = parse_console_lines(lines)
    assert result.malformed == 3
    assert list(result.table.index) == [1]


def test_jsonl_reads_steps_and_counts_bad_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        json.dumps({"step": 1, "critic/score/mean": 0.5, "perf/throughput": 10})
        + "\n\n"
        + json.dumps({"step": 2, "critic/score/mean": None})
        + "\n"
        + json.dumps({"critic/score/mean": 0.7})
        + "\n"
        + json.dumps({"step": 3, "note": "text"})
        + "\n"
        + '{"step": 4, "critic/sco'
    )
    with pytest.warns(UserWarning, match="3 malformed"):
        result = read_metrics_jsonl(path)
    assert result.malformed == 3
    assert list(result.table.index) == [1, 2]
    assert result.table.at[1, "perf/throughput"] == 10.0
    assert math.isnan(result.table.at[2, "critic/score/mean"])


def test_load_metrics_prefers_jsonl_over_console(tmp_path):
    (tmp_path / "train.log").write_text("step:1 - critic/score/mean:0.123\n")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "critic/score/mean": 0.1234567}) + "\n")
    assert load_metrics(tmp_path).table.at[1, "critic/score/mean"] == 0.1234567
    (tmp_path / "metrics.jsonl").unlink()
    assert load_metrics(tmp_path).table.at[1, "critic/score/mean"] == 0.123


def test_load_metrics_without_files_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_metrics(tmp_path)


def test_last_error_line(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "step:1 - a:1\nTraceback (most recent call last):\n  File x\n"
        "RuntimeError: first\nmore\ntorch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB\nbye\n"
    )
    assert last_error_line(log) == "torch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB"
    log.write_text("step:1 - a:1\n")
    assert last_error_line(log) is None
