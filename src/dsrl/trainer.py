"""The PPO/GRPO loop, readable top to bottom.

`Trainer(cfg, launch)` only records the config; `setup()` builds data, models and engines, rollout, reward in that
order; `fit()` runs the steps; `close()` releases the rollout servers and the loggers. One step:

generate -> reward -> old log-probs -> ref log-probs -> values -> advantages -> critic update -> actor update
-> weight sync -> metrics -> checkpoint.

Every rank rolls out its own share of prompts; advantages and batch metrics are computed on the whole batch (gathered
on every rank, as verl's driver does) so GAE whitening and the logged statistics match verl's exactly.

The file is the loop and its setup, nothing else (~400 lines): what is not read top to bottom lives in the modules
it imports (roles, checkpoint, metrics, batch_advantages, remove_padding, loggers, failures).
"""

from __future__ import annotations

import logging
import signal
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig

from dsrl import algorithms as algos
from dsrl import atomic, checkpoint, dist, failures, hf_export
from dsrl import workers as W
from dsrl.batch_advantages import whole_batch_advantages
from dsrl.batching import BatchPlan, plan_batches
from dsrl.config import ConfigError, save_hf_model, use_critic
from dsrl.data import PromptBatcher, as_list, load_prompts
from dsrl.data_prep import prepare_gsm8k
from dsrl.flops import peak_flops
from dsrl.loggers import Tracking, start_tracking
from dsrl.metrics import (
    MetricsWriter,
    Timer,
    mfu_metrics,
    parity_metrics,
    peak_memory_metrics,
    perf_metrics,
    progress_bar,
    run_record,
    val_reward_means,
)
from dsrl.models import load_tokenizer, resolve_model_path
from dsrl.remove_padding import check_remove_padding
from dsrl.reward import RewardScorer, default_compute_score, load_custom_reward_fn
from dsrl.roles import build_role, memory_total
from dsrl.rollout import sampling_from
from dsrl.rollout.batch import assemble_batch, rollout_probs_diff
from dsrl.rollout.hf import HFRollout

log = logging.getLogger("dsrl")


class Preempted(Exception):
    """SIGTERM arrived (SLURM preemption or time limit); the run stops after the current step."""


