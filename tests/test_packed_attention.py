"""dsrl_packed attention: packed forwards and gradients equal padded sdpa ones, and the trainer picks it on CUDA."""

from __future__ import annotations

import copy
import inspect
import logging
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from omegaconf import OmegaConf  # noqa: E402
from tiny_models import tiny_causal_lm  # noqa: E402

from dsrl import packed_attention as PA  # noqa: E402
from dsrl import workers as W  # noqa: E402
from dsrl.remove_padding import check_remove_padding  # noqa: E402
from dsrl.rollout.batch import assemble_batch  # noqa: E402

pytestmark = pytest.mark.train


def _model(kv_heads: int, arch: str = "qwen3") -> torch.nn.Module:
    return tiny_causal_lm(arch, kv_heads).eval()


def _batch() -> dict[str, torch.Tensor]:
    prompts = [[11, 12, 13, 14, 15], [21, 22], [31, 32, 33]]
    responses = [[41, 42, 43], [51], [61, 62, 63, 64, 65, 66], [71, 72], [81, 82, 83], [91]]
    return assemble_batch(prompts, responses, n=2, pad_id=0, response_length=6, device=torch.device("cpu"))


def test_cu_seqlens_is_a_running_sum():
    assert PA.cu_seqlens([3, 1, 4]) == [0, 3, 4, 8]
    assert PA.cu_seqlens([7]) == [0, 7]
    with pytest.raises(ValueError, match="positive"):
        PA.cu_seqlens([3, 0])
    kw = PA.packed_kwargs([3, 1, 4], "cpu")
    assert kw["cu_seq_lens_q"].dtype == torch.int32 and kw["cu_seq_lens_q"].tolist() == [0, 3, 4, 8]
    assert kw["cu_seq_lens_k"] is kw["cu_seq_lens_q"] and kw["max_length_q"] == kw["max_length_k"] == 4


def test_cu_seqlens_from_positions():
    pos = torch.tensor([[0, 1, 2, 0, 0, 1, 2, 3]])
    assert PA.cu_seqlens_from_positions(pos).tolist() == [0, 3, 4, 8]


def test_varlen_call_follows_the_torch_signature():
    """varlen_attn's keywords as documented for torch 2.10, 2.11 and 2.12+ (the device has 2.11, this env 2.13)."""
    v210 = frozenset({"query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k", "is_causal", "return_aux"})
    v211 = v210 - {"is_causal"} | {"scale", "window_size"}
    v212 = v211 | {"enable_gqa", "seqused_k", "block_table", "num_splits"}
    assert PA.varlen_plan(v210, 0.25, 16, 1) == ({"is_causal": True}, 1.0, 1)  # 0.25 = 16 ** -0.5, the default
    assert PA.varlen_plan(v210, 0.5, 16, 2) == ({"is_causal": True}, 2.0, 2)
    assert PA.varlen_plan(v211, 0.5, 16, 2) == ({"window_size": (-1, 0), "scale": 0.5}, 1.0, 2)
    assert PA.varlen_plan(v212, 0.5, 16, 2) == ({"window_size": (-1, 0), "scale": 0.5, "enable_gqa": True}, 1.0, 1)
    if PA._varlen_fn() is not None:  # this environment's torch is one of them
        assert PA.varlen_plan(PA._varlen_fn()[1], 0.5, 16, 2)[0]["scale"] == 0.5


def test_packed_implementation_choice():
    assert PA.packed_implementation("cuda", "sdpa") == PA.NAME
    assert PA.packed_implementation("cuda", "eager") == PA.NAME
    assert PA.packed_implementation("cuda", "flash_attention_2") == "flash_attention_2"
    assert PA.packed_implementation("cpu", "sdpa") == "sdpa"


