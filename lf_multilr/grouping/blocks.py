"""Block indices of a vision tower's parameters, for layer-wise LR decay.

A parameter belongs to block ``i`` when its name has a segment ``blocks.i`` / ``layers.i`` / ``layer.i`` /
``block.i`` / ``resblocks.i`` (every numbered vision architecture of LLaMA-Factory's registry names its blocks so).
Parameters without an index are placed by where they come in ``named_parameters()`` order, which follows the
order modules are defined in: before the first block they are embeddings, after the last one they are the
tower's head (post-norm, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers|layer|block|resblocks)\.(\d+)\.")

#: Depth of an unindexed parameter before the first block (embeddings) and after the last one (head).
EMBEDDINGS, HEAD = -1, None


def block_index(name: str) -> int | None:
    match = BLOCK.search(name)
    return int(match.group(1)) if match else None


def depths(names: Sequence[str]) -> tuple[list[int | None], int]:
    """Per name (in ``named_parameters()`` order) its block index, ``EMBEDDINGS`` or ``HEAD``; and the block count."""
    indices = [block_index(name) for name in names]
    known = [i for i in indices if i is not None]
    if not known:
        return [HEAD] * len(names), 0
    first = indices.index(known[0])
    result: list[int | None] = [EMBEDDINGS if i is None and at < first else i for at, i in enumerate(indices)]
    return result, max(known) + 1


def decay_scale(depth: int | None, blocks: int, decay: float) -> float:
    """``decay ** (blocks - 1 - i)`` for block ``i``; ``decay ** blocks`` for embeddings; 1 after the last block."""
    if depth is HEAD:
        return 1.0
    if depth == EMBEDDINGS:
        return decay**blocks
    return decay ** (blocks - 1 - depth)
