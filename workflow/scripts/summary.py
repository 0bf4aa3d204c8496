"""Rule summary: every run of a suite -> summary.tsv."""

from dsrl.analysis import tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
tasks.write_summary(smk.params.runs, smk.input.metrics, smk.input.run_json, smk.params.steps, smk.output[0])
