"""Rollout through one vLLM OpenAI-compatible server per node, the way verl's async vLLM rollout works.

Local rank 0 of each node starts `python -m vllm.entrypoints.openai.api_server` as a child process on 127.0.0.1
and a free port; the node's ranks share its URL through torch.distributed and send prompt token ids to
`/v1/completions` concurrently (`return_token_ids` hands back the sampled ids), each prompt with its own seed. Before
the first rollout (the actor may come from a checkpoint) and after every actor update the weights are gathered from
ZeRO-3 one layer group at a time and pushed through vLLM's weight-transfer API (`/start_weight_update`,
`/update_weights`, `/finish_weight_update`):

- CPU: the `dsrl_shm` backend (`dsrl.rollout.vllm_shm`): each group is a safetensors file in /dev/shm; the server
  is paused around the update (sleep frees nothing on CPU).
- GPU: vLLM's CUDA IPC backend, the server colocated on local rank 0's GPU, sleeping (KV cache and weights
  released) between rollout and the weight update.

The server dies with the trainer on every path: `close()` (the trainer calls it in `fit`'s `finally`), an atexit
hook, and PR_SET_PDEATHSIG for a trainer killed outright; it runs in its own process group so stopping it also
stops vLLM's engine-core children.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any

import httpx
import torch
from omegaconf import DictConfig

from dsrl import dist
from dsrl.config import ConfigError
from dsrl.rollout import Sampling, new_token_cap, trim_response

log = logging.getLogger("dsrl")

SERVED_NAME = "dsrl-actor"
EXTENSION = "dsrl.rollout.vllm_shm.ShmWorkerExtension"
_PR_SET_PDEATHSIG = 1


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
        json.dumps({"backend": "ipc" if device_type == "cuda" else "dsrl_shm"}),
        "--disable-uvicorn-access-log",
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


def server_env(cfg: DictConfig, device_type: str, local_rank: int, log_path: Path) -> dict[str, str]:
    """DSRL_VLLM_SERVER_LOG marks every process of this server (vLLM's children inherit it) for leak checks."""
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "DSRL_VLLM_SERVER_LOG": str(log_path)}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if device_type == "cuda":
        tp = int(cfg.tensor_model_parallel_size)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[local_rank : local_rank + tp])
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
    cfg: DictConfig, model_path: str, log_path: Path, launch: dist.Launch, trust_remote_code: bool
) -> VLLMServer:
    """Start on a free port, retrying when another job took the port between probe and bind."""
    device_type = launch.device.type
    env = server_env(cfg, device_type, launch.local_rank, log_path)
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


class LayerGroupSource:
    """The actor's HF-named parameters, whole, one layer group at a time (a ZeRO-3 gather per group).

    Subclasses vLLM's `WeightSource` at run time (`weight_source`), so the trainer imports vLLM only when the
    vLLM rollout is used. Every rank must iterate it in lockstep: the gathers are collectives.
    """

    def __init__(self, module: torch.nn.Module, zero3: bool):
        self.module, self.zero3 = module, zero3

    def metadata(self) -> list:
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [
            ParamMeta(name, p.dtype, tuple(getattr(p, "ds_shape", p.shape)))
            for name, p in self.module.named_parameters()
        ]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for names, tensors in self.iter_groups():
            yield from zip(names, tensors, strict=True)

    def iter_groups(self) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
        import deepspeed

        params = dict(self.module.named_parameters())
        for group in self.groups():
            chosen = [params[n] for n in group]
            gather = deepspeed.zero.GatheredParameters(chosen) if self.zero3 else nullcontext()
            with gather:
                yield group, [p.detach().clone() for p in chosen]


def weight_source(module: torch.nn.Module, zero3: bool):
    from vllm.distributed.weight_transfer.base import WeightSource

    cls = type("ZeroLayerGroupSource", (LayerGroupSource, WeightSource), {})
    return cls(module, zero3)


