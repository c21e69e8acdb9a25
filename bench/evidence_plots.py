"""The evidence experiment's table and plots, from ``evidence.json`` and the runs' ``trainer_log.jsonl``."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODULES = ("vision_tower", "multi_modal_projector", "language_model")
METRICS = ("task_accuracy", "retention")
STYLES = ("-", "--", "-.", ":")  # settings with the same curves (sweep_best can be a fixed setting) stay visible


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(evidence: Mapping[str, Any]) -> dict[str, dict[str, tuple[float, float, float, float]]]:
    """Per setting and metric: mean, standard deviation, min, max over the seeds."""
    out: dict[str, dict[str, tuple[float, float, float, float]]] = {}
    for name, setting in evidence["settings"].items():
        out[name] = {}
        for metric in METRICS:
            values = [seed[metric] for seed in setting["seeds"]]
            out[name][metric] = (*spread(values), min(values), max(values))
    return out


def _config_text(config: Mapping[str, Any]) -> str:
    return ", ".join(
        f"`{key}={value:g}`" if isinstance(value, float) else f"`{key}={value}`" for key, value in config.items()
    )


def table(evidence: Mapping[str, Any]) -> str:
    """The Markdown table: setting x mean +- standard deviation (min-max) of both metrics."""
    lines = [
        "| setting | config | seeds | task B accuracy | task A retention |",
        "|---|---|---:|---|---|",
    ]
    for name, stats in summary(evidence).items():
        config = evidence["settings"][name]["config"]
        seeds = len(evidence["settings"][name]["seeds"])
        cells = [f"{m:.3f} ± {s:.3f} ({lo:.3f}-{hi:.3f})" for m, s, lo, hi in (stats[x] for x in METRICS)]
        lines.append(f"| {name} | {_config_text(config)} | {seeds} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def kinds_table(evidence: Mapping[str, Any]) -> str:
    """Task-B accuracy per kind of question (all seeds pooled), with the most-common-answer baseline of each."""
    meta = evidence.get("meta", {})
    by_kind: Mapping[str, Mapping[str, float]] = meta.get("task_accuracy_by_kind") or {}
    kinds = sorted({kind for row in by_kind.values() for kind in row})
    if not kinds:
        return ""
    lines = ["| setting | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for name, row in by_kind.items():
        lines.append(f"| {name} | " + " | ".join(f"{row.get(kind, float('nan')):.3f}" for kind in kinds) + " |")
    baseline = meta.get("majority_baseline_by_kind") or {}
    if baseline:
        cells = " | ".join(f"{baseline.get(kind, float('nan')):.3f}" for kind in kinds)
        lines.append(f"| most common answer | {cells} |")
    return "\n".join(lines)


def write_all(evidence: Mapping[str, Any], out: Path, runs: Mapping[str, Path]) -> str:
    """``out/evidence.md`` (both tables) and the two plots (``runs``: one run folder per setting); the markdown."""
    text = table(evidence) + "\n\n" + kinds_table(evidence)
    (out / "evidence.md").write_text(text.rstrip() + "\n")
    tradeoff(evidence, out / "evidence_tradeoff.png")
    grad_norms(runs, out / "evidence_grad_norms.png")
    return text


def tradeoff(evidence: Mapping[str, Any], path: Path) -> None:
    """Task-B accuracy against task-A retention: every seed a dot, each setting's mean a cross with 1-SD bars."""
    figure, axes = plt.subplots(figsize=(6.4, 4.6))
    for index, (name, stats) in enumerate(summary(evidence).items()):
        seeds = evidence["settings"][name]["seeds"]
        colour = f"C{index}"
        axes.scatter(
            [s["retention"] for s in seeds], [s["task_accuracy"] for s in seeds], color=colour, alpha=0.5, s=18
        )
        (acc, acc_sd, _, _), (ret, ret_sd, _, _) = stats["task_accuracy"], stats["retention"]
        axes.errorbar(ret, acc, xerr=ret_sd, yerr=acc_sd, color=colour, marker="X", markersize=9, capsize=3, label=name)
    meta = evidence.get("meta", {})
    reference, baseline = meta.get("pretrained_task_a_accuracy"), meta.get("majority_baseline")
    if isinstance(reference, float):
        axes.axvline(reference, color="grey", linestyle=":", label="pretrained tower")
    if isinstance(baseline, float):
        axes.axhline(baseline, color="grey", linestyle="--", label="most common answer per question kind")
    axes.set_xlabel("task A retention (pretraining head on the fine-tuned tower)")
    axes.set_ylabel("task B accuracy (held-out questions)")
    axes.set_title("Accuracy against retention, per setting (dots: seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    save(figure, path)


def save(figure: Any, path: Path) -> None:
    """The figure as a PNG of few colours (a palette of 64: a few tens of KB, small enough for docs/)."""
    from PIL import Image

    figure.savefig(path, dpi=72)
    plt.close(figure)
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def grad_norm_curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """``grad_norm/<module>`` by step from a run's ``trainer_log.jsonl``."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for line in (folder / "trainer_log.jsonl").read_text().splitlines():
        record = json.loads(line)
        for module in MODULES:
            value = record.get(f"grad_norm/{module}")
            if isinstance(value, (int, float)):
                curves.setdefault(module, []).append((int(record["current_steps"]), float(value)))
    return curves


def grad_norms(runs: Mapping[str, Path], path: Path) -> None:
    """One panel per module, one line per setting (the runs given: one seed of each); lines without anti-aliasing,
    which keeps the PNG small."""
    with matplotlib.rc_context({"lines.antialiased": False}):
        _grad_norms(runs, path)


def _grad_norms(runs: Mapping[str, Path], path: Path) -> None:
    figure, panels = plt.subplots(1, len(MODULES), figsize=(12, 3.8), sharex=True, layout="constrained")
    curves = {name: grad_norm_curves(folder) for name, folder in runs.items()}
    for panel, module in zip(panels, MODULES, strict=True):
        for index, (name, by_module) in enumerate(curves.items()):
            points = by_module.get(module)
            if points:
                style = STYLES[index % len(STYLES)]
                panel.plot(*zip(*points, strict=True), color=f"C{index}", linestyle=style, label=name, linewidth=1.2)
        panel.set_yscale("log")
        panel.set_title(f"grad_norm/{module}", fontsize=10)
        panel.set_xlabel("step")
        panel.grid(alpha=0.3)
    handles = {label: line for panel in panels for line, label in zip(*panel.get_legend_handles_labels(), strict=True)}
    figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles), fontsize=8)
    save(figure, path)


if __name__ == "__main__":
    # python bench/evidence_plots.py OUT: the tables and plots again from OUT/evidence.json and OUT/runs.
    import sys

    folder = Path(sys.argv[1])
    written = json.loads((folder / "evidence.json").read_text())
    first = {name: setting["seeds"][0]["seed"] for name, setting in written["settings"].items()}
    print(write_all(written, folder, {name: folder / "runs" / f"{name}-seed{seed}" for name, seed in first.items()}))
