"""Where the actor update's time goes: per micro batch forward, log-prob/loss, backward, reduction, optimizer step.

    # GPU (2 x H200; benchmarks/update_breakdown.sh wraps this with the device setup and a time budget)
    python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/update_breakdown.py \\
        --model random:qwen3-0.6b --budget-s 280 --out update_breakdown.jsonl
    # CPU smoke run (2 gloo ranks, tiny model and sizes; tests/test_update_breakdown.py runs it)
    python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/update_breakdown.py --device cpu \\
        --model random:tiny --prompts 4 --rollout-n 2 --response-len 8 --prompt-lens 3,6 --max-prompt-len 8 \\
        --max-tokens 64 --mini 2 --cases z2:gc1:pack1,z2:gc1:pack0 --out /tmp/ub.jsonl
    # the markdown table of a results file
    python3 benchmarks/update_breakdown.py --table update_breakdown.jsonl

Each case builds (or reuses) the actor engine with dsrl's own code (`build_spec`, `load_model`, `initialize`),
makes a GRPO-shaped batch (`--prompts` prompts x `--rollout-n` responses of `--response-len` tokens; prompt lengths from
`--train-parquet` chat-templated as the trainer does, else uniform in `--prompt-lens`), and runs
`workers.update_actor` (token-budget micro batches, `--mini` prompts per optimizer step) for `--warmup` untimed and
`--steps` timed update phases. The engine is wrapped so that CUDA events (host clocks on CPU) mark every forward,
backward, DeepSpeed's backward epilogue (the gradient reduction left after backward: ZeRO-1/2's last bucket and
all-reduce; ZeRO-3 reduces inside backward) and optimizer step, without adding synchronisations. `other` is the
step's wall time outside those calls (batch slicing, token counts, metric reads: host overhead). Each engine also
repeats the trainer's start-up check (packed log-probs with the packing attention vs padded `sdpa` ones, 8 sequences).

Cases are `z<stage>:gc<0|1>:pack<0|1>` plus optional `overlap<0|1>`, `contig<0|1>`, `bucket<bytes>`,
`mel<0|1>` (ZeRO-3 memory_efficient_linear) and `chunk<rows>` (chunked log-probs, `workers.LOG_PROB_CHUNK_ROWS`).
Cases sharing the DeepSpeed settings share one engine (gradient checkpointing, packing and chunking are switched on
the live model). The bare DeepSpeed loop (`loss = engine(ids, labels=ids).loss`, benchmarks/actor_update_vs_bare.py)
runs on the same micro batches once per ZeRO stage and checkpointing setting, on an engine with dsrl's default
DeepSpeed settings; every case of that stage and setting gets `ratio_vs_bare` from it. Results are appended
to `--out` (JSON lines, rank 0) as each case finishes; a case that fails is recorded with its error and the next
one runs. `--budget-s` stops before a case (or engine) that the time left would not fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from dsrl import dist
from dsrl import packed_attention as PA
from dsrl import workers as W
from dsrl.batching import plan_batches
from dsrl.config import load_config
from dsrl.data import encode_prompts, read_prompts
from dsrl.engines import DTYPES, build_spec, initialize, load_model, model_states_estimate
from dsrl.flops import mfu, peak_flops, train_flops
from dsrl.models import resolve_model_path
from dsrl.rollout.batch import assemble_batch

H200_PEAK = 989.4e12


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured configuration: engine settings (shared engines) plus switches on the live model."""

    stage: int
    gc: bool
    pack: bool
    overlap: bool = True
    contig: bool = True
    bucket: float = 5e8
    mel: bool = False
    chunk: int = 0

    @property
    def name(self) -> str:
        parts = [f"z{self.stage}", f"gc{int(self.gc)}", f"pack{int(self.pack)}"]
        for field in ("overlap", "contig", "bucket", "mel", "chunk"):
            value, default = getattr(self, field), getattr(Case, field)
            if value != default:
                parts.append(f"{field}{int(value) if isinstance(value, bool) else f'{value:g}'}")
        return ":".join(parts)

    @property
    def engine_key(self) -> tuple:
        return (self.stage, self.overlap, self.contig, self.bucket, self.mel)


_FIELDS = {"gc": bool, "pack": bool, "overlap": bool, "contig": bool, "bucket": float, "mel": bool, "chunk": int}


