"""DeepSpeed specifics: our config -> an effective DeepSpeed config, and engine construction.

The stage-aware offload rules of the verl DeepSpeed branch live here: ZeRO-1 (and 0) + `cpu` runs without offload
and says so; ZeRO-2 + `cpu` offloads the optimizer; ZeRO-3 + `cpu` offloads the optimizer, and the parameters too
when `param_offload` is on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from dsrl import packed_attention
from dsrl.batching import UpdatePlan

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class EngineSpec:
    """The DeepSpeed config of one engine plus what dsrl decided about offload (recorded in run.json)."""

    name: str
    ds_config: dict[str, Any]
    offload_requested: str
    offload_effective: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "ds_config": self.ds_config,
            "offload_requested": self.offload_requested,
            "offload_effective": self.offload_effective,
            "notes": self.notes,
        }


def _offload(ds: DictConfig, device: str) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Stage-aware offload sections for zero_optimization, the effective placement and notes."""
    stage, mode = int(ds.zero_stage), ds.offload
    section: dict[str, Any] = {}
    effective = {"optimizer": "none", "param": "none"}
    notes: list[str] = []
    if mode == "none":
        return section, effective, notes
    if stage < 2:
        notes.append(
            f"zero_stage={stage} with offload={mode}: no effective offload (DeepSpeed offloads only from ZeRO-2 on); "
            "use ZeRO-2 or ZeRO-3 for real CPU offload"
        )
        return section, effective, notes
    target = {"device": mode, "pin_memory": device == "cuda"}
    if mode == "nvme":
        target["nvme_path"] = ds.nvme_path
    section["offload_optimizer"] = dict(target)
    effective["optimizer"] = mode
    if stage == 3:
        if ds.param_offload or mode == "nvme":
            section["offload_param"] = dict(target)
            effective["param"] = mode
        else:
            notes.append(
                "zero_stage=3 with offload: parameters stay on the device (set param_offload=True, "
                "or VERL_ENABLE_PARAM_OFFLOAD=1, to offload them too)"
            )
    elif ds.param_offload:
        notes.append(f"param_offload=True has no effect at zero_stage={stage} (parameter offload is ZeRO-3 only)")
    return section, effective, notes


def build_spec(
    name: str,
    ds: DictConfig,
    optim: DictConfig | None,
    plan: UpdatePlan | None,
    world_size: int,
    device: str,
    grad_clip: float | None = None,
) -> EngineSpec:
    """The DeepSpeed config for a trained engine (`optim` and `plan` given) or an eval-only one."""
    stage = int(ds.zero_stage)
    offload, effective, notes = _offload(ds, device)
    zero: dict[str, Any] = {"stage": stage, **offload}
    if stage >= 1:
        zero.update(
            overlap_comm=bool(ds.overlap_comm) and device == "cuda",
            contiguous_gradients=bool(ds.contiguous_gradients),
            reduce_bucket_size=int(ds.reduce_bucket_size),
        )
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=int(ds.stage3_prefetch_bucket_size),
            stage3_param_persistence_threshold=int(ds.stage3_param_persistence_threshold),
            stage3_gather_16bit_weights_on_model_save=False,
            memory_efficient_linear=bool(ds.stage3_memory_efficient_linear),
        )
    cfg: dict[str, Any] = {
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": bool(ds.wall_clock_breakdown),
    }
    precision = ds.mixed_precision
    if precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    if stage == 2 and ds.zero2_fp32_grad_accum and precision != "fp32":
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}
        notes.append("ZeRO-2 gradients accumulate in fp32 (zero2_fp32_grad_accum)")
    if plan is None:
        cfg.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=world_size)
    else:
        assert optim is not None
        cfg.update(plan.ds_batch_sizes(world_size))
        torch_adam = ds.torch_adam if ds.torch_adam != "auto" else device == "cpu"
        cfg["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": float(optim.lr),
                "betas": [float(b) for b in optim.betas],
                "eps": float(optim.eps),
                "weight_decay": float(optim.weight_decay),
                "torch_adam": bool(torch_adam),
            },
        }
        if torch_adam and effective["optimizer"] != "none":
            cfg["zero_force_ds_cpu_optimizer"] = False
        if grad_clip is not None and grad_clip > 0:
            cfg["gradient_clipping"] = float(grad_clip)
    for note in notes:
        log.info("[%s] %s", name, note)
    return EngineSpec(name=name, ds_config=cfg, offload_requested=ds.offload, offload_effective=effective, notes=notes)


def lr_lambda(optim: DictConfig, total_steps: int):
    """verl's schedule: linear warmup (steps or ratio of total), then constant or cosine to zero."""
    warmup = int(optim.lr_warmup_steps)
    if warmup < 0:
        warmup = int(float(optim.lr_warmup_steps_ratio) * total_steps)
    style = optim.warmup_style

    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return float(step + 1) / float(warmup)
        if style == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * min(1.0, progress))).item())
        return 1.0

    return fn


