"""Torch-free helpers for the Snakefile: the run matrix, trainer command lines and per-job GPU leases.

The Snakefile stays declarative; everything that can be wrong in a config is checked here, once, when the DAG
is built, so a typo fails in a second instead of after an hour in the queue.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsrl.analysis.imports import discover_runs
from dsrl.config import ConfigError, load_config
from dsrl.preflight import Launch, run_checks

RESULTS = Path("results")
DATA_DIR = RESULTS / "data"
# results/<name>/ folders the workflow uses itself; a suite with one of these names would collide with them.
RESERVED_SUITE_NAMES = {"data", "runs", "imports", "plots", "logs"}
# Keys the workflow sets per job; setting them in config overrides would silently lose to the workflow.
WORKFLOW_KEYS = {
    "trainer.run_dir": "the run directory is results/runs/<suite>/<algo>/<case>/seed<seed>",
    "trainer.experiment_name": "the experiment name is the case name",
    "trainer.seed": "use suites.<suite>.seeds",
    "trainer.total_training_steps": "use suites.<suite>.steps",
    "trainer.n_gpus_per_node": "use processes_per_job",
    "trainer.nnodes": "runs are single-node",
    "trainer.device": "use device",
    "data.train_files": "use data.source",
    "data.val_files": "use data.source",
}


@dataclass(frozen=True)
class Run:
    """One training run (or one imported external run) of a suite."""

    suite: str
    algo: str
    case: str
    seed: int
    log: Path | None = None  # set for imported runs: their console log outside results/

    @property
    def folder(self) -> Path:
        top = "imports" if self.log else "runs"
        return RESULTS / top / self.suite / self.algo / self.case / f"seed{self.seed}"

    @property
    def metrics(self) -> str:
        return str(self.folder / "metrics.parquet")

    @property
    def run_json(self) -> str:
        return str(self.folder / "run.json")

    @property
    def key(self) -> dict[str, Any]:
        return {"case": self.case, "algo": self.algo, "seed": self.seed}


@dataclass
class Suite:
    name: str
    steps: int
    runs: list[Run]
    gate: Mapping[str, Any] | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def imported(self) -> bool:
        return any(run.log for run in self.runs)


def format_value(value: Any) -> str:
    """Render a YAML value as a verl/Hydra override value (True, null, [a,b])."""
    if isinstance(value, bool):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def case_overrides(case: Mapping[str, Any]) -> dict[str, Any]:
    """ZeRO stage / offload overrides for both actor and critic (param offload: VERL_ENABLE_PARAM_OFFLOAD)."""
    out: dict[str, Any] = {}
    for section in ("actor_rollout_ref.actor.deepspeed", "critic.deepspeed_config"):
        out[f"{section}.zero_stage"] = case["zero_stage"]
        out[f"{section}.offload"] = case.get("offload", "none")
        if case.get("param_offload", False):
            out[f"{section}.param_offload"] = True
    return out | dict(case.get("overrides") or {})


def _check_not_workflow_keys(where: str, overrides: Mapping[str, Any]) -> None:
    for key in overrides:
        if key in WORKFLOW_KEYS:
            raise ConfigError(f"{where}: {key} is set by the workflow for every run ({WORKFLOW_KEYS[key]})")


def _unique(where: str, values: Sequence[Any]) -> None:
    dupes = sorted({v for v in values if list(values).count(v) > 1}, key=str)
    if dupes:
        raise ConfigError(f"{where} lists {dupes} more than once")


def _known(where: str, names: Sequence[str], valid: Mapping[str, Any] | Sequence[str]) -> None:
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"{where}: unknown name(s) {unknown} (valid: {', '.join(valid)})")


def _check_gate(where: str, gate: Mapping[str, Any] | None, cases: Sequence[str]) -> None:
    if gate:
        for role in ("baseline", "candidate"):
            if gate[role] not in cases:
                raise ConfigError(f"{where}.gate.{role}={gate[role]!r} is not one of the suite's cases {list(cases)}")


def _check_source(source: str, workdir: Path) -> None:
    path = (workdir / source).expanduser()
    if path.is_dir():
        missing = [f for f in ("train.jsonl", "test.jsonl") if not (path / f).is_file()]
        if missing:
            raise ConfigError(f"data.source={source!r} is a folder without {missing}")
    elif source.startswith(("/", ".", "~")):
        raise ConfigError(f"data.source={source!r} does not exist (use synthetic, a GSM8K folder or a hub id)")


def trainer_executable(config: Mapping[str, Any], workdir: Path) -> str:
    """The ``trainer_command`` as run: a path is checked and made absolute, a bare name is left to PATH."""
    command = str(config["trainer_command"])
    if "/" not in command:
        return command
    path = (workdir / command).expanduser()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ConfigError(
            f"trainer_command={command!r}: {path} is not an executable file; point it at the trainer "
            "environment's dsrl (e.g. .venv-train/bin/dsrl), or to 'dsrl' with "
            "--software-deployment-method conda"
        )
    return str(path.resolve())


class Plan:
    """The validated run matrix of a workflow config, and the command line of each training run."""

    def __init__(self, config: Mapping[str, Any], workdir: Path | str = ".") -> None:
        workdir = Path(workdir)
        self.config = config
        self.trainer = trainer_executable(config, workdir)
        _check_source(str(config["data"]["source"]), workdir)
        _check_not_workflow_keys("trainer_overrides", config["trainer_overrides"])
        for algo, overrides in config["algorithms"].items():
            _check_not_workflow_keys(f"algorithms.{algo}", overrides)
        for case, spec in config["cases"].items():
            _check_not_workflow_keys(f"cases.{case}", case_overrides(spec))
        self.suites: dict[str, Suite] = {}
        for name, spec in config["suites"].items():
            self.suites[name] = self._suite(name, spec)
        for name, spec in (config.get("imports") or {}).items():
            if name in self.suites:
                raise ConfigError(f"imports.{name}: a suite of that name already exists in suites")
            self.suites[name] = self._imported(name, spec, workdir)
        for name in self.suites:
            if name in RESERVED_SUITE_NAMES:
                raise ConfigError(f"suite name {name!r} is reserved (results/{name}/ is used by the workflow)")
        _known("run_suites", config["run_suites"], config["suites"])
        _unique("run_suites", config["run_suites"])
        self.active = [*config["run_suites"], *(config.get("imports") or {})]
        self._check_trainer_configs()

    def _suite(self, name: str, spec: Mapping[str, Any]) -> Suite:
        where = f"suites.{name}"
        for key, valid in (("cases", self.config["cases"]), ("algos", self.config["algorithms"])):
            _known(f"{where}.{key}", spec[key], valid)
            _unique(f"{where}.{key}", spec[key])
        _unique(f"{where}.seeds", spec["seeds"])
        _check_gate(where, spec.get("gate"), spec["cases"])
        _check_not_workflow_keys(f"{where}.overrides", spec.get("overrides") or {})
        runs = [
            Run(name, algo, case, int(seed))
            for algo in spec["algos"]
            for case in spec["cases"]
            for seed in spec["seeds"]
        ]
        return Suite(name, int(spec["steps"]), runs, spec.get("gate"), spec.get("overrides") or {})

    def _imported(self, name: str, spec: Mapping[str, Any], workdir: Path) -> Suite:
        try:
            found = discover_runs(workdir / spec["path"])
        except FileNotFoundError as exc:
            raise ConfigError(f"imports.{name}.path: {exc}") from exc
        runs = [
            Run(name, spec["algo"], r.case, spec["seed"] if r.seed is None else r.seed, r.log.resolve()) for r in found
        ]
        _unique(f"imports.{name} (case, seed) pairs", [(r.case, r.seed) for r in runs])
        _check_gate(f"imports.{name}", spec.get("gate"), sorted({r.case for r in runs}))
        return Suite(name, int(spec["steps"]), runs, spec.get("gate"))

    def _check_trainer_configs(self) -> None:
        """Build each distinct trainer config once with dsrl's loader and the launcher's preflight config checks
        (batch plan for processes_per_job, model paths, reward function): a bad config fails the DAG."""
        for suite in self.suites.values():
            if suite.imported:
                continue
            for algo, case in sorted({(r.algo, r.case) for r in suite.runs}):
                run = next(r for r in suite.runs if (r.algo, r.case) == (algo, case))
                try:
                    run_checks(load_config(self.overrides(run), environ={}), Launch(self.processes), machine=False)
                except ConfigError as exc:
                    raise ConfigError(f"suite {suite.name}, algo {algo}, case {case}: {exc}") from exc

    def suite(self, name: str) -> Suite:
        if name not in self.suites:
            raise ConfigError(f"unknown suite {name!r} (valid: {', '.join(self.suites)})")
        return self.suites[name]

    def run(self, suite: str, algo: str, case: str, seed: int | str) -> Run:
        wanted = Run(suite, algo, case, int(seed))
        if wanted not in self.suite(suite).runs:
            raise ConfigError(f"{wanted.folder} is not a run of suite {suite!r} in the config")
        return wanted

    def all_runs(self) -> list[Run]:
        return [run for suite in self.suites.values() for run in suite.runs]

    def train_runs(self) -> list[Run]:
        return [run for run in self.all_runs() if run.log is None]

    @property
    def device(self) -> str:
        return str(self.config["device"])

    @property
    def processes(self) -> int:
        return int(self.config["processes_per_job"])

    @property
    def gpus_per_job(self) -> int:
        return self.processes if self.device == "cuda" else 0

    def overrides(self, run: Run) -> list[str]:
        """Trainer overrides, later groups winning: shared, algorithm, suite, case, then the per-run keys."""
        suite = self.suite(run.suite)
        merged: dict[str, Any] = {
            **self.config["trainer_overrides"],
            **self.config["algorithms"][run.algo],
            **suite.overrides,
            **case_overrides(self.config["cases"][run.case]),
            "trainer.run_dir": str(RESULTS / "runs" / run.suite / run.algo / run.case / f"seed{run.seed}"),
            "trainer.experiment_name": run.case,
            "trainer.seed": run.seed,
            "trainer.total_training_steps": suite.steps,
            "trainer.n_gpus_per_node": self.processes,
            "trainer.nnodes": 1,
            "trainer.device": self.device,
            "data.train_files": str(DATA_DIR / "train.parquet"),
            "data.val_files": str(DATA_DIR / "test.parquet"),
        }
        return [f"{key}={format_value(value)}" for key, value in merged.items()]

    def train_argv(self, run: Run) -> list[str]:
        """The full command of one run, behind a GPU lease when ``gpu_slots`` shares one machine's GPUs."""
        argv = [self.trainer, "train", "--nproc-per-node", str(self.processes), *self.overrides(run)]
        slots = int(self.config.get("gpu_slots") or 0)
        if slots and self.gpus_per_job:
            lease = [sys.executable, "-m", "dsrl.workflow_support", "gpu-run"]
            argv = [*lease, "--slots", str(slots), "--count", str(self.gpus_per_job), "--", *argv]
        return argv

    def train_shell(self, run: Run) -> str:
        return shlex.join(self.train_argv(run))


