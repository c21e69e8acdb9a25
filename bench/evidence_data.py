"""Generated data of the evidence experiment (``bench/evidence.py``): scenes, their images, task A and task B.

A scene is a ``grid`` x ``grid`` board of cells, each empty or holding one shape (circle, square, triangle) of one
colour (red, green, blue, yellow), drawn at a random size and offset inside its cell on a white image.

* **Task A** (vision pretraining; retention): the class of every cell, 0 for empty, else ``1 + shape * 4 + colour``
  (13 classes), read from the vision tower's patch features by a linear head.
* **Captions** (projector alignment): the cells in reading order, e.g. ``red circle, none, blue square, none.``
* **Task B** (fine-tuning): questions about a picture that need task A's features: how many shapes there are, the
  colour or the shape in a given cell (``none`` when empty), and whether the shapes in two given cells share their
  colour; answers are a digit, a colour, a shape, ``none``, ``yes`` or ``no``.

Everything is drawn from ``random.Random`` with fixed seeds, so the same parameters give the same files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from tools.tiny import COLOURS, SHAPES, SHAREGPT_TAGS

#: Part of the cache key of everything generated: change it when what is generated changes.
VERSION = 3
COLOUR_NAMES = tuple(COLOURS)
CLASSES = 1 + len(SHAPES) * len(COLOUR_NAMES)  # empty + shape x colour
EMPTY_SHARE = 0.3

Cell = tuple[int, int] | None  # (shape index, colour index) or empty


@dataclass(frozen=True)
class Scene:
    """A ``grid`` x ``grid`` board in reading order, with the random size and offset of each drawn shape."""

    grid: int
    cells: tuple[Cell, ...]
    jitter: tuple[tuple[float, float, float], ...]  # per cell: size share, x offset share, y offset share

    def labels(self) -> list[int]:
        """Task A: the class of every cell."""
        return [0 if cell is None else 1 + cell[0] * len(COLOUR_NAMES) + cell[1] for cell in self.cells]

    def caption(self) -> str:
        names = ["none" if c is None else f"{COLOUR_NAMES[c[1]]} {SHAPES[c[0]]}" for c in self.cells]
        return ", ".join(names) + "."


def random_scene(rng: random.Random, grid: int) -> Scene:
    cells: list[Cell] = []
    for _ in range(grid * grid):
        empty = rng.random() < EMPTY_SHARE
        cells.append(None if empty else (rng.randrange(len(SHAPES)), rng.randrange(len(COLOUR_NAMES))))
    jitter = tuple((rng.uniform(0.55, 0.85), rng.random(), rng.random()) for _ in cells)
    return Scene(grid, tuple(cells), jitter)


def draw(scene: Scene, size: int) -> Image.Image:
    """The scene as a ``size`` x ``size`` RGB image."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    step = size / scene.grid
    for index, (cell, (share, dx, dy)) in enumerate(zip(scene.cells, scene.jitter, strict=True)):
        if cell is None:
            continue
        side = share * step
        left = (index % scene.grid) * step + dx * (step - side)
        top = (index // scene.grid) * step + dy * (step - side)
        box = (round(left), round(top), round(left + side), round(top + side))
        fill = COLOURS[COLOUR_NAMES[cell[1]]]
        shape = SHAPES[cell[0]]
        if shape == "circle":
            pen.ellipse(box, fill=fill)
        elif shape == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return image


def scenes(seed: int, count: int, grid: int) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng, grid) for _ in range(count)]


KINDS = ("count", "colour at", "shape at", "same colour")


def kind_of(text: str) -> str:
    """Which of ``KINDS`` a task-B question (as ``question`` words it, ``<image>`` before it or not) is."""
    text = text.removeprefix("<image>")
    if text.startswith("How many"):
        return "count"
    if text.startswith("What colour"):
        return "colour at"
    return "shape at" if text.startswith("What shape") else "same colour"


def place(scene: Scene, index: int) -> str:
    return f"row {index // scene.grid + 1}, column {index % scene.grid + 1}"


def _same_colour(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """Whether two occupied cells hold the same colour, the pair chosen so that both answers are about as common."""
    occupied = [i for i, cell in enumerate(scene.cells) if cell is not None]
    pairs = [(a, b) for a in occupied for b in occupied if a < b]
    if not pairs:
        return None
    same = [(a, b) for a, b in pairs if scene.cells[a][1] == scene.cells[b][1]]  # type: ignore[index]
    a, b = rng.choice(same if same and rng.random() < 0.5 else pairs)
    answer = "yes" if (a, b) in same else "no"
    return f"Do the shapes in {place(scene, a)} and in {place(scene, b)} have the same colour?", answer


def question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """One task-B question about ``scene`` and its answer: the number of shapes, the colour or the shape in a cell
    (``none`` for an empty one), or whether two shapes share their colour."""
    kind = rng.randrange(len(KINDS))
    index = rng.randrange(len(scene.cells))
    cell = scene.cells[index]
    if kind == 1:
        return f"What colour is the shape in {place(scene, index)}?", "none" if cell is None else COLOUR_NAMES[cell[1]]
    if kind == 2:
        return f"What shape is in {place(scene, index)}?", "none" if cell is None else SHAPES[cell[0]]
    if kind == 3 and (pair := _same_colour(scene, rng)) is not None:
        return pair
    return "How many shapes are there?", str(sum(cell is not None for cell in scene.cells))


def _sharegpt(user: str, answer: str, image: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": f"<image>{user}"}, {"role": "assistant", "content": answer}],
        "images": [image],
    }


@dataclass(frozen=True)
class Split:
    """One split of task B or of the captions: its scenes, and per sample the scene index, question, answer."""

    scenes: list[Scene]
    samples: list[tuple[int, str, str]]


def caption_split(seed: int, count: int, grid: int) -> Split:
    pictures = scenes(seed, count, grid)
    return Split(pictures, [(i, "Describe the picture.", s.caption()) for i, s in enumerate(pictures)])


def question_split(seed: int, count: int, per_scene: int, grid: int) -> Split:
    rng = random.Random(seed + 1)
    pictures = scenes(seed, count, grid)
    return Split(pictures, [(i, *question(s, rng)) for i, s in enumerate(pictures) for _ in range(per_scene)])


def write_split(split: Split, name: str, folder: Path, size: int) -> None:
    """Images under ``folder/name/`` and ``folder/name.json`` in LLaMA-Factory's sharegpt format."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    paths = []
    for i, scene in enumerate(split.scenes):
        path = f"{name}/{i:05d}.png"
        draw(scene, size).save(folder / path)
        paths.append(path)
    rows = [_sharegpt(q, a, paths[i]) for i, q, a in split.samples]
    (folder / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")


def write_dataset_info(folder: Path, names: Sequence[str]) -> None:
    columns = {"messages": "messages", "images": "images"}
    info = {
        name: {"file_name": f"{name}.json", "formatting": "sharegpt", "columns": columns, "tags": SHAREGPT_TAGS}
        for name in names
    }
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
