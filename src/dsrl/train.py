"""Per-rank entry point, launched by torchrun: `python -m dsrl.train [overrides]`.

The config is parsed and validated, and the launch checked against it, before the process group starts, so a typo
fails in a second, not after minutes of model loading on every rank. A failure is recorded here (run.json, one console
line from the first rank, every traceback under `<run_dir>/errors/`), a collective's timeout reworded to say what it
usually means.
"""

from __future__ import annotations

import atexit
import faulthandler
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from dsrl import atomic, failures
from dsrl.config import ConfigError, load_config, to_container

if TYPE_CHECKING:
    from dsrl.dist import Launch

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_PREEMPTED = 143


def resolve_device(kind: str) -> str:
    if kind != "auto":
        return kind
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # A rank killed by a native abort (SIGABRT/SIGSEGV in torch, gloo or DeepSpeed's C++) otherwise dies with one
    # line such as "terminate called without an active exception"; this prints every thread's Python stack first.
    faulthandler.enable()
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = load_config(argv)
        device = resolve_device(cfg.trainer.device)
        if device == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        cfg.trainer.device = device

        from dsrl import dist
        from dsrl.trainer import Preempted, Trainer

        launch = dist.launch_info(device)
        check_launch(cfg, launch)
    except ConfigError as exc:
        print(f"dsrl: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    dist.init(launch, float(cfg.trainer.dist_timeout))
    code = EXIT_OK
    trainer = None
    try:
        trainer = Trainer(cfg, launch)
        try:
            trainer.setup()
            trainer.fit()
        finally:
            trainer.close()
        trainer.finish()
        dist.barrier()  # no rank tears the process group down while a peer is still in a collective
        dist.destroy()
    except ConfigError as exc:
        if trainer is not None and trainer.fitting:
            trainer.record_failure(exc)
        code = EXIT_CONFIG if failures.report(cfg.trainer.run_dir, launch.rank, exc, "config error") else EXIT_FAILED
    except Preempted as exc:  # every rank stopped at the same step: tearing down is safe
        dist.destroy()
        if launch.is_main:
            print(f"dsrl: {exc}", file=sys.stderr)
        code = EXIT_PREEMPTED
    except Exception as exc:  # peers may be blocked in a collective: no teardown, exit_now closes the sockets
        fitting = trainer is not None and trainer.fitting
        error = explain_timeout(exc, cfg, trainer.last_step) if fitting else exc
        if fitting:
            trainer.record_failure(error)  # with the run's details
        if failures.report(cfg.trainer.run_dir, launch.rank, error) and not (trainer and trainer.ready):
            record_setup_failure(cfg, error)  # a failure before training still leaves a run.json that says so
        code = EXIT_FAILED
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: recorded, then left to propagate
        if trainer is not None and trainer.fitting:
            trainer.record_failure(exc)
        raise
    return code


def check_launch(cfg: DictConfig, launch: Launch) -> None:
    """trainer.nnodes * trainer.n_gpus_per_node must be the world torchrun started."""
    want = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    if want != launch.world_size:
        raise ConfigError(
            f"trainer.nnodes * trainer.n_gpus_per_node = {cfg.trainer.nnodes} * {cfg.trainer.n_gpus_per_node} = "
            f"{want}, but {launch.world_size} processes were launched (WORLD_SIZE); make them agree"
        )
    if launch.device.type == "cuda":
        import torch

        if launch.local_world_size > torch.cuda.device_count():
            raise ConfigError(
                f"{launch.local_world_size} processes per node but only {torch.cuda.device_count()} "
                "visible GPUs (CUDA_VISIBLE_DEVICES)"
            )


def explain_timeout(exc: BaseException, cfg: DictConfig, last_step: int) -> BaseException:
    """A collective that timed out says what that usually means: another rank is stuck or died."""
    text = str(exc).lower()
    if not (isinstance(exc, RuntimeError) and ("timed out" in text or "timeout" in text)):
        return exc
    error = RuntimeError(
        f"a collective waited longer than trainer.dist_timeout={cfg.trainer.dist_timeout}s after step "
        f"{last_step}: another rank is stuck or died ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    )
    error.__cause__ = exc
    return error


def record_setup_failure(cfg: DictConfig, exc: BaseException) -> None:
    """A failure before training (loading a model, encoding prompts) still leaves a run.json that says so."""
    info = {"status": "failed", "last_step": 0, "error": failures.summary(exc), "config": to_container(cfg)}
    atomic.write_json(Path(cfg.trainer.run_dir) / "run.json", info)


def exit_now(code: int) -> None:
    """Exit without interpreter finalization, after the atexit hooks (a vLLM server's stop, log flushing).

    Finalization destroys C++ objects whose threads may still run (gloo's workers after a failed collective, a
    library's static thread pool); one that needs the GIL then is killed mid-unwind, and libstdc++ aborts the rank
    with "terminate called without an active exception", turning a finished or cleanly failed run into a SIGABRT.
    """
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
