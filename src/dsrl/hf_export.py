"""The actor as a Hugging Face folder (safetensors + config + tokenizer), from a live engine or a saved checkpoint.

Both ways write the fp32 master weights the optimizer holds, the most precise copy of the trained model; the
config keeps the training dtype, so `from_pretrained(dtype="auto")` loads exactly the weights the trainer's
forward used (bf16 masters round to the bf16 module weights) and `dtype=torch.float32` loads the masters.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from dsrl import dist
from dsrl.checkpoint import TAG

log = logging.getLogger("dsrl")

HF_CONFIG_DIR = "huggingface"


def gather_fp32_state_dict(engine: Any, is_main: bool) -> dict[str, torch.Tensor] | None:
    """Collective: the engine's full fp32 parameters on rank 0's CPU (None on the other ranks).

    DeepSpeed's `safe_get_full_fp32_param` assembles one parameter's master copy at a time on the device (ZeRO-1/2
    all-reduce its fragments, ZeRO-3 gathers its partitions); rank 0 copies it to CPU before the next one, so a
    GPU never holds more than the model plus one parameter. Without a partitioned optimizer (ZeRO-0 in fp32) the
    parameter itself is the master copy (ZeRO-3 parameters always have one).
    """
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param)  # collective for ZeRO-1/2/3; None: no partitioned optimizer
        if is_main:
            state[name] = (param if full is None else full).detach().to("cpu", torch.float32, copy=True)
        del full
    persistent = set(module.state_dict().keys())
    for name, buf in module.named_buffers():
        if is_main and name in persistent:
            state[name] = buf.detach().to("cpu", copy=True)
    return state if is_main else None


def save_config_and_tokenizer(config: Any, tokenizer: Any, out: Path) -> None:
    """What `dsrl export` needs besides the weights: the HF config (inference-ready) and the tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    _inference_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _inference_config(config: Any) -> Any:
    config = copy.deepcopy(config)
    config.use_cache = True  # the trainer turns the KV cache off for training forwards
    return config


def save_hf_folder(config: Any, tokenizer: Any, state: dict[str, torch.Tensor], out: Path) -> Path:
    """Write `out` as a complete HF folder, replacing an older one only once the new one is whole."""
    from transformers import AutoModelForCausalLM

    config = _inference_config(config)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)  # only for save_pretrained's naming and tied weights
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    skeleton.save_pretrained(tmp, state_dict=state)
    tokenizer.save_pretrained(tmp)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def save_actor(engine: Any, tokenizer: Any, out: Path, is_main: bool, step: int) -> None:
    """`<run_dir>/actor_hf/`: the actor's fp32 weights gathered one parameter at a time (a collective)."""
    state = gather_fp32_state_dict(engine, is_main)
    if state is not None:
        save_hf_folder(engine.module.config, tokenizer, state, out)
        log.info("step %d: actor saved as a Hugging Face model in %s", step, out)
    dist.barrier()


def _actor_dir(checkpoint_dir: Path) -> Path:
    """Accept a dsrl step folder (`global_step_N`) or the actor's DeepSpeed folder inside it."""
    return checkpoint_dir / "actor" if (checkpoint_dir / "actor").is_dir() else checkpoint_dir


def fp32_state_dict_from_checkpoint(actor_dir: Path) -> dict[str, torch.Tensor]:
    """DeepSpeed's own zero_to_fp32 merge of every rank's optimizer partitions (ZeRO-1, -2 and -3), on CPU."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = TAG if (actor_dir / TAG).is_dir() else None  # None: DeepSpeed's `latest` file names the tag
    return get_fp32_state_dict_from_zero_checkpoint(str(actor_dir), tag=tag)


def export_checkpoint(checkpoint_dir: Path, out_dir: Path, base_model: str | None = None) -> Path:
    """`dsrl export`: a saved DeepSpeed actor checkpoint -> a HF folder; config and tokenizer come from the
    checkpoint's `huggingface/` folder (dsrl writes it with every checkpoint) or from `base_model`."""
    from transformers import AutoConfig, AutoTokenizer

    actor_dir = _actor_dir(Path(checkpoint_dir))
    source = base_model or actor_dir / HF_CONFIG_DIR
    if base_model is None and not Path(source).is_dir():
        raise FileNotFoundError(
            f"{actor_dir} has no {HF_CONFIG_DIR}/ folder with the model's config and tokenizer: pass --base-model "
            "(the model the run started from)"
        )
    config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    state = fp32_state_dict_from_checkpoint(actor_dir)
    return save_hf_folder(config, tokenizer, state, Path(out_dir))
