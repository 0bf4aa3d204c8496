"""Rule plot_deltas: compare.tsv -> the deltas figure (PNG and SVG)."""

from dsrl.analysis import tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
tasks.plot_deltas(smk.input[0], [smk.output.png, smk.output.svg])
