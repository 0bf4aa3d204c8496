#!/usr/bin/env bash
# Wheels for benchmarks/vs_trl on the lent device machine (no network there): TRL and the packages it needs that
# the device image lacks (datasets, dill, multiprocess; the image has accelerate 1.15, transformers 5.17,
# huggingface_hub 1.33, pandas, pyarrow, xxhash, ...). DeepSpeed and GSM8K come from benchmarks/prepare_device.sh
# (.device/), vLLM from ../shared/device/vllm/. Writes the ignored folder .vs-trl/wheels (~1.9 MiB).
#
#   bash benchmarks/vs_trl/prepare_wheels.sh
set -euo pipefail
# TRL 1.16.0: transformers>=4.56.2, accelerate>=1.10.1, datasets>=4.7.0, vLLM 0.22-0.31 (the device's 0.24.0 is in
# range). datasets 5.2.0: huggingface-hub>=1.31,<3 (the device has 1.33), dill<0.4.2, multiprocess<0.70.20.
pins=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
rm -rf .vs-trl/wheels
mkdir -p .vs-trl/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .vs-trl/wheels "${pins[@]}"
ls .vs-trl/wheels
du -sh .vs-trl