def parse_case(text: str) -> Case:
    """`z2:gc1:pack1:bucket2e8` -> Case(stage=2, gc=True, pack=True, bucket=2e8)."""
    values: dict[str, Any] = {}
    for token in text.strip().split(":"):
        m = re.fullmatch(r"([a-z]+)([0-9.e+-]+)", token)
        if not m:
            raise ValueError(f"case {text!r}: cannot read {token!r}")
        key, raw = m.groups()
        if key == "z":
            values["stage"] = int(raw)
        elif key in _FIELDS:
            kind = _FIELDS[key]
            values[key] = bool(int(raw)) if kind is bool else kind(float(raw))
        else:
            raise ValueError(f"case {text!r}: unknown setting {key!r} (z, {', '.join(_FIELDS)})")
    missing = {"stage", "gc", "pack"} - set(values)
    if missing:
        raise ValueError(f"case {text!r} needs z<stage>, gc<0|1> and pack<0|1>")
    return Case(**values)


PRESETS = {
    # the matrix, most important first: ZeRO-2 packing on/off, then checkpointing off, ZeRO-1
    "z12": "z2:gc1:pack1,z2:gc1:pack0,z2:gc0:pack1,z2:gc0:pack0,z2:gc1:pack1:chunk4096,z2:gc0:pack1:chunk4096,"
    "z1:gc1:pack1,z1:gc1:pack0,z1:gc0:pack1,z1:gc0:pack0",
    # ZeRO-3, then DeepSpeed knobs (one engine each); memory_efficient_linear patches F.linear process-wide: last
    "z3knobs": "z3:gc1:pack1,z3:gc1:pack0,z3:gc0:pack1,z3:gc0:pack0,"
    "z2:gc1:pack1:overlap0,z2:gc1:pack1:contig0,z2:gc1:pack1:bucket5e+07,z2:gc1:pack1:bucket2e+09,z3:gc1:pack1:mel1",
}
PRESETS["all"] = f"{PRESETS['z12']},{PRESETS['z3knobs']}"


def group_by_engine(cases: list[Case]) -> list[list[Case]]:
    """Cases that share DeepSpeed settings, grouped in the order their first case appears."""
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.engine_key, []).append(case)
    return list(groups.values())