def default_lock_dir() -> Path:
    """Machine-wide per user: GPUs are shared by every workflow a user runs on the host."""
    return Path(tempfile.gettempdir()) / f"dsrl-gpu-slots-{os.getuid()}"


def check_gpus_for_local_jobs(device: str, local_exec: bool, dryrun: bool, visible: int, needed: int) -> None:
    """A GPU config run by the local executor on a machine without GPUs fails here, before any job starts.

    Cluster executors (the slurm profile) place jobs on GPU nodes, and dry runs start nothing, so both pass.
    """
    if device != "cuda" or not local_exec or dryrun:
        return
    if visible < needed:
        raise ConfigError(
            f"device=cuda needs {needed} GPU(s) per training job but this machine shows {visible} "
            "(CUDA_VISIBLE_DEVICES / nvidia-smi); submit to GPU nodes with --profile slurm, or run the GPU config "
            "on a GPU machine (profiles/local-gpu)"
        )


def slot_devices(slots: int, environ: Mapping[str, str] | None = None) -> list[str]:
    """Device ids of the slots: the first ``slots`` of an inherited CUDA_VISIBLE_DEVICES, else 0..slots-1."""
    environ = os.environ if environ is None else environ
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible:
        if len(visible) < slots:
            raise ValueError(f"gpu_slots={slots} but CUDA_VISIBLE_DEVICES lists only {visible}")
        return [d.strip() for d in visible[:slots]]
    return [str(i) for i in range(slots)]


