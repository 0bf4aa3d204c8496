# Config validation, the run matrix and the get_* functions every rule's input and params use. The checks live in
# dsrl.workflow (unit tested without Snakemake); a bad config stops here, before any job is scheduled. Every result
# path is a pattern of dsrl.workflow.paths.
import re
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from dsrl.preflight import visible_gpus
from dsrl.workflow import checks, paths
from dsrl.workflow.commands import lease_argv
from dsrl.workflow.plan import Plan

validate(config, schema="../config/schema/config.schema.yaml")

PLAN = Plan(config, workdir=Path.cwd())


# The executor and the jobs to run are known only once the workflow starts (not while this file is parsed).
onstart:
    checks.gpus_for_local_jobs(
        PLAN.device,
        workflow.local_exec,
        workflow.dryrun,
        any(job.rule.name == "train" for job in workflow.dag.needrun_jobs()),
        visible_gpus() if PLAN.device == "cuda" else 0,
        PLAN.gpus_per_job,
    )


# The bin folder of the environment running Snakemake: its dsrl works without activating it (a conda env's
# dsrl, earlier on PATH, still wins).
WORKFLOW_BIN = Path(sys.executable).parent
# --software-deployment-method conda: one trainer environment per device (config `device`).
TRAIN_ENV = (
    "../envs/train-cuda.yaml" if config["device"] == "cuda" else "../envs/train.yaml"
)


def _alternatives(names):
    return "|".join(re.escape(str(n)) for n in sorted(set(names)))


wildcard_constraints:
    suite=_alternatives(PLAN.suites),
    algo=_alternatives(r.algo for r in PLAN.all_runs()),
    case=_alternatives(r.case for r in PLAN.all_runs()),
    seed=r"\d+",
    curve="score|throughput",


CURVES = {
    "score": ("critic/score/mean", "mean score"),
    "throughput": ("perf/throughput", "throughput (tokens/s/GPU)"),
}


def get_suite(wildcards):
    return PLAN.suite(wildcards.suite)


def get_steps(wildcards):
    return get_suite(wildcards).steps


def get_run_metrics(wildcards):
    return [run.metrics for run in get_suite(wildcards).runs]


def get_run_jsons(wildcards):
    return [run.run_json for run in get_suite(wildcards).runs]


def get_run_keys(wildcards):
    return [run.key for run in get_suite(wildcards).runs]


def get_gate(wildcards):
    gate = get_suite(wildcards).gate
    if not gate:
        raise ValueError(
            f"suite {wildcards.suite} has no gate (baseline/candidate) in the config"
        )
    return gate


def get_parity_baseline(wildcards):
    """The case every other case's first step is compared with: the gate's baseline, else the suite's first case."""
    suite = get_suite(wildcards)
    return suite.gate["baseline"] if suite.gate else suite.runs[0].case


def get_compare(wildcards):
    """A suite's overall.tsv includes the gate rows only when the suite has a gate."""
    return (
        paths.COMPARE.format(suite=wildcards.suite) if get_suite(wildcards).gate else []
    )


def get_import_log(wildcards):
    """The console log of an external run (imports: in the config), outside results/."""
    run = next(
        (
            r
            for r in get_suite(wildcards).runs
            if (r.algo, r.case, str(r.seed))
            == (wildcards.algo, wildcards.case, wildcards.seed)
        ),
        None,
    )
    if run is None or run.log is None:
        raise ValueError(f"no imported run {wildcards} in imports.{wildcards.suite}")
    return str(run.log)


def get_data_sources(wildcards):
    """A GSM8K folder source is an input, so replacing its files reruns data preparation."""
    source = Path(config["data"]["source"]).expanduser()
    return (
        [str(source / "train.jsonl"), str(source / "test.jsonl")]
        if source.is_dir()
        else []
    )


def get_data_sizes(wildcards):
    """`--train-size N --test-size N` for the sizes the config sets (unset: dsrl prepare-data's defaults)."""
    return " ".join(
        f"--{key.replace('_', '-')} {config['data'][key]}"
        for key in ("train_size", "test_size")
        if config["data"].get(key)
    )


def get_gpu_lease(wildcards):
    """The gpu-run prefix (with a trailing space) when jobs share one machine's GPUs (gpu_slots), else empty."""
    prefix = lease_argv(PLAN.gpu_slots, PLAN.gpus_per_job)
    return shlex.join(prefix) + " " if prefix else ""


def get_train_overrides(wildcards):
    run = PLAN.run(wildcards.suite, wildcards.algo, wildcards.case, wildcards.seed)
    return shlex.join(PLAN.overrides(run))


def suite_plots(suite):
    names = [f"{curve}_curves" for curve in CURVES]
    names += ["resources", "memory", "timings"] + (["deltas"] if suite.gate else [])
    return [paths.plot(name, "png").format(suite=suite.name) for name in names]


def final_outputs():
    outputs = [paths.OVERALL]
    for name in PLAN.active:
        outputs += suite_plots(PLAN.suite(name))
        outputs.append(paths.PARITY.format(suite=name))
    return outputs