class Clock:
    """CUDA events on the current stream (no synchronisation) or, on CPU, the host clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000 if self.cuda else end - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class TimedEngine:
    """A DeepSpeed engine whose forward, backward, backward epilogue and step calls leave (kind, start, end) marks."""

    def __init__(self, engine, clock: Clock):
        self._engine, self._clock = engine, clock
        self.marks: list[tuple[str, Any, Any, float]] = []
        epilogue = engine._backward_epilogue
        engine._backward_epilogue = lambda: self._timed("reduce", epilogue)

    def detach(self) -> None:
        del self._engine._backward_epilogue

    def _timed(self, kind: str, fn: Callable, *args, **kwargs):
        host = time.perf_counter()
        start = self._clock.mark()
        out = fn(*args, **kwargs)
        self.marks.append((kind, start, self._clock.mark(), time.perf_counter() - host))
        return out

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def __call__(self, *args, **kwargs):
        return self._timed("forward", self._engine, *args, **kwargs)

    def backward(self, loss, **kwargs):
        return self._timed("backward", self._engine.backward, loss, **kwargs)

    def step(self):
        return self._timed("step", self._engine.step)


def breakdown(marks: list[tuple[str, Any, Any, float]], clock: Clock, wall: float) -> dict[str, float]:
    """Seconds per update phase by kind; `loss` is forward end to backward start, `other` the rest of the wall."""
    out = {k: 0.0 for k in ("forward", "loss", "backward", "reduce", "step")}
    host = {k: 0.0 for k in ("forward", "backward", "step")}
    micro = steps = 0
    last_forward_end = None
    for kind, start, end, host_s in marks:
        seconds = clock.seconds(start, end)
        out[kind] += seconds
        if kind in host:
            host[kind] += host_s
        if kind == "forward":
            micro += 1
            last_forward_end = end
        elif kind == "backward" and last_forward_end is not None:
            out["loss"] += clock.seconds(last_forward_end, start)
        elif kind == "step":
            steps += 1
    out["backward"] -= out["reduce"]  # the epilogue runs inside engine.backward
    out["other"] = wall - sum(out[k] for k in ("forward", "loss", "backward", "reduce", "step"))
    res = {f"{k}_s": v for k, v in out.items()}
    res.update({f"{k}_host_s": v for k, v in host.items()})
    res.update(wall_s=wall, micro_batches=micro, engine_steps=steps)
    res.update({f"{k}_per_micro_s": out[k] / max(micro, 1) for k in ("forward", "loss", "backward")})
    res.update({f"{k}_per_engine_step_s": out[k] / max(steps, 1) for k in ("reduce", "step")})
    return res


def _timed_call(fn: Callable[[], Any], clock: Clock) -> float:
    clock.sync()
    start = time.perf_counter()
    fn()
    clock.sync()
    return time.perf_counter() - start


def prompt_ids(args, tokenizer, vocab: int) -> list[list[int]]:
    """`--prompts` prompts: chat-templated rows of the train parquet, or random ids of lengths in --prompt-lens."""
    if args.train_parquet:
        rows = read_prompts(args.train_parquet)[: args.prompts * 4]
        ids, _ = encode_prompts(rows, tokenizer, args.max_prompt_len, True)
        if len(ids) < args.prompts:
            raise ValueError(f"{args.train_parquet}: only {len(ids)} usable prompts, --prompts={args.prompts}")
        return ids[: args.prompts]
    low, high = (int(x) for x in args.prompt_lens.split(","))
    gen = torch.Generator().manual_seed(7)
    lens = torch.randint(low, high + 1, (args.prompts,), generator=gen).tolist()
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lens]


def grpo_batch(args, prompts: list[list[int]], vocab: int, launch) -> W.Batch:
    """This rank's share of the prompts, `--rollout-n` random responses each, one advantage per sequence (GRPO)."""
    per_rank = len(prompts) // launch.world_size
    mine = prompts[launch.rank * per_rank : (launch.rank + 1) * per_rank]
    gen = torch.Generator().manual_seed(1000 + launch.rank)
    low = args.response_len_min or args.response_len
    lens = torch.randint(low, args.response_len + 1, (len(mine) * args.n,), generator=gen).tolist()
    responses = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lens]
    batch = assemble_batch(mine, responses, args.n, 0, args.response_len, launch.device)
    adv = torch.randn(batch["response_mask"].shape[0], 1, generator=gen).to(launch.device)
    batch["advantages"] = adv * batch["response_mask"]
    return batch


def config_for(args, case: Case, world: int):
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    ds = "actor_rollout_ref.actor.deepspeed"
    return load_config(
        [
            f"actor_rollout_ref.model.path={args.model}",
            f"actor_rollout_ref.model.enable_gradient_checkpointing={case.gc}",
            f"actor_rollout_ref.model.use_remove_padding={case.pack}",
            f"{ds}.zero_stage={case.stage}",
            f"{ds}.mixed_precision={precision}",
            f"{ds}.overlap_comm={case.overlap}",
            f"{ds}.contiguous_gradients={case.contig}",
            f"{ds}.reduce_bucket_size={case.bucket:g}",
            f"{ds}.stage3_memory_efficient_linear={case.mel}",
            f"data.train_batch_size={args.prompts}",
            f"data.max_prompt_length={args.max_prompt_len}",
            f"data.max_response_length={args.response_len}",
            f"actor_rollout_ref.rollout.n={args.n}",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={args.mini}",
            "actor_rollout_ref.actor.use_dynamic_bsz=True",
            f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={args.max_tokens}",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
            "actor_rollout_ref.actor.use_kl_loss=False",
            "critic.ppo_micro_batch_size_per_gpu=1",
            f"trainer.device={args.device}",
            f"trainer.n_gpus_per_node={world}",
        ],
        environ={},
    )


def set_switches(engine, case: Case) -> None:
    """Gradient checkpointing, attention implementation and log-prob chunking on the live engine."""
    model = engine.module
    if case.gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    attn = PA.packed_implementation(engine.device.type, "sdpa") if case.pack else "sdpa"
    PA.set_implementation([engine], attn)
    W.LOG_PROB_CHUNK_ROWS = case.chunk or None


