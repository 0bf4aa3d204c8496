"""Actor update phase vs a bare DeepSpeed loop: same model, batch, ZeRO config and GPUs.

    torchrun --nproc-per-node 2 benchmarks/actor_update_vs_bare.py --model random:qwen3-0.6b --out results.json

The bare loop is the textbook `loss = engine(ids, labels=ids).loss; engine.backward(loss); engine.step()` over
micro batches of `--micro` sequences, `--gas` per optimizer step. The dsrl side runs `workers.update_actor` (PPO
clipped loss on per-token log-probs) on exactly those sequences as one mini batch. Both use the engine dsrl builds
from its config (bf16, gradient checkpointing, the requested ZeRO stage), so the ratio isolates the update code.
Prints a table on rank 0 and writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from dsrl import dist
from dsrl import workers as W
from dsrl.batching import plan_batches
from dsrl.config import load_config
from dsrl.engines import DTYPES, build_spec, initialize, load_model
from dsrl.models import resolve_model_path
from dsrl.rollout.batch import assemble_batch


def _timed(fn, steps: int) -> float:
    torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    dist.barrier()
    return (time.perf_counter() - start) / steps


def _interleaved(a, b, steps: int, warmup: int, rounds: int) -> tuple[float, float]:
    """Median seconds per step of a and b, timed in alternating rounds so clock and thermal drift hit both."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(_timed(a, steps))
        tb.append(_timed(b, steps))
    return statistics.median(ta), statistics.median(tb)


def run_case(args, stage: int, offload: str, remove_padding: bool, step_each_micro: bool, launch) -> dict:
    world = launch.world_size
    seqs = args.micro * args.gas  # per rank per optimizer step
    half = args.seq_len // 2
    cfg = load_config(
        [
            f"actor_rollout_ref.model.path={args.model}",
            "actor_rollout_ref.model.enable_gradient_checkpointing=True",
            f"actor_rollout_ref.model.use_remove_padding={remove_padding}",
            f"actor_rollout_ref.actor.deepspeed.zero_stage={stage}",
            f"actor_rollout_ref.actor.deepspeed.offload={offload}",
            "actor_rollout_ref.actor.deepspeed.param_offload=True",
            f"data.train_batch_size={seqs * world}",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={seqs * world}",
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.micro}",
            f"data.max_prompt_length={half}",
            f"data.max_response_length={args.seq_len - half}",
            "critic.ppo_micro_batch_size_per_gpu=1",
            "trainer.device=cuda",
            f"trainer.n_gpus_per_node={world}",
        ],
        environ={},
    )
    plan = plan_batches(cfg, world)
    actor_cfg = cfg.actor_rollout_ref.actor
    spec = build_spec("actor", actor_cfg.deepspeed, actor_cfg.optim, plan.actor, world, "cuda", actor_cfg.grad_clip)
    path = str(resolve_model_path(args.model))
    model = load_model(
        path,
        kind="actor",
        spec=spec,
        dtype=DTYPES["bf16"],
        trust_remote_code=False,
        override_config={},
        gradient_checkpointing=True,
    )
    engine = initialize(model, spec)
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(1234 + launch.rank)
    prompts = torch.randint(0, vocab, (seqs, half), generator=gen).tolist()
    responses = torch.randint(0, vocab, (seqs, args.seq_len - half), generator=gen).tolist()
    batch = assemble_batch(prompts, responses, 1, 0, args.seq_len - half, launch.device)
    (batch["old_log_probs"],) = W.forward_in_micro_batches(
        lambda mb: W.log_probs_of(engine, mb, 1.0, remove_padding)[0], batch, args.micro, None
    )
    batch["advantages"] = torch.randn(batch["response_mask"].shape, generator=gen).to(launch.device)
    batch["advantages"] *= batch["response_mask"]
    tokens = int(batch["attention_mask"].sum()) * world

    def bare() -> None:
        engine.train()  # HF models load in eval mode, where gradient checkpointing is skipped
        for i in range(args.gas):
            sl = slice(i * args.micro, (i + 1) * args.micro)
            ids = batch["input_ids"][sl]
            # explicit boundary: the dsrl update timed in between also sets it explicitly
            engine.set_gradient_accumulation_boundary(i == args.gas - 1)
            loss = engine(input_ids=ids, attention_mask=batch["attention_mask"][sl], labels=ids, use_cache=False).loss
            engine.backward(loss)
            engine.step()

    def dsrl_update() -> None:
        W.update_actor(engine, batch, plan.actor, actor_cfg, 1.0, remove_padding, step_each_micro)

    torch.cuda.reset_peak_memory_stats()
    t_bare, t_dsrl = _interleaved(bare, dsrl_update, args.steps, args.warmup, args.rounds)
    peak = torch.cuda.max_memory_allocated() / 2**30
    engine.destroy()
    torch.cuda.empty_cache()
    return {
        "zero_stage": stage,
        "offload": offload,
        "remove_padding": remove_padding,
        "step_each_micro": step_each_micro,
        "world_size": world,
        "seq_len": args.seq_len,
        "micro": args.micro,
        "gas": args.gas,
        "tokens_per_step": tokens,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "bare_tok_s": tokens / t_bare,
        "dsrl_update_tok_s": tokens / t_dsrl,
        "ratio": t_bare / t_dsrl,
        "bare_s_per_step": t_bare,
        "dsrl_s_per_step": t_dsrl,
        "peak_allocated_gib": peak,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="random:qwen3-0.6b")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--gas", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per timed round")
    p.add_argument("--rounds", type=int, default=4, help="alternating timed rounds; the median is reported")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--cases",
        default="1:none:0:0,2:none:0:0,3:none:0:0,2:cpu:0:0,2:cpu:0:1",
        help="comma list of stage:offload:remove_padding:step_each_micro",
    )
    p.add_argument("--out", default="actor_update_vs_bare.json")
    args = p.parse_args()
    launch = dist.launch_info("cuda")
    dist.init(launch, 1800)
    results = []
    for case in args.cases.split(","):
        stage, offload, rmpad, each = case.split(":")
        results.append(run_case(args, int(stage), offload, rmpad == "1", each == "1", launch))
        if launch.is_main:
            r = results[-1]
            print(
                f"zero{r['zero_stage']} offload={r['offload']} rmpad={int(r['remove_padding'])} "
                f"step_each_micro={int(r['step_each_micro'])}: "
                f"bare {r['bare_tok_s']:.0f} tok/s, dsrl update {r['dsrl_update_tok_s']:.0f} tok/s, "
                f"ratio {r['ratio']:.3f}, peak {r['peak_allocated_gib']:.1f} GiB",
                flush=True,
            )
    if launch.is_main:
        with open(args.out + ".tmp", "w") as fh:
            json.dump(results, fh, indent=2)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
