"""Every path the workflow writes, spelled once: rules, the run matrix and the trainer overrides all use these.

Patterns carry Snakemake wildcards (`{suite}`, `{algo}`, `{case}`, `{seed}`); `str.format` fills them outside rules.
"""

from __future__ import annotations

RESULTS = "results"
DATA = f"{RESULTS}/data"
TRAIN_DATA = f"{DATA}/train.parquet"
TEST_DATA = f"{DATA}/test.parquet"

# One run of a suite: trained by dsrl (runs/) or imported from an external log (imports/).
RUN_KEY = "{suite}/{algo}/{case}/seed{seed}"
RUN_DIR = f"{RESULTS}/runs/{RUN_KEY}"
RUN_METRICS_JSONL = f"{RUN_DIR}/metrics.jsonl"
RUN_JSON = f"{RUN_DIR}/run.json"
RUN_LOG = f"{RUN_DIR}/train.log"
RUN_METRICS = f"{RUN_DIR}/metrics.parquet"
IMPORT_DIR = f"{RESULTS}/imports/{RUN_KEY}"
IMPORT_METRICS = f"{IMPORT_DIR}/metrics.parquet"
IMPORT_RUN_JSON = f"{IMPORT_DIR}/run.json"

# Per suite, then across suites.
SUITE_DIR = f"{RESULTS}/{{suite}}"
SUMMARY = f"{SUITE_DIR}/summary.tsv"
COMPARE = f"{SUITE_DIR}/compare.tsv"
PARITY = f"{SUITE_DIR}/parity.tsv"
SUITE_OVERALL = f"{SUITE_DIR}/overall.tsv"
OVERALL = f"{RESULTS}/overall.tsv"

PLOTS = f"{RESULTS}/plots/{{suite}}"
LOGS = f"{RESULTS}/logs"

# results/<name>/ folders of the workflow's own; a suite with one of these names would collide with them.
RESERVED_SUITE_NAMES = frozenset(p.split("/")[1] for p in (DATA, RUN_DIR, IMPORT_DIR, PLOTS, LOGS))


def plot(name: str, ext: str) -> str:
    """A suite's figure (`name` may hold wildcards, e.g. `{curve}_curves`)."""
    return f"{PLOTS}/{name}.{ext}"


def log(rule: str, key: str = "") -> str:
    """A rule's log: `results/logs/<rule>/<key>.log`, or `results/logs/<rule>.log` for a single job."""
    return f"{LOGS}/{rule}/{key}.log" if key else f"{LOGS}/{rule}.log"
