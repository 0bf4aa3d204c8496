# One DeepSpeed run per (suite, algo, case, seed). A failed run exits non-zero, so Snakemake removes its
# outputs (train.log is kept): nothing downstream reads it, --keep-going lets the other runs finish, and the
# same command later reruns only the failed ones.


rule train:
    input:
        train=paths.TRAIN_DATA,
        test=paths.TEST_DATA,
    output:
        metrics=paths.RUN_METRICS_JSONL,
        run_json=paths.RUN_JSON,
    log:
        paths.RUN_LOG,
    conda:
        TRAIN_ENV
    threads: PLAN.processes
    resources:
        runtime=config["train_resources"]["runtime"],
        mem_mb=config["train_resources"]["mem_mb"],
        gpu=PLAN.gpus_per_job,
        cpus_per_gpu=(
            config["train_resources"]["cpus_per_gpu"] if PLAN.gpus_per_job else 0
        ),
        nodes=1,
        tasks=1,
    params:
        lease=get_gpu_lease,
        trainer=PLAN.trainer,
        nproc=PLAN.processes,
        overrides=get_train_overrides,
    shell:
        "{params.lease}{params.trainer:q} train --nproc-per-node {params.nproc} {params.overrides} 2>&1 | tee {log}"
