"""What ``lf-multilr sweep`` writes in its folder, from the study's trials: ``sweep.csv``, ``sweep.md`` (ranked),
``sweep.png`` (each trial's loss curve, pruned ones marked) and Optuna's own plots, ``sweep_importance.png`` and,
for two axes or more, ``sweep_contour.png``.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .args import Sweep, value_text
from .halving import PRUNED_AT
from .study import ERROR, RUN_DIR

if TYPE_CHECKING:
    import optuna

#: The trial user attributes the sweep records (see :mod:`lf_multilr_sweep`).
ARGS, HOST, DEVICES = "args", "host", "devices"
TRAIN_CURVE, EVAL_CURVE, STEPS, SECONDS = "train_curve", "eval_curve", "steps", "seconds"
TRAIN_LOSS, EVAL_LOSS = "final_train_loss", "final_eval_loss"
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")
ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 2, "FAIL": 3}


@dataclass(frozen=True)
class Row:
    """One trial of the study, as the summary shows it."""

    number: int
    state: str
    params: Mapping[str, Any]
    value: float | None
    attrs: Mapping[str, Any]

    def number_attr(self, name: str) -> float | None:
        value = self.attrs.get(name)
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def steps(self) -> int | None:
        steps = self.attrs.get(STEPS)
        return steps if isinstance(steps, int) else None

    @property
    def train(self) -> list[tuple[int, float]]:
        return [(int(s), float(v)) for s, v in self.attrs.get(TRAIN_CURVE, [])]

    @property
    def eval(self) -> list[tuple[int, float]]:
        return [(int(s), float(v)) for s, v in self.attrs.get(EVAL_CURVE, [])]

    @property
    def label(self) -> str:
        return " ".join(f"{key}={shown(value)}" for key, value in self.params.items())

    @property
    def status(self) -> str:
        if self.state == "PRUNED":
            return f"PRUNED at step {self.attrs.get(PRUNED_AT, self.steps)}"
        if self.state == "FAIL":
            return f"FAIL: {self.attrs.get(ERROR, 'no error recorded')}"
        return self.state


def shown(value: Any) -> str:
    """A parameter for people: sampled floats to 4 significant digits, the rest as the runs got them."""
    if isinstance(value, float) and value_text(value) != f"{value:.4g}" and len(value_text(value)) > 8:
        return f"{value:.4g}"
    return value_text(value)


def rows(trials: Sequence[optuna.trial.FrozenTrial], keys: Sequence[str]) -> list[Row]:
    return [
        Row(t.number, t.state.name, {key: t.params.get(key) for key in keys}, t.value, dict(t.user_attrs))
        for t in trials
    ]


def rank(table: Sequence[Row]) -> list[Row]:
    """COMPLETE trials by value (best first), then PRUNED ones (longest run first), then running, then failed."""

    def order(row: Row) -> tuple[int, float, float, int]:
        value = row.value if row.value is not None and math.isfinite(row.value) else math.inf
        steps = -(row.steps or 0) if row.state == "PRUNED" else 0
        return (ORDER.get(row.state, 3), steps, value, row.number)

    return sorted(table, key=order)


def ranked_by(table: Sequence[Row]) -> str:
    complete = [row for row in table if row.state == "COMPLETE"]
    if complete and all(row.attrs.get(EVAL_LOSS) is not None for row in complete):
        return "final eval loss"
    return "final train loss" if complete else "final loss"


def _number(value: float | None) -> str:
    return "" if value is None else repr(value)


def write_csv(path: Path, table: Sequence[Row], keys: Sequence[str]) -> None:
    """One row per trial, in trial order."""
    ranked = rank(table)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["rank", "trial", *keys, "state", "value", TRAIN_LOSS, EVAL_LOSS, STEPS, SECONDS, RUN_DIR, HOST, ERROR]
        )
        for row in table:
            seconds = row.number_attr(SECONDS)
            writer.writerow(
                [
                    ranked.index(row) + 1,
                    row.number,
                    *(value_text(row.params[key]) if row.params[key] is not None else "" for key in keys),
                    row.state,
                    _number(row.value),
                    _number(row.number_attr(TRAIN_LOSS)),
                    _number(row.number_attr(EVAL_LOSS)),
                    "" if row.steps is None else row.steps,
                    "" if seconds is None else f"{seconds:.1f}",
                    row.attrs.get(RUN_DIR, ""),
                    row.attrs.get(HOST, ""),
                    row.attrs.get(ERROR, ""),
                ]
            )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _column(values: Sequence[float | None]) -> list[str]:
    """Losses with the fewest decimals (4 to 8) that tell the different ones apart."""
    distinct = {value for value in values if value is not None}
    digits = next((d for d in range(4, 9) if len({f"{v:.{d}f}" for v in distinct}) == len(distinct)), 8)
    return ["" if value is None else f"{value:.{digits}f}" for value in values]


def markdown(table: Sequence[Row], keys: Sequence[str]) -> str:
    """The trials as a markdown table, best first."""
    ranked = rank(table)
    by = ranked_by(ranked)
    losses = {"final eval loss": [row.number_attr(EVAL_LOSS) for row in ranked]}
    losses["final train loss"] = [row.number_attr(TRAIN_LOSS) for row in ranked]
    if not any(losses["final eval loss"]):
        del losses["final eval loss"]
    columns = [_column(values) for values in losses.values()]
    lines = [
        f"Ranked by {by} (lower is better); pruned trials follow the completed ones, failed ones come last.",
        "",
        "| " + " | ".join(["rank", "trial", *keys, *losses, "steps", "state"]) + " |",
        "|" + "---:|" * (2 + len(keys) + len(losses) + 1) + "---|",
    ]
    for i, row in enumerate(ranked):
        cells = [str(i + 1), str(row.number), *(shown(row.params[key]) for key in keys)]
        cells += [column[i] for column in columns] + ["" if row.steps is None else str(row.steps), row.status]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def differences(series: Sequence[Sequence[tuple[int, float]]]) -> list[list[tuple[int, float]]]:
    """Each run's loss minus the mean of every run's loss at the same step."""
    at: dict[int, list[float]] = {}
    for points in series:
        for step, loss in points:
            at.setdefault(step, []).append(loss)
    return [[(s, loss - sum(at[s]) / len(at[s])) for s, loss in points] for points in series]


def draw(path: Path, table: Sequence[Row]) -> None:
    """Each completed or pruned trial's train loss by step (eval loss as crosses), labelled with its rank; pruned
    trials dashed and thin, a large X where the pruner stopped them. Below, with two trials or more, each one's
    difference from the mean of all, which tells apart settings whose curves lie on top of each other."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    drawn = [(i, row) for i, row in enumerate(rank(table), 1) if row.state in ("COMPLETE", "PRUNED") and row.train]
    panels = 2 if len(drawn) > 1 else 1
    figure = Figure(figsize=(8, 1.5 + 3.5 * panels + 0.22 * len(drawn)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, *diff_axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    by_eval = ranked_by(table) == "final eval loss" and all(row.eval for _, row in drawn)
    below = differences([row.eval if by_eval else row.train for _, row in drawn])
    for n, (rank_, row) in enumerate(drawn):
        pruned = row.state == "PRUNED"
        color = f"C{n % 10}"
        style = dict(color=color, linestyle="--" if pruned else STYLES[n % len(STYLES)], linewidth=1 if pruned else 1.6)
        name = f"{rank_}. trial {row.number} {row.label}" + (f" ({row.status})" if pruned else "")
        for axes, points, label in [(loss_axes, row.train, name), *((axes, below[n], None) for axes in diff_axes)]:
            marker = MARKERS[n % len(MARKERS)] if len(points) <= 30 else None
            axes.plot(*zip(*points, strict=True), marker=marker, ms=4, label=label, **style)
            if pruned:
                axes.plot(*points[-1], "X", color=color, markersize=12, markeredgecolor="black")
        if row.eval:
            loss_axes.plot(*zip(*row.eval, strict=True), "x", color=color, markersize=8)
    with_eval, any_pruned = any(row.eval for _, row in drawn), any(row.state == "PRUNED" for _, row in drawn)
    key = ["lines: train", *(["crosses: eval"] if with_eval else []), *(["X: pruned"] if any_pruned else [])]
    loss_axes.set_title(f"Loss per trial ({', '.join(key)})")
    loss_axes.set_ylabel("loss")
    for axes in diff_axes:
        axes.set_title(f"{'Eval' if by_eval else 'Train'} loss minus the mean of all trials at that step")
        axes.set_ylabel("loss difference")
    for axes in (loss_axes, *diff_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    (loss_axes, *diff_axes)[-1].set_xlabel("step")
    if drawn:
        figure.legend(loc="outside lower center", fontsize="small", title="rank. trial setting", title_fontsize="small")
    else:
        loss_axes.text(0.5, 0.5, "no trial finished", ha="center", va="center", transform=loss_axes.transAxes)
    figure.savefig(path, format="png")


def optuna_plots(study: optuna.Study, keys: Sequence[str], out: Path) -> list[str]:
    """Optuna's parameter importances and, for two axes or more, its contour plot, rendered with matplotlib.
    Returns one line per plot that could not be drawn, saying why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    wanted: list[tuple[str, Callable[[], Any]]] = [
        ("sweep_importance.png", lambda: plots.plot_param_importances(study, params=list(keys)))
    ]
    if len(keys) >= 2:
        wanted.append(("sweep_contour.png", lambda: plots.plot_contour(study, params=list(keys))))
    notes = []
    for name, plot in wanted:
        (out / name).unlink(missing_ok=True)
        if len(complete) < 2:
            notes.append(f"{name}: not drawn, it needs two completed trials ({len(complete)} so far)")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot()
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure(root=True)
            figure.savefig(out / name, format="png", bbox_inches="tight")
            plt.close(figure)
        except Exception as error:  # noqa: BLE001 - a plot Optuna cannot draw must not lose the summary
            notes.append(f"{name}: not drawn: {type(error).__name__}: {error}")
    return notes


def summarize(study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial], sweep: Sweep) -> tuple[str, list[str]]:
    """Write the summary files in the sweep's folder; return the markdown and the plots that were not drawn."""
    table = rows(trials, sweep.keys)
    write_csv(sweep.out / "sweep.csv", table, sweep.keys)
    text = markdown(table, sweep.keys)
    (sweep.out / "sweep.md").write_text(text, encoding="utf-8")
    draw(sweep.out / "sweep.png", table)
    return text, optuna_plots(study, sweep.keys, sweep.out)