@torch.no_grad()
def packed_vs_padded(engine, batch: W.Batch, launch, rows: int = 8) -> dict[str, Any]:
    """The trainer's start-up check on this engine: packed log-probs (the packing attention) vs padded `sdpa` ones."""
    sample = W.select(batch, range(min(rows, batch["input_ids"].shape[0])))
    attn = PA.packed_implementation(launch.device.type, "sdpa")
    PA.set_implementation([engine], attn)
    packed, _ = W.log_probs_of(engine, sample, 1.0, True)
    PA.set_implementation([engine], "sdpa")
    padded, _ = W.log_probs_of(engine, sample, 1.0, False)
    diff = (packed - padded).abs()
    worst = dist.all_reduce_scalars([float(diff.max()), float(diff.sum() / sample["response_mask"].sum())], "max")
    return {"packed_attention": attn, "packed_vs_padded_max_abs": worst[0], "packed_vs_padded_mean_abs": worst[1]}


def bare_step(engine, batch: W.Batch, plan) -> None:
    """The textbook DeepSpeed loop on the update's own micro batches (padded, HF's LM loss over all positions)."""
    engine.train()
    resp_len = batch["responses"].shape[1]
    for mini_idx in W._minis(batch["input_ids"].shape[0], plan):
        mini = W.select(batch, mini_idx)
        micros = W._micro_batches(W.seq_lengths(mini), plan.micro, plan.max_tokens)
        for i, idx in enumerate(micros):
            mb = W.select(mini, idx)
            first, p_cols, keep, _, _ = W._layout(mb, resp_len)
            cols = slice(first, first + p_cols + keep)
            ids = mb["input_ids"][:, cols]
            engine.set_gradient_accumulation_boundary(i == len(micros) - 1)
            loss = engine(input_ids=ids, attention_mask=mb["attention_mask"][:, cols], labels=ids, use_cache=False).loss
            engine.backward(loss)
            engine.step()


@dataclasses.dataclass
class Budget:
    """Stop before work that the time left would not fit; every rank takes the same decision."""

    seconds: float
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def fits(self, estimate: float) -> bool:
        elapsed, need = dist.all_reduce_scalars([time.perf_counter() - self.start, estimate], "max")
        return elapsed + need <= self.seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


class Recorder:
    """JSON lines appended and flushed as results come (rank 0), so a killed run keeps what it finished."""

    def __init__(self, path: str, is_main: bool, common: dict[str, Any]):
        self.path, self.is_main, self.common = Path(path), is_main, common

    def write(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps({**self.common, **row}) + "\n")
        print(json.dumps(row), flush=True)


