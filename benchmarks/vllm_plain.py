"""Plain vLLM `LLM.generate` on the prompts a dsrl run samples from: the yardstick for dsrl's rollout phase.

The same model folder the trainer builds (`random:qwen3-0.6b` with the tokenizer trained on the run's train
parquet), the first prompts of that parquet chat-templated as the trainer does, n samples per prompt at
temperature 1, and the engine settings of config/gpu.yaml's rollout. dsrl seeds every request (so a resumed run
samples what a whole one did); vLLM then samples with per-request generators, so both are timed here: seeded for
every prompt count, unseeded for the largest. Each is timed `--repeats` times after one warm-up; one JSON line per
measurement goes to stdout and `--out`.

    python benchmarks/vllm_plain.py --train results/data/train.parquet --prompts 64 32 --n 4 --tokens 128 512
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers import AutoTokenizer
from vllm import LLM, SamplingParams

from dsrl.data import encode_prompts, read_prompts
from dsrl.models import resolve_model_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="the run's train parquet (dsrl prepare-data)")
    ap.add_argument("--model", default="random:qwen3-0.6b")
    ap.add_argument("--prompts", type=int, nargs="+", default=[64], help="prompt counts to time (x n sequences)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    model = str(resolve_model_path(args.model, corpus_files=[args.train]))
    tokenizer = AutoTokenizer.from_pretrained(model)
    ids, _ = encode_prompts(read_prompts(args.train)[: max(args.prompts)], tokenizer, args.max_model_len, True)
    start = time.perf_counter()
    llm = LLM(
        model=model,
        dtype="bfloat16",
        load_format="dummy",
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        seed=0,
    )
    rows = [{"what": "engine_start", "seconds": time.perf_counter() - start}]
    cases = [(count, True) for count in args.prompts] + [(max(args.prompts), False)]
    for tokens in args.tokens:
        for count, seeded in cases:
            sampling = SamplingParams(n=args.n, temperature=1.0, max_tokens=tokens, seed=0 if seeded else None)
            prompts = [{"prompt_token_ids": p} for p in ids[:count]]
            llm.generate(prompts, sampling, use_tqdm=False)  # warm-up
            for repeat in range(args.repeats):
                start = time.perf_counter()
                outs = llm.generate(prompts, sampling, use_tqdm=False)
                seconds = time.perf_counter() - start
                generated = sum(len(c.token_ids) for o in outs for c in o.outputs)
                rows.append(
                    {
                        "what": "generate",
                        "prompts": count,
                        "n": args.n,
                        "max_tokens": tokens,
                        "seeded": seeded,
                        "repeat": repeat,
                        "seconds": seconds,
                        "generated_tokens": generated,
                        "tokens_per_s": generated / seconds,
                    }
                )
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    print(lines, end="")
    if args.out:
        args.out.write_text(lines)


if __name__ == "__main__":
    main()
