# Figures per suite (PNG for the report, SVG for papers): seconds of matplotlib on the submit host.


rule plot_curves:
    input:
        metrics=get_run_metrics,
        run_json=get_run_jsons,
    output:
        png=report(
            paths.plot("{curve}_curves", "png"),
            caption="../report/curves.rst",
            category="{suite}",
            subcategory="curves",
        ),
        svg=paths.plot("{curve}_curves", "svg"),
    log:
        paths.log("plot_curves", "{suite}_{curve}"),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        runs=get_run_keys,
        metric=lambda wc: CURVES[wc.curve][0],
        ylabel=lambda wc: CURVES[wc.curve][1],
    script:
        "../workflow/scripts/plot_curves.py"


rule plot_resources:
    input:
        paths.SUMMARY,
    output:
        png=report(
            paths.plot("resources", "png"),
            caption="../report/resources.rst",
            category="{suite}",
            subcategory="resources",
        ),
        svg=paths.plot("resources", "svg"),
    log:
        paths.log("plot_resources", "{suite}"),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/plot_resources.py"


rule plot_timings:
    input:
        paths.SUMMARY,
    output:
        png=report(
            paths.plot("timings", "png"),
            caption="../report/timings.rst",
            category="{suite}",
            subcategory="timings",
        ),
        svg=paths.plot("timings", "svg"),
    log:
        paths.log("plot_timings", "{suite}"),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/plot_timings.py"


rule plot_deltas:
    input:
        paths.COMPARE,
    output:
        png=report(
            paths.plot("deltas", "png"),
            caption="../report/deltas.rst",
            category="{suite}",
            subcategory="gate",
        ),
        svg=paths.plot("deltas", "svg"),
    log:
        paths.log("plot_deltas", "{suite}"),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/plot_deltas.py"


rule plot_memory:
    input:
        paths.SUMMARY,
    output:
        png=report(
            paths.plot("memory", "png"),
            caption="../report/memory.rst",
            category="{suite}",
            subcategory="resources",
        ),
        svg=paths.plot("memory", "svg"),
    log:
        paths.log("plot_memory", "{suite}"),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/plot_memory.py"
