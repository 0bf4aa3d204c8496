"""Rollout through vLLM OpenAI-compatible servers, the way verl's async vLLM rollout works.

Layout (`server_layout`): on GPUs one server per group of `tensor_model_parallel_size` GPUs, colocated with the
training ranks on those GPUs, so every GPU generates; on CPU one server per node. The group's first rank starts
the server; every rank sends its own prompts' token ids to its group's token-in/token-out route
(`vllm_server.GENERATE`), one request per prompt with its own seed, and gets token ids back: the server has no
tokenizer (`--tokens-only`) and never turns a token into text.

Weights (`weight_push`): before the first rollout (the actor may come from a checkpoint) and after every actor
update, the actor's parameters are gathered one layer group at a time (ZeRO-3: never the whole model) into a
staging buffer per sending rank, and the group's first rank posts each bucket's description to the
weight-transfer API that vLLM 0.24 and 0.32 share (`/start_weight_update`, `/update_weights`,
`/finish_weight_update`); the server's `dsrl` backend (`vllm_receiver`) copies straight from the buffer. On GPUs
with `free_cache_engine` the server sleeps (level 2: KV cache and weights dropped, since every step pushes all
weights again) from the end of a rollout until the next weight push.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch.distributed as tdist
from omegaconf import DictConfig

from dsrl import dist
from dsrl.metrics import Timer
from dsrl.rollout import Sampling, eos_ids, trim_response
from dsrl.rollout.server_layout import group_of, server_groups
from dsrl.rollout.staging import staging_buffer
from dsrl.rollout.vllm_requests import generate_requests
from dsrl.rollout.vllm_server import (
    GENERATE,
    VLLMServer,
    check_cpu_head_dim,
    check_vllm_version,
    server_client,
    start_server,
)
from dsrl.rollout.weight_push import BucketPacker, Slot

log = logging.getLogger("dsrl")
# httpx logs every request at INFO: one line per completion would drown the trainer's log.
logging.getLogger("httpx").setLevel(logging.WARNING)


class VLLMServerRollout:
    """`Rollout` over HTTP; every rank calls every method (weight gathers and group barriers are collectives)."""

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
        self.cfg = cfg
        self.launch = launch
        device_type = launch.device.type
        self.gpu = device_type == "cuda"
        self.sleeps = self.gpu and bool(cfg.free_cache_engine)
        self.eos_ids = eos_ids(tokenizer)
        self.server: VLLMServer | None = None
        self.http: httpx.Client | None = None
        log.info("vLLM rollout with %s", check_vllm_version(device_type))
        if not self.gpu:
            check_cpu_head_dim(engine.module.config, model_path)
        groups = server_groups(
            launch.world_size, launch.local_world_size, int(cfg.tensor_model_parallel_size), device_type
        )
        self.group = group_of(groups, launch.rank)
        self.leads = launch.rank == self.group.leader
        self.sends = launch.rank in self.group.senders
        self._pg = None
        if dist.world() > 1:
            # Every rank creates every subgroup, in the same order: new_group is collective over the world.
            subgroups = [tdist.new_group(list(g.ranks)) if len(g.ranks) > 1 else None for g in groups]
            self._pg = subgroups[self.group.index]

        url, error = None, None
        if self.leads:
            try:
                log_path = Path(run_dir) / "vllm" / f"server-{self.group.index}.log"
                self.server = start_server(cfg, model_path, log_path, device_type, self.group, trust_remote_code)
                url = self.server.url
                log.info(
                    "vLLM server %d for ranks %s at %s (log: %s)",
                    self.group.index,
                    list(self.group.ranks),
                    url,
                    log_path,
                )
            except (RuntimeError, OSError) as exc:
                error = str(exc)
        shared = dist.all_gather_objects((url, error))
        errors = [e for _, e in shared if e]
        if errors:
            self.close()
            raise RuntimeError(errors[0])
        self.url = shared[self.group.leader][0]
        self.http = server_client(self.url)

        self.packer = BucketPacker(
            engine.module, engine.zero_optimization_stage() == 3, int(cfg.update_weights_bucket_megabytes) << 20
        )
        self.buffer = staging_buffer(self.packer.capacity, launch.device) if self.sends else None
        # The server maps each sender's buffer; the leader posts all of them with every bucket.
        handles = self._group_gather(self.buffer.handle if self.buffer else None)
        self.handles = [h for h in handles if h is not None][: self.group.tp]
        self._awake = {"weights", "kv_cache"}
        self._synced = False
        self._timings: dict[str, float] = {}
        self.log_probs: list[list[float]] | None = None

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: Sampling, seed: int) -> list[list[int]]:
        timer = Timer()
        if not self._synced:
            # The server loaded the model folder (or dummy weights), the actor may come from a checkpoint, and a
            # level-2 sleep drops the server's weights.
            with timer.phase("sync_weights"):
                self.sync_weights()
        with timer.phase("wake"):
            self._wake("weights", "kv_cache")
        requests = generate_requests(prompts, n, sampling, seed, self.eos_ids, bool(self.cfg.calculate_log_probs))
        out: list[list[int]] = []
        log_probs: list[list[float]] = []
        with (
            timer.phase("requests"),
            ThreadPoolExecutor(max(1, min(len(requests), int(self.cfg.max_num_seqs), 64))) as pool,
        ):
            for choices in pool.map(self._complete, requests):
                for c in choices:
                    tokens = trim_response(c["token_ids"], self.eos_ids, sampling.ignore_eos)
                    out.append(tokens)
                    if c.get("logprobs"):
                        log_probs.append([t["logprob"] for t in c["logprobs"]["content"][: len(tokens)]])
        self.log_probs = log_probs if log_probs and len(log_probs) == len(out) else None
        if self.launch.is_main:
            log.info(
                "vLLM rollout: %d prompts x n=%d -> %d tokens in %.2fs on rank 0",
                len(prompts),
                n,
                sum(map(len, out)),
                timer.times["requests"],
            )
        if self.sleeps:
            with timer.phase("sleep"):
                self._group_barrier()
                if self.leads:
                    self._post("/sleep", params={"level": 2})
                # Nothing may allocate on the group's GPUs while vLLM measures what its sleep freed.
                self._group_barrier()
            self._awake.clear()
            self._synced = False
        self._timings = timer.times
        return out

    def _complete(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        resp = self.http.post(GENERATE, json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"vLLM server {self.url}{GENERATE} answered {resp.status_code}: {resp.text[:500]}")
        return sorted(resp.json()["choices"], key=lambda c: c["index"])

    def _post(self, path: str, **kwargs: Any) -> None:
        resp = self.http.post(path, **kwargs)
        if resp.status_code != 200:
            raise RuntimeError(f"vLLM server {self.url}{path} answered {resp.status_code}: {resp.text[:500]}")

    # ------------------------------------------------------------------ weight sync
    def sync_weights(self) -> None:
        """Push the actor's current weights; every rank returns once its group's server has them."""
        self._wake("weights")
        if self.leads:
            if not self.gpu:
                # vLLM's CPU backend rewrites its weights layer by layer: no request may run meanwhile.
                self._post("/pause", params={"mode": "wait"})
            # vLLM 0.24 reads this flag (false: load in place, no layerwise reload); 0.32 ignores the body.
            self._post("/start_weight_update", json={"is_checkpoint_format": False})
        self.packer.push(self._flush, self.buffer)
        if self.leads:
            self._post("/finish_weight_update")
            self._post("/reset_prefix_cache")
            if not self.gpu:
                self._post("/resume")
        if self.buffer is not None:
            self.buffer.unlink()
        self._group_barrier()
        self._synced = True

    def _flush(self, slots: list[Slot]) -> None:
        """One bucket: the senders' buffers are full; the leader hands them to the server and waits."""
        if self.group.tp > 1:
            self._group_barrier()
        if self.leads:
            info = {"buffers": self.handles, "slots": [s.as_json() for s in slots]}
            self._post("/update_weights", json={"update_info": info})
        if self.group.tp > 1:
            self._group_barrier()

    def _wake(self, *tags: str) -> None:
        """Wake only what the next step needs: weights for an update, the KV cache for rollout."""
        missing = [t for t in tags if t not in self._awake]
        if not missing:
            return
        if self.leads:
            self._post("/wake_up", params=[("tags", t) for t in missing])
        self._group_barrier()
        self._awake.update(missing)

    def _group_barrier(self) -> None:
        if self._pg is not None:
            tdist.barrier(group=self._pg)

    def _group_gather(self, obj: Any) -> list[Any]:
        if self._pg is None:
            return [obj]
        out: list[Any] = [None] * len(self.group.ranks)
        tdist.all_gather_object(out, obj, group=self._pg)
        return out

    def timings(self) -> dict[str, float]:
        """Sub-phases of the last `generate`: the requests themselves, and waking / sleeping the server."""
        return dict(self._timings)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if getattr(self, "buffer", None) is not None:
            self.buffer.unlink()
