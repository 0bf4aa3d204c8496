#!/usr/bin/env bash
# The vLLM rollout figures of docs/benchmarks.md on the lent 2 x H200 device (no network there). First, here:
#   ../shared/device/vllm/build.sh && bash benchmarks/prepare_device.sh
# Then one device call per part of the vLLM bundle, back to back (the machine forgets /tmp 30 s after a call):
#   carry [".vllm-bundle/p0"]:            bash .vllm-bundle/p0/collect.sh
#   carry [".vllm-bundle/p1"]:            bash .vllm-bundle/p1/collect.sh
#   carry [".vllm-bundle/p2", ".device"]: bash benchmarks/vllm_gpu_session.sh 580
# This last call unpacks vLLM into /tmp/site, runs the 512-token suite (the first vLLM run also pays vLLM's
# torch.compile, cached for the later ones) and plain vLLM `LLM.generate` on the same prompts
# (benchmarks/vllm_plain.py -> $OUT/plain_vllm.jsonl). Later calls of the same lease continue the suites:
#   carry [".device"]:                    bash benchmarks/gpu_suites.sh 580 [targets]
set -uo pipefail
start=$(date +%s)
budget=$1
if [ -d .vllm-bundle/p2 ]; then bash .vllm-bundle/p2/collect.sh || exit 1; fi
bash benchmarks/gpu_suites.sh $((budget - 150 - ($(date +%s) - start))) results/rollout512/summary.tsv
source .device/setup.sh >/dev/null
export HF_HUB_OFFLINE=1 DSRL_CACHE_DIR=/tmp/dsrl-cache VLLM_USE_FLASHINFER_SAMPLER=0
left=$((budget - ($(date +%s) - start) - 10))
if [ -f results/data/train.parquet ] && [ "$left" -gt 60 ]; then
    timeout -k 5 "$left" python3 benchmarks/vllm_plain.py --train results/data/train.parquet --prompts 64 32 \
        --n 4 --tokens 128 512 --out "$OUT/plain_vllm.jsonl" >"$OUT/plain_vllm.log" 2>&1
    echo "plain vLLM exit $? after $(($(date +%s) - start))s"
fi
