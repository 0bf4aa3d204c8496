"""Tests for dsrl.models: offline random-weight presets, the trained tokenizer and the build cache."""

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from dsrl import models  # noqa: E402
from dsrl.data_prep import synthetic_gsm8k, to_verl_rows  # noqa: E402
from dsrl.models import PRESETS, preset_config, resolve_model_path, train_tokenizer  # noqa: E402

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny_path(tiny_cache) -> Path:
    return resolve_model_path("random:tiny", cache_dir=tiny_cache)


def test_tiny_loads_back_with_auto_classes(tiny_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_path)
    assert model.config.model_type == "qwen3"
    assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 1_000_000
    assert model.config.vocab_size == len(tokenizer) == 512
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert (tiny_path / "model.safetensors").is_file()
    logits = model(torch.tensor([[1, 5, 9]])).logits
    assert logits.shape == (1, 3, 512) and torch.isfinite(logits).all()


def test_chat_template_round_trips_gsm8k_prompt(tiny_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_path)
    row = to_verl_rows(synthetic_gsm8k(1, seed=11), "test", "x")[0]
    content = row["prompt"][0]["content"]
    text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    assert text == f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
    encoded = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
    ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == f"user\n{content}\nassistant\n"
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2


def test_decoding_ids_beyond_tokenizer_does_not_fail(tiny_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_path)
    known = tokenizer.encode("12 apples", add_special_tokens=False)
    assert tokenizer.decode([*known, len(tokenizer), 151_935]) == "12 apples"


def test_cache_is_reused(tiny_cache, tiny_path, monkeypatch):
    weights = tiny_path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cached model was rebuilt")

    monkeypatch.setattr(models, "_build", no_rebuild)
    assert resolve_model_path("random:tiny", cache_dir=tiny_cache) == tiny_path
    assert weights.stat().st_mtime_ns == mtime
    assert [p.name for p in tiny_cache.iterdir() if not p.name.endswith(".lock")] == [tiny_path.name]


def test_build_is_reproducible_and_keeps_caller_rng(tiny_path, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    other = resolve_model_path("random:tiny", cache_dir=tmp_path)
    assert torch.equal(torch.rand(3), expected)
    assert other.name == tiny_path.name
    a, b = load_file(tiny_path / "model.safetensors"), load_file(other / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tiny_path / "tokenizer.json").read_text()) == json.loads((other / "tokenizer.json").read_text())


def test_changed_corpus_gives_new_dir(tiny_cache, tiny_path, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in synthetic_gsm8k(300, seed=99)))
    path = resolve_model_path("random:tiny", cache_dir=tiny_cache, corpus_files=[str(corpus)])
    assert path != tiny_path and path.name.startswith("tiny-")
    assert transformers.AutoTokenizer.from_pretrained(path).get_vocab() != (
        transformers.AutoTokenizer.from_pretrained(tiny_path).get_vocab()
    )


def test_changed_shapes_give_new_dir(tmp_path, monkeypatch):
    """The cache key covers the preset's shapes: a tiny built before a preset change is never reused."""
    monkeypatch.setattr(models, "_build", _fake_build([]))
    before = resolve_model_path("random:tiny", cache_dir=tmp_path)
    old = PRESETS["tiny"]
    changed = models.ModelPreset(**{**old.__dict__, "config": {**old.config, "head_dim": 16}})
    monkeypatch.setitem(PRESETS, "tiny", changed)
    assert resolve_model_path("random:tiny", cache_dir=tmp_path) != before


def test_tiny_fits_vllm_cpu_attention(tiny_path):
    """vLLM's CPU attention has kernels for a fixed set of head sizes; random:tiny must be one of them."""
    config = transformers.AutoConfig.from_pretrained(tiny_path)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 32)
    pytest.importorskip("vllm")
    from dsrl.config import ConfigError
    from dsrl.rollout.vllm_server import check_cpu_head_dim

    check_cpu_head_dim(config, str(tiny_path))
    config.head_dim = 16
    with pytest.raises(ConfigError, match="head_dim=16"):
        check_cpu_head_dim(config, "m")


def _fake_build(calls: list):
    def build(name, texts, out):
        calls.append(name)
        time.sleep(0.3)
        (out / "config.json").write_text("{}")

    return build


def test_concurrent_builds_share_one_result(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(models, "_build", _fake_build(calls))
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_model_path("random:tiny", cache_dir=tmp_path)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["tiny"]
    assert len(results) == 3 and len(set(results)) == 1
    assert (results[0] / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_failed_build_leaves_no_partial_dir(tmp_path, monkeypatch):
    def broken(name, texts, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_build", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model_path("random:tiny", cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DSRL_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setattr(models, "_build", _fake_build([]))
    assert resolve_model_path("random:tiny").parent == tmp_path / "env-cache"


def test_unknown_preset_lists_presets(tmp_path):
    with pytest.raises(ValueError, match=r"'huge'.*random:tiny.*random:qwen3-0\.6b"):
        resolve_model_path("random:huge", cache_dir=tmp_path)


def test_local_dirs_and_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileNotFoundError, match="ckpt"):
        resolve_model_path(str(tmp_path / "ckpt"))
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        resolve_model_path("./does-not-exist")
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path / "ckpt")) == tmp_path / "ckpt"
    assert resolve_model_path("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"


def test_corpus_file_type_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"corpus\.txt must be a verl \.parquet or a GSM8K \.jsonl"):
        models.corpus_texts([tmp_path / "corpus.txt"])


def test_qwen3_0_6b_shapes_on_meta_device():
    tokenizer = train_tokenizer([r["answer"] for r in synthetic_gsm8k(50, seed=0)], vocab_size=300)
    config = preset_config("qwen3-0.6b", tokenizer)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (1024, 28, 3072)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (16, 8, 128)
    assert config.vocab_size == 151_936 and config.tie_word_embeddings
    assert config.max_position_embeddings == 40_960 and config.rope_parameters["rope_theta"] == 1e6
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    # Published Qwen3-0.6B sizes: 0.6B parameters, 0.44B non-embedding.
    assert 0.59e9 < total < 0.61e9
    assert 0.435e9 < total - embedding < 0.445e9
    assert PRESETS["qwen3-0.6b"].dtype == "bfloat16"
