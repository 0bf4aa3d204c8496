"""dsrl against TRL's GRPOTrainer on the same work, case by case, each run in its own time-limited subprocess.

    python3 benchmarks/vs_trl/run.py --out "$OUT" --budget 560 hf-z2-128 hf-z3-128      # on the device
    python benchmarks/vs_trl/run.py --cpu-smoke --out /tmp/vs_trl_cpu/out hf-z2-16       # CPU smoke test

A case is ``<hf|vllm>-z<2|3>-<response tokens>``. For each case and system (``--systems``, TRL first) it runs
one training job of ``--steps`` RL steps on the same model folder and prompts, appends one JSON line per run to
``<out>/results.jsonl`` (settings, command, exit status and every step's timings) and keeps its log under
``<work>/logs``; ``<out>/logs.tar.gz`` packs the logs of the runs of this call. A run that fails or runs out of
time is recorded as such and the next one starts. ``benchmarks/vs_trl/table.py`` prints the comparison table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from dsrl.workflow.commands import format_value
from dsrl.workflow.plan import case_overrides

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CASE = re.compile(r"^(hf|vllm)-z([23])-(\d+)$")
# dsrl's metrics.jsonl keys, under the names the TRL runner writes.
DSRL_KEYS = {
    "step_s": "timing_s/step",
    "gen_s": "timing_s/gen",
    "update_weights_s": "timing_s/update_weights",
    "reward_s": "timing_s/reward",
    "old_log_prob_s": "timing_s/old_log_prob",
    "update_s": "timing_s/update_actor",
    "tokens": "perf/total_num_tokens",
    "tok_s_gpu": "perf/throughput",
    "peak_alloc_gb": "perf/max_memory_allocated_gb",
    "peak_reserved_gb": "perf/max_memory_reserved_gb",
    "response_length": "response_length/mean",
}


@dataclass(frozen=True)
class Work:
    """What both systems do in one case."""

    case: str
    rollout: str  # hf | vllm
    zero_stage: int
    response_length: int
    steps: int
    prompts: int  # per RL step (dsrl data.train_batch_size)
    n: int  # generations per prompt
    mini_batch: int  # prompts per optimizer step (dsrl ppo_mini_batch_size)
    nproc: int
    device: str  # cuda | cpu
    seed: int
    token_budget: int  # dsrl ppo_max_token_len_per_gpu; sizes TRL's micro batch
    prompt_tokens: int  # estimated mean prompt length, for TRL's micro batch

    @property
    def updates(self) -> int:
        return self.prompts // self.mini_batch

    def trl_micro_batch(self) -> tuple[int, int]:
        """TRL's (per-device micro batch, gradient accumulation): the largest micro batch that divides a GPU's
        share of a mini batch and fits dsrl's token budget, as dsrl's use_dynamic_bsz packs its micro batches."""
        local = self.mini_batch * self.n // self.nproc
        per_seq = self.prompt_tokens + self.response_length
        fits = [d for d in range(1, local + 1) if local % d == 0 and d * per_seq <= self.token_budget]
        micro = max(fits, default=1)
        return micro, local // micro


def parse_case(name: str, args: argparse.Namespace) -> Work:
    match = CASE.match(name)
    if not match:
        raise SystemExit(f"case {name!r}: expected <hf|vllm>-z<2|3>-<tokens>, e.g. hf-z2-128")
    return Work(
        case=name,
        rollout=match[1],
        zero_stage=int(match[2]),
        response_length=int(match[3]),
        steps=args.steps,
        prompts=args.prompts,
        n=args.n,
        mini_batch=args.mini_batch,
        nproc=args.nproc,
        device=args.device,
        seed=args.seed,
        token_budget=args.token_budget,
        prompt_tokens=args.prompt_tokens,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ds_config(work: Work) -> dict[str, Any]:
    """The DeepSpeed config dsrl builds for its actor (dsrl.engines), with TRL's batch sizes left to the Trainer."""
    zero: dict[str, Any] = {
        "stage": work.zero_stage,
        "overlap_comm": work.device == "cuda",
        "contiguous_gradients": True,
        "reduce_bucket_size": int(5e8),
    }
    if work.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=int(5e7),
            stage3_param_persistence_threshold=int(1e5),
            stage3_gather_16bit_weights_on_model_save=False,
            # dsrl's value (config/gpu.yaml turns it on: a faster ZeRO-3 update), so the knob is equal on both sides
            memory_efficient_linear=bool(
                dsrl_settings(work).get("actor_rollout_ref.actor.deepspeed.stage3_memory_efficient_linear", False)
            ),
        )
    cfg: dict[str, Any] = {
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        # DeepSpeed's own AdamW (FusedAdam on GPU, torch AdamW on CPU), as dsrl's engines use
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": "auto",
                "betas": "auto",
                "eps": "auto",
                "weight_decay": "auto",
                "torch_adam": work.device == "cpu",
            },
        },
    }
    if work.device == "cuda":
        cfg["bf16"] = {"enabled": True}
    return cfg


