"""benchmarks/vs_trl: the settings both systems get, and the comparison table (no TRL, no torch needed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from dsrl.config import load_config

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_trl"


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"vs_trl_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


run = _module("run")
table = _module("table")


def _work(case: str) -> object:
    return run.parse_case(case, run.parse_args([case, "--out", "unused"]))


def test_trl_micro_batches_follow_dsrl_token_budget() -> None:
    # 32 prompts x 4 per mini batch over 2 GPUs = 64 sequences per GPU
    assert _work("hf-z2-128").trl_micro_batch() == (64, 1)  # 64 x 228 tokens fit 16k: one micro batch, as dsrl
    assert _work("vllm-z3-512").trl_micro_batch() == (16, 4)
    assert _work("hf-z2-128").updates == 2


def test_dsrl_overrides_load_and_match_the_case(tmp_path: Path) -> None:
    work = _work("vllm-z3-512")
    overrides = run.dsrl_overrides(work, tmp_path / "model", tmp_path / "data", tmp_path / "run")
    cfg = load_config(overrides)
    arr = cfg.actor_rollout_ref
    assert arr.rollout.name == "vllm" and arr.rollout.n == 4
    assert arr.actor.deepspeed.zero_stage == 3 and arr.actor.deepspeed.offload == "none"
    assert (cfg.data.train_batch_size, arr.actor.ppo_mini_batch_size) == (64, 32)
    assert cfg.data.max_response_length == 512 and cfg.data.shuffle is False
    assert cfg.algorithm.adv_estimator == "grpo" and arr.actor.use_kl_loss is False
    assert arr.actor.optim.lr == 1e-6 and arr.actor.clip_ratio == 0.2
    assert arr.model.enable_gradient_checkpointing is True
    assert arr.actor.deepspeed.mixed_precision == "bf16"


def test_trl_command_and_deepspeed_config(tmp_path: Path) -> None:
    work = _work("hf-z3-128")
    cmd = run.trl_command(work, tmp_path / "model", tmp_path / "train.parquet", tmp_path / "run")
    assert cmd[cmd.index("--micro-batch") + 1] == "64" and "--vllm" not in cmd
    ds = json.loads((tmp_path / "run" / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"] == {"enabled": True}
    dsrl = load_config(run.dsrl_overrides(work, tmp_path / "model", tmp_path / "data", tmp_path / "run"))
    mel = dsrl.actor_rollout_ref.actor.deepspeed.stage3_memory_efficient_linear
    assert mel is True and ds["zero_optimization"]["memory_efficient_linear"] is mel  # config/gpu.yaml's, both sides
    assert ds["optimizer"]["type"] == "AdamW"


def _row(system: str, step_s: list[float], status: str = "ok") -> dict:
    steps = [
        {"step": i + 1, "step_s": s, "gen_s": s / 2, "update_s": s / 4, "tok_s_gpu": 1e3 / s, "peak_alloc_gb": 10.0 + i}
        for i, s in enumerate(step_s)
    ]
    return {"case": "hf-z2-128", "system": system, "status": status, "steps_records": steps}


def test_table_medians_skip_step_one_and_ratios(tmp_path: Path, capsys: object) -> None:
    results = tmp_path / "results.jsonl"
    rows = [_row("trl", [99.0, 8.0, 10.0, 12.0], "failed"), _row("trl", [50.0, 8.0, 10.0, 12.0])]
    rows.append(_row("dsrl", [30.0, 4.0, 5.0, 6.0]))
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table.main([str(results), "--write", str(tmp_path / "tables.md")])
    text = (tmp_path / "tables.md").read_text()
    assert "| hf-z2-128 | trl | ok | 4 | 10.00 | 5.00 | - | - | 2.50 | 100 | 13.00 |" in text
    assert "| hf-z2-128 | 0.50 | 0.50 | - | 0.50 | 0.50 | 1.00 |" in text


def test_cpu_smoke_settings() -> None:
    args = run.parse_args(["hf-z2-16", "--out", "x", "--cpu-smoke"])
    assert (args.device, args.model, args.steps, args.prompts, args.n, args.nproc) == ("cpu", "random:tiny", 2, 4, 2, 1)
