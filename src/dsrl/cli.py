"""The `dsrl` command: `dsrl train` (a torchrun launcher), `dsrl prepare-data` and `dsrl export`.

Importing this module needs no torch, so `dsrl prepare-data` also works in the workflow environment.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from dsrl.config import ConfigError, load_config, parse_override
from dsrl.preflight import Launch, run_checks, visible_gpus

# torchrun's multi-node rendezvous flags, passed through verbatim.
RDZV_FLAGS = (
    "--nnodes",
    "--node-rank",
    "--rdzv-endpoint",
    "--rdzv-backend",
    "--rdzv-id",
    "--master-addr",
    "--master-port",
    "--max-restarts",
)


def _explicit(overrides: list[str], key: str) -> str | None:
    for arg in overrides:
        if "=" in arg and not arg.startswith(("-",)):
            _, k, v = parse_override(arg)
            if k == key:
                return str(v)
    return None


def train_command(argv: list[str]) -> list[str]:
    """Build the torchrun command line after every check that needs no process group (`dsrl.preflight`)."""
    parser = argparse.ArgumentParser(prog="dsrl train", description="Launch dsrl.train under torchrun.")
    parser.add_argument(
        "--nproc-per-node",
        default=None,
        help="processes (GPUs, or CPU ranks) per node; default: trainer.n_gpus_per_node if set, "
        "else the visible GPUs, else 1",
    )
    for flag in RDZV_FLAGS:
        parser.add_argument(flag, default=None)
    args, overrides = parser.parse_known_args(argv)
    unknown = [a for a in overrides if a.startswith("--")]
    if unknown:
        parser.error(f"unknown option(s) {' '.join(unknown)}; overrides are key=value")

    explicit_gpus = _count("trainer.n_gpus_per_node", _explicit(overrides, "trainer.n_gpus_per_node"))
    explicit_nodes = _count("trainer.nnodes", _explicit(overrides, "trainer.nnodes"))
    nproc = _count("--nproc-per-node", args.nproc_per_node) or explicit_gpus or visible_gpus() or 1
    nnodes = _count("--nnodes", args.nnodes) or 1
    if explicit_gpus is not None and explicit_gpus != nproc:
        raise ConfigError(f"trainer.n_gpus_per_node={explicit_gpus} but --nproc-per-node {nproc}: make them agree")
    if explicit_nodes is not None and explicit_nodes != nnodes:
        raise ConfigError(f"trainer.nnodes={explicit_nodes} but --nnodes {nnodes}: make them agree")
    overrides = [o for o in overrides if _key_of(o) not in ("trainer.n_gpus_per_node", "trainer.nnodes")]
    overrides += [f"trainer.n_gpus_per_node={nproc}", f"trainer.nnodes={nnodes}"]
    run_checks(load_config(overrides), Launch(nproc, nnodes))  # fail here, before any process starts

    cmd = [sys.executable, "-m", "dsrl.torchrun", f"--nproc-per-node={nproc}"]
    rdzv = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in RDZV_FLAGS}
    if nnodes == 1 and not any(v for k, v in rdzv.items() if k != "--nnodes"):
        cmd.append("--standalone")  # a free rendezvous port per job: concurrent jobs on one node never clash
    else:
        cmd += [f"{k}={v}" for k, v in rdzv.items() if v is not None]
    return cmd + ["-m", "dsrl.train", *overrides]


def _count(name: str, value: object) -> int | None:
    """A process or node count given on the command line: a positive integer (None when not given)."""
    if value is None:
        return None
    try:
        count = int(str(value))
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"{name}={value} must be a positive integer")
    return count


def _key_of(arg: str) -> str | None:
    if "=" not in arg:
        return None
    return arg.split("=", 1)[0].lstrip("+")


def export_command(argv: list[str]) -> int:
    """`dsrl export CHECKPOINT_DIR OUT_DIR`: the actor of any saved checkpoint (ZeRO-1/2/3) as a HF folder."""
    parser = argparse.ArgumentParser(
        prog="dsrl export", description="Convert a saved DeepSpeed actor checkpoint to a Hugging Face model folder."
    )
    parser.add_argument("checkpoint_dir", help="a step folder (.../checkpoints/global_step_N) or its actor/ folder")
    parser.add_argument("out_dir", help="where to write safetensors + config + tokenizer")
    parser.add_argument(
        "--base-model",
        default=None,
        help="HF folder or hub id to take config and tokenizer from, for checkpoints without a huggingface/ folder",
    )
    args = parser.parse_args(argv)
    from dsrl.hf_export import export_checkpoint

    try:
        out = export_checkpoint(args.checkpoint_dir, args.out_dir, args.base_model)
    except (FileNotFoundError, ValueError) as exc:
        print(f"dsrl export: error: {exc}", file=sys.stderr)
        return 2
    print(f"dsrl export: wrote {out}")
    return 0


def one_line(exc: BaseException) -> str:
    """An error as one console line: the first of several would otherwise hide among the others."""
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: dsrl {train,prepare-data,export} ...\n\n"
            "  train         launch a PPO/GRPO run under torchrun (dsrl train --help)\n"
            "  prepare-data  write GSM8K train/test parquet files (dsrl prepare-data --help)\n"
            "  export        convert a saved DeepSpeed checkpoint to a Hugging Face folder (dsrl export --help)"
        )
        return 0
    sub, rest = argv[0], argv[1:]
    if sub == "prepare-data":
        from dsrl.data_prep import main_prepare

        try:
            main_prepare(rest)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            print(f"dsrl prepare-data: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if sub == "train":
        try:
            cmd = train_command(rest)
        except ConfigError as exc:
            print(f"dsrl: config error: {one_line(exc)}", file=sys.stderr)
            return 2
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        proc = subprocess.Popen(cmd, env=env)
        signal.signal(signal.SIGTERM, lambda signum, _frame: proc.send_signal(signum))  # SLURM preemption
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            return proc.wait()
    if sub == "export":
        return export_command(rest)
    print(f"dsrl: unknown command {sub!r} (valid: train, prepare-data, export)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
