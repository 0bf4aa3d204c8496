"""Every check that needs no process group, run by `dsrl train` before torchrun and by the workflow at DAG time.

A mistake found here costs a second and one `dsrl: config error: ...` line naming the key or file; found inside the
ranks it costs a torchrun start, every rank's traceback and gloo's "Connection closed by peer". Two groups:

- `CONFIG_CHECKS` depend on the config and the launch's world size only (batch plan, model paths, reward function,
  resume path): the workflow runs them for every run before submitting a job.
- `MACHINE_CHECKS` depend on the machine that launches (its GPUs, data files, writable run directory, installed
  packages): `dsrl train` runs them too. A new check (a logger's package, say) is one more function in a tuple.

Torch-free: importing this module and running every check except the vLLM head-size one stays well under a second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig, OmegaConf

from dsrl.batching import plan_batches
from dsrl.config import ConfigError, use_critic

# A hub id is `name` or `owner/name` (huggingface_hub's rule, without importing it).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]{0,95}(/[\w.\-]{1,96})?")


@dataclass(frozen=True)
class Launch:
    """What torchrun will start: processes on this node and the number of nodes."""

    nproc_per_node: int
    nnodes: int = 1

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


Check = Callable[[DictConfig, Launch], None]


def visible_gpus() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists (0 without it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    return 0 if shutil.which("nvidia-smi") is None else _count_nvidia_smi()


def _count_nvidia_smi() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return len([line for line in out.stdout.splitlines() if line.startswith("GPU ")])


# ---------------------------------------------------------------- config checks
def check_batches(cfg: DictConfig, launch: Launch) -> None:
    """verl's batch semantics for this world size: divisibility, micro batch sizes, token budgets."""
    plan_batches(cfg, launch.world_size)


def _model_dir(key: str, path: str) -> Path | None:
    """The local directory a model setting names (None for a hub id or a random preset); fails if it is not one.

    A tokenizer folder may lack config.json, so for `*.tokenizer_path` the folder only has to exist.
    """
    from dsrl.models import PRESETS, RANDOM_PREFIX

    if path.startswith(RANDOM_PREFIX):
        if path[len(RANDOM_PREFIX) :] not in PRESETS:
            valid = ", ".join(RANDOM_PREFIX + name for name in PRESETS)
            raise ConfigError(f"{key}={path}: unknown random model preset (valid: {valid})")
        return None
    local = Path(path).expanduser()
    if not local.exists() and not path.startswith(("/", ".", "~")) and _HUB_ID.fullmatch(path):
        return None  # a hub id: transformers resolves (and, offline, fails on) it inside the ranks
    if not local.is_dir() or (not key.endswith("tokenizer_path") and not (local / "config.json").is_file()):
        what = "does not exist" if not local.exists() else f"has no config.json ({local} is not a HF model folder)"
        raise ConfigError(
            f"{key}={path} {what}; use a local Hugging Face model directory, a hub id, or random:<preset>"
        )
    return local


def model_paths(cfg: DictConfig) -> dict[str, str]:
    """The model settings the run loads: actor (and its tokenizer), critic when there is one."""
    arr = cfg.actor_rollout_ref
    paths = {"actor_rollout_ref.model.path": arr.model.path}
    if arr.model.tokenizer_path:
        paths["actor_rollout_ref.model.tokenizer_path"] = arr.model.tokenizer_path
    if use_critic(cfg):
        paths["critic.model.path"] = cfg.critic.model.path
        if cfg.critic.model.tokenizer_path:
            paths["critic.model.tokenizer_path"] = cfg.critic.model.tokenizer_path
    return {key: str(value) for key, value in paths.items()}


def check_models(cfg: DictConfig, launch: Launch) -> None:
    for key, path in model_paths(cfg).items():
        _model_dir(key, path)


def check_reward_function(cfg: DictConfig, launch: Launch) -> None:
    """Import the custom reward function as the ranks will (verl's driver does the same)."""
    crf = cfg.custom_reward_function
    if not crf.path:
        return
    from dsrl.reward import load_custom_reward_fn

    try:
        load_custom_reward_fn(str(crf.path), str(crf.name))
    except Exception as exc:  # the user's file: any import error is theirs to fix
        raise ConfigError(f"custom_reward_function.path={crf.path}: {type(exc).__name__}: {exc}") from exc


def check_resume_path(cfg: DictConfig, launch: Launch) -> None:
    t = cfg.trainer
    if t.resume_mode == "resume_path" and not Path(str(t.resume_from_path)).expanduser().is_dir():
        raise ConfigError(
            f"trainer.resume_from_path={t.resume_from_path} is not a directory; name a "
            f"<default_local_dir>/global_step_N checkpoint, or use trainer.resume_mode=auto"
        )


def check_rollout_layout(cfg: DictConfig, launch: Launch) -> None:
    """rollout.name=vllm on GPUs: each server takes a whole group of tensor_model_parallel_size GPUs of one node."""
    rollout = cfg.actor_rollout_ref.rollout
    if rollout.name == "vllm" and str(cfg.trainer.device) == "cuda":
        from dsrl.rollout.server_layout import server_groups

        server_groups(launch.world_size, launch.nproc_per_node, int(rollout.tensor_model_parallel_size), "cuda")


