"""Rule overall: every suite's overall.tsv -> results/overall.tsv with a suite column."""

from dsrl.analysis import tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
tasks.write_combined_overall(dict(zip(smk.params.suites, smk.input, strict=True)), smk.output[0])
