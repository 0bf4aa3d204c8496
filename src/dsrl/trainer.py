"""The PPO/GRPO loop, readable top to bottom.

generate -> reward -> old log-probs -> ref log-probs -> values -> advantages -> critic update -> actor update
-> weight sync -> metrics -> checkpoint.

Every rank rolls out its own share of prompts; advantages and batch metrics are computed on the whole batch (gathered
on every rank, as verl's driver does) so GAE whitening and the logged statistics match verl's exactly.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from dsrl import algorithms as algos
from dsrl import atomic, checkpoint, dist, failures, hf_export, packed_attention
from dsrl import workers as W
from dsrl.advantages import compute_advantage
from dsrl.batching import BatchPlan, plan_batches
from dsrl.config import ConfigError, save_hf_model, to_container, use_critic
from dsrl.data import PromptBatcher, encode_prompts, prepare_gsm8k, read_prompts
from dsrl.engines import DTYPES, EngineSpec, build_spec, initialize, load_model, lr_lambda, model_states_estimate
from dsrl.flops import mfu, peak_flops, train_flops
from dsrl.loggers import Tracking, logger_names
from dsrl.metrics import MetricsWriter, Timer, memory_metrics, parity_metrics
from dsrl.models import resolve_model_path
from dsrl.reward import default_compute_score, load_custom_reward_fn, score_batch
from dsrl.rollout import Sampling
from dsrl.rollout.batch import assemble_batch, rollout_probs_diff
from dsrl.rollout.hf import HFRollout

log = logging.getLogger("dsrl")


class Preempted(Exception):
    """SIGTERM arrived (SLURM preemption or time limit); the run stops after the current step."""


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A stable per-(seed, step, rank) seed, so a resumed run samples exactly what an uninterrupted one did."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_list(files: Any) -> list[str]:
    if files is None:
        return []
    return [str(files)] if isinstance(files, str) else [str(f) for f in files]


class Trainer:
    def __init__(self, cfg: DictConfig, launch: dist.Launch):
        self.cfg = cfg
        self.launch = launch
        self.device = launch.device
        self.run_dir = Path(cfg.trainer.run_dir)
        self.seed = int(cfg.trainer.seed)
        self.plan: BatchPlan = plan_batches(cfg, launch.world_size)
        self.use_critic = use_critic(cfg)
        actor_cfg = cfg.actor_rollout_ref.actor
        self.use_ref = bool(actor_cfg.use_kl_loss or cfg.algorithm.use_kl_in_reward)
        self._preempt = False
        self._hf_saved_at: int | None = None
        self.tracking: Tracking | None = None
        if launch.is_main:
            failures.clear(self.run_dir)  # before the ranks first synchronise (in _prepare_data_and_model)
        _seed_all(self.seed)

        self._prepare_data_and_model()
        self._build_engines()
        self._build_rollout()
        self._build_reward()
        self.kl_ctrl = algos.make_kl_controller(
            cfg.algorithm.kl_ctrl.type,
            float(cfg.algorithm.kl_ctrl.kl_coef),
            target_kl=float(cfg.algorithm.kl_ctrl.target_kl),
            horizon=float(cfg.algorithm.kl_ctrl.horizon),
        )
        self.remove_padding = self._check_remove_padding()
        precision = cfg.actor_rollout_ref.actor.deepspeed.mixed_precision
        self.peak_flops = (
            peak_flops(torch.cuda.get_device_name(self.device), precision) if self.device.type == "cuda" else None
        )

    # ---------------------------------------------------------------- setup
    def _prepare_data_and_model(self) -> None:
        cfg = self.cfg
        train_files = _as_list(cfg.data.train_files)
        val_files = _as_list(cfg.data.val_files)
        if not train_files:
            data_dir = self.run_dir / "data"
            if self.launch.is_main:
                prepare_gsm8k("synthetic", data_dir, seed=self.seed)
            dist.barrier()
            train_files = [str(data_dir / "train.parquet")]
            val_files = val_files or [str(data_dir / "test.parquet")]
        self.train_files, self.val_files = train_files, val_files
        model_path = cfg.actor_rollout_ref.model.path
        if self.launch.is_main:
            resolve_model_path(model_path, corpus_files=train_files)
        dist.barrier()
        self.actor_path = str(resolve_model_path(model_path, corpus_files=train_files))
        critic_path = cfg.critic.model.path
        self.critic_path = str(resolve_model_path(critic_path, corpus_files=train_files)) if self.use_critic else None

        from transformers import AutoTokenizer

        tok_path = cfg.actor_rollout_ref.model.tokenizer_path or self.actor_path
        self.tokenizer = AutoTokenizer.from_pretrained(
            tok_path, trust_remote_code=bool(cfg.actor_rollout_ref.model.trust_remote_code)
        )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id = int(self.tokenizer.pad_token_id)
        rows = [r for f in train_files for r in read_prompts(f)]
        ids, kept = encode_prompts(
            rows, self.tokenizer, int(cfg.data.max_prompt_length), bool(cfg.data.filter_overlong_prompts)
        )
        self.train_rows = [rows[i] for i in kept]
        self.train_ids = ids
        if len(self.train_rows) < cfg.data.train_batch_size:
            raise ConfigError(
                f"data.train_batch_size={cfg.data.train_batch_size} is larger than the {len(self.train_rows)} "
                f"usable prompts in {', '.join(train_files)}"
            )
        self.val_rows: list[dict] = []
        self.val_ids: list[list[int]] = []
        if val_files and (cfg.trainer.test_freq > 0 or cfg.trainer.val_before_train):
            vrows = [r for f in val_files for r in read_prompts(f)]
            vids, vkept = encode_prompts(vrows, self.tokenizer, int(cfg.data.max_prompt_length), True)
            self.val_rows, self.val_ids = [vrows[i] for i in vkept], vids
        data_seed = cfg.data.seed if cfg.data.seed is not None else self.seed
        self.batcher = PromptBatcher(
            len(self.train_rows),
            int(cfg.data.train_batch_size),
            int(data_seed),
            shuffle=bool(cfg.data.shuffle),
        )
        steps_per_epoch = len(self.train_rows) // int(cfg.data.train_batch_size)
        total = cfg.trainer.total_training_steps
        self.total_steps = int(total) if total is not None else steps_per_epoch * int(cfg.trainer.total_epochs)

    def _build_engines(self) -> None:
        cfg, world, dev = self.cfg, self.launch.world_size, self.device.type
        arr = cfg.actor_rollout_ref
        a_ds = arr.actor.deepspeed
        self.actor_spec = build_spec("actor", a_ds, arr.actor.optim, self.plan.actor, world, dev, arr.actor.grad_clip)
        self.specs: dict[str, EngineSpec] = {"actor": self.actor_spec}
        dtype = DTYPES[a_ds.mixed_precision]
        model = load_model(
            self.actor_path,
            kind="actor",
            spec=self.actor_spec,
            dtype=dtype,
            trust_remote_code=bool(arr.model.trust_remote_code),
            override_config=dict(arr.model.override_config),
            gradient_checkpointing=bool(arr.model.enable_gradient_checkpointing),
        )
        self.memory_estimates = {"actor": self._estimate(model, self.actor_spec)}
        self.actor = initialize(model, self.actor_spec, lr_lambda(arr.actor.optim, self.total_steps))
        self.engines = {"actor": self.actor}
        self.ref = None
        if self.use_ref:
            ref_spec = build_spec("ref", a_ds, None, None, world, dev)
            self.specs["ref"] = ref_spec
            ref_model = load_model(
                self.actor_path,
                kind="ref",
                spec=ref_spec,
                dtype=dtype,
                trust_remote_code=bool(arr.model.trust_remote_code),
                override_config=dict(arr.model.override_config),
                gradient_checkpointing=False,
            )
            self.memory_estimates["ref"] = self._estimate(ref_model, ref_spec)
            if int(a_ds.zero_stage) == 3:
                self.ref = initialize(ref_model, ref_spec)
            else:
                self.ref = ref_model.to(self.device).eval().requires_grad_(False)
        self.critic = None
        if self.use_critic:
            c_ds = cfg.critic.deepspeed_config
            spec = build_spec("critic", c_ds, cfg.critic.optim, self.plan.critic, world, dev, cfg.critic.grad_clip)
            self.specs["critic"] = spec
            critic_model = load_model(
                self.critic_path,
                kind="critic",
                spec=spec,
                dtype=DTYPES[c_ds.mixed_precision],
                trust_remote_code=bool(cfg.critic.model.trust_remote_code),
                override_config=dict(cfg.critic.model.override_config),
                gradient_checkpointing=bool(cfg.critic.model.enable_gradient_checkpointing),
            )
            self.memory_estimates["critic"] = self._estimate(critic_model, spec)
            self.critic = initialize(critic_model, spec, lr_lambda(cfg.critic.optim, self.total_steps))
            self.engines["critic"] = self.critic
        gib = 1024**3
        gpu = sum(e["gpu_bytes"] for e in self.memory_estimates.values()) / gib
        cpu = sum(e["cpu_bytes"] for e in self.memory_estimates.values()) / gib
        self.memory_estimates["total"] = {"gpu_gb": gpu, "cpu_gb_per_node": cpu}
        log.info("DeepSpeed's model-state estimate: %.3g GiB per GPU, %.3g GiB CPU per node", gpu, cpu)

    def _estimate(self, model: torch.nn.Module, spec: EngineSpec) -> dict[str, Any]:
        return model_states_estimate(model, spec, self.launch.world_size, self.launch.local_world_size)

    def _build_rollout(self) -> None:
        rollout_cfg = self.cfg.actor_rollout_ref.rollout
        need = int(self.cfg.data.max_prompt_length) + int(self.cfg.data.max_response_length)
        if rollout_cfg.max_model_len is not None and need > rollout_cfg.max_model_len:
            log.info(
                "rollout: max_prompt_length + max_response_length = %d exceeds max_model_len=%d; each prompt gets "
                "min(max_response_length, max_model_len - prompt length) new tokens (verl's cap)",
                need,
                rollout_cfg.max_model_len,
            )
        if rollout_cfg.name == "vllm":
            from dsrl.rollout.vllm_rollout import VLLMServerRollout

            self.rollout = VLLMServerRollout(
                self.actor,
                self.tokenizer,
                self.actor_path,
                rollout_cfg,
                self.run_dir,
                self.launch,
                trust_remote_code=bool(self.cfg.actor_rollout_ref.model.trust_remote_code),
            )
            return
        self.rollout = HFRollout(self.actor, self.tokenizer, self.device)

    def _build_reward(self) -> None:
        crf = self.cfg.custom_reward_function
        self.reward_fn = load_custom_reward_fn(crf.path, crf.name) if crf.path else default_compute_score
        self.reward_kwargs = dict(self.cfg.reward.reward_kwargs)

    def _check_remove_padding(self) -> bool:
        """Packed (padding-free) forwards need an attention path that honours packed sequences: pick it, verify it.

        On CUDA, `sdpa`/`eager` would materialise a block-diagonal mask per micro batch, so the engines switch to
        `dsrl_packed` (PyTorch's variable-length flash attention; `sdpa` for every padded call). The start-up
        check, packed log-probs equal to padded ones on every rank, decides; if it fails the engines switch back.
        """
        model_cfg = self.cfg.actor_rollout_ref.model
        if not model_cfg.use_remove_padding:
            return False
        attn = str(dict(model_cfg.override_config).get("attn_implementation", "sdpa"))
        packed_attn = packed_attention.packed_implementation(self.device.type, attn)
        models = [m for m in (self.actor, self.ref, self.critic) if m is not None]
        ids = [[5, 6, 7, 8, 9], [10, 11, 12]]
        batch = assemble_batch([i[:2] for i in ids], [i[2:] for i in ids], 1, self.pad_id, 3, self.device)
        try:  # a switch or packed forward that raises is a failed check, on this rank, not a failed start
            if packed_attn != attn:
                log.info("use_remove_padding=True: attn_implementation %s -> %s on %s", attn, packed_attn, self.device)
                packed_attention.set_implementation(models, packed_attn)
            with torch.no_grad():
                packed, _ = W.log_probs_of(self.actor, batch, 1.0, True)
                padded, _ = W.log_probs_of(self.actor, batch, 1.0, False)
            tol = 1e-3 if self.actor_spec.ds_config.get("bf16") is None else 5e-2
            ok = bool(torch.allclose(packed, padded, atol=tol))
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            log.warning("use_remove_padding=True: packed forward with %s failed: %s", packed_attn, exc)
            ok = False
        ok = bool(dist.all_reduce_scalars([float(ok)], "min")[0])
        if not ok:
            log.warning(
                "use_remove_padding=True: attn_implementation=%s does not honour packed sequences; "
                "falling back to padded batches",
                packed_attn,
            )
            if packed_attn != attn:
                packed_attention.set_implementation(models, attn)
        else:
            log.info("use_remove_padding=True: log-prob, value and update forwards run on packed sequences")
        return ok

    # ---------------------------------------------------------------- run bookkeeping
    def run_info(self, status: str, last_step: int, error: str | None = None) -> dict[str, Any]:
        import deepspeed
        import transformers

        import dsrl

        devices = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if self.device.type == "cuda"
            else [platform.processor() or platform.machine()]
        )
        return {
            "status": status,
            "last_step": last_step,
            "total_steps": self.total_steps,
            "error": error,
            "seed": self.seed,
            "experiment_name": self.cfg.trainer.experiment_name,
            "config": to_container(self.cfg),
            "deepspeed": {name: spec.summary() for name, spec in self.specs.items()},
            "batch_plan": {
                "world_size": self.plan.world_size,
                "prompts_per_rank": self.plan.prompts_per_rank,
                "sequences_per_rank": self.plan.sequences_per_rank,
                "actor": vars(self.plan.actor),
                "critic": vars(self.plan.critic) if self.plan.critic else None,
            },
            "remove_padding_effective": self.remove_padding,
            "memory_estimate": self.memory_estimates,
            "model_path": self.actor_path,
            "versions": {
                "dsrl": dsrl.__version__,
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "deepspeed": deepspeed.__version__,
                "transformers": transformers.__version__,
            },
            "devices": {"type": self.device.type, "world_size": self.launch.world_size, "names": devices},
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _write_run_json(self, status: str, last_step: int, error: str | None = None) -> None:
        if self.launch.is_main:
            atomic.write_json(self.run_dir / "run.json", self.run_info(status, last_step, error))

    # ---------------------------------------------------------------- checkpoints
    def _ckpt_root(self) -> Path:
        return Path(self.cfg.trainer.default_local_dir)

    def _keep(self) -> int | None:
        t = self.cfg.trainer
        values = [v for v in (t.max_ckpt_to_keep, t.max_actor_ckpt_to_keep, t.max_critic_ckpt_to_keep) if v]
        return min(values) if values else None

    def save(self, step: int) -> None:
        state = {
            "step": step,
            "batcher": self.batcher.state_dict(),
            "kl_ctrl": self.kl_ctrl.state_dict(),
            "rng": _rng_state(),
        }
        checkpoint.save(
            self._ckpt_root(), step, self.engines, state, self.launch.rank, self._keep(), self._write_hf_config
        )
        if save_hf_model(self.cfg):
            self._save_hf(step)

    def _write_hf_config(self, ckpt: Path) -> None:
        """The actor's HF config and tokenizer beside its DeepSpeed checkpoint, for `dsrl export` (as verl does)."""
        hf_export.save_config_and_tokenizer(self.actor.module.config, self.tokenizer, ckpt / "actor" / "huggingface")

    def _save_hf(self, step: int) -> None:
        """`<run_dir>/actor_hf/`: the actor's fp32 weights gathered one parameter at a time (collective)."""
        state = hf_export.gather_fp32_state_dict(self.actor, self.launch.is_main)
        if state is not None:
            hf_export.save_hf_folder(self.actor.module.config, self.tokenizer, state, self.run_dir / "actor_hf")
            log.info("step %d: actor saved as a Hugging Face model in %s", step, self.run_dir / "actor_hf")
        self._hf_saved_at = step
        dist.barrier()

    def maybe_resume(self) -> int:
        """Return the last completed step (0 for a fresh run) after restoring from a checkpoint if asked."""
        t = self.cfg.trainer
        if t.resume_mode == "disable":
            return 0
        path = Path(t.resume_from_path) if t.resume_mode == "resume_path" else checkpoint.latest(self._ckpt_root())
        if path is None:
            return 0
        state = checkpoint.load(path, self.engines, self.launch.rank)
        self.batcher.load_state_dict(state["batcher"])
        self.kl_ctrl.load_state_dict(state["kl_ctrl"])
        _set_rng_state(state["rng"])
        log.info("resumed from %s (step %d)", path, state["step"])
        return int(state["step"])

    # ---------------------------------------------------------------- the loop
    def _shard(self, indices: list[int]) -> list[int]:
        per = self.plan.prompts_per_rank
        r = self.launch.rank
        return indices[r * per : (r + 1) * per]

    def _scores(self, rows: list[dict], responses: list[list[int]], n: int) -> list[float]:
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        expanded = [row for row in rows for _ in range(n)]
        return score_batch(
            self.reward_fn,
            data_sources=[r["data_source"] for r in expanded],
            solution_strs=texts,
            ground_truths=[r["reward_model"]["ground_truth"] for r in expanded],
            extra_infos=[r.get("extra_info") for r in expanded],
            reward_kwargs=self.reward_kwargs,
            num_workers=int(self.cfg.reward.num_workers),
        )

    def _sampling(self, val: bool = False) -> Sampling:
        r = self.cfg.actor_rollout_ref.rollout
        src = r.val_kwargs if val else r
        return Sampling(
            max_new_tokens=int(self.cfg.data.max_response_length),
            temperature=float(src.temperature),
            top_p=float(src.top_p),
            top_k=int(src.top_k),
            do_sample=bool(src.do_sample),
            ignore_eos=bool(r.ignore_eos),
            max_model_len=None if r.max_model_len is None else int(r.max_model_len),
        )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        arr = cfg.actor_rollout_ref
        n = self.plan.n
        timer = Timer(self._sync)
        temperature = float(arr.rollout.temperature)
        rmpad = self.remove_padding
        with timer.phase("step"):
            global_idx = self.batcher.next_batch()
            mine = self._shard(global_idx)
            prompts = [self.train_ids[i] for i in mine]
            rows = [self.train_rows[i] for i in mine]
            with timer.phase("gen"):
                responses = self.rollout.generate(
                    prompts, n, self._sampling(), derived_seed(self.seed, step, self.launch.rank)
                )
            for name, seconds in self.rollout.timings().items():
                timer.record(f"gen/{name}", seconds)
            batch = assemble_batch(prompts, responses, n, self.pad_id, int(cfg.data.max_response_length), self.device)
            if cfg.algorithm.adv_estimator == "remax":
                with timer.phase("gen_max"):
                    greedy = self.rollout.generate(prompts, 1, replace(self._sampling(), do_sample=False), 0)
                    greedy_scores = self._scores(rows, greedy, 1)
                baselines = [b for b in greedy_scores for _ in range(n)]
                batch["reward_baselines"] = torch.tensor(baselines, dtype=torch.float32, device=self.device)
            with timer.phase("reward"):
                scores = torch.tensor(self._scores(rows, responses, n), dtype=torch.float32, device=self.device)
                batch["token_level_scores"] = algos.scores_to_token_rewards(scores, batch["response_mask"])
            lp_tokens = arr.rollout.log_prob_max_token_len_per_gpu if arr.rollout.log_prob_use_dynamic_bsz else None
            with timer.phase("old_log_prob"):
                old_lp, entropy = W.forward_in_micro_batches(
                    lambda mb: W.log_probs_of(self.actor, mb, temperature, rmpad, with_entropy=True),
                    batch,
                    self.plan.log_prob_micro,
                    lp_tokens,
                )
                batch["old_log_probs"] = old_lp
                sampler_check = (
                    rollout_probs_diff(self.rollout.log_probs, old_lp, batch["response_mask"])
                    if self.rollout.log_probs is not None
                    else {}
                )
            if self.ref is not None:
                with timer.phase("ref"):
                    ref_tokens = arr.ref.log_prob_max_token_len_per_gpu if arr.ref.log_prob_use_dynamic_bsz else None
                    (batch["ref_log_prob"],) = W.forward_in_micro_batches(
                        lambda mb: W.log_probs_of(self.ref, mb, temperature, rmpad)[0],
                        batch,
                        self.plan.ref_log_prob_micro,
                        ref_tokens,
                    )
            if self.critic is not None:
                with timer.phase("values"):
                    v_tokens = cfg.critic.forward_max_token_len_per_gpu if cfg.critic.use_dynamic_bsz else None
                    self.critic.eval()
                    (batch["values"],) = W.forward_in_micro_batches(
                        lambda mb: W.values_of(self.critic, mb, rmpad),
                        batch,
                        self.plan.values_micro,
                        v_tokens,
                    )
            with timer.phase("adv"):
                metrics = self._advantages(batch, global_idx, entropy)
            metrics.update(sampler_check)
            metrics.update(
                parity_metrics(
                    *(dist.all_gather_rows(batch[k]) for k in ("responses", "response_mask", "old_log_probs"))
                )
            )
            if self.critic is not None:
                with timer.phase("update_critic"):
                    metrics.update(
                        W.update_critic(
                            self.critic,
                            batch,
                            self.plan.critic,
                            cfg.critic,
                            rmpad,
                            bool(cfg.critic.deepspeed_config.zero2_step_each_micro),
                        )
                    )
            if step > int(cfg.trainer.critic_warmup):
                with timer.phase("update_actor"):
                    metrics.update(
                        W.update_actor(
                            self.actor,
                            batch,
                            self.plan.actor,
                            arr.actor,
                            temperature,
                            rmpad,
                            bool(arr.actor.deepspeed.zero2_step_each_micro),
                        )
                    )
            with timer.phase("update_weights"):
                self.rollout.sync_weights()
        tokens = dist.all_reduce_scalars([float(batch["attention_mask"].sum().item())], "sum")[0]
        step_time = timer.times["step"]
        metrics.update(timer.metrics())
        metrics["perf/total_num_tokens"] = tokens
        metrics["perf/time_per_step"] = step_time
        metrics["perf/throughput"] = tokens / (step_time * self.launch.world_size)
        update_time = timer.times.get("update_actor")
        if update_time:
            metrics["perf/update_actor_throughput"] = (
                tokens * int(arr.actor.ppo_epochs) / (update_time * self.launch.world_size)
            )
        metrics.update(self._mfu_metrics(batch, timer.times))
        mem = memory_metrics(self.device.type)
        maxed = dist.all_reduce_scalars(
            [mem["perf/max_memory_allocated_gb"], mem["perf/max_memory_reserved_gb"]], "max"
        )
        mem["perf/max_memory_allocated_gb"], mem["perf/max_memory_reserved_gb"] = maxed
        metrics.update(mem)
        return metrics

    def _mfu_metrics(self, batch: W.Batch, times: dict[str, float]) -> dict[str, float]:
        """verl's `perf/mfu/actor` and `perf/mfu/critic`: model FLOPs of the update phase over the GPUs' peak."""
        if self.peak_flops is None:
            return {}
        lens = (batch["prompt_lens"] + batch["response_lens"]).tolist()
        out = {}
        for name, engine, epochs in (
            ("actor", self.actor, self.cfg.actor_rollout_ref.actor.ppo_epochs),
            ("critic", self.critic, self.cfg.critic.ppo_epochs),
        ):
            seconds = times.get(f"update_{name}")
            if engine is None or not seconds:
                continue
            flops = dist.all_reduce_scalars([train_flops(engine.module.config, lens) * int(epochs)], "sum")[0]
            value = mfu(flops, seconds, self.launch.world_size, self.peak_flops)
            if value is not None:
                out[f"perf/mfu/{name}"] = value
        return out

    def _advantages(self, batch: W.Batch, global_idx: list[int], entropy: torch.Tensor) -> dict[str, float]:
        """Whole-batch advantage estimation (gathered on every rank), then each rank keeps its own rows."""
        cfg, n = self.cfg, self.plan.n
        mask = dist.all_gather_rows(batch["response_mask"])
        scores = dist.all_gather_rows(batch["token_level_scores"])
        metrics: dict[str, float] = {}
        rewards = scores
        if cfg.algorithm.use_kl_in_reward:
            old = dist.all_gather_rows(batch["old_log_probs"])
            ref = dist.all_gather_rows(batch["ref_log_prob"])
            rewards, kl_metrics = algos.apply_kl_penalty(scores, old, ref, mask, self.kl_ctrl, cfg.algorithm.kl_penalty)
            metrics.update(kl_metrics)
        values = dist.all_gather_rows(batch["values"]) if "values" in batch else None
        baselines = dist.all_gather_rows(batch["reward_baselines"]) if "reward_baselines" in batch else None
        adv, ret = compute_advantage(
            cfg.algorithm.adv_estimator,
            rewards,
            mask,
            [i for i in global_idx for _ in range(n)],
            values=values,
            reward_baselines=baselines,
            gamma=float(cfg.algorithm.gamma),
            lam=float(cfg.algorithm.lam),
            norm_adv_by_std_in_grpo=bool(cfg.algorithm.norm_adv_by_std_in_grpo),
        )
        rows = batch["response_mask"].shape[0]
        lo = self.launch.rank * rows
        batch["advantages"], batch["returns"] = adv[lo : lo + rows], ret[lo : lo + rows]
        prompt_lens = dist.all_gather_rows(batch["prompt_lens"])
        max_p = int(cfg.data.max_prompt_length)
        prompt_mask = (torch.arange(max_p)[None, :] < prompt_lens[:, None]).float().to(mask.device)
        metrics.update(
            algos.compute_data_metrics(
                token_level_scores=scores,
                token_level_rewards=rewards,
                advantages=adv,
                returns=ret,
                response_mask=mask,
                prompt_mask=prompt_mask,
                max_response_length=int(cfg.data.max_response_length),
                max_prompt_length=max_p,
                values=values,
            )
        )
        ent = algos.masked_mean(entropy, batch["response_mask"]).item()
        metrics["actor/entropy"] = dist.all_reduce_scalars([ent], "mean")[0]
        return metrics

    def validate(self) -> dict[str, float]:
        """Greedy (val_kwargs) generation over the validation prompts, sharded across ranks."""
        world, rank = self.launch.world_size, self.launch.rank
        idx = list(range(rank, len(self.val_ids), world))
        vk = self.cfg.actor_rollout_ref.rollout.val_kwargs
        responses = self.rollout.generate(
            [self.val_ids[i] for i in idx],
            int(vk.n),
            self._sampling(val=True),
            derived_seed(self.seed, -1, rank),
        )
        rows = [self.val_rows[i] for i in idx]
        scores = self._scores(rows, responses, int(vk.n))
        by_source: dict[str, list[float]] = {}
        for row, s in zip([r for r in rows for _ in range(int(vk.n))], scores, strict=True):
            by_source.setdefault(row["data_source"], []).append(s)
        gathered = dist.all_gather_objects(by_source)
        merged: dict[str, list[float]] = {}
        for part in gathered:
            for k, v in part.items():
                merged.setdefault(k, []).extend(v)
        return {f"val-core/{k}/reward/mean@1": float(np.mean(v)) for k, v in sorted(merged.items())}

    def _on_sigterm(self, signum, frame) -> None:
        self._preempt = True

    def fit(self) -> int:
        cfg = self.cfg
        start = self.maybe_resume()
        writer = (
            MetricsWriter(self.run_dir / "metrics.jsonl", truncate_after_step=start) if self.launch.is_main else None
        )
        self._write_run_json("running", start)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        progress = _progress(cfg.trainer.progress, self.launch.is_main, self.total_steps, start)
        last = start
        try:
            self._start_tracking(start)
            if start == 0 and self.val_ids and cfg.trainer.val_before_train:
                self._emit(writer, 0, self.validate())
            for step in range(start + 1, self.total_steps + 1):
                self._inject_faults(step)
                metrics = self.train_step(step)
                if (
                    self.val_ids
                    and cfg.trainer.test_freq > 0
                    and (step % cfg.trainer.test_freq == 0 or step == self.total_steps)
                ):
                    metrics.update(self.validate())
                self._emit(writer, step, metrics)
                last = step
                if progress:
                    progress.update(1)
                save_freq = int(cfg.trainer.save_freq)
                preempt = bool(dist.all_reduce_scalars([float(self._preempt)], "max")[0])
                if (save_freq > 0 and (step % save_freq == 0 or step == self.total_steps)) or (
                    preempt and cfg.trainer.save_on_preempt
                ):
                    self.save(step)
                if preempt:
                    raise Preempted(
                        f"SIGTERM received: stopped after step {step}"
                        + (" (checkpoint saved)" if cfg.trainer.save_on_preempt else "")
                    )
            if save_hf_model(cfg) and self._hf_saved_at != last:
                self._save_hf(last)
        except BaseException as exc:
            error = exc
            if isinstance(exc, RuntimeError) and _is_timeout(exc):
                error = RuntimeError(
                    f"a collective waited longer than trainer.dist_timeout={cfg.trainer.dist_timeout}s after step "
                    f"{last}: another rank is stuck or died ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                )
            text = failures.summary(error)
            if isinstance(exc, Preempted):
                self._write_run_json("preempted", last, text)
            elif failures.claim_first(self.run_dir, self.launch.rank, text):  # not a peer's secondary error
                atomic.write_json(self.run_dir / "run.json", self.run_info("failed", last, text))
            if error is exc:
                raise
            raise error from exc
        finally:
            self.rollout.close()
            if progress:
                progress.close()
            if writer:
                writer.close()
            if self.tracking:
                self.tracking.close()
        self._write_run_json("completed", last)
        return last

    def _start_tracking(self, start: int) -> None:
        """Rank 0 starts the `trainer.logger` backends; every rank learns whether that worked, so none hangs."""
        error = None
        if self.launch.is_main:
            cfg = self.cfg
            try:
                self.tracking = Tracking(
                    logger_names(cfg.trainer.logger),
                    project=str(cfg.trainer.project_name),
                    experiment=str(cfg.trainer.experiment_name),
                    run_dir=self.run_dir,
                    config=to_container(cfg),
                    start=start,
                )
            except Exception as exc:
                error = exc
        if dist.all_reduce_scalars([float(error is not None)], "max")[0]:
            if error is not None:
                raise error
            raise RuntimeError("rank 0 could not start the trainer.logger backends (see its log)")

    def _inject_faults(self, step: int) -> None:
        """Fault injection for reliability tests: fail every rank, or stall one rank inside the step."""
        t = self.cfg.trainer
        if t.fail_at_step is not None and step == int(t.fail_at_step):
            raise RuntimeError(f"trainer.fail_at_step={step}: injected failure")
        if t.hang_at_step is not None and step == int(t.hang_at_step) and self.launch.rank == int(t.hang_rank):
            log.warning("trainer.hang_at_step=%d: rank %d stalls (injected)", step, self.launch.rank)
            while True:
                time.sleep(3600)

    def _emit(self, writer: MetricsWriter | None, step: int, metrics: dict[str, float]) -> None:
        if writer is None:
            return
        writer.write(step, metrics)
        if self.tracking:
            self.tracking.log(step, metrics)


def _is_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def _progress(mode: str, is_main: bool, total: int, start: int):
    """A tqdm bar on a terminal only: batch logs stay line-oriented."""
    if not is_main or mode == "off" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="dsrl", unit="step", file=sys.stderr)


def check_launch(cfg: DictConfig, launch: dist.Launch) -> None:
    """trainer.nnodes * trainer.n_gpus_per_node must be the world torchrun started."""
    want = int(cfg.trainer.nnodes) * int(cfg.trainer.n_gpus_per_node)
    if want != launch.world_size:
        raise ConfigError(
            f"trainer.nnodes * trainer.n_gpus_per_node = {cfg.trainer.nnodes} * {cfg.trainer.n_gpus_per_node} = "
            f"{want}, but {launch.world_size} processes were launched (WORLD_SIZE); make them agree"
        )
    if launch.device.type == "cuda" and launch.local_world_size > torch.cuda.device_count():
        raise ConfigError(
            f"{launch.local_world_size} processes per node but only {torch.cuda.device_count()} "
            "visible GPUs (CUDA_VISIBLE_DEVICES)"
        )
