"""What lf-multilr reads from torch.distributed and FSDP: the ranks, and how FSDP1 shards a model.

FSDP1 with ``use_orig_params`` leaves each original parameter registered, as a view of this rank's piece of the
flattened block: ``numel()`` and ``.grad`` are the local piece (empty on ranks that hold none of it). Summed over
the process group FSDP1 shards over, the pieces make the whole: that gives the table its true sizes and the gradient
norms their true values. FSDP2 parameters and gradients are DTensors, whose sizes and norms are global already.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lf_multilr.config.checks import flat_parameters
from lf_multilr.training.distributed import same_groups_on_every_rank
from lf_multilr.training.metrics import Reduce


def world() -> tuple[int, int] | None:
    """(rank, world size) when torch.distributed runs more than one process, else None."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return dist.get_rank(), dist.get_world_size()


def check_ranks(groups: Sequence[Mapping[str, Any]]) -> str | None:
    """Raise unless every rank built the same groups; the line each rank logs, or None with one process."""
    where = world()
    if where is None:
        return None
    rank, size = where

    def gather(mine: Any) -> list[Any]:
        every: list[Any] = [None] * size
        torch.distributed.all_gather_object(every, mine)
        return every

    return same_groups_on_every_rank(groups, rank, gather)


def _sum_over(group: Any) -> Reduce:
    backend = str(torch.distributed.get_backend(group))

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")
        moved = tensor.to(device)
        torch.distributed.all_reduce(moved, group=group)
        return moved.to(tensor.device)

    return reduce


def fsdp1_pieces(model: torch.nn.Module) -> Reduce | None | str:
    """How this model's FSDP1 parameters add up across ranks.

    A reducer (sum over the process group FSDP1 shards over) under ``FULL_SHARD`` and ``SHARD_GRAD_OP``, None when
    each rank holds them whole (``NO_SHARD``), or a sentence saying why it cannot be told (the hybrid strategies,
    whose pieces repeat across nodes, are not handled).
    """
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    modules = FullyShardedDataParallel.fsdp_modules(model)
    if not modules:
        return "no FSDP1 module was found around the parameters"
    strategies = {module.sharding_strategy for module in modules}
    groups = {id(module.process_group): module.process_group for module in modules}
    if len(strategies) != 1 or len(groups) != 1:
        return "its modules are sharded in more than one way"
    (strategy,) = strategies
    if strategy == ShardingStrategy.NO_SHARD:
        return None
    if strategy not in (ShardingStrategy.FULL_SHARD, ShardingStrategy.SHARD_GRAD_OP):
        return f"lf-multilr does not add up pieces sharded by {strategy.name}"
    return _sum_over(next(iter(groups.values())))


def fsdp1_sizes(model: torch.nn.Module) -> dict[int, int] | None:
    """Under sharded FSDP1 with ``use_orig_params``: each parameter's full element count by ``id``; else None."""
    params = list(model.parameters())
    if not any(getattr(param, "_fsdp_flattened", False) for param in params) or world() is None:
        return None
    pieces = fsdp1_pieces(model)
    if not callable(pieces):
        return None
    local = torch.tensor([param.numel() for param in params], dtype=torch.int64)
    return {id(param): int(size) for param, size in zip(params, pieces(local).tolist(), strict=True)}


def sharded_norms(model: torch.nn.Module) -> tuple[Reduce | None, str | None]:
    """Under FSDP: (the reducer that makes per-module gradient norms whole, or None when they are whole already;
    None, or why they cannot be made whole)."""
    named = list(model.named_parameters())
    if flat_parameters(named):
        return None, (
            "FSDP1 without `use_orig_params` flattens the parameters of several modules into one tensor, so no "
            "module's gradient can be told apart; a piece's norm is not the module's"
        )
    if any(type(param).__name__ == "DTensor" for _, param in named):  # FSDP2: norms of DTensors are global
        return None, None
    pieces = fsdp1_pieces(model)
    if isinstance(pieces, str):
        return None, f"each rank holds only a piece of the gradients and {pieces}; a piece's norm is not the module's"
    return pieces, None