def accelerate_config(work: Work, ds_json: Path) -> dict[str, Any]:
    """The reference guide's `accelerate launch --config_file` form, pointing at the DeepSpeed JSON."""
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_config_file": str(ds_json), "zero3_init_flag": work.zero_stage == 3},
        "machine_rank": 0,
        "main_training_function": "main",
        "num_machines": 1,
        "num_processes": work.nproc,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": work.device == "cpu",
        "main_process_port": free_port(),
    }


def trl_command(work: Work, model: Path, train: Path, run_dir: Path) -> list[str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    ds_json, acc_yaml = run_dir / "ds_config.json", run_dir / "accelerate.yaml"
    ds_json.write_text(json.dumps(ds_config(work), indent=2))
    acc_yaml.write_text(yaml.safe_dump(accelerate_config(work, ds_json), sort_keys=False))
    micro, accum = work.trl_micro_batch()
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(acc_yaml),
        str(HERE / "trl_grpo.py"),
        "--model", str(model), "--train", str(train), "--out", str(run_dir / "steps.jsonl"),
        "--output-dir", str(run_dir / "trainer"),
        "--steps", str(work.steps), "--prompts", str(work.prompts), "--n", str(work.n),
        "--updates", str(work.updates), "--micro-batch", str(micro), "--grad-accum", str(accum),
        "--response-length", str(work.response_length), "--seed", str(work.seed),
    ]  # fmt: skip
    if work.rollout == "vllm":
        cmd.append("--vllm")
    if work.device == "cpu":
        cmd.append("--no-bf16")
    return cmd


def dsrl_settings(work: Work) -> dict[str, Any]:
    """config/gpu.yaml's (CPU: config/config.yaml's) trainer overrides, GRPO and the ZeRO case, as the workflow
    composes them (dsrl.workflow.plan.Plan.overrides)."""
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    shared = dict(base["trainer_overrides"])
    if work.device == "cuda":
        shared.update(yaml.safe_load((ROOT / "config" / "gpu.yaml").read_text())["trainer_overrides"])
    case = {"zero_stage": work.zero_stage, "offload": "none"}
    return {**shared, **base["algorithms"]["grpo"], **case_overrides(case)}


def dsrl_overrides(work: Work, model: Path, data: Path, run_dir: Path) -> list[str]:
    """`dsrl_settings`, then this comparison's settings."""
    merged: dict[str, Any] = {
        **dsrl_settings(work),
        "actor_rollout_ref.model.path": str(model),
        "actor_rollout_ref.rollout.name": work.rollout,
        "actor_rollout_ref.rollout.n": work.n,
        "data.train_batch_size": work.prompts,
        "actor_rollout_ref.actor.ppo_mini_batch_size": work.mini_batch,
        "data.max_response_length": work.response_length,
        "data.shuffle": False,  # the same prompts, in the same order, as TRL's shuffle_dataset=False
        "data.train_files": str(data / "train.parquet"),
        "data.val_files": str(data / "test.parquet"),
        "trainer.run_dir": str(run_dir),
        "trainer.experiment_name": work.case,
        "trainer.seed": work.seed,
        "trainer.total_training_steps": work.steps,
        "trainer.device": work.device,
        "trainer.n_gpus_per_node": work.nproc,
        "trainer.nnodes": 1,
    }
    return [f"{key}={format_value(value)}" for key, value in merged.items()]


def dsrl_command(work: Work, model: Path, data: Path, run_dir: Path) -> list[str]:
    overrides = dsrl_overrides(work, model, data, run_dir)
    return [sys.executable, "-m", "dsrl.cli", "train", "--nproc-per-node", str(work.nproc), *overrides]


def read_steps(system: str, run_dir: Path) -> list[dict[str, Any]]:
    """Per-step records under the common keys (TRL: the runner's steps.jsonl; dsrl: its metrics.jsonl)."""
    if system == "trl":
        path = run_dir / "steps.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "timing_s/step" not in record:
            continue
        step = {"step": record["step"]}
        step.update({ours: record[theirs] for ours, theirs in DSRL_KEYS.items() if theirs in record})
        steps.append(step)
    return steps


