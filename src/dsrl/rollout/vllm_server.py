"""One vLLM OpenAI-compatible server as a child process of the trainer: its command line from verl's rollout
knobs, its environment, start-up with a bounded wait, and a stop that takes its whole process tree along.

The server dies with the trainer on every path: `stop()` (the rollout calls it from `close()`), an atexit hook, and
PR_SET_PDEATHSIG for a trainer killed outright; it runs in its own process group so stopping it also stops vLLM's
engine-core and worker children. What runs over HTTP is `dsrl.rollout.vllm_rollout`.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from dsrl.config import ConfigError
from dsrl.rollout.server_layout import ServerGroup

if TYPE_CHECKING:
    import httpx

SERVED_NAME = "dsrl-actor"
# vLLM's token-in/token-out route (0.24 and 0.32 alike): prompt ids and SamplingParams in, token ids out.
GENERATE = "/inference/v1/generate"
EXTENSION = "dsrl.rollout.vllm_receiver.WorkerExtension"
# The server closes a connection idle for VLLM_HTTP_TIMEOUT_KEEP_ALIVE seconds (vLLM's default 5 s; server_env sets
# this). A client that keeps idle connections as long races that close and gets "Server disconnected without sending
# a response" (seen in CI when a training phase took about 5 s), so the client drops them well before the server.
SERVER_KEEP_ALIVE_S = 60
CLIENT_KEEP_ALIVE_S = 20.0
_PR_SET_PDEATHSIG = 1
# What torchrun sets for its workers. A server that inherits them joins torchrun's rendezvous store in its own
# one-process distributed init and hangs there (seen on 2 x H200 with vLLM 0.24).
_TORCHRUN_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_NAME",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def free_port() -> int:
    """A port nobody listens on now; a clash with a concurrent job shows up as a failed start and is retried."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the trainer process dies, even by SIGKILL."""
    os.setpgrp()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def server_args(
    cfg: DictConfig, model_path: str, port: int, device_type: str, trust_remote_code: bool = False
) -> list[str]:
    """The api_server command line from `actor_rollout_ref.rollout.*` (verl's knob names)."""
    max_model_len = cfg.max_model_len or int(cfg.prompt_length) + int(cfg.response_length)
    args = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path,
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        str(cfg.dtype),
        "--load-format",
        str(cfg.load_format),
        "--tensor-parallel-size",
        str(cfg.tensor_model_parallel_size),
        "--max-model-len",
        str(max_model_len),
        "--max-num-seqs",
        str(cfg.max_num_seqs),
        "--max-num-batched-tokens",
        str(cfg.max_num_batched_tokens),
        "--gpu-memory-utilization",
        str(cfg.gpu_memory_utilization),
        "--generation-config",
        "vllm",
        "--worker-extension-cls",
        EXTENSION,
        "--weight-transfer-config",
        json.dumps({"backend": "dsrl"}),
        "--disable-uvicorn-access-log",
        # No tokenizer in the server: it neither detokenises outputs nor decodes the log-prob tokens (per-token
        # Python work in the API process), and it serves GENERATE (which 0.32 otherwise hides behind
        # --enable-scale-out, a flag 0.24 does not know).
        "--tokens-only",
    ]
    if trust_remote_code:
        args.append("--trust-remote-code")
    if cfg.enforce_eager or device_type != "cuda":
        args.append("--enforce-eager")
    if device_type != "cuda":
        # Seeded requests need whole prefills on CPU: vLLM 0.32 rewinds a request's generator after a partial
        # (chunked) prefill with `set_offset`, which CPU generators do not have ("CPU Generator does not use
        # offset"). Prompts then must fit max_num_batched_tokens, which vLLM checks against max_model_len.
        args.append("--no-enable-chunked-prefill")
    if device_type == "cuda" and cfg.free_cache_engine:
        args.append("--enable-sleep-mode")
    return args


def server_env(
    cfg: DictConfig, device_type: str, group: ServerGroup, log_path: Path, environ: dict[str, str] | None = None
) -> dict[str, str]:
    """The trainer's environment without torchrun's variables, on the group's GPUs.

    DSRL_VLLM_SERVER_LOG marks every process of this server (vLLM's children inherit it) for leak checks.
    """
    environ = dict(os.environ if environ is None else environ)
    env = {k: v for k, v in environ.items() if k not in _TORCHRUN_VARS and not k.startswith("TORCHELASTIC_")}
    env.update(
        VLLM_SERVER_DEV_MODE="1",
        DSRL_VLLM_SERVER_LOG=str(log_path),
        VLLM_HTTP_TIMEOUT_KEEP_ALIVE=str(SERVER_KEEP_ALIVE_S),
    )
    if device_type == "cuda":
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(max(group.local_devices) + 1)]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i] for i in group.local_devices)
        # The node's servers start (and torch.compile) at the same moment with the same config, so they would
        # write the same compile-cache files at once; one cache per server number, still reused by the next run.
        root = environ.get("VLLM_CACHE_ROOT", os.path.expanduser("~/.cache/vllm"))
        env["VLLM_CACHE_ROOT"] = os.path.join(root, f"dsrl-server{group.index}")
        if cfg.free_cache_engine:
            # vLLM's sleep mode allocates through its own CUDA memory pool, which expandable segments break.
            env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    else:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kv_cache_gb)
    return env


