"""Run the seven verl reference commands as pasted (tests/data/reference/verl-deepspeed-worker-integration.md)
on CPU, 2 steps each.

Only what a user edits changes: the model path (`random:tiny`), the data files (GSM8K prepared by
`dsrl prepare-data`) and the step count; each command's environment prefix (VERL_* knobs) is kept, and
`trainer.run_dir` says where the run goes. The vLLM rollout runs on CPU as the commands ask. Writes a
Markdown report (default docs/reference_commands_cpu.md).

    .venv-train/bin/python benchmarks/reference_commands_cpu.py --gsm8k ../shared/data/gsm8k --work /tmp/refcmds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from reference_commands import COMMANDS_MD, localised, reference_commands  # noqa: E402

DSRL = Path(sys.executable).parent / "dsrl"
SHOWN = [
    "critic/score/mean",
    "response_length/mean",
    "response_length/max",
    "prompt_length/max",
    "timing_s/gen",
    "timing_s/step",
]
CAP_LINE = "each prompt gets min(max_response_length, max_model_len - prompt length) new tokens"


def run_one(cmd, data_dir: Path, run_dir: Path, steps: int) -> dict:
    args = localised(cmd.args, "random:tiny", str(data_dir / "train.parquet"), str(data_dir / "test.parquet"))
    args += [f"trainer.total_training_steps={steps}", f"trainer.run_dir={run_dir}"]
    env = {**os.environ, **{k: v for k, v in cmd.env.items() if k != "CUDA_VISIBLE_DEVICES"}}
    start = time.monotonic()
    proc = subprocess.run([str(DSRL), "train", *args], capture_output=True, text=True, env=env)
    metrics_path = run_dir / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    return {
        "name": cmd.name,
        "returncode": proc.returncode,
        "wall_s": time.monotonic() - start,
        "steps": [m["step"] for m in metrics],
        "last": metrics[-1] if metrics else {},
        "capped": CAP_LINE in proc.stderr + proc.stdout,
        "tail": (proc.stderr + proc.stdout)[-1500:],
        "env": {k: v for k, v in cmd.env.items() if k != "CUDA_VISIBLE_DEVICES"},
    }


def report(results: list[dict], steps: int, sizes: str) -> str:
    lines = [
        "# The verl reference commands on CPU",
        "",
        f"The seven commands of `{COMMANDS_MD.relative_to(ROOT)}` (copied verbatim from the verl DeepSpeed guide),",
        "each run by `benchmarks/reference_commands_cpu.py` with `dsrl train` on 2 CPU ranks: model path",
        f"`random:tiny`, real GSM8K prepared by `dsrl prepare-data` (the first {sizes} train / test rows: the tiny",
        "model's tokenizer makes a few later prompts longer than `max_prompt_length=512`, which verl rejects too),",
        f"`trainer.total_training_steps={steps}`; every other argument and the `VERL_*` environment prefix exactly",
        "as written (vLLM rollout on CPU).",
        "`capped`: the run logged verl's per-request cap (the ZeRO cases ask for 512 + 512 tokens in a 512-token",
        "context). Metrics are the last step's.",
        "",
        "| command | exit | steps | capped | " + " | ".join(SHOWN) + " | wall s |",
        "|---|---|---|---|" + "---|" * len(SHOWN) + "---|",
    ]
    for r in results:
        values = [f"{r['last'][k]:.4g}" if k in r["last"] else "-" for k in SHOWN]
        lines.append(
            f"| {r['name']} | {r['returncode']} | {','.join(map(str, r['steps']))} | {'yes' if r['capped'] else 'no'}"
            f" | {' | '.join(values)} | {r['wall_s']:.0f} |"
        )
    failed = [r for r in results if r["returncode"] != 0]
    for r in failed:
        lines += ["", f"## {r['name']} failed", "", "```", r["tail"], "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gsm8k", type=Path, required=True, help="dir with openai/gsm8k train.jsonl / test.jsonl")
    parser.add_argument("--work", type=Path, required=True, help="where data and run directories go")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reference_commands_cpu.md")
    parser.add_argument("--steps", type=int, default=2)
    # random:tiny's locally trained tokenizer spends more tokens than Qwen3's: GSM8K train row 3331 becomes 520
    # prompt tokens, which data.max_prompt_length=512 rejects (truncation=error, as in verl). The first rows avoid it.
    parser.add_argument("--train-size", default="2048", help="GSM8K train rows to prepare (or 'all')")
    parser.add_argument("--test-size", default="256", help="GSM8K test rows to prepare (or 'all')")
    parser.add_argument("--only", nargs="*", help="experiment names to run (default: all seven)")
    args = parser.parse_args()
    data_dir = args.work / "data"
    prepare = [str(DSRL), "prepare-data", "--source", str(args.gsm8k), "--out-dir", str(data_dir)]
    subprocess.run([*prepare, "--train-size", args.train_size, "--test-size", args.test_size], check=True)
    results = []
    for cmd in reference_commands():
        if args.only and cmd.name not in args.only:
            continue
        result = run_one(cmd, data_dir, args.work / "runs" / cmd.name, args.steps)
        print(f"{cmd.name}: exit {result['returncode']} steps {result['steps']} in {result['wall_s']:.0f}s", flush=True)
        if result["returncode"] != 0:
            print(result["tail"], flush=True)
        results.append(result)
    args.out.write_text(report(results, args.steps, f"{args.train_size} / {args.test_size}"))
    return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