def run_one(system: str, work: Work, cmd: list[str], run_dir: Path, log: Path, limit: float) -> dict[str, Any]:
    """Run one job under a time limit (its whole process group is stopped at the limit) and describe it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if work.rollout == "vllm" and system == "trl":
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # colocate mode runs the engine inside the training process
    start = time.monotonic()
    status = "ok"
    with log.open("w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(limit, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            rc, status = None, f"timeout after {limit:.0f}s"
    if rc:
        status = f"failed (exit {rc})"
    steps = read_steps(system, run_dir)
    if status == "ok" and len(steps) < work.steps:
        status = f"incomplete ({len(steps)} of {work.steps} steps)"
    return {
        "system": system,
        **asdict(work),
        "trl_micro_batch": work.trl_micro_batch() if system == "trl" else None,
        "status": status,
        "wall_s": round(time.monotonic() - start, 1),
        "command": shlex.join(cmd),
        "log": str(log),
        "steps_records": steps,
    }


def prepare(args: argparse.Namespace, work_dir: Path) -> tuple[Path, Path]:
    """dsrl's prepared GSM8K parquet and the model folder both systems load (built once per work dir)."""
    from dsrl.data_prep import prepare_gsm8k
    from dsrl.models import resolve_model_path

    data = work_dir / "data"
    if not (data / "train.parquet").is_file():
        prepare_gsm8k(args.data_source, data, train_size=args.train_size, test_size=args.test_size)
    model = Path(resolve_model_path(args.model, corpus_files=[str(data / "train.parquet")]))
    return data, model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cases", nargs="+", help="<hf|vllm>-z<2|3>-<tokens>, run in this order")
    p.add_argument("--out", required=True, type=Path, help="results.jsonl and logs.tar.gz go here")
    p.add_argument("--work", type=Path, default=Path("/tmp/vs_trl"), help="data, model cache, run dirs, logs")
    p.add_argument("--budget", type=float, default=560, help="seconds for this call; later runs get what is left")
    p.add_argument("--systems", nargs="+", default=["trl", "dsrl"], choices=["trl", "dsrl"])
    p.add_argument("--min-run-s", type=float, default=90, help="skip a run when less than this is left")
    p.add_argument("--max-run-s", type=float, default=360, help="stop a run that takes longer than this")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--mini-batch", type=int, default=32, help="prompts per optimizer step")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--seed", type=int, default=7777)
    p.add_argument("--token-budget", type=int, default=16384, help="dsrl's ppo_max_token_len_per_gpu (gpu.yaml)")
    p.add_argument("--prompt-tokens", type=int, default=100, help="mean prompt length estimate (GSM8K: ~80)")
    p.add_argument("--model", default="random:qwen3-0.6b")
    p.add_argument("--data-source", default=".device/gsm8k", help="dsrl prepare-data --source")
    p.add_argument("--train-size", type=int, default=512)
    p.add_argument("--test-size", type=int, default=16)
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="tiny CPU settings: random:tiny, synthetic data, 2 steps of 4 prompts x 2, mini batch 2, one rank "
        "(accelerate keeps num_processes at 1 when DeepSpeed runs on CPU, so TRL's gathers fail with 2 CPU ranks)",
    )
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.device, args.model, args.data_source, args.nproc = "cpu", "random:tiny", "synthetic", 1
        args.steps, args.prompts, args.n, args.mini_batch, args.prompt_tokens = 2, 4, 2, 2, 60
        args.train_size, args.test_size, args.min_run_s = 64, 8, 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    works = [parse_case(name, args) for name in args.cases]
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    logs.mkdir(exist_ok=True)
    data, model = prepare(args, args.work)
    print(f"[vs_trl] model {model}, data {data}, prepared after {time.monotonic() - start:.0f}s", flush=True)
    results = args.out / "results.jsonl"
    written: list[Path] = []
    for work in works:
        for system in args.systems:
            left = args.budget - (time.monotonic() - start) - 15
            tag = f"{work.case}-{system}-{int(time.time())}"
            run_dir = args.work / "runs" / tag
            log = logs / f"{tag}.log"
            if left < args.min_run_s:
                row = {"system": system, **asdict(work), "status": f"skipped ({left:.0f}s left)", "steps_records": []}
            else:
                if system == "trl":
                    cmd = trl_command(work, model, data / "train.parquet", run_dir)
                else:
                    cmd = dsrl_command(work, model, data, run_dir)
                print(f"[vs_trl] {work.case} {system}: up to {min(left, args.max_run_s):.0f}s", flush=True)
                row = run_one(system, work, cmd, run_dir, log, min(left, args.max_run_s))
                written.append(log)
            with results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"[vs_trl] {work.case} {system}: {row['status']} ({row.get('wall_s', 0)}s)", flush=True)
    with tarfile.open(args.out / "logs.tar.gz", "w:gz") as tar:
        for log in written:
            tar.add(log, arcname=log.name)
        for run in (args.work / "runs").glob("*"):
            for name in ("run.json", "metrics.jsonl", "steps.jsonl", "ds_config.json", "accelerate.yaml"):
                if (run / name).is_file() and any(run.name in str(w) for w in written):
                    tar.add(run / name, arcname=f"{run.name}/{name}")
    print(f"[vs_trl] done after {time.monotonic() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
