#!/usr/bin/env bash
# dsrl vs TRL's GRPOTrainer on the lent 2 x H200 device (no network there); one device call runs:
#
#   bash benchmarks/vs_trl/device.sh BUDGET_S CASE...         # carry [".device", ".vs-trl"] (+ ".vllm-bundle/p2")
#
# .device/ comes from benchmarks/prepare_device.sh (DeepSpeed, GSM8K), .vs-trl/ from
# benchmarks/vs_trl/prepare_wheels.sh (TRL, datasets). For vLLM cases, the vLLM bundle's first two parts go first,
# one call each (bash .vllm-bundle/p0/collect.sh, then p1), and this call carries .vllm-bundle/p2 too: it unpacks
# vLLM into /tmp/site before anything else. A later call of the same lease (warm machine) reuses /tmp: the installed
# wheels, the model and data in /tmp/vs_trl, DeepSpeed's compiled ops. Results of this call: $OUT/results.jsonl
# (one line per run), $OUT/logs.tar.gz, $OUT/session.log, $OUT/device.txt.
set -uo pipefail
start=$(date +%s)
budget=$1
shift
if [ -d .vllm-bundle/p2 ] && [ ! -f /tmp/site/vllm/__init__.py ]; then bash .vllm-bundle/p2/collect.sh || exit 1; fi
source .device/setup.sh || exit 1
if [ ! -f /tmp/site/.vs-trl-ready ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .vs-trl/wheels/*.whl && touch /tmp/site/.vs-trl-ready || { echo "TRL wheels failed to install" >&2; exit 1; }
fi
[ -f .device/state/ext.tar.gz ] && [ ! -d /tmp/torch_extensions ] && tar xzf .device/state/ext.tar.gz -C /tmp
export HF_HUB_OFFLINE=1 DSRL_CACHE_DIR=/tmp/dsrl-cache VLLM_USE_FLASHINFER_SAMPLER=0
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c 'import importlib.metadata as m
for p in ("torch", "transformers", "accelerate", "deepspeed", "trl", "datasets", "pyarrow", "fsspec", "vllm"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, "not installed")'
    python3 -c 'import trl, datasets; print("trl and datasets import")'
} 2>&1 | tee "$OUT/device.txt"
left=$((budget - ($(date +%s) - start)))
python3 benchmarks/vs_trl/run.py --out "$OUT" --work /tmp/vs_trl --budget "$left" "$@" 2>&1 | tee "$OUT/session.log"
rc=${PIPESTATUS[0]}
echo "vs_trl exit $rc after $(($(date +%s) - start))s"
exit "$rc"
