"""Offline models: ``random:<preset>`` Qwen3 checkpoints with a tokenizer trained on GSM8K-style text.

The benchmark measures RL system throughput, so random weights of the right shapes are enough and need no
model hub. Builds are cached on disk by a content hash and shared safely between concurrent jobs.
torch/transformers are imported inside functions so ``import dsrl.models`` stays cheap.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsrl.data import read_prompts
from dsrl.data_prep import INSTRUCTION, read_gsm8k_jsonl, synthetic_gsm8k

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen3Config

RANDOM_PREFIX = "random:"
PAD_TOKEN, IM_START, EOS_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, EOS_TOKEN)
# Qwen's chat format (no default system prompt, as in Qwen3).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen2/Qwen3's pre-tokenizer split: words, single digits, punctuation runs, whitespace.
_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MODEL_SEED = 0
DEFAULT_CORPUS_ROWS = 2000
# Bump when the build recipe changes so old cache entries are not reused.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class ModelPreset:
    """Shapes of a random model; ``vocab_size`` None means the trained tokenizer's size."""

    tokenizer_vocab_size: int
    vocab_size: int | None
    dtype: str
    config: Mapping[str, Any]


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(
        tokenizer_vocab_size=512,
        vocab_size=None,
        dtype="float32",
        config={
            "hidden_size": 64,
            "num_hidden_layers": 2,
            # head_dim 32: the smallest head size vLLM's CPU attention has a kernel for.
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "intermediate_size": 128,
            "tie_word_embeddings": False,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
        },
    ),
    # Shapes of Qwen/Qwen3-0.6B (bf16 like the released checkpoint).
    "qwen3-0.6b": ModelPreset(
        tokenizer_vocab_size=8192,
        vocab_size=151936,
        dtype="bfloat16",
        config={
            "hidden_size": 1024,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 3072,
            "tie_word_embeddings": True,
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
        },
    ),
}


def _preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        valid = ", ".join(RANDOM_PREFIX + preset for preset in PRESETS)
        raise ValueError(f"unknown model preset {name!r}; valid: {valid}")
    return PRESETS[name]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (Qwen-style pre-tokenization and chat format) trained on ``texts``.

    Byte-level means any text encodes; the vocabulary stops short of ``vocab_size`` when the corpus
    has no more merges to learn.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, chat_template=CHAT_TEMPLATE
    )


def corpus_texts(corpus_files: Sequence[str | os.PathLike] = ()) -> list[str]:
    """Tokenizer training text: prompts (with the instruction) and answers of GSM8K-style rows.

    Defaults to synthetic rows; ``corpus_files`` are verl-schema ``.parquet`` or openai/gsm8k ``.jsonl``.
    """
    if not corpus_files:
        return [
            text
            for row in synthetic_gsm8k(DEFAULT_CORPUS_ROWS, seed=0)
            for text in (f"{row['question']} {INSTRUCTION}", row["answer"])
        ]
    texts: list[str] = []
    for file in corpus_files:
        path = Path(file)
        if path.suffix == ".parquet":
            for row in read_prompts(path):
                texts.extend(message["content"] for message in row["prompt"])
                texts.append(row["extra_info"]["answer"])
        elif path.suffix == ".jsonl":
            for row in read_gsm8k_jsonl(path):
                texts.extend((f"{row['question']} {INSTRUCTION}", row["answer"]))
        else:
            raise ValueError(f"tokenizer corpus file {path} must be a verl .parquet or a GSM8K .jsonl")
    return texts


def preset_config(name: str, tokenizer: PreTrainedTokenizerFast) -> Qwen3Config:
    """The Qwen3 config of preset ``name`` with token ids (and, for tiny, vocab) taken from ``tokenizer``."""
    from transformers import Qwen3Config

    preset = _preset(name)
    return Qwen3Config(
        **preset.config,
        vocab_size=preset.vocab_size or len(tokenizer),
        dtype=preset.dtype,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def default_cache_dir() -> Path:
    return Path(os.environ.get("DSRL_CACHE_DIR") or Path.home() / ".cache" / "dsrl" / "models")


def _cache_key(name: str, texts: Sequence[str]) -> str:
    corpus = hashlib.sha256()
    for text in texts:
        corpus.update(text.encode("utf-8") + b"\0")
    spec = {
        "format": CACHE_FORMAT,
        "preset": name,
        "spec": asdict(_preset(name)),
        "special_tokens": SPECIAL_TOKENS,
        "chat_template": CHAT_TEMPLATE,
        "pretokenize": _PRETOKENIZE_PATTERN,
        "seed": MODEL_SEED,
        "corpus_sha256": corpus.hexdigest(),
        "transformers": version("transformers"),
        "tokenizers": version("tokenizers"),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _build(name: str, texts: Sequence[str], out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    preset = _preset(name)
    tokenizer = train_tokenizer(texts, preset.tokenizer_vocab_size)
    config = preset_config(name, tokenizer)
    # Seed a forked RNG so the weights are reproducible without disturbing the caller's RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODEL_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to(getattr(torch, preset.dtype)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_cached(name: str, cache_dir: Path, corpus_files: Sequence[str]) -> Path:
    texts = corpus_texts(corpus_files)
    final = cache_dir / f"{name}-{_cache_key(name, texts)}"
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache_dir))
        try:
            _build(name, texts, tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model_path(
    path: str, *, cache_dir: str | Path | None = None, corpus_files: Sequence[str] = ()
) -> Path | str:
    """Turn a ``model.path`` setting into something ``from_pretrained`` can load offline.

    - an existing local directory: returned as a Path (it must hold a ``config.json``);
    - ``random:<preset>``: a random-weight model plus trained tokenizer, built once into
      ``<cache_dir>/<preset>-<hash>`` (hash of preset, corpus, seed and library versions) under a file
      lock, so concurrent jobs build it once; cache_dir defaults to ``$DSRL_CACHE_DIR`` or
      ``~/.cache/dsrl/models``; ``corpus_files`` (parquet/jsonl) replace the synthetic tokenizer corpus;
    - anything else is a hub id, returned unchanged as a str for transformers to resolve.

    The ``qwen3-0.6b`` model has a larger vocab (151936) than its tokenizer; ``tokenizer.decode`` skips
    ids the tokenizer does not know, so text decoded from random-weight samples is shorter than the
    token count, but never fails.
    """
    if path.startswith(RANDOM_PREFIX):
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        name = path[len(RANDOM_PREFIX) :]
        _preset(name)
        return _build_cached(name, root.expanduser(), corpus_files)
    local = Path(path).expanduser()
    if local.exists() or path.startswith(("/", ".", "~")):
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"model path {path!r} is not a Hugging Face model directory (no {local}/config.json)"
            )
        return local
    return path


def load_tokenizer(path: str, trust_remote_code: bool) -> Any:
    """The model's tokenizer; one without a pad token pads with its EOS token (as verl does)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
