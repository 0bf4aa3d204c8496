"""TRL's GRPOTrainer on dsrl's model folder, prompts and GSM8K reward, timed per RL step (run under accelerate).

    accelerate launch --config_file ACCELERATE_YAML benchmarks/vs_trl/trl_grpo.py --model DIR \
        --train train.parquet --steps 4 --response-length 128 --micro-batch 64 --grad-accum 1 --out trl.jsonl

One RL step here is what dsrl calls a step: one generation batch (``--prompts`` x ``--n`` sequences) and the
optimizer steps it feeds (``--updates``, dsrl's train_batch_size / ppo_mini_batch_size). TRL counts optimizer
steps, so it runs ``steps x updates`` of them. Rank 0 appends one JSON line per RL step to ``--out``: step time,
generation, weight sync (vLLM), reward, old log-prob, the rest (the update), tokens and peak memory (max over ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from dsrl.data import read_prompts
from dsrl.reward import default_compute_score

# The reward settings of config/gpu.yaml (reward.reward_kwargs): verl's flexible GSM8K rule, 0.1 for any number.
REWARD_KWARGS = {"method": "flexible", "format_score": 0.1}
# Every rank reduces the same phases in the same order, whether or not it entered them.
PHASES = ("rollout_total", "gen", "update_weights", "reward", "old_log_prob")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PhaseClock:
    """Seconds spent in named phases since the last ``take``; nested phases are timed separately."""

    def __init__(self) -> None:
        self.times: dict[str, float] = defaultdict(float)
        self.tokens = 0.0
        self.response_tokens = 0.0
        self.sequences = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.times[name] += time.perf_counter() - start

    def take(self) -> tuple[dict[str, float], float, float, int]:
        out = (dict(self.times), self.tokens, self.response_tokens, self.sequences)
        self.times.clear()
        self.tokens, self.response_tokens, self.sequences = 0.0, 0.0, 0
        return out


CLOCK = PhaseClock()


class TimedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with its rollout phases timed: generation, reward, old log-probs (and vLLM's weight sync)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        vllm = getattr(self, "vllm_generation", None)
        if vllm is not None:
            sync: Callable[[], None] = vllm.sync_weights

            def timed_sync() -> None:
                with CLOCK.phase("update_weights"):
                    sync()

            vllm.sync_weights = timed_sync

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        with CLOCK.phase("rollout_total"):
            out = super()._generate_and_score_completions(inputs)
        CLOCK.tokens += float(out["prompt_mask"].sum() + out["completion_mask"].sum())
        CLOCK.response_tokens += float(out["completion_mask"].sum())
        CLOCK.sequences += int(out["completion_mask"].shape[0])
        return out

    def _generate(self, prompts: list) -> Any:
        with CLOCK.phase("gen"):
            return super()._generate(prompts)

    def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Any:
        with CLOCK.phase("reward"):
            return super()._calculate_rewards(*args, **kwargs)

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():  # the loss's forward pass, part of the update
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)
        with CLOCK.phase("old_log_prob"):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)


def _reduce(values: list[float], op: torch_dist.ReduceOp) -> list[float]:
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(tensor, op=op)
    return tensor.tolist()


class StepRecorder(TrainerCallback):
    """Closes an RL step every ``updates`` optimizer steps and writes its timings (rank 0)."""

    def __init__(self, updates: int, out: Path, world_size: int) -> None:
        self.updates, self.out, self.world_size = updates, out, world_size
        self.start: float | None = None
        self.deepspeed_stage: int | None = None  # read off the trainer once it is built

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.start is None and state.global_step % self.updates == 0:
            _sync()
            self.start = time.perf_counter()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step % self.updates != 0 or self.start is None:
            return
        _sync()
        step_time = time.perf_counter() - self.start
        self.start = None
        cuda = torch.cuda.is_available()
        times, tokens, response_tokens, sequences = CLOCK.take()
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0
        tokens, response_tokens, sequences = _reduce(
            [tokens, response_tokens, float(sequences)], torch_dist.ReduceOp.SUM
        )
        maxed = _reduce([step_time, peak, reserved, *(times.get(k, 0.0) for k in PHASES)], torch_dist.ReduceOp.MAX)
        step_time, peak, reserved = maxed[:3]
        phases = dict(zip(PHASES, maxed[3:], strict=True))
        if not state.is_world_process_zero:
            return
        rollout = phases["rollout_total"]
        record = {
            "step": state.global_step // self.updates,
            "optimizer_steps": state.global_step,
            "deepspeed_stage": self.deepspeed_stage,
            "step_s": step_time,
            # _generate holds vLLM's weight sync; dsrl times its weight push apart (timing_s/update_weights)
            "gen_s": phases["gen"] - phases["update_weights"],
            "update_weights_s": phases["update_weights"],
            "reward_s": phases["reward"],
            "old_log_prob_s": phases["old_log_prob"],
            "rollout_s": rollout,
            # everything outside _generate_and_score_completions: the loss forward/backward and optimizer steps
            "update_s": step_time - rollout,
            "tokens": tokens,
            "response_tokens": response_tokens,
            "sequences": sequences,
            "tok_s_gpu": tokens / (step_time * self.world_size),
            "peak_alloc_gb": peak if cuda else None,
            "peak_reserved_gb": reserved if cuda else None,
        }
        with self.out.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"[vs_trl] {json.dumps(record)}", flush=True)


def gsm8k_reward(completions: list, ground_truth: list[str], data_source: list[str], **_: Any) -> list[float]:
    """dsrl's GSM8K rule (verl's ``default_compute_score``) on each completion's text."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [
        default_compute_score(source, text, truth, **REWARD_KWARGS)
        for source, text, truth in zip(data_source, texts, ground_truth, strict=True)
    ]


