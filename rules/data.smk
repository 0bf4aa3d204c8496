# GSM8K (synthetic, a folder of jsonl files, or a hub id) -> verl's parquet schema, once for every run.


rule prepare_data:
    input:
        get_data_sources,
    output:
        train=paths.TRAIN_DATA,
        test=paths.TEST_DATA,
    log:
        paths.log("prepare_data"),
    conda:
        "../envs/analysis.yaml"
    resources:
        runtime=30,
        mem_mb=4000,
    params:
        source=config["data"]["source"],
        sizes=get_data_sizes,
        seed=config["data"]["seed"],
        out_dir=lambda wildcards, output: Path(output.train).parent,
        bin=WORKFLOW_BIN,
    shell:
        'export PATH="$PATH:{params.bin}"; '
        "dsrl prepare-data --source {params.source:q} --out-dir {params.out_dir:q} {params.sizes}"
        " --seed {params.seed} > {log} 2>&1"
