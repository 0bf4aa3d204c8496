"""Rule suite_overall: summary.tsv (+ compare.tsv for a gated suite) -> the suite's overall.tsv."""

from dsrl.analysis import tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
gate = smk.params.gate
tasks.write_overall(
    smk.input.summary,
    smk.params.steps,
    smk.output[0],
    compare_tsv=smk.input.compare or None,
    threshold=gate.get("threshold", 0.02),
    metric=gate.get("metric", "avg_score_tail5"),
)
