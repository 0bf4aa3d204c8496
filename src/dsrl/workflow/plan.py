"""The validated run matrix of a workflow config: suites, their runs, and each run's trainer overrides.

Built once when the DAG is built (rules/common.smk); every check that can fail a config runs here or in `checks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsrl.analysis.imports import discover_runs
from dsrl.config import ConfigError, load_config
from dsrl.preflight import Launch, run_checks
from dsrl.workflow import checks, paths
from dsrl.workflow.commands import format_value


@dataclass(frozen=True)
class Run:
    """One training run (or one imported external run) of a suite."""

    suite: str
    algo: str
    case: str
    seed: int
    log: Path | None = None  # set for imported runs: their console log outside results/

    def _path(self, trained: str, imported: str) -> str:
        pattern = imported if self.log else trained
        return pattern.format(suite=self.suite, algo=self.algo, case=self.case, seed=self.seed)

    @property
    def folder(self) -> str:
        return self._path(paths.RUN_DIR, paths.IMPORT_DIR)

    @property
    def metrics(self) -> str:
        return self._path(paths.RUN_METRICS, paths.IMPORT_METRICS)

    @property
    def run_json(self) -> str:
        return self._path(paths.RUN_JSON, paths.IMPORT_RUN_JSON)

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


def case_overrides(case: Mapping[str, Any]) -> dict[str, Any]:
    """ZeRO stage / offload overrides for both actor and critic (param offload: VERL_ENABLE_PARAM_OFFLOAD)."""
    out: dict[str, Any] = {}
    for section in ("actor_rollout_ref.actor.deepspeed", "critic.deepspeed_config"):
        out[f"{section}.zero_stage"] = case["zero_stage"]
        out[f"{section}.offload"] = case.get("offload", "none")
        if case.get("param_offload", False):
            out[f"{section}.param_offload"] = True
    return out | dict(case.get("overrides") or {})


class Plan:
    """The validated run matrix of a workflow config, and the trainer overrides of each training run."""

    def __init__(self, config: Mapping[str, Any], workdir: Path | str = ".") -> None:
        workdir = Path(workdir)
        self.config = config
        self.trainer = checks.trainer_executable(config, workdir)
        checks.data_source(str(config["data"]["source"]), workdir)
        checks.not_workflow_keys("trainer_overrides", config["trainer_overrides"])
        for algo, overrides in config["algorithms"].items():
            checks.not_workflow_keys(f"algorithms.{algo}", overrides)
        for case, spec in config["cases"].items():
            checks.not_workflow_keys(f"cases.{case}", case_overrides(spec))
        self.suites: dict[str, Suite] = {}
        for name, spec in config["suites"].items():
            self.suites[name] = self._suite(name, spec)
        for name, spec in (config.get("imports") or {}).items():
            if name in self.suites:
                raise ConfigError(f"imports.{name}: a suite of that name already exists in suites")
            self.suites[name] = self._imported(name, spec, workdir)
        checks.suite_names(list(self.suites))
        checks.known("run_suites", config["run_suites"], config["suites"])
        checks.unique("run_suites", config["run_suites"])
        self.active = [*config["run_suites"], *(config.get("imports") or {})]
        self._check_trainer_configs()

    def _suite(self, name: str, spec: Mapping[str, Any]) -> Suite:
        where = f"suites.{name}"
        for key, valid in (("cases", self.config["cases"]), ("algos", self.config["algorithms"])):
            checks.known(f"{where}.{key}", spec[key], valid)
            checks.unique(f"{where}.{key}", spec[key])
        checks.unique(f"{where}.seeds", spec["seeds"])
        checks.gate(where, spec.get("gate"), spec["cases"])
        checks.not_workflow_keys(f"{where}.overrides", spec.get("overrides") or {})
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
        checks.unique(f"imports.{name} (case, seed) pairs", [(r.case, r.seed) for r in runs])
        checks.gate(f"imports.{name}", spec.get("gate"), sorted({r.case for r in runs}))
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

    @property
    def gpu_slots(self) -> int:
        return int(self.config.get("gpu_slots") or 0)

    def overrides(self, run: Run) -> list[str]:
        """Trainer overrides, later groups winning: shared, algorithm, suite, case, then the per-run keys."""
        suite = self.suite(run.suite)
        merged: dict[str, Any] = {
            **self.config["trainer_overrides"],
            **self.config["algorithms"][run.algo],
            **suite.overrides,
            **case_overrides(self.config["cases"][run.case]),
            "trainer.run_dir": run.folder,
            "trainer.experiment_name": run.case,
            "trainer.seed": run.seed,
            "trainer.total_training_steps": suite.steps,
            "trainer.n_gpus_per_node": self.processes,
            "trainer.nnodes": 1,
            "trainer.device": self.device,
            "data.train_files": paths.TRAIN_DATA,
            "data.val_files": paths.TEST_DATA,
        }
        return [f"{key}={format_value(value)}" for key, value in merged.items()]
