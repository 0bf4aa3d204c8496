"""Rule plot_memory: summary.tsv -> predicted vs measured memory per case (PNG and SVG)."""

from dsrl.analysis import tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
tasks.plot_memory(smk.input[0], [smk.output.png, smk.output.svg])
