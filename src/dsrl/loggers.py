"""verl's `trainer.logger` backends: console, file, tensorboard, wandb, mlflow, each through its own library.

Rank 0 logs the same metric names as `metrics.jsonl` (mlflow, whose names cannot hold '@', gets verl's `_at_`).
verl's environment knobs keep working (`TENSORBOARD_DIR`, `VERL_FILE_LOGGER_PATH` / `VERL_FILE_LOGGER_ROOT`,
`WANDB_*`, `MLFLOW_TRACKING_URI`); without them everything lands in the run directory (`tensorboard/`, `wandb/`,
`mlflow.db`, `<project>/<experiment>.jsonl`). A resumed run continues the same wandb / mlflow run (their ids are
kept in `<run_dir>/loggers.json`) and tensorboard hides the events after the checkpoint. Each library is imported
only when its backend starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from dsrl.atomic import write_json
from dsrl.config import ConfigError, to_container
from dsrl.metrics import MetricsWriter, console_line

# backend -> (module it imports, the pip package that provides it); console and file need nothing extra.
PACKAGES: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow-skinny"),
}
IDS_FILE = "loggers.json"


def logger_names(value: Any) -> list[str]:
    """`trainer.logger` as a list: verl accepts one name or a list."""
    return [value] if isinstance(value, str) else [str(v) for v in value]


def check_packages(names: Iterable[str]) -> None:
    """Fail before any process starts when a chosen backend's library is not installed, naming the package."""
    missing = [
        (name, pip) for name in names for mod, pip in [PACKAGES.get(name, ("", ""))] if mod and not _importable(mod)
    ]
    if missing:
        what = ", ".join(f"trainer.logger={name} needs the {pip!r} package" for name, pip in missing)
        pips = " ".join(pip for _, pip in missing)
        raise ConfigError(f"{what}; install it into the trainer environment (pip install {pips})")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class Backend(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class Console:
    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        print(console_line(step, metrics), flush=True)

    def close(self) -> None:
        pass


class File:
    """verl's file logger: one `{"step": N, "data": {...}}` line per step."""

    def __init__(self, path: Path, start: int):
        self._writer = MetricsWriter(path, truncate_after_step=start if start else None, nest=True)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._writer.write(step, metrics)

    def close(self) -> None:
        self._writer.close()


class Tensorboard:
    def __init__(self, log_dir: Path, start: int):
        from torch.utils.tensorboard import SummaryWriter

        # Events at or after purge_step from an earlier, interrupted attempt are hidden: a resumed run's curves
        # show what was recomputed after the checkpoint, a fresh run in the same directory starts clean.
        self._writer = SummaryWriter(str(log_dir), purge_step=start + 1 if start else 0)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in _numbers(metrics).items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class Wandb:
    def __init__(self, project: str, experiment: str, run_dir: Path, config: dict, run_id: str | None):
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            name=experiment,
            config=config,
            dir=os.environ.get("WANDB_DIR", str(run_dir)),
            id=run_id,
            resume="allow" if run_id else None,
        )
        self.run_id = self.run.id

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        # wandb keeps steps monotonic: after a resume, steps it already holds are not overwritten.
        if step >= self.run.step:
            self.run.log(_numbers(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class Mlflow:
    def __init__(self, project: str, experiment: str, run_dir: Path, config: dict, run_id: str | None):
        import mlflow

        self._mlflow = mlflow
        # verl's default store is SQLite too; mlflow's directory store cannot hold both `timing_s/gen` and
        # `timing_s/gen/gather_params` (one would be a file and a folder).
        default = f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or default)
        if run_id:
            self.run = mlflow.start_run(run_id=run_id)
        else:
            exp = mlflow.set_experiment(project)  # verl: the project is mlflow's experiment, the run is named
            self.run = mlflow.start_run(experiment_id=exp.experiment_id, run_name=experiment)
            mlflow.log_params(_flatten(config))
        self.run_id = self.run.info.run_id

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in _numbers(metrics).items()}, step=step)

    def close(self) -> None:
        self._mlflow.end_run()


def _flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """A config as mlflow params: `a/b/c` keys (verl's separator), values as text within mlflow's length limit."""
    if isinstance(tree, Mapping):
        out: dict[str, str] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(tree)[:6000] if not isinstance(tree, str) else tree[:6000]}


def file_logger_path(run_dir: Path, project: str, experiment: str) -> Path:
    """verl's location: `VERL_FILE_LOGGER_PATH`, else `<VERL_FILE_LOGGER_ROOT>/<project>/<experiment>.jsonl`."""
    explicit = os.environ.get("VERL_FILE_LOGGER_PATH")
    if explicit:
        return Path(explicit)
    root = Path(os.path.expanduser(os.environ.get("VERL_FILE_LOGGER_ROOT", str(run_dir))))
    return root / project / f"{experiment}.jsonl"


class Tracking:
    """All chosen backends of one run, on rank 0; `start` is the last step a resumed run restored (0 when fresh)."""

    def __init__(self, names: Iterable[str], *, project: str, experiment: str, run_dir: Path, config: dict, start: int):
        names = list(dict.fromkeys(names))
        check_packages(names)
        ids_path = run_dir / IDS_FILE
        ids: dict[str, str] = json.loads(ids_path.read_text()) if start and ids_path.exists() else {}
        self.backends: dict[str, Backend] = {}
        for name in names:
            if name == "console":
                self.backends[name] = Console()
            elif name == "file":
                self.backends[name] = File(file_logger_path(run_dir, project, experiment), start)
            elif name == "tensorboard":
                log_dir = Path(os.environ.get("TENSORBOARD_DIR") or run_dir / "tensorboard")
                self.backends[name] = Tensorboard(log_dir, start)
            elif name == "wandb":
                self.backends[name] = Wandb(project, experiment, run_dir, config, ids.get(name))
            elif name == "mlflow":
                self.backends[name] = Mlflow(project, experiment, run_dir, config, ids.get(name))
        new_ids = {n: b.run_id for n, b in self.backends.items() if isinstance(b, Wandb | Mlflow)}
        if new_ids:
            write_json(ids_path, new_ids)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for backend in self.backends.values():
            backend.log(step, metrics)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()


def start_tracking(cfg: Any, run_dir: Path, start: int, is_main: bool, reduce: Any) -> Tracking | None:
    """Rank 0 starts the `trainer.logger` backends; every rank learns whether that worked, so none hangs.

    `reduce` is dsrl.dist.all_reduce_scalars (a collective: every rank calls this).
    """
    tracking, error = None, None
    if is_main:
        try:
            tracking = Tracking(
                logger_names(cfg.trainer.logger),
                project=str(cfg.trainer.project_name),
                experiment=str(cfg.trainer.experiment_name),
                run_dir=run_dir,
                config=to_container(cfg),
                start=start,
            )
        except Exception as exc:
            error = exc
    if reduce([float(error is not None)], "max")[0]:
        if error is not None:
            raise error
        raise RuntimeError("rank 0 could not start the trainer.logger backends (see its log)")
    return tracking