class Trainer:
    def __init__(self, cfg: DictConfig, launch: dist.Launch):
        self.cfg = cfg
        self.launch = launch
        self.device = launch.device
        self.run_dir = Path(cfg.trainer.run_dir)
        self.seed = cfg.trainer.seed
        self.plan: BatchPlan = plan_batches(cfg, launch.world_size)
        self.use_critic = use_critic(cfg)
        self.use_ref = cfg.actor_rollout_ref.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward
        self.last_step = 0
        self.ready = False  # setup() finished
        self.fitting = False  # fit() started: a failure from here on is recorded with the run's details
        self._preempt = False
        self._hf_saved_at: int | None = None
        self.rollout = None
        self.tracking: Tracking | None = None
        self.writer: MetricsWriter | None = None
        self.progress = None

    # ---------------------------------------------------------------- setup, in order
    def setup(self) -> None:
        if self.launch.is_main:
            failures.clear(self.run_dir)  # before the ranks first synchronise (in _setup_data)
        checkpoint.seed_all(self.seed)
        self._setup_data()
        self._setup_engines()
        self._setup_rollout()
        self._setup_reward()
        kl = self.cfg.algorithm.kl_ctrl
        self.kl_ctrl = algos.make_kl_controller(
            kl.type, float(kl.kl_coef), target_kl=float(kl.target_kl), horizon=float(kl.horizon)
        )
        others = [m for m in (self.ref, self.critic) if m is not None]
        self.remove_padding = check_remove_padding(
            self.cfg, self.actor, self.actor_spec, self.pad_id, self.device, others
        )
        precision = self.cfg.actor_rollout_ref.actor.deepspeed.mixed_precision
        self.peak_flops = (
            peak_flops(torch.cuda.get_device_name(self.device), precision) if self.device.type == "cuda" else None
        )
        self.ready = True

    def _setup_data(self) -> None:
        """Prompts (synthetic GSM8K when no files are given), the models' local paths, the tokenizer, the batcher."""
        cfg = self.cfg
        train_files, val_files = as_list(cfg.data.train_files), as_list(cfg.data.val_files)
        if not train_files:
            data_dir = self.run_dir / "data"
            if self.launch.is_main:
                prepare_gsm8k("synthetic", data_dir, seed=self.seed)
            dist.barrier()
            train_files = [str(data_dir / "train.parquet")]
            val_files = val_files or [str(data_dir / "test.parquet")]
        model_path = cfg.actor_rollout_ref.model.path
        if self.launch.is_main:
            resolve_model_path(model_path, corpus_files=train_files)
        dist.barrier()
        self.actor_path = str(resolve_model_path(model_path, corpus_files=train_files))
        critic_path = cfg.critic.model.path
        self.critic_path = str(resolve_model_path(critic_path, corpus_files=train_files)) if self.use_critic else None

        tok_path = cfg.actor_rollout_ref.model.tokenizer_path or self.actor_path
        self.tokenizer = load_tokenizer(tok_path, cfg.actor_rollout_ref.model.trust_remote_code)
        self.pad_id = int(self.tokenizer.pad_token_id)
        max_len = cfg.data.max_prompt_length
        self.train_rows, self.train_ids = load_prompts(
            train_files, self.tokenizer, max_len, cfg.data.filter_overlong_prompts
        )
        if len(self.train_rows) < cfg.data.train_batch_size:
            raise ConfigError(
                f"data.train_batch_size={cfg.data.train_batch_size} is larger than the {len(self.train_rows)} "
                f"usable prompts in {', '.join(train_files)}"
            )
        self.val_rows: list[dict] = []
        self.val_ids: list[list[int]] = []
        if val_files and (cfg.trainer.test_freq > 0 or cfg.trainer.val_before_train):
            self.val_rows, self.val_ids = load_prompts(val_files, self.tokenizer, max_len, True)
        data_seed = cfg.data.seed if cfg.data.seed is not None else self.seed
        self.batcher = PromptBatcher(
            len(self.train_rows), cfg.data.train_batch_size, data_seed, shuffle=cfg.data.shuffle
        )
        total = cfg.trainer.total_training_steps
        steps_per_epoch = len(self.train_rows) // cfg.data.train_batch_size
        self.total_steps = total if total is not None else steps_per_epoch * cfg.trainer.total_epochs

    def _setup_engines(self) -> None:
        roles = {"actor": (self.actor_path, self.plan.actor)}
        if self.use_ref:
            roles["ref"] = (self.actor_path, None)
        if self.use_critic:
            roles["critic"] = (self.critic_path, self.plan.critic)
        built = {
            role: build_role(role, self.cfg, path, plan, self.launch, self.total_steps)
            for role, (path, plan) in roles.items()
        }
        self.specs = {role: b.spec for role, b in built.items()}
        self.memory_estimates = {role: b.memory_estimate for role, b in built.items()}
        self.memory_estimates["total"] = memory_total(self.memory_estimates)
        self.actor, self.actor_spec = built["actor"].model, built["actor"].spec
        self.ref = built["ref"].model if "ref" in built else None
        self.critic = built["critic"].model if "critic" in built else None
        self.engines = {role: b.model for role, b in built.items() if role != "ref"}

    def _setup_rollout(self) -> None:
        rollout_cfg = self.cfg.actor_rollout_ref.rollout
        need = self.cfg.data.max_prompt_length + self.cfg.data.max_response_length
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
                trust_remote_code=self.cfg.actor_rollout_ref.model.trust_remote_code,
            )
        else:
            self.rollout = HFRollout(self.actor, self.tokenizer, self.device)

    def _setup_reward(self) -> None:
        crf = self.cfg.custom_reward_function
        fn = load_custom_reward_fn(crf.path, crf.name) if crf.path else default_compute_score
        self.reward = RewardScorer(fn, self.tokenizer, dict(self.cfg.reward.reward_kwargs), self.cfg.reward.num_workers)

    # ---------------------------------------------------------------- run.json and checkpoints
    def run_info(self, status: str, last_step: int, error: str | None = None) -> dict:
        return run_record(
            cfg=self.cfg,
            status=status,
            last_step=last_step,
            total_steps=self.total_steps,
            error=error,
            specs=self.specs,
            plan=self.plan,
            remove_padding=self.remove_padding,
            memory_estimate=self.memory_estimates,
            model_path=self.actor_path,
            device_type=self.device.type,
        )

    def _write_run_json(self, status: str, last_step: int, error: str | None = None) -> None:
        if self.launch.is_main:
            atomic.write_json(self.run_dir / "run.json", self.run_info(status, last_step, error))

    def record_failure(self, error: BaseException) -> None:
        """run.json says `failed`, written by the rank that failed first (not by a peer's secondary error)."""
        text = failures.summary(error)
        if failures.claim_first(self.run_dir, self.launch.rank, text):
            atomic.write_json(self.run_dir / "run.json", self.run_info("failed", self.last_step, text))

    def save(self, step: int) -> None:
        checkpoint.save_run(
            self.cfg.trainer, step, self.engines, self.batcher, self.kl_ctrl, self.launch.rank, self.tokenizer
        )
        if save_hf_model(self.cfg):
            self._save_hf(step)

    def _save_hf(self, step: int) -> None:
        hf_export.save_actor(self.actor, self.tokenizer, self.run_dir / "actor_hf", self.launch.is_main, step)
        self._hf_saved_at = step

    # ---------------------------------------------------------------- the loop
    def fit(self) -> int:
        """Run the remaining steps; returns the last one. A failure is recorded in run.json by the entry point."""
        cfg = self.cfg
        start = self.last_step = checkpoint.resume_run(
            self.cfg.trainer, self.engines, self.batcher, self.kl_ctrl, self.launch.rank
        )
        if self.launch.is_main:
            self.writer = MetricsWriter(self.run_dir / "metrics.jsonl", truncate_after_step=start)
        self._write_run_json("running", start)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.progress = progress_bar(cfg.trainer.progress, self.launch.is_main, self.total_steps, start)
        self.fitting = True
        self.tracking = start_tracking(self.cfg, self.run_dir, start, self.launch.is_main, dist.all_reduce_scalars)
        if start == 0 and self.val_ids and cfg.trainer.val_before_train:
            self._emit(0, self.validate())
        for step in range(start + 1, self.total_steps + 1):
            failures.inject_faults(cfg.trainer, step, self.launch.rank)
            metrics = self.train_step(step)
            if (
                self.val_ids
                and cfg.trainer.test_freq > 0
                and (step % cfg.trainer.test_freq == 0 or step == self.total_steps)
            ):
                metrics.update(self.validate())
            self._emit(step, metrics)
            self.last_step = step
            if self.progress:
                self.progress.update(1)
            save_freq = cfg.trainer.save_freq
            preempt = bool(dist.all_reduce_scalars([float(self._preempt)], "max")[0])
            if (save_freq > 0 and (step % save_freq == 0 or step == self.total_steps)) or (
                preempt and cfg.trainer.save_on_preempt
            ):
                self.save(step)
            if preempt:
                stopped = Preempted(
                    f"SIGTERM received: stopped after step {step}"
                    + (" (checkpoint saved)" if cfg.trainer.save_on_preempt else "")
                )
                self._write_run_json("preempted", step, failures.summary(stopped))
                raise stopped
        if save_hf_model(cfg) and self._hf_saved_at != self.last_step:
            self._save_hf(self.last_step)
        return self.last_step

    def finish(self) -> None:
        """run.json says `completed` (after close(): the rollout servers have stopped)."""
        self._write_run_json("completed", self.last_step)

    def train_step(self, step: int) -> dict[str, float]:
        cfg, arr, plan = self.cfg, self.cfg.actor_rollout_ref, self.plan
        n, rmpad = plan.n, self.remove_padding
        timer = Timer(self._sync)
        temperature = float(arr.rollout.temperature)
        with timer.phase("step"):
            global_idx = self.batcher.next_batch()
            mine = global_idx[self.launch.rank * plan.prompts_per_rank : (self.launch.rank + 1) * plan.prompts_per_rank]
            prompts = [self.train_ids[i] for i in mine]
            rows = [self.train_rows[i] for i in mine]
            with timer.phase("gen"):
                responses = self.rollout.generate(
                    prompts, n, sampling_from(self.cfg), checkpoint.derived_seed(self.seed, step, self.launch.rank)
                )
            for name, seconds in self.rollout.timings().items():
                timer.record(f"gen/{name}", seconds)
            batch = assemble_batch(prompts, responses, n, self.pad_id, cfg.data.max_response_length, self.device)
            if cfg.algorithm.adv_estimator == "remax":
                with timer.phase("gen_max"):
                    greedy = self.rollout.generate(prompts, 1, replace(sampling_from(self.cfg), do_sample=False), 0)
                    greedy_scores = self.reward.score(rows, greedy, 1)
                baselines = [b for b in greedy_scores for _ in range(n)]
                batch["reward_baselines"] = torch.tensor(baselines, dtype=torch.float32, device=self.device)
            with timer.phase("reward"):
                scores = torch.tensor(self.reward.score(rows, responses, n), dtype=torch.float32, device=self.device)
                batch["token_level_scores"] = algos.scores_to_token_rewards(scores, batch["response_mask"])
            with timer.phase("old_log_prob"):
                old_lp, entropy = W.forward_in_micro_batches(
                    lambda mb: W.log_probs_of(self.actor, mb, temperature, rmpad, with_entropy=True),
                    batch,
                    plan.log_prob_micro,
                    plan.log_prob_max_tokens,
                )
                batch["old_log_probs"] = old_lp
                sampler_check = (
                    rollout_probs_diff(self.rollout.log_probs, old_lp, batch["response_mask"])
                    if self.rollout.log_probs is not None
                    else {}
                )
            if self.ref is not None:
                with timer.phase("ref"):
                    (batch["ref_log_prob"],) = W.forward_in_micro_batches(
                        lambda mb: W.log_probs_of(self.ref, mb, temperature, rmpad)[0],
                        batch,
                        plan.ref_log_prob_micro,
                        plan.ref_log_prob_max_tokens,
                    )
            if self.critic is not None:
                with timer.phase("values"):
                    self.critic.eval()
                    (batch["values"],) = W.forward_in_micro_batches(
                        lambda mb: W.values_of(self.critic, mb, rmpad), batch, plan.values_micro, plan.values_max_tokens
                    )
            with timer.phase("adv"):
                metrics = whole_batch_advantages(batch, global_idx, entropy, cfg, n, self.kl_ctrl, self.launch.rank)
            metrics.update(sampler_check)
            metrics.update(
                parity_metrics(
                    *(dist.all_gather_rows(batch[k]) for k in ("responses", "response_mask", "old_log_probs"))
                )
            )
            if self.critic is not None:
                with timer.phase("update_critic"):
                    each_micro = cfg.critic.deepspeed_config.zero2_step_each_micro
                    metrics.update(W.update_critic(self.critic, batch, plan.critic, cfg.critic, rmpad, each_micro))
            if step > cfg.trainer.critic_warmup:
                with timer.phase("update_actor"):
                    each_micro = arr.actor.deepspeed.zero2_step_each_micro
                    metrics.update(
                        W.update_actor(self.actor, batch, plan.actor, arr.actor, temperature, rmpad, each_micro)
                    )
            with timer.phase("update_weights"):
                self.rollout.sync_weights()
        tokens = dist.all_reduce_scalars([float(batch["attention_mask"].sum().item())], "sum")[0]
        world = self.launch.world_size
        metrics.update(timer.metrics())
        metrics.update(perf_metrics(tokens, timer.times, world, arr.actor.ppo_epochs))
        engines = {"actor": (self.actor, arr.actor.ppo_epochs), "critic": (self.critic, cfg.critic.ppo_epochs)}
        seq_lens = (batch["prompt_lens"] + batch["response_lens"]).tolist()
        metrics.update(mfu_metrics(engines, seq_lens, timer.times, world, self.peak_flops, dist.all_reduce_scalars))
        metrics.update(peak_memory_metrics(self.device.type, dist.all_reduce_scalars))
        return metrics

    def validate(self) -> dict[str, float]:
        """Greedy (val_kwargs) generation over the validation prompts, sharded across ranks."""
        world, rank = self.launch.world_size, self.launch.rank
        idx = list(range(rank, len(self.val_ids), world))
        vk = self.cfg.actor_rollout_ref.rollout.val_kwargs
        responses = self.rollout.generate(
            [self.val_ids[i] for i in idx],
            vk.n,
            sampling_from(self.cfg, val=True),
            checkpoint.derived_seed(self.seed, -1, rank),
        )
        rows = [self.val_rows[i] for i in idx]
        scores = self.reward.score(rows, responses, vk.n)
        sources = [r["data_source"] for r in rows for _ in range(vk.n)]
        return val_reward_means(dist.all_gather_objects(list(zip(sources, scores, strict=True))))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _on_sigterm(self, signum, frame) -> None:
        self._preempt = True

    def _emit(self, step: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        self.writer.write(step, metrics)
        if self.tracking:
            self.tracking.log(step, metrics)

    def close(self) -> None:
        """Stop the rollout (its vLLM servers) and close the progress bar, metrics.jsonl and the loggers."""
        if self.rollout is not None:
            self.rollout.close()
        if self.progress:
            self.progress.close()
        if self.writer:
            self.writer.close()
        if self.tracking:
            self.tracking.close()
