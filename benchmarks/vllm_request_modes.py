"""Where a dsrl vLLM server's rollout time goes: the same prompts sent the ways the HTTP API allows.

One server started as the trainer starts it (`dsrl.rollout.vllm_server`: `--tokens-only`, the rollout knobs of
`--config`'s trainer_overrides plus any `key=value` overrides), dummy weights, one GPU (or the CPU); with
`--with-tokenizer` the same server with its tokenizer, as dsrl ran it before. For each response length and each
mode, one warm-up and `--repeats` timed rollouts of `--prompts` prompts x n:

- `generate`: `/inference/v1/generate`, vLLM's token-in/token-out route, `detokenize: false` (what dsrl sends);
- `completions`: `/v1/completions`, one request per prompt with its own seed (what dsrl sent before; needs
  `--with-tokenizer`);
- `completions_batch`: one `/v1/completions` request carrying every prompt (one seed for all of them; needs
  `--with-tokenizer`).

each with and without the sampled tokens' log-probs. One JSON line per timed rollout to stdout and `--out`.

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
from pathlib import Path
from typing import Any

import httpx
import yaml
from transformers import AutoTokenizer

from dsrl.config import load_config
from dsrl.data import encode_prompts, read_prompts
from dsrl.models import resolve_model_path
from dsrl.rollout.server_layout import server_groups
from dsrl.rollout.vllm_server import GENERATE, SERVED_NAME, VLLMServer, free_port, server_args, server_env
from dsrl.workflow.commands import format_value


def overrides_from(config: Path | None, extra: list[str]) -> list[str]:
    """The workflow config's trainer_overrides as `key=value` strings, then the command line's."""
    pairs: list[str] = []
    if config is not None:
        for key, value in (yaml.safe_load(config.read_text()).get("trainer_overrides") or {}).items():
            pairs.append(f"{key}={format_value(value)}")
    return pairs + extra


def completion_body(prompt: list[int] | list[list[int]], n: int, tokens: int, logprobs: bool, seed: int) -> dict:
    """A `/v1/completions` request as dsrl sent it before the token-in/token-out route."""
    body: dict[str, Any] = {
        "model": SERVED_NAME,
        "prompt": prompt,
        "n": n,
        "max_tokens": tokens,
        "temperature": 1.0,
        "seed": seed,
        "return_token_ids": True,
        "skip_special_tokens": False,
    }
    if logprobs:
        body.update(logprobs=0, return_tokens_as_token_ids=True)
    return body


def generate_body(prompt: list[int], n: int, tokens: int, logprobs: bool, seed: int) -> dict:
    """An `/inference/v1/generate` request as dsrl sends it (`vllm_rollout`)."""
    params: dict[str, Any] = {
        "n": n,
        "max_tokens": tokens,
        "temperature": 1.0,
        "seed": seed,
        "detokenize": False,
        "skip_special_tokens": False,
        "output_kind": 2,  # FINAL_ONLY: all n samples in one answer
    }
    if logprobs:
        params["logprobs"] = 0
    return {"token_ids": prompt, "sampling_params": params}


def per_prompt(route: str, make_body: Callable[..., dict]) -> Callable[..., int]:
    """One request per prompt, all in flight at once, each with its own seed range (as the trainer sends them)."""

    def run(http: httpx.Client, prompts: list[list[int]], n: int, tokens: int, logprobs: bool, seed: int) -> int:
        def one(i: int) -> list[dict[str, Any]]:
            resp = http.post(route, json=make_body(prompts[i], n, tokens, logprobs, seed + i * n))
            resp.raise_for_status()
            return resp.json()["choices"]

        with ThreadPoolExecutor(len(prompts)) as pool:
            return sum(len(c["token_ids"]) for choices in pool.map(one, range(len(prompts))) for c in choices)

    return run


def completions_batch(
    http: httpx.Client, prompts: list[list[int]], n: int, tokens: int, logprobs: bool, seed: int
) -> int:
    resp = http.post("/v1/completions", json=completion_body(prompts, n, tokens, logprobs, seed))
    resp.raise_for_status()
    return sum(len(c["token_ids"]) for c in resp.json()["choices"])


MODES = {
    "completions": per_prompt("/v1/completions", completion_body),
    "generate": per_prompt(GENERATE, generate_body),
    "completions_batch": completions_batch,
}


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
    ap.add_argument("--modes", nargs="+", default=["generate"], choices=list(MODES))
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
    rollouts = len(args.tokens) * len(args.modes) * 2 * (args.repeats + 1) if args.fresh_prompts else 1
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
        with httpx.Client(base_url=server.url, timeout=None) as http:
            for tokens in args.tokens:
                for mode in args.modes:
                    for logprobs in (True, False):
                        for repeat in range(-1, args.repeats):  # -1: warm-up
                            prompts = batches[done % len(batches)]
                            done += 1
                            start = time.perf_counter()
                            try:
                                generated = MODES[mode](http, prompts, args.n, tokens, logprobs, seed=1000 * repeat)
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
