# dsrl benchmark workflow: GSM8K data -> DeepSpeed PPO/GRPO runs per (suite, algo, case, seed) -> per-suite
# summary/compare/overall tables and plots -> results/overall.tsv.
#   snakemake -c2                                   # CPU default (config/config.yaml)
#   snakemake --profile profiles/local-gpu          # one multi-GPU machine (config/gpu.yaml)
#   snakemake --report report.html                  # after a run: plots with captions
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/analysis.smk"
include: "rules/plots.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
    localrule: True
