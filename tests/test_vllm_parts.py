"""The vLLM rollout's pieces that need no server: which ranks share a server on which GPUs, the environment a
server starts with, the vLLM version check, and the bucketed weight push through a staging buffer (read back as the
server reads it)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dsrl.config import ConfigError, load_config  # noqa: E402
from dsrl.rollout.server_layout import group_of, server_groups  # noqa: E402
from dsrl.rollout.staging import ShmBuffer  # noqa: E402
from dsrl.rollout.vllm_server import check_vllm_version, server_env  # noqa: E402
from dsrl.rollout.weight_push import ALIGN, BucketPacker, buffer_bytes, layer_groups  # noqa: E402

pytestmark = pytest.mark.train


def test_every_gpu_gets_a_server_with_tp1():
    groups = server_groups(world_size=4, local_world_size=2, tp=1, device_type="cuda")
    assert [g.ranks for g in groups] == [(0,), (1,), (2,), (3,)]
    assert [g.local_devices for g in groups] == [(0,), (1,), (0,), (1,)]
    assert all(g.leader == g.ranks[0] and g.senders == g.ranks for g in groups)


def test_tp_groups_take_consecutive_gpus_of_one_node():
    groups = server_groups(world_size=8, local_world_size=4, tp=2, device_type="cuda")
    assert [g.ranks for g in groups] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [g.local_devices for g in groups] == [(0, 1), (2, 3), (0, 1), (2, 3)]
    assert group_of(groups, 5).index == 2 and group_of(groups, 5).leader == 4
    assert group_of(groups, 5).senders == (4, 5)


def test_cpu_has_one_server_per_node_fed_by_its_first_rank():
    groups = server_groups(world_size=4, local_world_size=2, tp=1, device_type="cpu")
    assert [g.ranks for g in groups] == [(0, 1), (2, 3)]
    assert [g.senders for g in groups] == [(0,), (2,)]


@pytest.mark.parametrize("tp", [0, 3])
def test_a_tp_size_that_does_not_tile_the_node_fails_naming_the_key(tp):
    with pytest.raises(ConfigError, match="tensor_model_parallel_size"):
        server_groups(world_size=4, local_world_size=4, tp=tp, device_type="cuda")


def torchrun_environ() -> dict[str, str]:
    """What torchrun gives a worker, plus a user's own variables."""
    return {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "0",
        "ROLE_RANK": "1",
        "ROLE_NAME": "default",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RUN_ID": "none",
        "CUDA_VISIBLE_DEVICES": "4,5,6,7",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "HF_HOME": "/data/hf",
        "VLLM_CACHE_ROOT": "/scratch/vllm",
    }


def test_server_env_drops_torchrun_and_pins_the_groups_gpus(tmp_path):
    cfg = load_config(["actor_rollout_ref.rollout.tensor_model_parallel_size=2"]).actor_rollout_ref.rollout
    group = server_groups(4, 4, 2, "cuda")[1]
    env = server_env(cfg, "cuda", group, tmp_path / "s.log", torchrun_environ())
    assert env["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert env["VLLM_CACHE_ROOT"] == "/scratch/vllm/dsrl-server1"  # servers of one node compile at once
    assert not [k for k in env if k.startswith("TORCHELASTIC_")]
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_PORT"):
        assert key not in env
    # sleep mode (free_cache_engine, on by default) cannot run on expandable segments
    assert "PYTORCH_CUDA_ALLOC_CONF" not in env
    assert env["HF_HOME"] == "/data/hf" and env["VLLM_SERVER_DEV_MODE"] == "1"
    assert env["DSRL_VLLM_SERVER_LOG"] == str(tmp_path / "s.log")


def test_server_env_on_cpu_sets_the_kv_cache_and_leaves_gpus_alone(tmp_path):
    cfg = load_config([]).actor_rollout_ref.rollout
    env = server_env(cfg, "cpu", server_groups(4, 4, 1, "cpu")[0], tmp_path / "s.log", torchrun_environ())
    assert env["VLLM_CPU_KVCACHE_SPACE"] == str(cfg.cpu_kv_cache_gb)
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5,6,7" and "RANK" not in env


def test_layer_groups_keep_model_order():
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.10.mlp.up_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    assert layer_groups(names) == [
        ["model.embed_tokens.weight"],
        ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"],
        ["model.layers.1.self_attn.q_proj.weight"],
        ["model.layers.10.mlp.up_proj.weight"],
        ["model.norm.weight"],
        ["lm_head.weight"],
    ]


def test_buffer_fits_the_largest_tensor_and_never_exceeds_model_or_bucket():
    assert buffer_bytes([1000, 10], bucket_bytes=100) == 4 * ALIGN  # the largest tensor wins over the bucket
    assert buffer_bytes([10, 10], bucket_bytes=1 << 20) == 2 * ALIGN  # a small model needs no 1 MiB
    assert buffer_bytes([100] * 100, bucket_bytes=10 * ALIGN) == 10 * ALIGN


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))
        self.head = torch.nn.Linear(8, 50, bias=False)


