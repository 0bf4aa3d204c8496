"""The vLLM-rollout tables of docs/benchmarks.md from the raw files of one device session.

    .venv/bin/python benchmarks/vllm_gpu_table.py docs/benchmarks/vllm-h200x2

Reads `runs/<suite>/<algo>/<case>/seed<seed>/metrics.jsonl` (the workflow's run folders), `plain_vllm.jsonl`
(benchmarks/vllm_plain.py) and, where present, `request_modes*.jsonl` (benchmarks/vllm_request_modes.py), prints
markdown and writes it to <dir>/tables.md. Per-step figures are medians over
steps 2..N: step 1 holds the first weight push and one-off kernel JIT (vLLM logs a Triton compile of its log-prob
kernel there), and HF `generate` still warms up at step 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from dsrl.analysis.logs import load_metrics
from dsrl.atomic import atomic_output

PHASES = {
    "step s": "timing_s/step",
    "rollout s": "timing_s/gen",
    "completions s": "timing_s/gen/requests",
    "wake s": "timing_s/gen/wake",
    "sleep s": "timing_s/gen/sleep",
    "weight push s": "timing_s/update_weights",
    "old log-prob s": "timing_s/old_log_prob",
    "actor update s": "timing_s/update_actor",
}


def run_rows(root: Path) -> pd.DataFrame:
    rows = []
    for metrics in sorted(root.glob("runs/*/*/*/seed*/metrics.jsonl")):
        suite, algo, case, seed = metrics.parent.relative_to(root / "runs").parts
        table = load_metrics(metrics.parent).table
        later = table[table.index > 1]
        record = json.loads((metrics.parent / "run.json").read_text())
        cfg = record["config"]
        row = {
            "suite": suite,
            "case": case,
            "seed": seed.removeprefix("seed"),
            "rollout": cfg["actor_rollout_ref"]["rollout"]["name"],
            "TP": cfg["actor_rollout_ref"]["rollout"]["tensor_model_parallel_size"],
            "sampler log-probs": cfg["actor_rollout_ref"]["rollout"]["calculate_log_probs"],
            "packed": record.get("remove_padding_effective"),
            "response tokens": cfg["data"]["max_response_length"],
            "steps": len(table),
        }
        row.update({name: later[key].median() if key in later else None for name, key in PHASES.items()})
        row["weight push max s"] = later["timing_s/update_weights"].max() if row["rollout"] == "vllm" else None
        # every rank sends train_batch_size / GPUs prompts x n to its own server
        seqs = (
            cfg["data"]["train_batch_size"]
            * cfg["actor_rollout_ref"]["rollout"]["n"]
            / cfg["trainer"]["n_gpus_per_node"]
        )
        generating = later.get("timing_s/gen/requests", later["timing_s/gen"])
        row["generated tok/s/GPU"] = (later["response_length/mean"] * seqs / generating).median()
        row["max |p_vllm - p_trainer|"] = table.get("training/rollout_probs_diff_max", pd.Series(dtype=float)).max()
        row["peak alloc GiB"] = table["perf/max_memory_allocated_gb"].max()
        rows.append(row)
    return pd.DataFrame(rows)


def plain_rows(path: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    gen = pd.DataFrame([r for r in rows if r["what"] == "generate"])
    out = gen.groupby(["max_tokens", "prompts", "seeded"], as_index=False).agg(
        seconds=("seconds", "mean"), generated=("generated_tokens", "mean"), tok_s=("tokens_per_s", "mean")
    )
    return out.rename(columns={"max_tokens": "response tokens", "tok_s": "generated tok/s"})


def against_plain(runs: pd.DataFrame, plain: pd.DataFrame) -> pd.DataFrame:
    """Each vLLM run's rollout phase (all ranks' prompts, every GPU generating) beside plain vLLM generating the
    same number of sequences on one GPU (without log-probs): the issue's yardstick, `plain / rollout` >= 0.9."""
    sequences = plain[plain["seeded"]].groupby("response tokens")["prompts"].max()
    seconds = plain[plain["seeded"]].set_index(["response tokens", "prompts"])["seconds"]
    rows = []
    for _, run in runs[runs["rollout"] == "vllm"].iterrows():
        tokens = run["response tokens"]
        reference = seconds.get((tokens, sequences.get(tokens)))
        rows.append(
            {
                "suite": run["suite"],
                "case": run["case"],
                "seed": run["seed"],
                "response tokens": tokens,
                "sampler log-probs": run["sampler log-probs"],
                "rollout s": run["rollout s"],
                "plain vLLM s (one GPU, all prompts)": reference,
                "plain / rollout": None if reference is None else reference / run["rollout s"],
            }
        )
    return pd.DataFrame(rows)


def mode_rows(root: Path, plain: pd.DataFrame) -> pd.DataFrame:
    """One server on one GPU asked each way, beside plain vLLM on the same prompt count (one rank's share)."""
    rows = [
        {**json.loads(line), "file": f.stem.removeprefix("request_modes_")}
        for f in sorted(root.glob("request_modes*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    timed = pd.DataFrame([r for r in rows if r["what"] == "rollout"])
    if timed.empty:
        return timed
    newer = (("fresh_prompts", False), ("sleep_level", 0), ("omp_num_threads", "not recorded"))
    for column, default in newer:
        timed[column] = timed.get(column, pd.Series(default, index=timed.index)).fillna(default)
    keys = ["file", "max_tokens", "server", "mode", "logprobs", "fresh_prompts", "sleep_level", "omp_num_threads"]
    out = timed.groupby(keys, as_index=False).agg(
        prompts=("prompts", "first"), seconds=("seconds", "mean"), tok_s=("tokens_per_s", "mean")
    )
    seconds = plain[plain["seeded"]].set_index(["response tokens", "prompts"])["seconds"]
    out["plain vLLM s"] = [seconds.get((t, p)) for t, p in zip(out["max_tokens"], out["prompts"], strict=True)]
    out["plain / this"] = out["plain vLLM s"] / out["seconds"]
    return out.rename(columns={"max_tokens": "response tokens", "tok_s": "generated tok/s"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    root = ap.parse_args().root
    runs = run_rows(root)
    plain = plain_rows(root / "plain_vllm.jsonl")
    ratios = against_plain(runs, plain)
    runs["max |p_vllm - p_trainer|"] = runs["max |p_vllm - p_trainer|"].map("{:.1e}".format)
    text = "## dsrl runs (medians over steps 2..N)\n\n" + runs.round(3).to_markdown(index=False)
    text += "\n\n## plain vLLM LLM.generate on one GPU (n=4, mean of the timed calls)\n\n"
    text += plain.round(3).to_markdown(index=False) + "\n"
    if not ratios.empty:
        text += "\n## each vLLM run's rollout phase against plain vLLM on the same number of sequences\n\n"
        text += ratios.round(3).to_markdown(index=False) + "\n"
    modes = mode_rows(root, plain)
    if not modes.empty:
        text += "\n## one dsrl server on one GPU, each way of asking it (n=4, mean of the timed calls)\n\n"
        text += modes.round(3).to_markdown(index=False) + "\n"
    print(text)
    with atomic_output(root / "tables.md") as tmp:
        Path(tmp).write_text(text)


if __name__ == "__main__":
    main()
