# Config validation, the run matrix and input functions. The checks live in dsrl.workflow_support (unit tested
# without Snakemake); a bad config stops here, before any job is scheduled.
import re
import sys
from pathlib import Path

from snakemake.utils import validate

from dsrl.preflight import visible_gpus
from dsrl.workflow_support import Plan, check_gpus_for_local_jobs

validate(config, schema="../config/schema/config.schema.yaml")

PLAN = Plan(config, workdir=Path.cwd())


# The executor is known only once the workflow starts (not while this file is parsed).
onstart:
    check_gpus_for_local_jobs(
        PLAN.device,
        workflow.local_exec,
        workflow.dryrun,
        visible_gpus() if PLAN.device == "cuda" else 0,
        PLAN.gpus_per_job,
    )


# The bin folder of the environment running Snakemake: its dsrl works without activating it (a conda env's
# dsrl, earlier on PATH, still wins).
WORKFLOW_BIN = Path(sys.executable).parent


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


def suite_of(wildcards):
    return PLAN.suite(wildcards.suite)


def run_metrics(wildcards):
    return [run.metrics for run in suite_of(wildcards).runs]


def run_jsons(wildcards):
    return [run.run_json for run in suite_of(wildcards).runs]


def run_keys(wildcards):
    return [run.key for run in suite_of(wildcards).runs]


def gate_of(wildcards):
    gate = suite_of(wildcards).gate
    if not gate:
        raise ValueError(
            f"suite {wildcards.suite} has no gate (baseline/candidate) in the config"
        )
    return gate


def parity_baseline(wildcards):
    """The case every other case's first step is compared with: the gate's baseline, else the suite's first case."""
    suite = suite_of(wildcards)
    return suite.gate["baseline"] if suite.gate else suite.runs[0].case


def compare_input(wildcards):
    """A suite's overall.tsv includes the gate rows only when the suite has a gate."""
    return f"results/{wildcards.suite}/compare.tsv" if suite_of(wildcards).gate else []


def import_log(wildcards):
    run = next(
        (
            r
            for r in suite_of(wildcards).runs
            if (r.algo, r.case, str(r.seed))
            == (wildcards.algo, wildcards.case, wildcards.seed)
        ),
        None,
    )
    if run is None or run.log is None:
        raise ValueError(f"no imported run {wildcards} in imports.{wildcards.suite}")
    return str(run.log)


def suite_plots(suite):
    plots = [f"results/plots/{suite.name}/{curve}_curves.png" for curve in CURVES]
    plots += [
        f"results/plots/{suite.name}/{kind}.png"
        for kind in ("resources", "memory", "timings")
    ]
    if suite.gate:
        plots.append(f"results/plots/{suite.name}/deltas.png")
    return plots


def final_outputs():
    outputs = ["results/overall.tsv"]
    for name in PLAN.active:
        outputs += suite_plots(PLAN.suite(name))
        outputs.append(f"results/{name}/parity.tsv")
    return outputs


def data_inputs(wildcards):
    """A GSM8K folder source is an input, so replacing its files reruns data preparation."""
    source = Path(config["data"]["source"]).expanduser()
    return (
        [str(source / "train.jsonl"), str(source / "test.jsonl")]
        if source.is_dir()
        else []
    )