def _free() -> None:
    """Return what dropped engines and failed cases held to the allocator before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_case(args, case: Case, engine, batch: W.Batch, plan, actor_cfg, clock: Clock, launch, peak) -> dict:
    set_switches(engine, case)
    timed = TimedEngine(engine, clock)
    try:
        if clock.cuda:
            torch.cuda.reset_peak_memory_stats()
        update = lambda: W.update_actor(timed, batch, plan, actor_cfg, 1.0, case.pack, False)  # noqa: E731
        for _ in range(args.warmup):
            update()
        steps = []
        for _ in range(args.steps):
            timed.marks.clear()
            wall = _timed_call(update, clock)
            steps.append(breakdown(timed.marks, clock, wall))
    finally:
        timed.detach()
    # per-rank means over the timed steps; the slowest rank's breakdown (the update ends when every rank's has)
    means = {k: statistics.fmean(s[k] for s in steps) for k in steps[0]}
    row = max(dist.all_gather_objects(means), key=lambda m: m["wall_s"])
    lens = W.seq_lengths(batch)
    flops = dist.all_reduce_scalars([train_flops(engine.module.config, lens)], "sum")[0]
    tokens = dist.all_reduce_scalars([float(sum(lens))], "sum")[0]
    row.update(
        flops_per_step=flops,
        tokens_per_step=tokens,
        tok_s_per_gpu=tokens / (row["wall_s"] * launch.world_size),
        mfu=mfu(flops, row["wall_s"], launch.world_size, peak),
        step_s_each=dist.all_reduce_scalars([s["wall_s"] for s in steps], "max"),
        attention_backends=PA.backends_used(),
    )
    if clock.cuda:
        row["peak_allocated_gib"] = dist.all_reduce_scalars([torch.cuda.max_memory_allocated() / 2**30], "max")[0]
    return row


def run_engine_group(
    args, cases: list[Case], launch, budget: Budget, rec: Recorder, est: dict[str, float], bare: dict[tuple, float]
) -> None:
    """Build one engine and time every case of the group on it, with the bare loop once per (stage, checkpointing)."""
    first = cases[0]
    world = launch.world_size
    cfg = config_for(args, first, world)
    plan = plan_batches(cfg, world).actor
    actor_cfg = cfg.actor_rollout_ref.actor
    spec = build_spec("actor", actor_cfg.deepspeed, actor_cfg.optim, plan, world, args.device, actor_cfg.grad_clip)
    path = args.model_path
    t0 = time.perf_counter()
    model = load_model(
        path,
        kind="actor",
        spec=spec,
        dtype=DTYPES[actor_cfg.deepspeed.mixed_precision],
        trust_remote_code=False,
        override_config={},
        gradient_checkpointing=first.gc,
    )
    estimate = model_states_estimate(model, spec, world, launch.local_world_size)
    engine = initialize(model, spec)
    est["init"] = time.perf_counter() - t0
    clock = Clock(launch.device)
    from transformers import AutoTokenizer

    vocab = int(model.config.vocab_size)
    prompts = prompt_ids(args, AutoTokenizer.from_pretrained(path), vocab)
    batch = grpo_batch(args, prompts, vocab, launch)
    (batch["old_log_probs"],) = W.forward_in_micro_batches(
        lambda mb: W.log_probs_of(engine, mb, 1.0, False)[0], batch, plan.micro, plan.max_tokens
    )
    common_check = packed_vs_padded(engine, batch, launch)
    peak = peak_flops(torch.cuda.get_device_name(), "bf16") if clock.cuda else None
    peak = peak or (H200_PEAK if clock.cuda else None)
    common = {
        "zero_stage": first.stage,
        "engine_init_s": est["init"],
        "predicted_gib_per_gpu": estimate["gpu_bytes"] / 2**30,
        "mini_batches_per_step": plan.num_minis,
        "max_tokens_per_micro": plan.max_tokens,
        **common_check,
    }
    stage_key = f"case_z{first.stage}"  # ZeRO-3 runs ~3x longer than ZeRO-1/2 (docs/benchmarks.md)
    for case in cases:
        need = est.get(stage_key) or est.get("case", 0.0) * (3 if first.stage == 3 else 1)
        if not budget.fits(need):
            rec.write({"case": case.name, "skipped": f"budget ({budget.left():.0f} s left)"})
            continue
        t1 = time.perf_counter()
        try:
            row = run_case(args, case, engine, batch, plan, actor_cfg, clock, launch, peak)
            key = (case.stage, case.gc)
            default_ds = case.engine_key == Case(case.stage, case.gc, case.pack).engine_key
            if args.bare and default_ds and key not in bare and budget.fits(need / 2):
                set_switches(engine, dataclasses.replace(case, pack=False, chunk=0))
                for _ in range(args.warmup):
                    bare_step(engine, batch, plan)
                walls = [_timed_call(lambda: bare_step(engine, batch, plan), clock) for _ in range(args.steps)]
                bare[key] = dist.all_reduce_scalars([statistics.fmean(walls)], "max")[0]
            if key in bare:
                row.update(bare_s=bare[key], ratio_vs_bare=bare[key] / row["wall_s"])
            rec.write({"case": case.name, **common, **dataclasses.asdict(case), **row})
        except Exception as exc:  # one case failing must not lose the others
            traceback.print_exc()
            rec.write({"case": case.name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
            _free()
        took = time.perf_counter() - t1
        est["case"], est[stage_key] = max(est.get("case", 0.0), took), max(est.get(stage_key, 0.0), took)
    engine.destroy()  # the caller frees the rest once this frame is gone


def _attention_inputs(lens: list[int], device, packed: bool) -> tuple[torch.Tensor, ...]:
    """Random bf16 q, k, v with Qwen3-0.6B's heads (16 query, 8 K/V, 128 wide): packed [T, H, D] or padded."""
    gen = torch.Generator().manual_seed(0)
    lead = (sum(lens),) if packed else (len(lens), max(lens))
    shapes = [(*lead, h, 128) if packed else (lead[0], h, lead[1], 128) for h in (16, 8, 8)]
    return tuple(torch.randn(s, generator=gen).to(device, torch.bfloat16).requires_grad_() for s in shapes)


