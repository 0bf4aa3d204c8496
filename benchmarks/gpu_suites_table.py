"""The GPU-suite tables of docs/benchmarks.md from the suites' summary.tsv and runs (and the micro-batch "before" run).

    .venv/bin/python benchmarks/gpu_suites_table.py docs/benchmarks/gpu-h200x2

Prints markdown and writes it to <dir>/tables.md, so every figure in the write-up traces back to the raw files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dsrl.analysis import gate
from dsrl.analysis.logs import load_metrics
from dsrl.analysis.parity import TOLERANCES, parity_table
from dsrl.analysis.summary import RunRecord
from dsrl.analysis.tasks import read_tsv
from dsrl.atomic import atomic_output

ORDER = [
    "zero1_no_offload",
    "zero1_cpu_offload",
    "zero2_no_offload",
    "zero2_cpu_offload",
    "zero3_no_offload",
    "zero3_cpu_offload",
]


def cases_table(summary: pd.DataFrame) -> str:
    s = summary.set_index("case").reindex([c for c in ORDER if c in set(summary["case"])])
    table = pd.DataFrame(
        {
            "case": s.index,
            "step s": s["timing_step_mean_s"].round(2),
            "gen s": s["timing_gen_mean_s"].round(2),
            "old log-prob s": s["timing_old_log_prob_mean_s"].round(2),
            "actor update s": s["timing_update_actor_mean_s"].round(2),
            "tok/s/GPU (step)": s["avg_throughput_tail5"].round(0).astype(int),
            "tok/s/GPU (update)": s["avg_update_actor_throughput_tail5"].round(0).astype(int),
            "update MFU": (100 * s["avg_mfu_actor_tail5"]).round(1).astype(str) + " %",
            "predicted GiB/GPU": s["predicted_model_states_gpu_gb"].round(2),
            "peak alloc GiB": s["peak_mem_allocated_gb"].round(1),
            "peak reserved GiB": s["peak_mem_reserved_gb"].round(1),
            "predicted CPU GiB/node": s["predicted_model_states_cpu_gb"].round(1),
        }
    )
    if "timing_gen/gather_params_mean_s" in s:
        gather = s["timing_gen/gather_params_mean_s"].round(3)
        table.insert(3, "ZeRO-3 gather s", gather.astype(object).where(gather.notna(), "-"))
    return table.to_markdown(index=False)


def _means(run_dir: Path, steps: slice = slice(2, 5)) -> pd.Series:
    """Means over steps 2-5 (step 1 includes CUDA and allocator warm-up)."""
    keys = [
        "timing_s/step",
        "timing_s/old_log_prob",
        "timing_s/update_actor",
        "perf/update_actor_throughput",
        "perf/mfu/actor",
        "perf/max_memory_allocated_gb",
    ]
    return load_metrics(run_dir).table.loc[steps, keys].mean()


def micro_batch_table(root: Path) -> str:
    before = _means(root / "micro_batch_before" / "zero2_micro2")
    after = _means(root / "zero_six" / "runs" / "zero2_no_offload" / "seed7777")
    rows = []
    for name, m in [
        ("micro 2 (update), 1 (log-prob): reference", before),
        ("token budget 16k (use_dynamic_bsz)", after),
    ]:
        rows.append(
            {
                "ZeRO-2 micro batching": name,
                "step s": round(m["timing_s/step"], 2),
                "old log-prob s": round(m["timing_s/old_log_prob"], 2),
                "actor update s": round(m["timing_s/update_actor"], 2),
                "update tok/s/GPU": int(round(m["perf/update_actor_throughput"])),
                "update MFU": f"{100 * m['perf/mfu/actor']:.1f} %",
                "peak alloc GiB": round(m["perf/max_memory_allocated_gb"], 1),
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False)


def gate_table(suite_dir: Path, baseline: str = "zero1_no_offload", candidate: str = "zero2_no_offload") -> str:
    """The gate beside its equivalence test, recomputed from summary.tsv with the suite's threshold and metric."""
    summary = read_tsv(suite_dir / "summary.tsv")
    settings = read_tsv(suite_dir / "overall.tsv").set_index("metric")["value"]
    threshold, metric = float(settings["threshold"]), settings["gate_metric"]
    pairs = gate.with_equivalence(gate.compare_pairs(summary, baseline, candidate), metric, threshold)
    rows = gate.overall_rows(summary, int(settings["target_step"]), pairs, threshold, metric)
    r = rows.set_index("metric")["value"]
    table = {
        "gate": f"{candidate} - {baseline}, {metric}",
        "seeds": r["n_paired_seeds"],
        "mean delta": f"{r['mean_delta']:.2g}",
        "threshold": r["threshold"],
        "gate_pass": r["gate_pass"],
        "TOST p": f"{r['equivalence_p']:.2g}",
        "verdict": r["equivalence_verdict"],
        "90 % CI": f"[{r['equivalence_ci90_low']:.2g}, {r['equivalence_ci90_high']:.2g}]",
        "delta sd": f"{r['delta_sd']:.2g}",
        "baseline seed sd": f"{r['baseline_seed_sd']:.2g}",
        "seeds needed": r["seeds_needed"],
    }
    return pd.DataFrame([table]).to_markdown(index=False)


def suite_parity_table(suite_dir: Path, baseline: str = "zero1_no_offload") -> str:
    """parity.tsv's check on the suite's raw runs (<suite>/runs/<case>/seed<N>), at the GPU tolerance."""
    records = [
        RunRecord(run.parent.name, "grpo", int(run.name.removeprefix("seed")), load_metrics(run).table)
        for run in sorted(suite_dir.glob("runs/*/seed*"))
    ]
    table = parity_table(records, baseline, TOLERANCES["cuda"])
    table = table[table["case"].isin(ORDER)].drop(columns=["algo", "baseline", "step"])
    return table.to_markdown(index=False, floatfmt=".3g")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    root = parser.parse_args().root
    text = "\n\n".join(
        [
            "zero_six (GRPO, 10 steps; phase times: mean over steps; tok/s and MFU: mean of the last 5 steps)",
            cases_table(read_tsv(root / "zero_six" / "summary.tsv")),
            "micro batching, ZeRO-2 (steps 2-5 of each run)",
            micro_batch_table(root),
            "zero12_gate: gate and equivalence test (recomputed from summary.tsv)",
            gate_table(root / "zero12_gate"),
            "first-step parity vs zero1_no_offload (zero_six, then zero12_gate)",
            suite_parity_table(root / "zero_six"),
            suite_parity_table(root / "zero12_gate"),
        ]
    )
    print(text)
    with atomic_output(root / "tables.md") as tmp:
        Path(tmp).write_text(text + "\n")


if __name__ == "__main__":
    main()
