"""What LlamaBoard shows next to its loss plot while a run trains: each module's logged values over the steps.

Generic over the per-module prefixes of :data:`lf_multilr.training.metrics.PREFIXES` (``lr/``, ``grad_norm/``):
whatever a run's ``trainer_log.jsonl`` holds under them is shown, a prefix nobody logged is left out. The series are
the ones :mod:`lf_multilr.reports.plots` draws after training, in the same colours.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lf_multilr.reports import plots
from lf_multilr.training.metrics import PREFIXES

#: prefix -> module -> (steps, values), prefixes in ``PREFIXES`` order, modules in param-group order.
Found = dict[str, dict[str, tuple[list[int], list[float]]]]


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``trainer_log.jsonl``; a line still being written is skipped. No file: no records."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def series(records: Iterable[Mapping[str, Any]], prefixes: tuple[str, ...] = PREFIXES) -> Found:
    """Every per-module value in ``trainer_log.jsonl`` records (whose step is ``current_steps``), by prefix."""
    history = [{**record, "step": record.get("current_steps", 0)} for record in records]
    found = {prefix: plots.series(history, prefix) for prefix in prefixes}
    return {prefix: modules for prefix, modules in found.items() if modules}


def number(value: float) -> str:
    return f"{value:.3g}"


def table(found: Found) -> str:
    """Each module's latest values, one column per prefix, as aligned plain text; "" when nothing was logged."""
    if not found:
        return ""
    modules = list(dict.fromkeys(module for by_module in found.values() for module in by_module))
    step = max(steps[-1] for by_module in found.values() for steps, _ in by_module.values())
    rows = [[f"step {step}", *(prefix.rstrip("/") for prefix in found)]]
    for module in modules:
        rows.append([module, *(number(by[module][1][-1]) if module in by else "-" for by in found.values())])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


def figure(found: Found) -> Any:
    """A matplotlib figure: one panel per prefix, one line per module (log scale where every value is > 0)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.8))  # the loss plot's size and margins: LlamaBoard shows it whole
    axes = fig.subplots(len(found), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (prefix, by_module) in zip(axes, found.items(), strict=True):
        for index, (module, (steps, values)) in enumerate(by_module.items()):
            ax.plot(steps, values, marker=".", label=module, color=plots.COLORS.get(module, f"C{index + 4}"))
        if all(value > 0 for _, values in by_module.values() for value in values):
            ax.set_yscale("log")
        ax.set_ylabel(prefix.rstrip("/"))
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize="x-small")
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig
