PLOTS = "results/plots/{suite}"


rule plot_curves:
    input:
        metrics=run_metrics,
        run_json=run_jsons,
    output:
        png=report(
            f"{PLOTS}/{{curve}}_curves.png",
            caption="../report/curves.rst",
            category="{suite}",
            subcategory="curves",
        ),
        svg=f"{PLOTS}/{{curve}}_curves.svg",
    log:
        "results/logs/plot_curves/{suite}_{curve}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        runs=run_keys,
        metric=lambda wc: CURVES[wc.curve][0],
        ylabel=lambda wc: CURVES[wc.curve][1],
    script:
        "../workflow/scripts/plot_curves.py"


rule plot_resources:
    input:
        "results/{suite}/summary.tsv",
    output:
        png=report(
            f"{PLOTS}/resources.png",
            caption="../report/resources.rst",
            category="{suite}",
            subcategory="resources",
        ),
        svg=f"{PLOTS}/resources.svg",
    log:
        "results/logs/plot_resources/{suite}.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/plot_resources.py"


rule plot_timings:
    input:
        "results/{suite}/summary.tsv",
    output:
        png=report(
            f"{PLOTS}/timings.png",
            caption="../report/timings.rst",
            category="{suite}",
            subcategory="timings",
        ),
        svg=f"{PLOTS}/timings.svg",
    log:
        "results/logs/plot_timings/{suite}.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/plot_timings.py"


rule plot_deltas:
    input:
        "results/{suite}/compare.tsv",
    output:
        png=report(
            f"{PLOTS}/deltas.png",
            caption="../report/deltas.rst",
            category="{suite}",
            subcategory="gate",
        ),
        svg=f"{PLOTS}/deltas.svg",
    log:
        "results/logs/plot_deltas/{suite}.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/plot_deltas.py"


rule plot_memory:
    input:
        "results/{suite}/summary.tsv",
    output:
        png=report(
            f"{PLOTS}/memory.png",
            caption="../report/memory.rst",
            category="{suite}",
            subcategory="resources",
        ),
        svg=f"{PLOTS}/memory.svg",
    log:
        "results/logs/plot_memory/{suite}.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/plot_memory.py"
