"""Actor, reference and critic: one function builds the engine of a role from that role's config section.

The actor and the critic are DeepSpeed engines that train. The reference policy only exists when a KL term needs it
and never trains: a frozen module, or under ZeRO-3 an eval-only engine (its parameters stay partitioned like the
actor's). Each role's model-state memory, as DeepSpeed's own estimators predict it, goes into run.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from dsrl.batching import UpdatePlan
from dsrl.dist import Launch
from dsrl.engines import DTYPES, EngineSpec, build_spec, initialize, load_model, lr_lambda, model_states_estimate

log = logging.getLogger("dsrl")

ROLES = ("actor", "ref", "critic")


@dataclass
class Built:
    """A role's model as the loop uses it, with the DeepSpeed config it runs under and its memory estimate."""

    model: Any  # a DeepSpeed engine, or the reference's frozen torch module
    spec: EngineSpec
    memory_estimate: dict[str, Any]


def build_role(
    role: str, cfg: DictConfig, model_path: str, plan: UpdatePlan | None, launch: Launch, total_steps: int
) -> Built:
    """Load the role's model (partitioned as it loads under ZeRO-3) and wrap it as the role needs."""
    critic = role == "critic"
    trains = role != "ref"
    section = cfg.critic if critic else cfg.actor_rollout_ref.actor
    ds = cfg.critic.deepspeed_config if critic else section.deepspeed
    model_cfg = cfg.critic.model if critic else cfg.actor_rollout_ref.model
    spec = build_spec(
        role,
        ds,
        section.optim if trains else None,
        plan,
        launch.world_size,
        launch.device.type,
        section.grad_clip if trains else None,
    )
    model = load_model(
        model_path,
        kind=role,
        spec=spec,
        dtype=DTYPES[ds.mixed_precision],
        trust_remote_code=model_cfg.trust_remote_code,
        override_config=dict(model_cfg.override_config),
        gradient_checkpointing=trains and model_cfg.enable_gradient_checkpointing,
    )
    estimate = model_states_estimate(model, spec, launch.world_size, launch.local_world_size)
    if trains:
        model = initialize(model, spec, lr_lambda(section.optim, total_steps))
    elif ds.zero_stage == 3:
        model = initialize(model, spec)
    else:
        model = model.to(launch.device).eval().requires_grad_(False)
    return Built(model, spec, estimate)


def memory_total(estimates: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Every role's predicted model states together, in GiB: per GPU, and CPU per node."""
    gib = 1024**3
    gpu = sum(e["gpu_bytes"] for e in estimates.values()) / gib
    cpu = sum(e["cpu_bytes"] for e in estimates.values()) / gib
    log.info("DeepSpeed's model-state estimate: %.3g GiB per GPU, %.3g GiB CPU per node", gpu, cpu)
    return {"gpu_gb": gpu, "cpu_gb_per_node": cpu}
