"""Rule compare: summary.tsv -> compare.tsv (candidate minus baseline per algo and seed, TOST per algo)."""

from dsrl.analysis import tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
tasks.write_compare(
    smk.input[0],
    smk.params.baseline,
    smk.params.candidate,
    smk.output[0],
    threshold=smk.params.threshold,
    metric=smk.params.metric,
)
