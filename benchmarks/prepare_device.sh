#!/usr/bin/env bash
# Build the ignored .device/ folder that benchmarks/gpu_suites.sh needs on the lent device machine (no network
# there): DeepSpeed + its missing deps (../shared/device/prepare.sh), OmegaConf, Snakemake 9 and the packages it
# needs that the device image lacks, at the versions pinned in requirements/workflow.txt, and a copy of GSM8K.
#
#   bash benchmarks/prepare_device.sh [GSM8K_DIR]      # default ../shared/data/gsm8k
set -euo pipefail
gsm8k=${1:-../shared/data/gsm8k}
# connection-pool is published as an sdist only: a pure-Python wheel is built below instead of downloaded
names="omegaconf snakemake snakemake-interface-common snakemake-interface-executor-plugins
  snakemake-interface-logger-plugins snakemake-interface-report-plugins snakemake-interface-scheduler-plugins
  snakemake-interface-storage-plugins argparse-dataclass conda-inject configargparse docutils dpath fastjsonschema
  gitdb gitpython greenlet humanfriendly immutables jsonschema jsonschema-specifications jupyter-core nbformat
  platformdirs pulp referencing rpds-py smart-open smmap sqlalchemy sqlmodel tenacity throttler traitlets yte attrs"
pin() {  # the requirements/workflow.txt line of package $1 (names compare case- and -/_-insensitively)
    local want line
    want=$(echo "$1" | tr 'A-Z_' 'a-z-')
    while IFS= read -r line; do
        [ "$(echo "${line%%==*}" | tr 'A-Z_' 'a-z-')" = "$want" ] && { echo "$line"; return; }
    done <requirements/workflow.txt
    echo "benchmarks/prepare_device.sh: $1 is not pinned in requirements/workflow.txt" >&2
    return 1
}
pins=()
for name in $names; do pins+=("$(pin "$name")"); done
../shared/device/prepare.sh "${pins[@]}"
python3 -m pip wheel -q --no-deps -w .device/wheels "$(pin connection-pool)"
# pulp carries CBC solver binaries for five platforms (16 MiB); the device is x86-64 Linux. The smaller bundle
# rides in one call beside the last part of the vLLM bundle (../shared/device/vllm/), under the 64 MiB a call carries.
for w in .device/wheels/pulp-*.whl; do
    python3 ../shared/device/vllm/trim_wheel.py "$w" .device/trimmed pulp/solverdir/cbc/win pulp/solverdir/cbc/osx \
        pulp/solverdir/cbc/linux/i32 pulp/solverdir/cbc/linux/arm64
    mv .device/trimmed/"$(basename "$w")" "$w" && rmdir .device/trimmed
done
mkdir -p .device/gsm8k
cp "$gsm8k"/train.jsonl "$gsm8k"/test.jsonl .device/gsm8k/
du -sh .device
