#!/usr/bin/env bash
# The update-phase breakdown of docs/benchmarks.md (issue 12) on the lent 2 x H200 device, from the repository root
# carrying .device (benchmarks/prepare_device.sh):
#
#   source .device/setup.sh && bash benchmarks/update_breakdown.sh BUDGET_S [update_breakdown.py args...]
#
# e.g. `bash benchmarks/update_breakdown.sh 300 --cases z12` (ZeRO-2 and ZeRO-1 x checkpointing x packing, chunked
# log-probs) and `bash benchmarks/update_breakdown.sh 420 --cases z3knobs` (ZeRO-3, DeepSpeed knobs) in a second call;
# without --cases all of them run, most important first, until the budget.
# Prompt lengths come from GSM8K's chat prompts (.device/gsm8k, as the workflow prepares them), else synthetic.
# Writes $OUT/update_breakdown.jsonl, .md (the table) and .log, and DeepSpeed's compiled ops ($OUT/ext.tar.gz, from
# and for .device/state/ext.tar.gz, as benchmarks/gpu_suites.sh does).
set -uo pipefail
start=$(date +%s)
budget=$1
shift
source .device/setup.sh >/dev/null || exit 1
export HF_HUB_OFFLINE=1 DSRL_CACHE_DIR=/tmp/dsrl-cache
[ -f .device/state/ext.tar.gz ] && tar xzf .device/state/ext.tar.gz -C /tmp
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
data=()
if [ -d .device/gsm8k ] && python3 -c "from dsrl.data_prep import prepare_gsm8k; prepare_gsm8k('.device/gsm8k', '/tmp/ub-data')"; then
    data=(--train-parquet /tmp/ub-data/train.parquet)
fi
left=$((budget - ($(date +%s) - start) - 25))
echo "update_breakdown budget: ${left}s"
timeout -k 10 "$((left + 15))" python3 -m torch.distributed.run --standalone --nproc-per-node 2 \
    benchmarks/update_breakdown.py --budget-s "$((left - 15))" "${data[@]}" --out "$OUT/update_breakdown.jsonl" "$@" \
    >"$OUT/update_breakdown.log" 2>&1
rc=$?
tail -n 40 "$OUT/update_breakdown.log"
[ -f "$OUT/update_breakdown.jsonl" ] && python3 benchmarks/update_breakdown.py --table "$OUT/update_breakdown.jsonl" \
    | tee "$OUT/update_breakdown.md"
[ -d /tmp/torch_extensions ] && tar czf "$OUT/ext.tar.gz" -C /tmp torch_extensions
echo "update_breakdown exit $rc after $(($(date +%s) - start))s"
exit $rc
