#!/usr/bin/env bash
# The GPU suites of docs/benchmarks.md, run through the workflow's local multi-GPU profile on the lent device
# machine (2 x H200; no network, no deepspeed/snakemake installed). From the repository root, carrying .device:
#
#   bash benchmarks/gpu_suites.sh BUDGET_S [snakemake targets...]
#
# .device/ comes from benchmarks/prepare_device.sh (DeepSpeed, Snakemake and their missing deps as wheels, and a
# copy of GSM8K in .device/gsm8k). A previous call's state (.device/state/results.tar.gz: results/ and .snakemake/ with its
# metadata and incomplete markers; .device/state/ext.tar.gz: DeepSpeed's compiled ops) is restored first, so a
# later call runs only what is missing, as `snakemake` does on a cluster. The new state is written to $OUT.
set -uo pipefail
start=$(date +%s)
budget=$1
shift
source .device/setup.sh || exit 1
bin=/tmp/dsrl-bin
mkdir -p "$bin"
printf '#!/bin/sh\nexec python3 -m dsrl.cli "$@"\n' >"$bin/dsrl"
chmod +x "$bin/dsrl"
# vLLM (benchmarks/vllm_gpu_session.sh unpacked it into /tmp/site) is built without flashinfer's sampler.
export PATH="$bin:$PATH" HF_HUB_OFFLINE=1 DSRL_CACHE_DIR=/tmp/dsrl-cache VLLM_USE_FLASHINFER_SAMPLER=0
[ -f .device/state/results.tar.gz ] && tar xzf .device/state/results.tar.gz
[ -f .device/state/ext.tar.gz ] && tar xzf .device/state/ext.tar.gz -C /tmp
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
left=$((budget - ($(date +%s) - start) - 30))
echo "snakemake budget: ${left}s"
timeout -k 20 --signal=INT "$left" python3 -m snakemake --profile profiles/local-gpu \
    --configfile config/gpu.yaml profiles/local-gpu/gpu-slots.yaml benchmarks/gpu_suites.yaml \
    --config gpu_slots=2 "data={source: .device/gsm8k}" --resources gpu=2 --cores 32 "$@"
rc=$?
tar czf "$OUT/results.tar.gz" --exclude=.snakemake/locks results .snakemake
tar czf "$OUT/ext.tar.gz" -C /tmp torch_extensions
echo "snakemake exit $rc after $(($(date +%s) - start))s"
exit $rc
