"""Per-module plots next to LLaMA-Factory's ``training_loss.png``: ``training_lr.png`` and
``training_grad_norm.png``, drawn from the run's ``trainer_state.json`` log history."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lf_multilr.modules import OTHER, TABLE

#: (key prefix, file name, title, y label, log scale)
PLOTS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("lr/", "training_lr.png", "Learning rate per module", "learning rate", False),
    ("grad_norm/", "training_grad_norm.png", "Gradient norm per module (before clipping)", "L2 norm", True),
)
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D")
#: Each module's colour (the table's), then ``other``'s; custom groups take matplotlib's cycle.
COLORS = {**{row.name: row.color for row in TABLE.by_order}, OTHER: "#7f7f7f"}


def series(history: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    """``{name: (steps, values)}`` for every log key ``prefix + name``, modules first in their usual order."""
    found: dict[str, tuple[list[int], list[float]]] = {}
    for record in history:
        for key, value in record.items():
            if key.startswith(prefix) and isinstance(value, (int, float)):
                steps, values = found.setdefault(key[len(prefix) :], ([], []))
                steps.append(int(record.get("step", len(steps))))
                values.append(float(value))
    rank = {name: i for i, name in enumerate(TABLE.group_names)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def _draw(path: Path, data: dict[str, tuple[list[int], list[float]]], title: str, ylabel: str, log: bool) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positive = [v for _, values in data.values() for v in values if v > 0]
    # LRs of different modules are often orders of magnitude apart: then a log scale shows them all.
    log = log or (bool(positive) and max(positive) > 10 * min(positive))
    for i, (name, (steps, values)) in enumerate(data.items()):
        if log:
            steps, values = [s for s, v in zip(steps, values, strict=True) if v > 0], [v for v in values if v > 0]
        axes.plot(
            steps,
            values,
            label=name,
            color=COLORS.get(name, f"C{i + 4}"),
            linestyle=STYLES[i % len(STYLES)],  # modules at equal values stay visible on top of each other
            marker=MARKERS[i % len(MARKERS)] if len(steps) <= 30 else None,
            markersize=4,
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log:
        axes.set_yscale("log")
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")


def plot_module_metrics(output_dir: str | Path) -> list[Path]:
    """Draw the per-module plots that the run's log history has data for; return their paths."""
    output_dir = Path(output_dir)
    state = output_dir / "trainer_state.json"
    if not state.is_file():
        return []
    history = json.loads(state.read_text(encoding="utf-8")).get("log_history", [])
    written = []
    for prefix, name, title, ylabel, log in PLOTS:
        data = series(history, prefix)
        if data:
            _draw(output_dir / name, data, title, ylabel, log)
            written.append(output_dir / name)
    return written