def read_back(buffer_path: str, nbytes: int, slots) -> dict[str, torch.Tensor]:
    """What the server's receiver does: map the file once, view each slot."""
    mapped = torch.from_file(buffer_path, shared=True, size=nbytes, dtype=torch.uint8)
    out = {}
    for name, dtype, shape, offset in (s.as_json() for s in slots):
        dt = getattr(torch, dtype)
        n = torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
        out[name] = mapped[offset : offset + n].view(dt).view(shape).clone()
    return out


@pytest.mark.parametrize("bucket_bytes", [1, 1 << 20])
def test_push_delivers_every_parameter_once_in_buckets(bucket_bytes):
    torch.manual_seed(0)
    model = Tiny()
    packer = BucketPacker(model, zero3=False, bucket_bytes=bucket_bytes)
    buffer = ShmBuffer(packer.capacity)
    received: dict[str, torch.Tensor] = {}
    sizes = []

    def flush(slots):
        sizes.append(len(slots))
        got = read_back(buffer.path, buffer.handle["nbytes"], slots)
        assert not set(got) & set(received), "a tensor was sent twice"
        received.update(got)

    try:
        buckets = packer.push(flush, buffer)
    finally:
        buffer.unlink()
    assert received.keys() == dict(model.named_parameters()).keys()
    for name, p in model.named_parameters():
        assert torch.equal(received[name], p.detach()), name
    # bucket_bytes=1: the buffer holds just the largest tensor (the 50 x 8 head), so buckets split the model
    assert buckets == len(sizes)
    assert (buckets > 1) == (bucket_bytes == 1)


def test_ranks_without_a_buffer_cut_the_same_buckets():
    """Non-sending ranks iterate in lockstep (ZeRO-3 gathers) and must flush at the same tensors."""
    model = Tiny()
    packer = BucketPacker(model, zero3=False, bucket_bytes=1)
    buffer = ShmBuffer(packer.capacity)
    with_buffer, without = [], []
    try:
        packer.push(lambda slots: with_buffer.append([s.name for s in slots]), buffer)
    finally:
        buffer.unlink()
    packer.push(lambda slots: without.append([s.name for s in slots]), None)
    assert with_buffer == without


@pytest.mark.parametrize(
    ("installed", "device", "ok"),
    [("0.24.0+cu130", "cuda", True), ("0.23.1", "cuda", False), ("0.32.0", "cpu", True), ("0.31.2", "cpu", False)],
)
def test_vllm_version_is_checked_before_a_server_starts(monkeypatch, installed, device, ok):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: installed)
    if ok:
        assert check_vllm_version(device).endswith(installed)
    else:
        with pytest.raises(ConfigError, match=r"rollout.name=vllm needs vllm(-cpu)? >= 0\.\d+; found"):
            check_vllm_version(device)


def test_the_client_drops_idle_connections_before_the_server_closes_them(tmp_path):
    """Reusing a connection the server is closing fails with 'Server disconnected without sending a response'."""
    from dsrl.rollout.vllm_server import server_client

    cfg = load_config([]).actor_rollout_ref.rollout
    environ = {**torchrun_environ(), "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "1"}  # a user's setting must not shorten it
    server_keep_alive = int(
        server_env(cfg, "cpu", server_groups(1, 1, 1, "cpu")[0], tmp_path / "s.log", environ)[
            "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"
        ]
    )
    with server_client("http://127.0.0.1:1") as client:
        client_keep_alive = client._transport._pool._keepalive_expiry
    assert client_keep_alive <= server_keep_alive / 2
