# One DeepSpeed run per (suite, algo, case, seed). A failed run exits non-zero, so Snakemake removes its
# outputs (train.log is kept): nothing downstream reads it, --keep-going lets the other runs finish, and the
# same command later reruns only the failed ones.
RUN_DIR = "results/runs/{suite}/{algo}/{case}/seed{seed}"
# --software-deployment-method conda: one trainer environment per device (config `device`).
TRAIN_ENV = (
    "../envs/train-cuda.yaml" if config["device"] == "cuda" else "../envs/train.yaml"
)


rule train:
    input:
        train="results/data/train.parquet",
        test="results/data/test.parquet",
    output:
        metrics=f"{RUN_DIR}/metrics.jsonl",
        run_json=f"{RUN_DIR}/run.json",
    log:
        f"{RUN_DIR}/train.log",
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
        command=lambda wc: PLAN.train_shell(
            PLAN.run(wc.suite, wc.algo, wc.case, wc.seed)
        ),
    shell:
        "{params.command} 2>&1 | tee {log}"
