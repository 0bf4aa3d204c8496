# Per run -> per suite -> across suites: seconds of pandas on the submit host (localrule), each rule calling
# dsrl.analysis through one script.


rule parse_run:
    input:
        paths.RUN_METRICS_JSONL,
    output:
        paths.RUN_METRICS,
    log:
        paths.log("parse_run", paths.RUN_KEY),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/parse_run.py"


rule import_run:
    input:
        get_import_log,
    output:
        metrics=paths.IMPORT_METRICS,
        run_json=paths.IMPORT_RUN_JSON,
    log:
        paths.log("import_run", paths.RUN_KEY),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        steps=get_steps,
    script:
        "../workflow/scripts/import_run.py"


rule summary:
    input:
        metrics=get_run_metrics,
        run_json=get_run_jsons,
    output:
        paths.SUMMARY,
    log:
        paths.log("summary", "{suite}"),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        runs=get_run_keys,
        steps=get_steps,
    script:
        "../workflow/scripts/summary.py"


rule compare:
    input:
        paths.SUMMARY,
    output:
        paths.COMPARE,
    log:
        paths.log("compare", "{suite}"),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        baseline=lambda wc: get_gate(wc)["baseline"],
        candidate=lambda wc: get_gate(wc)["candidate"],
        threshold=lambda wc: get_gate(wc).get("threshold", 0.02),
        metric=lambda wc: get_gate(wc).get("metric", "avg_score_tail5"),
    script:
        "../workflow/scripts/compare.py"


rule parity:
    input:
        metrics=get_run_metrics,
        run_json=get_run_jsons,
    output:
        report(
            paths.PARITY,
            caption="../report/parity.rst",
            category="{suite}",
            subcategory="parity",
        ),
    log:
        paths.log("parity", "{suite}"),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        runs=get_run_keys,
        baseline=get_parity_baseline,
        device=PLAN.device,
    script:
        "../workflow/scripts/parity.py"


rule suite_overall:
    input:
        summary=paths.SUMMARY,
        compare=get_compare,
    output:
        paths.SUITE_OVERALL,
    log:
        paths.log("suite_overall", "{suite}"),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        steps=get_steps,
        gate=lambda wc: dict(get_suite(wc).gate or {}),
    script:
        "../workflow/scripts/suite_overall.py"


rule overall:
    input:
        expand(paths.SUITE_OVERALL, suite=PLAN.active),
    output:
        paths.OVERALL,
    log:
        paths.log("overall"),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        suites=PLAN.active,
    script:
        "../workflow/scripts/overall.py"
