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

Where a model's names do not say the order its forward pass runs them, a rule of
:data:`~lf_multilr.grouping.supplement.POSITIONS` does (data with a reason per rule, next to the supplement's module
rules); ``tests/test_models.py`` checks every registry type the zoo builds against the place its forward pass gives
each tensor. The stacks belong to the module that owns their tensors, so a stack moved to a new module row is decayed
by that row's key.
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


def _numbered(names: Sequence[str], stages: Sequence[Position]) -> list[tuple[str, tuple[int, ...]] | None]:
    """Per name its block container and index (two numbers where a ``stages`` rule names the container), or None."""
    found: list[tuple[str, tuple[int, ...]] | None] = []
    for name in names:
        match = BLOCK.search(name)
        if match is None:
            found.append(None)
            continue
        container = name[: match.end(1)]
        index: tuple[int, ...] = (int(match.group(2)),)
        inner = _NESTED.match(name, match.end())
        if inner and any(_ends_with(container, key) for rule in stages for key in rule.keys):
            index = (*index, int(inner.group(1)))
        found.append((container, index))
    return found


@dataclass
class _Blocks:
    """The numbered blocks of one module: containers, stacks, and each (container, index)'s place in its stack."""

    containers: list[str]
    stacks: list[Stack]
    stack_of: dict[str, int]
    ordinal: dict[tuple[str, tuple[int, ...]], int]

    @classmethod
    def of(cls, numbered: Sequence[tuple[str, tuple[int, ...]] | None]) -> _Blocks:
        """Per tower its containers in the order met, each container's indices in order."""
        indices: dict[str, set[tuple[int, ...]]] = {}
        for found in numbered:
            if found is not None:
                indices.setdefault(found[0], set()).add(found[1])
        towers = list(dict.fromkeys(tower(container) for container in indices))
        ordinal: dict[tuple[str, tuple[int, ...]], int] = {}
        counts = dict.fromkeys(towers, 0)
        for container, met in indices.items():
            for index in sorted(met):
                ordinal[(container, index)] = counts[tower(container)]
                counts[tower(container)] += 1
        stack_of = {container: towers.index(tower(container)) for container in indices}
        return cls(list(indices), [Stack(name, counts[name]) for name in towers], stack_of, ordinal)

    def after(self, rule: Position) -> Where:
        """An ``after:<container>`` rule's place: with the last block of that container."""
        container = next(c for c in self.containers if _ends_with(c, rule.at[len(AFTER) :]))
        top = max(i for (c, _), i in self.ordinal.items() if c == container)
        return Where(self.stack_of[container], top, rule)

    def nearest(self, name: str, where: Sequence[Where | None]) -> int:
        """The stack of an unnumbered tensor: the one whose container shares most of its name (on a tie, the one met
        last before it)."""
        best = max(_shared(name, container) for container in self.containers)
        near = {self.stack_of[c] for c in self.containers if _shared(name, c) == best}
        before = [placed.stack for placed in where if placed is not None and placed.stack in near]
        return before[-1] if before else min(near)


def locate(names: Sequence[str], rules: Sequence[Position] = ()) -> tuple[list[Where], list[Stack]]:
    """Per name (normalized, in ``named_parameters()`` order) where it runs; and the stacks, in the order met.

    ``rules`` are the positions of :mod:`.supplement` for the model type. No numbered block: every name is a head
    of no stack, and there are no stacks (which callers refuse).
    """
    numbered = _numbered(names, [rule for rule in rules if rule.at == STAGES])
    blocks = _Blocks.of(numbered)
    if not blocks.stacks:
        return [Where(-1, HEAD) for _ in names], []
    where: list[Where | None] = [
        None if found is None else Where(blocks.stack_of[found[0]], blocks.ordinal[found]) for found in numbered
    ]
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for at, placed in enumerate(where):
        if placed is not None:
            first.setdefault(placed.stack, at)
            last[placed.stack] = at
    placing = [rule for rule in rules if rule.at != STAGES]
    for at, name in enumerate(names):
        if where[at] is not None:
            continue
        rule = next((rule for rule in placing if rule.matches(name)), None)
        if rule is not None and rule.at.startswith(AFTER):
            where[at] = blocks.after(rule)
            continue
        stack = blocks.nearest(name, where[:at])
        if rule is not None:
            where[at] = Where(stack, EMBEDDINGS if rule.at == EMBEDDINGS_AT else HEAD, rule)
        elif at < first[stack] or at > last[stack]:
            where[at] = Where(stack, EMBEDDINGS if at < first[stack] else HEAD)
        else:  # between two blocks of its stack: with the block before it
            previous = next(p for p in reversed(where[:at]) if p is not None and p.stack == stack and p.rule is None)
            where[at] = Where(stack, previous.depth)
    return [placed for placed in where if placed is not None], blocks.stacks


def scale(where: Where, stacks: Sequence[Stack], decay: float) -> float:
    """The layer-decay factor of a tensor placed at ``where``."""
    return decay_scale(where.depth, stacks[where.stack].blocks, decay)
