"""Rule plot_timings: summary.tsv -> the timings figure (PNG and SVG)."""

from dsrl.analysis import plots, tasks

smk = snakemake  # noqa: F821 (injected by the script directive)
tasks.log_to(smk.log[0])
plots.plot_timings(tasks.read_tsv(smk.input[0]), [smk.output.png, smk.output.svg])
