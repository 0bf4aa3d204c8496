"""Rule import_run: an external run's train.log -> metrics.parquet and a synthesized run.json."""

from dsrl.analysis import tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
tasks.import_log(smk.input[0], smk.params.steps, smk.output.metrics, smk.output.run_json)
