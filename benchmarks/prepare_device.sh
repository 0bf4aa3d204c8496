#!/usr/bin/env bash
# Build the ignored .device/ folder that benchmarks/gpu_suites.sh needs on the lent device machine (no network
# there): DeepSpeed + its missing deps (../shared/device/prepare.sh), OmegaConf, Snakemake 9 and the packages it
# needs that the device image lacks (pinned to the workflow environment's versions), and a copy of GSM8K.
#
#   bash benchmarks/prepare_device.sh [GSM8K_DIR]      # default ../shared/data/gsm8k
set -euo pipefail
gsm8k=${1:-../shared/data/gsm8k}
../shared/device/prepare.sh omegaconf==2.4.0 \
    snakemake==9.27.1 snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0 \
    snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0 \
    snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1 \
    argparse-dataclass==2.0.0 conda-inject==1.3.2 configargparse==1.9.0 docutils==0.22.4 dpath==2.2.0 \
    fastjsonschema==2.22.3 gitdb==4.0.12 gitpython==3.2.1 greenlet==3.5.6 humanfriendly==10.0 immutables==0.21 \
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 jupyter-core==5.9.1 nbformat==5.11.1 \
    platformdirs==4.14.7 pulp==3.3.2 referencing==0.37.0 rpds-py==2026.9.1 smart-open==7.7.1 smmap==5.0.3 \
    sqlalchemy==2.0.58 sqlmodel==0.0.37 tenacity==9.2.1 throttler==1.2.3 traitlets==5.16.1 yte==1.9.4 attrs==26.1.0
# connection-pool is published as an sdist only; a pure-Python wheel builds here
python3 -m pip wheel -q --no-deps -w .device/wheels connection-pool==0.0.3
mkdir -p .device/gsm8k
cp "$gsm8k"/train.jsonl "$gsm8k"/test.jsonl .device/gsm8k/
du -sh .device