def load_model(
    path: str,
    *,
    kind: str,
    spec: EngineSpec,
    dtype: torch.dtype,
    trust_remote_code: bool,
    override_config: dict[str, Any],
    gradient_checkpointing: bool,
) -> torch.nn.Module:
    """Load a HF model; under ZeRO-3 inside `HfDeepSpeedConfig` so parameters are partitioned as they load."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification
    from transformers.integrations import HfDeepSpeedConfig

    overrides = dict(override_config)
    attn = overrides.pop("attn_implementation", "sdpa")
    if attn == packed_attention.NAME:
        packed_attention.register()
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **overrides)
    keep_alive = HfDeepSpeedConfig(spec.ds_config) if spec.ds_config["zero_optimization"]["stage"] == 3 else None
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
        "attn_implementation": attn,
    }
    if kind == "critic":
        config.num_labels = 1
        config.classifier_dropout = 0.0  # values must not depend on train/eval mode
        model = AutoModelForTokenClassification.from_pretrained(path, config=config, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    del keep_alive
    if spec.ds_config["zero_optimization"]["stage"] == 3:
        _rebuild_rotary_buffers(model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


def _rebuild_rotary_buffers(model: torch.nn.Module) -> None:
    """Give rotary embeddings back the fp32 inverse frequencies that ``zero.Init`` rounded to 16 bits.

    ``zero.Init`` creates every floating tensor in the engine's dtype, the buffers a module computes in its
    constructor included, so a ZeRO-3 model ran its positions with bf16 frequencies and sampled different responses
    than the same model at ZeRO-0/1/2 (found by parity.tsv). The modules are rebuilt here, outside ``zero.Init``.
    """
    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "config"):
            fresh = type(module)(config=module.config)
            for name, buffer in fresh.named_buffers(recurse=False):
                setattr(module, name, buffer.to(getattr(module, name).device))


def initialize(model: torch.nn.Module, spec: EngineSpec, lr_schedule=None):
    """`deepspeed.initialize` with our config; trainable engines get a LambdaLR built on DeepSpeed's optimizer."""
    import deepspeed

    if "optimizer" not in spec.ds_config:
        model.requires_grad_(False)
        engine, *_ = deepspeed.initialize(model=model, config=spec.ds_config)
        engine.eval()
        return engine
    params = [p for p in model.parameters() if p.requires_grad]
    scheduler = None
    if lr_schedule is not None:

        def scheduler(opt):
            return torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule)

    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=params, config=spec.ds_config, lr_scheduler=scheduler
    )
    return engine


def _zero3_offload(engine) -> Any | None:
    opt = getattr(engine, "optimizer", None)
    return getattr(opt, "parameter_offload", None)


@contextlib.contextmanager
def full_parameters(engine) -> Iterator[torch.nn.Module]:
    """The engine's module with whole (unsharded) parameters, for HF `generate` under ZeRO-3.

    ZeRO-3 fetches and releases each layer's shards around every forward; for hundreds of decode steps that is an
    all-gather per layer per token. Instead gather everything once, detach ZeRO's module hooks for the duration,
    then re-register them. Stages 0-2 keep whole parameters already.
    """
    if engine.zero_optimization_stage() != 3:
        yield engine.module
        return
    import deepspeed

    offload = _zero3_offload(engine)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        if offload is not None:
            for p in engine.module.parameters():
                p.ds_active_sub_modules.clear()
            for hook in offload.forward_hooks + offload.backward_hooks:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield engine.module
        finally:
            if offload is not None:
                offload._register_deepspeed_module(offload.module)


def param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(total parameters, largest single module's own parameters), shared tensors counted once.

    Under ZeRO-3 the parameters are already partitioned when this runs, so each one's full size is its `ds_numel`.
    """
    seen: dict[int, int] = {}
    largest = 0
    for module in model.modules():
        own = 0
        for p in module.parameters(recurse=False):
            numel = int(getattr(p, "ds_numel", p.numel()))
            seen[id(p)] = numel
            own += numel
        largest = max(largest, own)
    return sum(seen.values()), largest


def model_states_estimate(model: torch.nn.Module, spec: EngineSpec, world_size: int, local_world_size: int) -> dict:
    """DeepSpeed's own model-state memory estimate (params, gradients, optimizer states) for this engine's setup.

    Trained engines use `estimate_zero2_model_states_mem_needs` (stages 0-2; DeepSpeed has no ZeRO-1 estimator, and
    ZeRO-1 keeps whole 16-bit gradients, so it reads low there by 2 bytes per parameter x (1 - 1/GPUs)) or
    `estimate_zero3_model_states_mem_needs`, with the effective offload of the case and ZeRO-3's zero-init loading.
    A frozen engine (the reference) holds only its weights, whole or partitioned. Per GPU and per node, bytes.
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    total, largest = param_counts(model)
    stage = int(spec.ds_config["zero_optimization"]["stage"])
    nodes = max(1, world_size // max(1, local_world_size))
    offload_opt = spec.offload_effective["optimizer"] != "none"
    offload_param = spec.offload_effective["param"] != "none"
    out: dict[str, Any] = {"total_params": total, "largest_layer_params": largest}
    if "optimizer" not in spec.ds_config:
        per_param = 4 if "bf16" not in spec.ds_config and "fp16" not in spec.ds_config else 2
        shards = world_size if stage == 3 else 1
        out.update(
            estimator=f"frozen weights, {per_param} bytes each", gpu_bytes=per_param * total // shards, cpu_bytes=0
        )
        return out
    if stage == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total,
            largest,
            num_gpus_per_node=local_world_size,
            num_nodes=nodes,
            cpu_offload=offload_opt,
            cpu_offload_params=offload_param,
            zero_init=True,
        )
        out["estimator"] = "estimate_zero3_model_states_mem_needs"
    else:
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total, num_gpus_per_node=local_world_size, num_nodes=nodes, cpu_offload=offload_opt
        )
        out["estimator"] = "estimate_zero2_model_states_mem_needs"
    out.update(gpu_bytes=int(gpu), cpu_bytes=int(cpu))
    return out
