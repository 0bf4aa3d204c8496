#!/usr/bin/env bash
# The vLLM rollout figures of docs/benchmarks.md on the lent 2 x H200 device (no network there). First, here:
#   ../shared/device/vllm/build.sh && bash benchmarks/prepare_device.sh
# Then one device call per part of the vLLM bundle, back to back (the machine forgets /tmp 30 s after a call):
#   carry [".vllm-bundle/p0"]:            bash .vllm-bundle/p0/collect.sh
#   carry [".vllm-bundle/p1"]:            bash .vllm-bundle/p1/collect.sh
#   carry [".vllm-bundle/p2", ".device"]: bash benchmarks/vllm_gpu_session.sh 590 [snakemake targets...]
# This last call unpacks vLLM into /tmp/site, then measures, at once on the two GPUs:
#   GPU 1: plain vLLM `LLM.generate` on the prompts a run samples (benchmarks/vllm_plain.py -> plain_vllm.jsonl);
#   GPU 0: a dsrl server as the trainer starts it (benchmarks/vllm_request_modes.py), asked with the trainer's own
#          requests (other prompts every rollout, no sampler log-probs), back to back and after the trainer's
#          sleep/wake cycle: does the cycle explain why the trainer's requests ran slower than a lone server's?
# and spends what is left of the budget on the workflow's suites (benchmarks/gpu_suites.sh, the given targets).
# Later calls of the same lease continue the suites:
#   carry [".device"]:                    bash benchmarks/gpu_suites.sh 590 [targets]
set -uo pipefail
start=$(date +%s)
budget=$1
shift
if [ -d .vllm-bundle/p2 ]; then bash .vllm-bundle/p2/collect.sh || exit 1; fi
diag=/tmp/request-modes/out  # at most 8 files come back from $OUT: these travel as one tarball
mkdir -p $diag
(
    source .device/setup.sh >/dev/null || exit 1
    export HF_HUB_OFFLINE=1 DSRL_CACHE_DIR=/tmp/dsrl-cache VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
    data=/tmp/request-modes/data
    # the suites' sizes (benchmarks/gpu_suites.yaml): the same parquet, so the same model folder and tokenizer
    python3 -m dsrl.cli prepare-data --source .device/gsm8k --out-dir $data --train-size 2048 --test-size 64 || exit 1
    python3 -c "from dsrl.models import resolve_model_path as r; r('random:qwen3-0.6b', corpus_files=['$data/train.parquet'])"
    CUDA_VISIBLE_DEVICES=1 timeout -k 5 240 python3 benchmarks/vllm_plain.py --train $data/train.parquet \
        --prompts 32 64 --n 4 --tokens 128 512 --repeats 3 --out "$diag/plain_vllm.jsonl" >"$diag/plain_vllm.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=0 timeout -k 5 240 python3 benchmarks/vllm_request_modes.py --train $data/train.parquet \
        --config config/gpu.yaml --fresh-prompts --logprobs off --sleep-levels 0 1 --repeats 3 \
        --log "$diag/server-tokens-only.log" --out "$diag/request_modes_tokens_only.jsonl" trainer.device=cuda
    wait
) >"$diag/request_modes.log" 2>&1
tar czf "$OUT/request_modes.tar.gz" -C $diag .
echo "request modes and plain vLLM done after $(($(date +%s) - start))s"
tail -n 3 $diag/*.jsonl
[ -s $diag/request_modes_tokens_only.jsonl ] || { echo "the tokens-only server did not answer: no suites"; exit 1; }
[ $# -gt 0 ] && bash benchmarks/gpu_suites.sh $((budget - ($(date +%s) - start))) "$@"