def prompt_dataset(train: Path, rows: int) -> Dataset:
    """dsrl's prepared parquet as TRL's conversational prompt dataset (TRL applies the tokenizer's chat template)."""
    data = read_prompts(train)[:rows]
    return Dataset.from_dict(
        {
            "prompt": [list(r["prompt"]) for r in data],
            "ground_truth": [r["reward_model"]["ground_truth"] for r in data],
            "data_source": [r["data_source"] for r in data],
        }
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF model folder (dsrl's random:qwen3-0.6b build)")
    p.add_argument("--train", required=True, type=Path, help="dsrl prepare-data train.parquet")
    p.add_argument("--out", required=True, type=Path, help="JSONL of per-RL-step records (appended)")
    p.add_argument("--output-dir", default="/tmp/vs_trl_trainer", help="TRL's output_dir (nothing is saved)")
    p.add_argument("--steps", type=int, default=4, help="RL steps (generation batches)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per RL step (dsrl data.train_batch_size)")
    p.add_argument("--n", type=int, default=4, help="generations per prompt (dsrl rollout.n)")
    p.add_argument("--updates", type=int, default=2, help="optimizer steps per RL step (train batch / mini batch)")
    p.add_argument("--micro-batch", type=int, required=True, help="sequences per GPU per forward/backward")
    p.add_argument("--grad-accum", type=int, default=1, help="micro batches per optimizer step")
    p.add_argument("--response-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=7777)
    p.add_argument("--vllm", action="store_true", help="TRL's vLLM colocate mode instead of HF generate")
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3)
    p.add_argument("--vllm-max-model-len", type=int, default=1024)
    p.add_argument("--no-bf16", action="store_true", help="fp32 (CPU smoke test)")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch
    per_generation = args.prompts * args.n
    local = per_generation // world
    if per_generation % world or local % (args.micro_batch * args.grad_accum * args.updates):
        raise SystemExit(
            f"{args.prompts} prompts x {args.n} over {world} ranks = {local} sequences per rank: not a multiple of "
            f"micro batch {args.micro_batch} x grad accum {args.grad_accum} x updates {args.updates}"
        )
    steps_per_generation = local // args.micro_batch
    config = GRPOConfig(
        output_dir=args.output_dir,
        max_steps=args.steps * args.updates,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.grad_accum,
        steps_per_generation=steps_per_generation,
        num_generations=args.n,
        max_completion_length=args.response_length,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.01,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        beta=0.0,  # no KL term and no reference model (dsrl: use_kl_loss=false, use_kl_in_reward=false)
        epsilon=0.2,  # dsrl actor.clip_ratio
        num_iterations=1,  # dsrl actor.ppo_epochs
        loss_type="dapo",  # token mean over the optimizer step's tokens: dsrl's loss_agg_mode=token-mean
        scale_rewards="group",  # dsrl norm_adv_by_std_in_grpo=true
        shuffle_dataset=False,  # the same prompts as dsrl with data.shuffle=false: rows 0..63, 64..127, ...
        bf16=not args.no_bf16,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},  # as dsrl.engines
        use_vllm=args.vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        vllm_max_model_length=args.vllm_max_model_len,
        # dsrl rollout.free_cache_engine=true; vLLM has no sleep mode on CPU
        vllm_enable_sleep_mode=args.vllm and torch.cuda.is_available(),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    dataset = prompt_dataset(args.train, args.steps * args.prompts)
    recorder = StepRecorder(args.updates, args.out, world)
    trainer = TimedGRPOTrainer(
        model=args.model, reward_funcs=gsm8k_reward, args=config, train_dataset=dataset, callbacks=[recorder]
    )
    if trainer.is_deepspeed_enabled:
        recorder.deepspeed_stage = int(trainer.accelerator.state.deepspeed_plugin.zero_stage)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    trainer.train()


if __name__ == "__main__":
    main()