class VLLMServerRollout:
    """`Rollout` over HTTP; every rank calls every method (weight sync gathers are collectives)."""

    def __init__(
        self,
        engine,
        tokenizer,
        model_path: str,
        cfg: DictConfig,
        run_dir: Path,
        launch: dist.Launch,
        trust_remote_code: bool = False,
    ):
        self.engine = engine
        self.cfg = cfg
        self.launch = launch
        self.gpu = launch.device.type == "cuda"
        self.sleeps = self.gpu and bool(cfg.free_cache_engine)
        self.ships = launch.local_rank == 0
        eos = tokenizer.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        self.server: VLLMServer | None = None
        if not self.gpu:
            check_cpu_head_dim(engine.module.config, model_path)
        elif launch.world_size != launch.local_world_size:
            raise ConfigError(
                "actor_rollout_ref.rollout.name=vllm on GPU supports one node (trainer.nnodes=1) for now: the CUDA "
                "IPC weight transfer gathers handles over the whole default process group"
            )
        node = launch.rank // launch.local_world_size
        url, error = None, None
        if self.ships:
            try:
                log_path = Path(run_dir) / "vllm" / f"server-node{node}.log"
                self.server = start_server(cfg, model_path, log_path, launch, trust_remote_code)
                url = self.server.url
            except (RuntimeError, OSError) as exc:
                error = str(exc)
        shared = dist.all_gather_objects((url, error))
        errors = [e for _, e in shared if e]
        if errors:
            self.close()
            raise RuntimeError(errors[0])
        self.url = shared[launch.rank - launch.local_rank][0]
        if self.ships:
            log.info("vLLM server for node %d at %s (log: %s)", node, self.url, self.server.log_path)
        self.http = httpx.Client(base_url=self.url, timeout=None)
        self.source = weight_source(engine.module, engine.zero_optimization_stage() == 3)
        self._ipc = self._init_ipc() if self.gpu else None
        self._awake = {"weights", "kv_cache"}
        self._synced = False

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: Sampling, seed: int) -> list[list[int]]:
        if not self._synced:
            # The server loaded the model folder, but the actor may come from a checkpoint (a resumed run).
            self.sync_weights()
        self._wake("weights", "kv_cache")
        body: dict[str, Any] = {
            "model": SERVED_NAME,
            "n": n,
            "return_token_ids": True,
            "ignore_eos": sampling.ignore_eos,
            "skip_special_tokens": False,
        }
        if sampling.do_sample and sampling.temperature > 0:
            body.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        else:
            body.update(temperature=0.0)
        requests = [{**body, "prompt": list(p), "max_tokens": new_token_cap(len(p), sampling)} for p in prompts]
        # vLLM seeds the n samples of a request with seed, seed+1, ..., seed+n-1: give each prompt its own range, or
        # prompts would share random streams. Seeded sampling makes a resumed run sample what an uninterrupted one did.
        for i, r in enumerate(requests):
            r["seed"] = (seed + i * n) % 2**63
        out: list[list[int]] = []
        if requests:
            with ThreadPoolExecutor(max_workers=min(len(requests), int(self.cfg.max_num_seqs), 64)) as pool:
                for choices in pool.map(self._complete, requests):
                    out.extend(trim_response(c["token_ids"], self.eos_ids, sampling.ignore_eos) for c in choices)
        if self.sleeps:
            dist.barrier()
            if self.ships:
                self._post("/sleep", params={"level": 1})
            self._awake.clear()
        return out

    def _complete(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        resp = self.http.post("/v1/completions", json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"vLLM server {self.url}/v1/completions answered {resp.status_code}: {resp.text[:500]}")
        return sorted(resp.json()["choices"], key=lambda c: c["index"])

    def _post(self, path: str, **kwargs: Any) -> None:
        resp = self.http.post(path, **kwargs)
        if resp.status_code != 200:
            raise RuntimeError(f"vLLM server {self.url}{path} answered {resp.status_code}: {resp.text[:500]}")

    # ------------------------------------------------------------------ weight sync
    def sync_weights(self) -> None:
        """Push the actor's current weights; the node's ranks wait until its server has them."""
        if self.gpu:
            self._sync_gpu()
        else:
            self._sync_cpu()
        if self.ships:
            self._post("/reset_prefix_cache")
        dist.barrier()
        self._synced = True

    def _sync_cpu(self) -> None:
        if self.ships:
            self._post("/pause", params={"mode": "wait"})
            self._post("/start_weight_update")
        for names, tensors in self.source.iter_groups():
            if self.ships:
                self._ship_group(names, tensors)
        if self.ships:
            self._post("/finish_weight_update")
            self._post("/resume")

    def _ship_group(self, names: list[str], tensors: list[torch.Tensor]) -> None:
        from safetensors.torch import save_file

        fd, path = tempfile.mkstemp(prefix="dsrl-weights-", suffix=".safetensors", dir=_shm_dir())
        os.close(fd)
        try:
            save_file({n: t.contiguous().cpu() for n, t in zip(names, tensors, strict=True)}, path)
            self._post("/update_weights", json={"update_info": {"path": path}})
        finally:
            os.unlink(path)

    # GPU path: written against vLLM's public weight-transfer API; not exercised by the CPU test suite. Packed
    # mode streams the layer groups through a fixed-size staging buffer instead of holding the whole model.
    def _init_ipc(self):
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo, IPCTrainerWeightTransferEngine

        return IPCTrainerWeightTransferEngine.trainer_init(
            IPCTrainerInitInfo(rank=self.launch.rank, packed=True),
            client=HTTPVLLMWeightSyncClient(self.url),
            source=self.source,
        )

    def _sync_gpu(self) -> None:
        self._wake("weights")
        self._ipc.send_weights()

    def _wake(self, *tags: str) -> None:
        """Wake only what the next step needs: weights for an update, the KV cache for rollout."""
        missing = [t for t in tags if t not in self._awake]
        if not missing:
            return
        if self.ships:
            for tag in missing:
                self._post("/wake_up", params={"tags": tag})
        dist.barrier()
        self._awake.update(missing)

    def timings(self) -> dict[str, float]:
        """No sub-phases of `generate` to report: the weight gather is timed as `update_weights`."""
        return {}

    def close(self) -> None:
        if getattr(self, "http", None) is not None:
            self.http.close()
        if self.server is not None:
            self.server.stop()
            self.server = None


def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") else None
