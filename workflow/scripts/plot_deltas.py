"""Rule plot_deltas: compare.tsv -> the deltas figure (PNG and SVG)."""

from dsrl.analysis import plots, tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
plots.plot_deltas(tasks.read_tsv(smk.input[0]), [smk.output.png, smk.output.svg])