def _attention_case(kind: str, lens: list[int], device) -> tuple[Callable[[], torch.Tensor], tuple[torch.Tensor, ...]]:
    """One attention call over these sequences, by packed kernel or as transformers' sdpa runs it with a mask."""
    packed = kind != "sdpa_padded_mask"
    leaves = _attention_inputs(lens, device, packed=packed)
    q, k, v = leaves
    if kind in PA._CUDA_KERNELS:
        cu = torch.tensor(PA.cu_seqlens(lens), dtype=torch.int32, device=device)
        return lambda: PA._CUDA_KERNELS[kind](q, k, v, cu, max(lens), 128**-0.5), leaves
    if packed:  # one packed row and its block-diagonal causal mask
        seq = torch.repeat_interleave(torch.arange(len(lens), device=device), torch.tensor(lens, device=device))
        mask = ((seq[:, None] == seq[None, :]) & torch.ones(len(seq), len(seq), device=device).tril().bool())[None]
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in leaves)
    else:  # padded rows with a causal-and-padding mask
        width = max(lens)
        valid = torch.arange(width, device=device)[None, :] < torch.tensor(lens, device=device)[:, None]
        mask = torch.ones(width, width, dtype=torch.bool, device=device).tril()[None] & valid[:, None, :]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return lambda: sdpa(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask[:, None]), leaves


def attention_timing(kind: str, lens: list[int], device, iters: int = 5) -> float:
    """Milliseconds of one forward + backward of attention alone over these sequences."""
    fn, leaves = _attention_case(kind, lens, device)
    clock = Clock(torch.device(device))
    for i in range(iters + 2):
        if i == 2:
            clock.sync()
            start = time.perf_counter()
        out = fn()
        torch.autograd.grad(out, leaves, torch.ones_like(out))
    clock.sync()
    return (time.perf_counter() - start) / iters * 1000


def kernel_rows(device, micro_lens: list[int]) -> list[dict[str, Any]]:
    """Packed attention kernels on this GPU: errors against fp32 textbook attention; fwd+bwd time per micro batch."""
    rows = []
    for kind in (*PA._CUDA_KERNELS, "sdpa_padded_mask", "sdpa_packed_mask"):
        row: dict[str, Any] = {"case": f"kernel:{kind}", "tokens": sum(micro_lens), "sequences": len(micro_lens)}
        try:
            if kind in PA._CUDA_KERNELS:
                row.update({f"rel_err_{k}": v for k, v in PA.self_check(kind, device, torch.bfloat16).items()})
            row["attention_fwd_bwd_ms"] = attention_timing(kind, micro_lens, device)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        rows.append(row)
        _free()
    return rows


def run(args) -> None:
    launch = dist.launch_info(args.device)
    dist.init(launch, args.collective_timeout_s)
    cases = [parse_case(c) for c in PRESETS.get(args.cases, args.cases).split(",") if c.strip()]
    budget = Budget(args.budget_s)
    common = {
        "model": args.model,
        "world_size": launch.world_size,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "prompts": args.prompts,
        "n": args.n,
        "response_len": args.response_len,
    }
    rec = Recorder(args.out, launch.is_main, common)
    corpus = [args.train_parquet] if args.train_parquet else []
    if launch.is_main:  # a random:<preset> model is built once, by rank 0, as the trainer does
        resolve_model_path(args.model, corpus_files=corpus)
    dist.barrier()
    args.model_path = str(resolve_model_path(args.model, corpus_files=corpus))
    if args.device == "cuda" and args.kernels:
        gen = torch.Generator().manual_seed(3)
        micro_lens = torch.randint(100 + args.response_len, 200 + args.response_len + 1, (24,), generator=gen)
        for row in kernel_rows(launch.device, micro_lens.tolist()):
            rec.write(row)
    est: dict[str, float] = {}
    bare: dict[tuple, float] = {}  # bare-loop seconds per (stage, checkpointing), default DeepSpeed settings
    for group in group_by_engine(cases):
        if not budget.fits(est.get("init", 0.0) + est.get("case", 0.0)):
            for case in group:
                rec.write({"case": case.name, "skipped": f"budget ({budget.left():.0f} s left)"})
            continue
        try:
            run_engine_group(args, group, launch, budget, rec, est, bare)
            _free()
        except Exception as exc:
            traceback.print_exc()
            for case in group:
                rec.write({"case": case.name, "error": f"engine: {type(exc).__name__}: {exc}"[:2000]})
            _free()
    dist.barrier()


