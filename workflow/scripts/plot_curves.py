"""Rule plot_curves: a metric's per-step curves per case (mean and min-max band across seeds)."""

from dsrl.analysis import tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
tasks.plot_curves(
    smk.params.runs,
    smk.input.metrics,
    smk.input.run_json,
    smk.params.metric,
    smk.params.ylabel,
    f"{smk.wildcards.suite}: {smk.wildcards.curve}",
    [smk.output.png, smk.output.svg],
)
