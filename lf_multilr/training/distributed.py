"""Several processes: every rank must build the same param groups, and FSDP must leave parameters to group.

Under DDP, FSDP or DeepSpeed each rank builds its own optimizer from its own copy of the model. If two ranks group
differently (another model, config or version on one node), the optimizers silently disagree: each rank applies
its own LRs to the same averaged gradients and the replicas drift apart. :func:`same_groups_on_every_rank` compares
the ranks' group signatures (name, tensor count and layout digest per group, see :mod:`..grouping.digests`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lf_multilr.grouping.digests import difference, signature

#: One rank's groups: (name, tensor count, layout digest) per group.
Signature = Sequence[Sequence[Any]]
#: Collects one picklable object from every rank, in rank order (``torch.distributed.all_gather_object``).
Gather = Callable[[Any], list[Any]]


def signature_digest(groups_signature: Signature) -> str:
    """A short digest of a group signature, the same on every rank that grouped the same way."""
    text = json.dumps([list(entry) for entry in groups_signature])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def rank_mismatch(signatures: Sequence[Signature]) -> str | None:
    """How the first rank whose groups differ from rank 0's differs; None when every rank grouped alike."""
    for rank, groups in enumerate(signatures[1:], start=1):
        found = difference(signatures[0], groups, "on rank 0", f"on rank {rank}")
        if found is not None:
            return found
    return None


def same_groups_on_every_rank(groups: Sequence[Mapping[str, Any]], rank: int, gather: Gather) -> str:
    """Gather every rank's group signature and raise if any differs from rank 0's; the line to log otherwise.

    Every rank receives every signature, so every rank raises: none is left waiting in a later collective.
    """
    mine = [list(entry) for entry in signature(groups)]
    every = gather(mine)
    problem = rank_mismatch(every)
    if problem is not None:
        digests = ", ".join(f"rank {index}: {signature_digest(sig)}" for index, sig in enumerate(every))
        raise RuntimeError(
            f"lf-multilr: the ranks built different param groups, so each would train the same averaged gradients "
            f"at other learning rates: {problem} (signatures {digests}). Fix: give every rank the same model, "
            "training config and versions of lf-multilr and LLaMA-Factory"
        )
    return (
        f"lf-multilr: rank {rank} of {len(every)}: {len(mine)} param groups, signature {signature_digest(mine)}, "
        "the same on every rank"
    )