TABLE_COLUMNS = (
    ("case", "case", "{}"),
    ("s/step", "wall_s", "{:.2f}"),
    ("tok/s/GPU", "tok_s_per_gpu", "{:,.0f}"),
    ("MFU", "mfu", "{:.1%}"),
    ("micro", "micro_batches", "{:.0f}"),
    ("fwd s", "forward_s", "{:.2f}"),
    ("logprob+loss s", "loss_s", "{:.2f}"),
    ("bwd s", "backward_s", "{:.2f}"),
    ("reduce s", "reduce_s", "{:.3f}"),
    ("opt step s", "step_s", "{:.2f}"),
    ("other s", "other_s", "{:.2f}"),
    ("bare s/step", "bare_s", "{:.2f}"),
    ("vs bare", "ratio_vs_bare", "{:.2f}"),
    ("peak GiB", "peak_allocated_gib", "{:.1f}"),
    ("predicted GiB", "predicted_gib_per_gpu", "{:.2f}"),
    ("packed-padded max", "packed_vs_padded_max_abs", "{:.1e}"),
)


KERNEL_COLUMNS = (
    ("attention kernel", "case", "{}"),
    ("tokens", "tokens", "{:.0f}"),
    ("fwd+bwd ms", "attention_fwd_bwd_ms", "{:.2f}"),
    ("rel err out", "rel_err_out", "{:.1e}"),
    ("dq", "rel_err_dq", "{:.1e}"),
    ("dk", "rel_err_dk", "{:.1e}"),
    ("dv", "rel_err_dv", "{:.1e}"),
)


def _markdown(rows: list[dict[str, Any]], columns: tuple[tuple[str, str, str], ...]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        if "error" in row or "skipped" in row:
            lines.append(f"| {row['case']} | " + (row.get("error") or row["skipped"]).replace("|", "/")[:120] + " |")
            continue
        cells = []
        for _, key, fmt in columns:
            value = row.get(key)
            ok = value is not None and not (isinstance(value, float) and math.isnan(value))
            cells.append(fmt.format(value) if ok else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown tables: the cases (per optimizer-step seconds summed over micro batches, MFU, memory), then the
    attention kernels (error against fp32 attention, time for one 16k-token micro batch), if measured."""
    kernels = [r for r in rows if str(r["case"]).startswith("kernel:")]
    lines = _markdown([r for r in rows if r not in kernels], TABLE_COLUMNS)
    if kernels:
        lines += ["", *_markdown(kernels, KERNEL_COLUMNS)]
    return "\n".join(lines)


def read_rows(path: str) -> Iterator[dict[str, Any]]:
    with open(path) as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", help="print the markdown table of this JSONL file and exit")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--model", default="random:qwen3-0.6b")
    p.add_argument("--precision", default=None, help="bf16 | fp16 | fp32 (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--train-parquet", default=None, help="prompt lengths from these chat prompts (else synthetic)")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--rollout-n", dest="n", type=int, default=4, help="responses per prompt")
    p.add_argument("--prompt-lens", default="100,200", help="synthetic prompt lengths: low,high (inclusive)")
    p.add_argument("--max-prompt-len", type=int, default=512)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--response-len-min", type=int, default=0, help="0: every response has --response-len tokens")
    p.add_argument("--mini", type=int, default=32, help="ppo_mini_batch_size (prompts per optimizer step)")
    p.add_argument("--max-tokens", type=int, default=16384, help="ppo_max_token_len_per_gpu")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare DeepSpeed loop")
    p.add_argument("--no-kernels", dest="kernels", action="store_false", help="skip the attention-kernel checks")
    p.add_argument("--cases", default="all", help=f"comma list of cases, or a preset: {', '.join(PRESETS)}")
    p.add_argument("--budget-s", type=float, default=280.0)
    p.add_argument("--collective-timeout-s", type=float, default=300.0)
    p.add_argument("--out", default="update_breakdown.jsonl")
    args = p.parse_args(argv)
    if args.table:
        print(table(list(read_rows(args.table))))
        return
    run(args)
    if dist.launch_info(args.device).is_main and Path(args.out).exists():
        print(table(list(read_rows(args.out))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
