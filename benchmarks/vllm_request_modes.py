"""Where a dsrl vLLM server's rollout time goes: the same prompts sent the ways the HTTP API allows.

One server started as the trainer starts it (`dsrl.rollout.vllm_server`: `--tokens-only`, the rollout knobs of
`--config`'s trainer_overrides plus any `key=value` overrides), dummy weights, one GPU (or the CPU); with
`--with-tokenizer` the same server with its tokenizer, as dsrl ran it before. For each response length, mode,
log-prob setting (`--logprobs`) and sleep level (`--sleep-levels`), one warm-up and `--repeats` timed rollouts of
`--prompts` prompts x n:

- `generate`: `/inference/v1/generate`, vLLM's token-in/token-out route, with the trainer's own request bodies
  (`dsrl.rollout.vllm_requests`: `detokenize: false`, its EOS as stop tokens);
- `completions`: `/v1/completions`, one request per prompt with its own seed (what dsrl sent before; needs
  `--with-tokenizer`).

Sleep level 0 sends the rollouts back to back; 1 or 2 first puts the server through the trainer's cycle between
two rollouts (sleep, wake the weights, reset the prefix cache, wake the KV cache), untimed, so a slower rollout
after it is the cycle's cost. One JSON line per timed rollout to stdout and `--out`.

    python benchmarks/vllm_request_modes.py --train results/data/train.parquet --config config/gpu.yaml \
        --prompts 32 --n 4 --tokens 128 512 --out request_modes.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import yaml
from transformers import AutoTokenizer

from dsrl.config import load_config
from dsrl.data import encode_prompts, read_prompts
from dsrl.models import resolve_model_path
from dsrl.rollout import Sampling, eos_ids, sampling_from
from dsrl.rollout.server_layout import server_groups
from dsrl.rollout.vllm_requests import generate_requests
from dsrl.rollout.vllm_server import (
    GENERATE,
    SERVED_NAME,
    VLLMServer,
    free_port,
    server_args,
    server_client,
    server_env,
)
from dsrl.workflow.commands import format_value


def overrides_from(config: Path | None, extra: list[str]) -> list[str]:
    """The workflow config's trainer_overrides as `key=value` strings, then the command line's."""
    pairs: list[str] = []
    if config is not None:
        for key, value in (yaml.safe_load(config.read_text()).get("trainer_overrides") or {}).items():
            pairs.append(f"{key}={format_value(value)}")
    return pairs + extra


def completion_bodies(prompts: list[list[int]], n: int, sampling: Sampling, logprobs: bool, seed: int) -> list[dict]:
    """`/v1/completions` requests as dsrl sent them before the token-in/token-out route: one per prompt."""
    bodies = []
    for i, prompt in enumerate(prompts):
        body: dict[str, Any] = {
            "model": SERVED_NAME,
            "prompt": prompt,
            "n": n,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "seed": seed + i * n,
            "return_token_ids": True,
            "skip_special_tokens": False,
        }
        if logprobs:
            body.update(logprobs=0, return_tokens_as_token_ids=True)
        bodies.append(body)
    return bodies


def post_all(http: httpx.Client, route: str, bodies: list[dict]) -> int:
    """Every request in flight at once, as the trainer sends them; the number of tokens generated."""

    def one(body: dict) -> list[dict[str, Any]]:
        resp = http.post(route, json=body)
        resp.raise_for_status()
        return resp.json()["choices"]

    with ThreadPoolExecutor(len(bodies)) as pool:
        return sum(len(c["token_ids"]) for choices in pool.map(one, bodies) for c in choices)


def cycle(http: httpx.Client, level: int) -> None:
    """The trainer's server cycle between two rollouts: sleep through the update, wake the weights (the trainer
    pushes them here), reset the prefix cache, wake the KV cache. Level 1 keeps the dummy weights, which no push
    restores here; the KV cache is dropped and mapped again at either level."""
    for path, params in (
        ("/sleep", {"level": level}),
        ("/wake_up", {"tags": "weights"}),
        ("/reset_prefix_cache", None),
        ("/wake_up", {"tags": "kv_cache"}),
    ):
        http.post(path, params=params).raise_for_status()


def trainer_bodies(eos_ids: set[int]) -> Callable[..., list[dict]]:
    """The trainer's own `/inference/v1/generate` bodies (`dsrl.rollout.vllm_requests`), stopping on its EOS."""

    def bodies(prompts: list[list[int]], n: int, sampling: Sampling, logprobs: bool, seed: int) -> list[dict]:
        return generate_requests(prompts, n, sampling, seed, eos_ids, logprobs)

    return bodies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="the run's train parquet (dsrl prepare-data)")
    ap.add_argument("--config", type=Path, help="a workflow config whose trainer_overrides set the rollout knobs")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per rollout (one rank's share)")
    ap.add_argument(
        "--fresh-prompts",
        action="store_true",
        help="other prompts for every rollout, as in training (else the same ones: the prefix cache holds them)",
    )
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["generate"], choices=["generate", "completions"])
    ap.add_argument("--logprobs", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument(
        "--sleep-levels",
        nargs="+",
        type=int,
        default=[0],
        choices=[0, 1, 2],
        help="0: rollouts back to back; 1 or 2: the trainer's sleep/wake cycle at that level before each rollout",
    )
    ap.add_argument(
        "--with-tokenizer",
        action="store_true",
        help="start the server without --tokens-only (a tokenizer, /v1/completions, detokenised outputs)",
    )
    ap.add_argument("--log", type=Path, default=Path("vllm-request-modes.log"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("overrides", nargs="*", help="dsrl key=value overrides after --config's")
    args = ap.parse_args()

    cfg = load_config(overrides_from(args.config, args.overrides))
    device = str(cfg.trainer.device)
    rollout = cfg.actor_rollout_ref.rollout
    model = str(resolve_model_path(str(cfg.actor_rollout_ref.model.path), corpus_files=[args.train]))
    tokenizer = AutoTokenizer.from_pretrained(model)
    routes = {
        "generate": (GENERATE, trainer_bodies(eos_ids(tokenizer))),
        "completions": ("/v1/completions", completion_bodies),
    }
    trainer_sampling = sampling_from(cfg)  # the run's sampling knobs; the response length varies below
    variants = [
        (tokens, mode, logprobs == "on", level)
        for tokens in args.tokens
        for mode in args.modes
        for logprobs in args.logprobs
        for level in args.sleep_levels
    ]
    rollouts = len(variants) * (args.repeats + 1) if args.fresh_prompts else 1
    rows_needed = args.prompts * rollouts
    pool, _ = encode_prompts(read_prompts(args.train)[:rows_needed], tokenizer, int(rollout.prompt_length), True)
    if len(pool) < rows_needed:
        raise SystemExit(f"--fresh-prompts needs {rows_needed} prompts; {args.train} has {len(pool)} that fit")
    batches = [pool[i : i + args.prompts] for i in range(0, rows_needed, args.prompts)]
    done = 0  # rollouts sent so far

    group = server_groups(1, 1, int(rollout.tensor_model_parallel_size), device)[0]
    cmd = server_args(rollout, model, free_port(), device)
    server = VLLMServer(
        [a for a in cmd if not (args.with_tokenizer and a == "--tokens-only")],
        server_env(rollout, device, group, args.log),
        args.log,
    )
    start = time.perf_counter()
    server.start(float(rollout.server_start_timeout))
    rows: list[dict[str, Any]] = [{"what": "server_start", "seconds": time.perf_counter() - start}]
    try:
        with server_client(server.url) as http:
            for tokens, mode, logprobs, level in variants:
                sampling = replace(trainer_sampling, max_new_tokens=tokens)
                for repeat in range(-1, args.repeats):  # -1: warm-up
                    prompts = batches[done % len(batches)]
                    done += 1
                    if level:
                        cycle(http, level)
                    bodies = routes[mode][1](prompts, args.n, sampling, logprobs, 1000 * repeat)
                    start = time.perf_counter()
                    try:
                        generated = post_all(http, routes[mode][0], bodies)
                    except httpx.HTTPStatusError as exc:  # e.g. a route this vLLM release hides
                        rows.append({"what": "error", "mode": mode, "error": str(exc).splitlines()[0]})
                        print(json.dumps(rows[-1]), flush=True)
                        break
                    seconds = time.perf_counter() - start
                    if repeat < 0:
                        continue
                    rows.append(
                        {
                            "what": "rollout",
                            "mode": mode,
                            "server": "tokenizer" if args.with_tokenizer else "tokens-only",
                            "logprobs": logprobs,
                            "prompts": len(prompts),
                            "fresh_prompts": args.fresh_prompts,
                            "sleep_level": level,
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
                            "n": args.n,
                            "max_tokens": tokens,
                            "repeat": repeat,
                            "seconds": seconds,
                            "generated_tokens": generated,
                            "tokens_per_s": generated / seconds,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
