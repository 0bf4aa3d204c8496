"""Which training ranks share a vLLM server, on which GPUs, and who talks to it (pure; unit-tested).

On GPUs every `tensor_model_parallel_size` consecutive local ranks form one group with one server on exactly
their GPUs, colocated with their training processes: with TP=1 every GPU generates for its own rank. On CPU one
server per node serves all of the node's ranks (a second engine per node would only split the same cores).
"""

from __future__ import annotations

from dataclasses import dataclass

from dsrl.config import ConfigError


@dataclass(frozen=True)
class ServerGroup:
    """One vLLM server and the global ranks it serves; `senders` hold the buffers its TP workers read."""

    index: int  # global group number, names the server's log file
    ranks: tuple[int, ...]
    local_devices: tuple[int, ...]  # positions in the node's CUDA_VISIBLE_DEVICES (empty on CPU)
    tp: int

    @property
    def leader(self) -> int:
        """Starts the server, posts weight updates and sleep/wake to it."""
        return self.ranks[0]

    @property
    def senders(self) -> tuple[int, ...]:
        """Ranks whose staging buffers the server's workers map: one per TP worker, on that worker's GPU."""
        return self.ranks[: self.tp]


def server_groups(world_size: int, local_world_size: int, tp: int, device_type: str) -> list[ServerGroup]:
    """Every group of the job, in rank order; every rank computes the same list (subgroups are made from it)."""
    if world_size % local_world_size:
        raise ConfigError(f"world size {world_size} is not a multiple of the ranks per node {local_world_size}")
    nodes = world_size // local_world_size
    if device_type != "cuda":
        return [
            ServerGroup(node, tuple(range(node * local_world_size, (node + 1) * local_world_size)), (), 1)
            for node in range(nodes)
        ]
    if tp < 1 or local_world_size % tp:
        raise ConfigError(
            f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp} must divide the GPUs per node "
            f"({local_world_size}): each vLLM server takes a whole group of one node's GPUs"
        )
    groups = []
    for node in range(nodes):
        for first in range(0, local_world_size, tp):
            ranks = tuple(node * local_world_size + first + i for i in range(tp))
            groups.append(ServerGroup(len(groups), ranks, tuple(range(first, first + tp)), tp))
    return groups


def group_of(groups: list[ServerGroup], rank: int) -> ServerGroup:
    return next(g for g in groups if rank in g.ranks)
