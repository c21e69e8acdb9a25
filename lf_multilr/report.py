"""The start-of-training table: per module its tensors, parameters, LR and weight decay.

A trainable module shows what trains (its trainable tensors); a frozen one shows what it holds.
"""

from __future__ import annotations

from .groups import ORDER, GroupPlan


def human(count: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def format_table(plan: GroupPlan, warnings: bool = True) -> str:
    """One line per module that has parameters, then the frozen total and (optionally) the warnings."""
    lines = [
        f"lf-multilr param groups for model type `{plan.model_type}`:",
        f"  {'module':<22} {'tensors':>8} {'params':>9} {'trainable':>10} {'lr':>10} {'weight_decay':>13}",
    ]
    for module in ORDER:
        row = plan.rows[module]
        if row.tensors == 0:
            continue
        if row.trainable:
            tensors, params, lr, wd = (
                row.trainable_tensors,
                row.trainable_params,
                f"{row.lr:.3e}",
                f"{row.weight_decay:g}",
            )
        else:
            tensors, params, lr, wd = row.tensors, row.params, "frozen", "-"
        lines.append(
            f"  {module:<22} {tensors:>8} {human(params):>9} {'yes' if row.trainable else 'no':>10} {lr:>10} {wd:>13}"
        )
    tensors, params = plan.frozen
    lines.append(f"  frozen: {tensors} tensors, {human(params)} params; groups: {len(plan.param_groups)}")
    if warnings:
        lines.extend(f"  warning: {warning}" for warning in plan.warnings)
    return "\n".join(lines)
