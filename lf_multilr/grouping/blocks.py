"""Where each tensor of a module runs, for layer-wise LR decay: its stack, and embeddings, block ``i`` or head in it.

A module can hold several stacks of numbered blocks (an omni thinker's vision tower holds the audio encoder too;
Video-LLaVA's holds an image and a video tower), and each stack is counted on its own: its embeddings run before its
first block (factor ``d**N``, N the stack's block count), block ``i`` at ``d**(N-1-i)``, its head (final norms,
output adapters) at 1.

From the names, generically:

* a block is a segment ``blocks.i`` / ``layers.i`` / ``layer.i`` / ``block.i`` / ``resblocks.i`` / ``conformer.i``;
  the name up to that segment's word is the block's *container* (``model.visual.blocks``);
* a container's *tower* is the first part of its name after a leading ``model.`` (``visual``, ``audio_tower``,
  ``vision_model``, ``image_tower``): the containers of one tower are one stack, numbered in ``named_parameters()``
  order (the order modules are defined in, which for every registry type is the order the forward pass runs them:
  Mllama's 32 local layers, then its 8 global ones on top); towers apart are stacks apart;
* an unnumbered tensor belongs to the stack whose container shares the longest leading part of its name (on a tie,
  the stack met last before it); it runs before the stack's first block when it comes before it in
  ``named_parameters()`` order (embeddings), after its last block when it comes after it (head), and between two
  blocks with the block before it.

Where a model's names do not say the order its forward pass runs them, a rule of :data:`lf_multilr.grouping.
supplement.POSITIONS` does (data with a reason per rule, next to the supplement's module rules); ``tests/
test_models.py`` checks every registry type the zoo builds against the place its forward pass gives each tensor.
The stacks belong to the module that owns their tensors, so a stack moved to a new module row is decayed by that
row's key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lf_multilr.grouping.supplement import AFTER, EMBEDDINGS_AT, STAGES, Position

BLOCK = re.compile(r"(?:^|\.)(blocks|layers|layer|block|resblocks|conformer)\.(\d+)\.")
_NESTED = re.compile(r"(\d+)\.")

#: Depth of an unnumbered tensor before a stack's first block (embeddings) and after its last one (head).
EMBEDDINGS, HEAD = -1, None


def block_index(name: str) -> int | None:
    """The index of the block segment of ``name``, or None."""
    match = BLOCK.search(name)
    return int(match.group(2)) if match else None


def decay_scale(depth: int | None, blocks: int, decay: float) -> float:
    """``decay ** (blocks - 1 - i)`` for block ``i``; ``decay ** blocks`` for embeddings; 1 after the last block."""
    if depth is HEAD:
        return 1.0
    if depth == EMBEDDINGS:
        return decay**blocks
    return decay ** (blocks - 1 - depth)


@dataclass(frozen=True)
class Stack:
    """One stack of numbered blocks: its name (the tower) and its block count."""

    name: str
    blocks: int


@dataclass(frozen=True)
class Where:
    """Where one tensor runs: its stack (an index into the stacks) and its depth there."""

    stack: int
    #: ``EMBEDDINGS``, the block's index in its stack (0 nearest the input), or ``HEAD``.
    depth: int | None
    #: The rule that placed it, where names alone do not say.
    rule: Position | None = None

    def tag(self, stacks: Sequence[Stack]) -> str:
        """``embeddings`` / ``block{i}`` / ``head``, after the stack's name where the module holds several stacks."""
        tag = "embeddings" if self.depth == EMBEDDINGS else "head" if self.depth is HEAD else f"block{self.depth}"
        return tag if len(stacks) == 1 else f"{stacks[self.stack].name}/{tag}"


def tower(container: str) -> str:
    """The tower of a block container: its name's first part after a leading ``model.``."""
    parts = container.split(".")
    if parts[0] == "model" and len(parts) > 2:
        parts = parts[1:]
    return parts[0]


def _shared(a: str, b: str) -> int:
    """How many leading dotted parts ``a`` and ``b`` share."""
    count = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        count += 1
    return count


def _ends_with(container: str, key: str) -> bool:
    return f".{container}".endswith(f".{key}")


def locate(names: Sequence[str], rules: Sequence[Position] = ()) -> tuple[list[Where], list[Stack]]:
    """Per name (normalized, in ``named_parameters()`` order) where it runs; and the stacks, in the order met.

    ``rules`` are the positions of :mod:`.supplement` for the model type. No numbered block: every name is a head
    of no stack (``([], [])`` for the stacks), which callers refuse.
    """
    stages = [rule for rule in rules if rule.at == STAGES]
    numbered: list[tuple[str, tuple[int, ...]] | None] = []
    for name in names:
        match = BLOCK.search(name)
        if match is None:
            numbered.append(None)
            continue
        container, index = name[: match.end(1)], (int(match.group(2)),)
        if any(_ends_with(container, key) for rule in stages for key in rule.keys):
            inner = _NESTED.match(name, match.end())
            index = (*index, int(inner.group(1))) if inner else index
        numbered.append((container, index))
    containers = list(dict.fromkeys(found[0] for found in numbered if found is not None))
    towers = list(dict.fromkeys(tower(container) for container in containers))
    if not towers:
        return [Where(-1, HEAD) for _ in names], []
    # block ordinals: per tower, its containers in the order met, each container's indices in order
    ordinal: dict[tuple[str, tuple[int, ...]], int] = {}
    counts = dict.fromkeys(towers, 0)
    for container in containers:
        name_of = tower(container)
        for index in sorted({found[1] for found in numbered if found is not None and found[0] == container}):
            ordinal[(container, index)] = counts[name_of]
            counts[name_of] += 1
    stacks = [Stack(name, counts[name]) for name in towers]
    stack_of = {container: towers.index(tower(container)) for container in containers}

    where: list[Where | None] = [
        None if found is None else Where(stack_of[found[0]], ordinal[found]) for found in numbered
    ]
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for at, placed in enumerate(where):
        if placed is not None:
            first.setdefault(placed.stack, at)
            last[placed.stack] = at
    placed_rules = [rule for rule in rules if rule.at != STAGES]
    for at, name in enumerate(names):
        if where[at] is not None:
            continue
        rule = next((rule for rule in placed_rules if rule.matches(name)), None)
        if rule is not None and rule.at.startswith(AFTER):
            key = rule.at[len(AFTER) :]
            container = next(c for c in containers if _ends_with(c, key))
            top = max(i for (c, _), i in ordinal.items() if c == container)
            where[at] = Where(stack_of[container], top, rule)
            continue
        best = max(_shared(name, container) for container in containers)
        near = {stack_of[c] for c in containers if _shared(name, c) == best}
        before = [p.stack for p in where[:at] if p is not None and p.stack in near]
        stack = before[-1] if before else min(near)
        if rule is not None:
            where[at] = Where(stack, EMBEDDINGS if rule.at == EMBEDDINGS_AT else HEAD, rule)
        elif at < first[stack]:
            where[at] = Where(stack, EMBEDDINGS)
        elif at > last[stack]:
            where[at] = Where(stack, HEAD)
        else:  # between two blocks of its stack: with the block before it
            previous = next(p for p in reversed(where[:at]) if p is not None and p.stack == stack and p.rule is None)
            where[at] = Where(stack, previous.depth)
    return [placed for placed in where if placed is not None], stacks


def scale(where: Where, stacks: Sequence[Stack], decay: float) -> float:
    """The layer-decay factor of a tensor placed at ``where``."""
    return decay_scale(where.depth, stacks[where.stack].blocks, decay)