def _try_lock(path: Path, stack: ExitStack) -> bool:
    """Lock ``path`` without waiting; on success the handle (and so the lock) lives as long as ``stack``."""
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    stack.enter_context(handle)
    return True


@contextmanager
def lease_gpus(
    count: int,
    devices: Sequence[str],
    lock_dir: Path | None = None,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> Iterator[list[str]]:
    """Hold ``count`` of ``devices`` exclusively until the block ends.

    Each device is an flock'ed file; the kernel drops the lock when the holder exits, so a crashed job never
    leaves a GPU leased. A pool lock makes picking all ``count`` devices atomic, so two jobs cannot each grab
    half of what they need and wait on each other.
    """
    if not 1 <= count <= len(devices):
        raise ValueError(f"cannot lease {count} GPU(s) from {len(devices)} slot(s) {list(devices)}")
    lock_dir = lock_dir or default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        stack = ExitStack()
        held: list[str] = []
        with (lock_dir / "pool.lock").open("w") as pool:
            fcntl.flock(pool, fcntl.LOCK_EX)
            for device in devices:
                if len(held) < count and _try_lock(lock_dir / f"gpu{device}.lock", stack):
                    held.append(device)
        if len(held) == count:
            break
        stack.close()
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no {count} free GPU(s) among {list(devices)} within {timeout_s}s")
        time.sleep(poll_s)
    with stack:
        yield held


def gpu_run(argv: Sequence[str] | None = None) -> int:
    """``python -m dsrl.workflow_support gpu-run --slots N --count K -- cmd ...``: cmd on K leased GPUs."""
    parser = argparse.ArgumentParser(prog="python -m dsrl.workflow_support gpu-run")
    parser.add_argument("--slots", type=int, required=True, help="GPUs on this machine the workflow may use")
    parser.add_argument("--count", type=int, required=True, help="GPUs this job needs")
    parser.add_argument("--lock-dir", type=Path, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    with lease_gpus(args.count, slot_devices(args.slots), args.lock_dir) as leased:
        visible = ",".join(leased)
        print(f"[dsrl gpu-run] CUDA_VISIBLE_DEVICES={visible}", file=sys.stderr, flush=True)
        return subprocess.call(command, env={**os.environ, "CUDA_VISIBLE_DEVICES": visible})


if __name__ == "__main__":
    if sys.argv[1:2] != ["gpu-run"]:
        sys.exit("usage: python -m dsrl.workflow_support gpu-run --slots N --count K -- command ...")
    sys.exit(gpu_run(sys.argv[2:]))