CONFIG_CHECKS: tuple[Check, ...] = (
    check_batches,
    check_models,
    check_reward_function,
    check_resume_path,
    check_rollout_layout,
)


# ---------------------------------------------------------------- machine checks
def resolved_device(cfg: DictConfig, gpus: int) -> str:
    """The device the ranks will use (`trainer.device=auto`: cuda when this machine shows a GPU)."""
    device = str(cfg.trainer.device)
    return ("cuda" if gpus else "cpu") if device == "auto" else device


def check_device(cfg: DictConfig, launch: Launch) -> None:
    if str(cfg.trainer.device) != "cuda":
        return
    gpus = visible_gpus()
    if gpus < launch.nproc_per_node:
        raise ConfigError(
            f"trainer.device=cuda with {launch.nproc_per_node} process(es) per node, but this machine shows {gpus} "
            "GPU(s) (CUDA_VISIBLE_DEVICES / nvidia-smi); lower --nproc-per-node, or use trainer.device=cpu"
        )


def check_data_files(cfg: DictConfig, launch: Launch) -> None:
    """Train (and, when validation runs, val) parquet files exist, carry verl's columns and enough rows."""
    from dsrl.data import as_list, prompt_file_rows

    keys = ["data.train_files"]
    if cfg.trainer.test_freq > 0 or cfg.trainer.val_before_train:
        keys.append("data.val_files")
    for key in keys:
        rows = 0
        for file in as_list(OmegaConf.select(cfg, key)):
            try:
                rows += prompt_file_rows(file)
            except (FileNotFoundError, ValueError) as exc:
                raise ConfigError(f"{key}: {exc}") from exc
        batch = int(cfg.data.train_batch_size)
        if key == "data.train_files" and rows and rows < batch:
            raise ConfigError(f"data.train_batch_size={batch} is larger than the {rows} rows of data.train_files")


def writable_dir(key: str, path: Path) -> None:
    """Create `path` (as the ranks would) and write a probe file into it; os.access would say yes to root."""
    try:
        path.expanduser().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.expanduser()):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{key}={path}: cannot create or write this directory ({exc.strerror}: {exc.filename})"
        ) from exc


def check_output_dirs(cfg: DictConfig, launch: Launch) -> None:
    """The run directory, the checkpoint directory (when saving) and an NVMe offload folder are writable.

    Last of the checks: it creates the directories, which a run that fails an earlier check never does.
    """
    t = cfg.trainer
    dirs = {"trainer.run_dir": t.run_dir}
    if t.save_freq > 0 or t.save_on_preempt:
        dirs["trainer.default_local_dir"] = t.default_local_dir
    for section in ("actor_rollout_ref.actor.deepspeed", "critic.deepspeed_config"):
        ds = OmegaConf.select(cfg, section)
        if ds.offload == "nvme" and ds.nvme_path:
            dirs[f"{section}.nvme_path"] = ds.nvme_path
    for key, value in dirs.items():
        writable_dir(key, Path(str(value)))


def _model_shape(key: str, path: str) -> SimpleNamespace | None:
    """The HF config of a local model or random preset, read without transformers (None for a hub id)."""
    from dsrl.models import PRESETS, RANDOM_PREFIX

    if path.startswith(RANDOM_PREFIX):
        return SimpleNamespace(**PRESETS[path[len(RANDOM_PREFIX) :]].config)
    local = _model_dir(key, path)
    return None if local is None else SimpleNamespace(**json.loads((local / "config.json").read_text()))


def check_vllm(cfg: DictConfig, launch: Launch) -> None:
    """rollout.name=vllm: a vLLM with dsrl's weight-transfer API is installed here, and on CPU its attention has a
    kernel for the model's head size."""
    if cfg.actor_rollout_ref.rollout.name != "vllm":
        return
    from dsrl.rollout.vllm_server import check_vllm_version

    device = resolved_device(cfg, visible_gpus())
    check_vllm_version(device)
    if device != "cpu":
        return
    key = "actor_rollout_ref.model.path"
    shape = _model_shape(key, str(cfg.actor_rollout_ref.model.path))
    if shape is not None:
        from dsrl.rollout.vllm_server import check_cpu_head_dim

        check_cpu_head_dim(shape, str(cfg.actor_rollout_ref.model.path))


def check_loggers(cfg: DictConfig, launch: Launch) -> None:
    """Every backend in trainer.logger has its library installed here."""
    from dsrl.loggers import check_packages, logger_names

    check_packages(logger_names(cfg.trainer.logger))


MACHINE_CHECKS: tuple[Check, ...] = (check_device, check_data_files, check_vllm, check_loggers, check_output_dirs)


def run_checks(cfg: DictConfig, launch: Launch, *, machine: bool = True) -> None:
    """Raise the first ConfigError; `machine=False` for the workflow, whose jobs run elsewhere and later."""
    for check in CONFIG_CHECKS + (MACHINE_CHECKS if machine else ()):
        check(cfg, launch)