@pytest.mark.parametrize(("arch", "kv_heads"), [("qwen3", 4), ("qwen3", 2), ("qwen3", 1), ("llama", 2)])
def test_packed_forward_and_gradients_equal_padded_sdpa(arch, kv_heads):
    """Same weights: dsrl_packed on packed rows vs sdpa on padded rows, log-probs, entropy and every gradient."""
    padded_model = _model(kv_heads, arch)
    packed_model = copy.deepcopy(padded_model)
    PA.set_implementation([packed_model], PA.NAME)
    assert packed_model.config._attn_implementation == PA.NAME
    b = _batch()
    weights = torch.randn(b["response_mask"].shape, generator=torch.Generator().manual_seed(1))
    outs = []
    before = PA.backends_used().get("sdpa_per_sequence", 0)
    for model, rmpad in ((padded_model, False), (packed_model, True)):
        lp, ent = W.log_probs_of(model, b, 0.8, remove_padding=rmpad, with_entropy=True)
        ((lp * weights).sum() + ent.sum()).backward()
        outs.append((lp.detach(), ent.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert PA.backends_used()["sdpa_per_sequence"] == before + 2  # one call per layer, no mask built
    (lp0, ent0, g0), (lp1, ent1, g1) = outs
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=1e-5)
    for name, grad in g0.items():
        torch.testing.assert_close(g1[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_padded_calls_and_generate_are_plain_sdpa():
    """Outside packed rows the implementation is sdpa, with sdpa's mask: padded log-probs and greedy decoding agree."""
    sdpa_model = _model(2)
    dsrl_model = copy.deepcopy(sdpa_model)
    PA.set_implementation([dsrl_model], PA.NAME)
    b = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            W.log_probs_of(dsrl_model, b, 1.0, remove_padding=False)[0],
            W.log_probs_of(sdpa_model, b, 1.0, remove_padding=False)[0],
            atol=0,
            rtol=0,
        )
        ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
        mask = (ids != 0).long()
        kw = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
        a = dsrl_model.generate(input_ids=ids, attention_mask=mask, **kw)
        c = sdpa_model.generate(input_ids=ids, attention_mask=mask, **kw)
    assert torch.equal(a, c)


def _fake_trainer(model: torch.nn.Module, attn: str, bf16: bool = False) -> SimpleNamespace:
    cfg = OmegaConf.create(
        {"actor_rollout_ref": {"model": {"use_remove_padding": True, "override_config": {"attn_implementation": attn}}}}
    )
    spec = SimpleNamespace(ds_config={"bf16": {"enabled": True}} if bf16 else {})
    return SimpleNamespace(
        cfg=cfg, device=torch.device("cpu"), actor=model, ref=None, critic=None, pad_id=0, actor_spec=spec
    )


def _check(trainer: SimpleNamespace) -> bool:
    others = [m for m in (trainer.ref, trainer.critic) if m is not None]
    return check_remove_padding(trainer.cfg, trainer.actor, trainer.actor_spec, trainer.pad_id, trainer.device, others)


def test_trainer_switches_to_dsrl_packed_where_sdpa_would_build_a_mask(monkeypatch, caplog):
    """The CUDA choice, exercised on CPU: the engines switch implementation and the start-up check still decides."""
    model = _model(1)
    monkeypatch.setattr(PA, "packed_implementation", lambda device_type, attn: PA.NAME)
    with caplog.at_level(logging.INFO, logger="dsrl"):
        assert _check(_fake_trainer(model, "sdpa")) is True
    assert model.config._attn_implementation == PA.NAME
    assert "sdpa -> dsrl_packed" in caplog.text


def test_trainer_switches_back_when_the_check_fails(monkeypatch):
    model = _model(1)
    monkeypatch.setattr(PA, "packed_implementation", lambda device_type, attn: PA.NAME)
    real = PA.reference_varlen
    monkeypatch.setattr(PA, "reference_varlen", lambda q, k, v, cu, scale: real(q, k, v, [0, q.shape[0]], scale))
    assert _check(_fake_trainer(model, "sdpa")) is False
    assert model.config._attn_implementation == "sdpa"


def test_cpu_keeps_sdpa_with_packing():
    model = _model(1)
    assert _check(_fake_trainer(model, "sdpa")) is True
    assert model.config._attn_implementation == "sdpa"


def test_self_check_of_the_cpu_kernel_against_textbook_attention():
    """The check the GPU benchmark runs on varlen_attn, here on the per-sequence sdpa kernel in fp32."""
    errors = PA.self_check("sdpa_per_sequence", "cpu", torch.float32, lens=(9, 1, 20), heads=4, kv_heads=2, head_dim=8)
    assert set(errors) == {"out", "dq", "dk", "dv"} and max(errors.values()) < 1e-5
    other_scale = PA.self_check("sdpa_per_sequence", "cpu", torch.float32, (9, 1, 20), 4, 2, 8, scale=0.3)
    assert max(other_scale.values()) < 1e-5


def test_self_check_catches_a_kernel_that_attends_across_sequences(monkeypatch):
    whole_row = lambda q, k, v, cu, max_len, scale: PA.reference_varlen(q, k, v, [0, q.shape[0]], scale)  # noqa: E731
    monkeypatch.setitem(PA._CUDA_KERNELS, "whole_row", whole_row)
    errors = PA.self_check("whole_row", "cpu", torch.float32, lens=(9, 1, 20), heads=4, kv_heads=2, head_dim=8)
    assert errors["out"] > 0.1


def test_a_kernel_that_fails_its_probe_is_skipped_for_the_next(monkeypatch):
    """The fallback chain: a wrong kernel fails its first-use probe; the packed forward still equals padded sdpa."""
    whole_row = lambda q, k, v, cu, max_len, scale: PA.reference_varlen(q, k, v, [0, q.shape[0]], scale)  # noqa: E731
    monkeypatch.setitem(PA._CUDA_KERNELS, "whole_row", whole_row)
    monkeypatch.setattr(PA, "_state", {"failed": {}, "calls": {}})
    monkeypatch.setattr(
        PA, "backend", lambda device, dtype: "sdpa_per_sequence" if "whole_row" in PA._state["failed"] else "whole_row"
    )
    model = _model(2)
    packed_model = copy.deepcopy(model)
    PA.set_implementation([packed_model], PA.NAME)
    b = _batch()
    with torch.no_grad():
        packed, _ = W.log_probs_of(packed_model, b, 1.0, remove_padding=True)
        padded, _ = W.log_probs_of(model, b, 1.0, remove_padding=False)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    assert "disagrees with textbook attention" in PA._state["failed"]["whole_row"]
    assert PA.backends_used()["sdpa_per_sequence"] == 2


def test_trainer_falls_back_to_padding_when_the_switch_raises(monkeypatch):
    model = _model(1)
    monkeypatch.setattr(PA, "packed_implementation", lambda device_type, attn: PA.NAME)

    def refuse(models, attn):
        if attn == PA.NAME:
            raise ValueError("this transformers does not know dsrl_packed")
        for m in models:
            m.set_attn_implementation(attn)

    monkeypatch.setattr(PA, "set_implementation", refuse)
    assert _check(_fake_trainer(model, "sdpa")) is False
    assert model.config._attn_implementation == "sdpa"


def _fake_varlen(version: str):
    """A stand-in for torch's varlen_attn with one release's keywords, computing with the CPU reference."""

    def v210(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        assert is_causal and query.shape[1] == key.shape[1] and cu_seq_q.dtype == torch.int32
        return PA.reference_varlen(query, key, value, cu_seq_q.tolist(), None)

    def v211(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)):
        assert window_size == (-1, 0) and query.shape[1] == key.shape[1] and max_q == max_k
        return PA.reference_varlen(query, key, value, cu_seq_q.tolist(), scale)

    def v212(
        query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1),
        enable_gqa=False, seqused_k=None, block_table=None, num_splits=None,
    ):  # fmt: skip
        assert window_size == (-1, 0) and (enable_gqa or query.shape[1] == key.shape[1])
        return PA.reference_varlen(query, key, value, cu_seq_q.tolist(), scale)

    fn = {"2.10": v210, "2.11": v211, "2.12": v212}[version]
    return fn, frozenset(inspect.signature(fn).parameters)


@pytest.mark.parametrize("version", ["2.10", "2.11", "2.12"])
def test_the_cuda_path_through_a_model_with_each_varlen_signature(monkeypatch, version):
    """The CUDA code path on CPU: varlen_attn (faked per release) called from a GQA model, values and gradients."""
    monkeypatch.setattr(PA, "_varlen_fn", lambda: _fake_varlen(version))
    monkeypatch.setattr(PA, "_state", {"failed": {}, "calls": {}})
    monkeypatch.setattr(PA, "backend", lambda device, dtype: "varlen_attn")
    PA._probe.cache_clear()
    padded_model = _model(2)
    packed_model = copy.deepcopy(padded_model)
    PA.set_implementation([packed_model], PA.NAME)
    b = _batch()
    grads = []
    for model, rmpad in ((padded_model, False), (packed_model, True)):
        lp, _ = W.log_probs_of(model, b, 1.0, remove_padding=rmpad)
        lp.sum().backward()
        grads.append((lp.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-5)
    for a, c in zip(grads[1][1], grads[0][1], strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    assert PA._state["calls"] == {"varlen_attn": 2} and not PA._state["failed"]
    PA._probe.cache_clear()
