"""Rule parity: every run's step 1 -> parity.tsv (each case vs the suite's baseline with the same algo and seed)."""

from dsrl.analysis import tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
tasks.write_parity(
    smk.params.runs,
    smk.input.metrics,
    smk.input.run_json,
    smk.params.baseline,
    smk.params.device,
    smk.output[0],
)