class VLLMServer:
    """One api_server child process: start it, wait until `/health` answers, stop its whole process group."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.args, self.env, self.log_path = args, env, log_path
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{args[args.index('--port') + 1]}"

    def start(self, timeout_s: float) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"dsrl: starting {shlex.join(self.args)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        atexit.register(self.stop)
        import httpx  # the trainer's environment has it; the launcher's preflight imports this module without

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with code {self.proc.returncode}{self._tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"the vLLM server did not answer {self.url}/health within "
            f"actor_rollout_ref.rollout.server_start_timeout={timeout_s:g}s{self._tail()}"
        )

    def _tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:] if self.log_path.exists() else []
        return f"; last lines of {self.log_path}:\n" + "\n".join(text)

    def port_clash(self) -> bool:
        return self.log_path.exists() and "address already in use" in self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM the process group (vLLM shuts its engine core down), SIGKILL whatever is left after 15 s."""
        if self.proc is None:
            return
        atexit.unregister(self.stop)
        pgid = self.proc.pid
        with suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None


def start_server(
    cfg: DictConfig,
    model_path: str,
    log_path: Path,
    device_type: str,
    group: ServerGroup,
    trust_remote_code: bool,
) -> VLLMServer:
    """Start on a free port, retrying when another job took the port between probe and bind."""
    env = server_env(cfg, device_type, group, log_path)
    for attempt in range(3):
        args = server_args(cfg, model_path, free_port(), device_type, trust_remote_code)
        server = VLLMServer(args, env, log_path)
        try:
            server.start(float(cfg.server_start_timeout))
            return server
        except RuntimeError:
            if attempt == 2 or not server.port_clash():
                raise
    raise AssertionError("unreachable")


def server_client(url: str) -> httpx.Client:
    """An HTTP client for one server that never reuses a connection the server may be closing."""
    import httpx  # noqa: F811 (imported here at run time: the launcher's preflight runs without httpx)

    return httpx.Client(base_url=url, timeout=None, limits=httpx.Limits(keepalive_expiry=CLIENT_KEEP_ALIVE_S))


def check_cpu_head_dim(config, model_path: str) -> None:
    """vLLM's CPU attention kernels exist for a fixed set of head sizes; fail before starting a server."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ConfigError(
            f"actor_rollout_ref.rollout.name=vllm on CPU: model {model_path} has head_dim={head_dim}, but vLLM's "
            f"CPU attention supports only {supported}; use a model with one of those or rollout.name=hf"
        )


# The weight-transfer HTTP API (`/start_weight_update`, `/update_weights`, `/finish_weight_update`) that
# `dsrl.rollout.vllm_receiver` plugs into first shipped in vLLM 0.24 (CUDA) and is in vllm-cpu 0.32.
MIN_VLLM = {"cuda": (0, 24), "cpu": (0, 32)}


def check_vllm_version(device_type: str) -> str:
    """The installed vLLM distribution's version (CUDA `vllm` or `vllm-cpu`), read without importing vLLM."""
    from importlib.metadata import PackageNotFoundError, version

    found = None
    for dist_name in ("vllm", "vllm-cpu"):
        with suppress(PackageNotFoundError):
            found = (dist_name, version(dist_name))
            break
    want = MIN_VLLM["cuda" if device_type == "cuda" else "cpu"]
    need = f"vllm >= {want[0]}.{want[1]}" if device_type == "cuda" else f"vllm-cpu >= {want[0]}.{want[1]}"
    if found is None:
        raise ConfigError(f"actor_rollout_ref.rollout.name=vllm needs {need} installed in the trainer environment")
    release = tuple(int(p) for p in found[1].split("+")[0].split(".")[:2] if p.isdigit())
    if release < want:
        raise ConfigError(
            f"actor_rollout_ref.rollout.name=vllm needs {need}; found {found[0]} {found[1]} (its weight-transfer "
            "API is older than the one dsrl pushes weights through)"
        )
    return f"{found[0]} {found[1]}"
