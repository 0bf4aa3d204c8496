"""Torch-free Python behind the Snakefile, one module per lifetime.

`paths` (every result path pattern, once), `checks` (config errors found when the DAG is built), `plan` (the run
matrix and each run's trainer overrides), `commands` (how a job's shell command is spelled), `gpu_lease` (run
time: a job's exclusive GPUs on a shared machine).
"""
