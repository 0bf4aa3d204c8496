rule parse_run:
    input:
        f"{RUN_DIR}/metrics.jsonl",
    output:
        f"{RUN_DIR}/metrics.parquet",
    log:
        "results/logs/parse_run/{suite}/{algo}/{case}/seed{seed}.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/parse_run.py"


rule import_run:
    input:
        import_log,
    output:
        metrics="results/imports/{suite}/{algo}/{case}/seed{seed}/metrics.parquet",
        run_json="results/imports/{suite}/{algo}/{case}/seed{seed}/run.json",
    log:
        "results/logs/import_run/{suite}/{algo}/{case}/seed{seed}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        steps=lambda wc: suite_of(wc).steps,
    script:
        "../workflow/scripts/import_run.py"


rule summary:
    input:
        metrics=run_metrics,
        run_json=run_jsons,
    output:
        "results/{suite}/summary.tsv",
    log:
        "results/logs/summary/{suite}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        runs=run_keys,
        steps=lambda wc: suite_of(wc).steps,
    script:
        "../workflow/scripts/summary.py"


rule compare:
    input:
        "results/{suite}/summary.tsv",
    output:
        "results/{suite}/compare.tsv",
    log:
        "results/logs/compare/{suite}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        baseline=lambda wc: gate_of(wc)["baseline"],
        candidate=lambda wc: gate_of(wc)["candidate"],
        threshold=lambda wc: gate_of(wc).get("threshold", 0.02),
        metric=lambda wc: gate_of(wc).get("metric", "avg_score_tail5"),
    script:
        "../workflow/scripts/compare.py"


rule parity:
    input:
        metrics=run_metrics,
        run_json=run_jsons,
    output:
        report(
            "results/{suite}/parity.tsv",
            caption="../report/parity.rst",
            category="{suite}",
            subcategory="parity",
        ),
    log:
        "results/logs/parity/{suite}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        runs=run_keys,
        baseline=parity_baseline,
        device=PLAN.device,
    script:
        "../workflow/scripts/parity.py"


rule suite_overall:
    input:
        summary="results/{suite}/summary.tsv",
        compare=compare_input,
    output:
        "results/{suite}/overall.tsv",
    log:
        "results/logs/suite_overall/{suite}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        steps=lambda wc: suite_of(wc).steps,
        gate=lambda wc: dict(suite_of(wc).gate or {}),
    script:
        "../workflow/scripts/suite_overall.py"


rule overall:
    input:
        expand("results/{suite}/overall.tsv", suite=PLAN.active),
    output:
        "results/overall.tsv",
    log:
        "results/logs/overall.log",
    conda:
        "../envs/analysis.yaml"
    params:
        suites=PLAN.active,
    script:
        "../workflow/scripts/overall.py"
