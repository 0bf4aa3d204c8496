rule prepare_data:
    input:
        data_inputs,
    output:
        train="results/data/train.parquet",
        test="results/data/test.parquet",
    log:
        "results/logs/prepare_data.log",
    conda:
        "../envs/analysis.yaml"
    resources:
        runtime=30,
        mem_mb=4000,
    params:
        source=config["data"]["source"],
        sizes=" ".join(
            f"--{key.replace('_', '-')} {config['data'][key]}"
            for key in ("train_size", "test_size")
            if config["data"].get(key)
        ),
        seed=config["data"]["seed"],
        out_dir=lambda wildcards, output: Path(output.train).parent,
        bin=WORKFLOW_BIN,
    shell:
        'export PATH="$PATH:{params.bin}"; '
        "dsrl prepare-data --source {params.source:q} --out-dir {params.out_dir:q} {params.sizes}"
        " --seed {params.seed} > {log} 2>&1"
