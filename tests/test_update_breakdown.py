"""benchmarks/update_breakdown.py: its case grammar and bookkeeping, and a 2-rank CPU smoke run (gloo, random:tiny)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("update_breakdown", ROOT / "benchmarks" / "update_breakdown.py")
UB = importlib.util.module_from_spec(_spec)
sys.modules["update_breakdown"] = UB  # dataclasses look their module up while the class is built
_spec.loader.exec_module(UB)

pytestmark = pytest.mark.train


def test_case_names_round_trip():
    for text in UB.PRESETS["all"].split(","):
        assert UB.parse_case(text).name == text
    case = UB.parse_case("z3:gc0:pack1:mel1:bucket2e8:chunk4096")
    assert (case.stage, case.gc, case.pack, case.mel, case.bucket, case.chunk) == (3, False, True, True, 2e8, 4096)
    with pytest.raises(ValueError, match="needs"):
        UB.parse_case("z2:gc1")
    with pytest.raises(ValueError, match="unknown setting"):
        UB.parse_case("z2:gc1:pack1:foo1")


def test_cases_share_an_engine_when_only_live_switches_differ():
    names = ["z2:gc1:pack1", "z1:gc1:pack1", "z2:gc0:pack0:chunk8", "z2:gc1:pack1:overlap0"]
    cases = [UB.parse_case(c) for c in names]
    groups = UB.group_by_engine(cases)
    assert [[c.name for c in g] for g in groups] == [
        ["z2:gc1:pack1", "z2:gc0:pack0:chunk8"],
        ["z1:gc1:pack1"],
        ["z2:gc1:pack1:overlap0"],
    ]


def test_breakdown_splits_the_wall_time():
    clock = UB.Clock(__import__("torch").device("cpu"))
    marks = [
        ("forward", 0.0, 1.0, 0.1),
        ("backward", 1.5, 4.0, 0.2),
        ("reduce", 3.0, 4.0, 0.0),
        ("step", 4.0, 4.5, 0.0),
    ]
    marks += [("forward", 5.0, 6.0, 0.1), ("backward", 6.25, 8.0, 0.2), ("reduce", 7.5, 8.0, 0.0), ("step", 8, 9, 0.0)]
    row = UB.breakdown(marks, clock, wall=10.0)
    assert row["forward_s"] == 2.0 and row["loss_s"] == 0.75 and row["reduce_s"] == 1.5
    assert row["backward_s"] == 4.25 - 1.5 and row["step_s"] == 1.5
    assert row["other_s"] == pytest.approx(10.0 - 2.0 - 0.75 - 2.75 - 1.5 - 1.5)
    assert row["micro_batches"] == 2 and row["engine_steps"] == 2 and row["forward_host_s"] == pytest.approx(0.2)
    assert row["forward_per_micro_s"] == 1.0 and row["step_per_engine_step_s"] == 0.75


def test_table_lists_errors_and_numbers():
    rows = [
        {"case": "z2:gc1:pack1", "wall_s": 2.0, "tok_s_per_gpu": 20000.0, "mfu": 0.21, "ratio_vs_bare": 1.1},
        {"case": "z3:gc1:pack1", "error": "RuntimeError: out of memory"},
    ]
    text = UB.table(rows)
    assert "| z2:gc1:pack1 | 2.00 | 20,000 | 21.0% |" in text and "out of memory" in text


@pytest.mark.slow
def test_two_rank_cpu_smoke_run(tmp_path):
    out = tmp_path / "ub.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(ROOT / "benchmarks" / "update_breakdown.py"),
        *("--device", "cpu", "--model", "random:tiny", "--prompts", "4", "--rollout-n", "2"),
        *("--response-len", "8", "--prompt-lens", "3,6", "--max-prompt-len", "8", "--max-tokens", "64"),
        *("--mini", "2", "--cases", "z2:gc1:pack1:chunk5,z2:gc0:pack0", "--out", str(out)),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["case"] for r in rows] == ["z2:gc1:pack1:chunk5", "z2:gc0:pack0"]
    for row in rows:
        assert "error" not in row, row["error"]
        assert row["packed_vs_padded_max_abs"] < 1e-4  # the start-up check, in fp32 on CPU
        assert row["micro_batches"] == 2 and row["engine_steps"] == 2  # two mini batches of one micro batch
        assert row["wall_s"] > 0 and row["bare_s"] > 0 and row["ratio_vs_bare"] > 0
        parts = sum(row[k] for k in ("forward_s", "loss_s", "backward_s", "reduce_s", "step_s", "other_s"))
        assert parts == pytest.approx(row["wall_s"])
    assert "| z2:gc0:pack0 |" in proc.stdout


def test_attention_timing_cases_compute_causal_attention_per_sequence():
    """The masked sdpa layouts the kernels are timed against are per-sequence causal attention (bf16, CPU)."""
    torch = pytest.importorskip("torch")
    lens, scale = [3, 5], 128**-0.5
    fn, (q, k, v) = UB._attention_case("sdpa_packed_mask", lens, "cpu")
    got = fn()[0].transpose(0, 1)  # [T, H, D]
    want = torch.cat([UB.PA._eager_causal(*(t[s:e].double() for t in (q, k, v)), scale) for s, e in [(0, 3), (3, 8)]])
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=2e-2)
    fn, (q, k, v) = UB._attention_case("sdpa_padded_mask", lens, "cpu")
    out = fn()  # [B, H, L, D]
    for i, n in enumerate(lens):
        row = [t[i, :, :n].transpose(0, 1).double() for t in (q, k, v)]
        torch.testing.assert_close(
            out[i, :, :n].transpose(0, 1).double(), UB.PA._eager_causal(*row, scale), atol=2e-2, rtol=2e-2
        )
    assert UB.attention_timing("sdpa_packed_mask", lens, "cpu", iters=1) > 0


def test_budget_refuses_work_that_would_not_fit():
    import time

    budget = UB.Budget(10.0, start=time.perf_counter() - 9.0)
    assert budget.fits(0.5) and not budget.fits(2.0)
    assert 0 < budget.left() <= 1.0
