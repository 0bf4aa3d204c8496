"""Rule parse_run: the run's metrics.jsonl -> metrics.parquet."""

from pathlib import Path

from dsrl.analysis import tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
tasks.parse_run(Path(smk.input[0]).parent, smk.output[0])
