"""The start-of-training table: per module its tensors, parameters, LR and weight decay.

A trainable module shows what trains (its trainable tensors); a frozen one shows what it holds. One line per
supplement rule that placed parameters says which, where, and why the registry's keys were not enough.
"""

from __future__ import annotations

from lf_multilr.grouping.plan import GroupPlan, MuonSplit, SupplementUse, numel


def human(count: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def supplement_line(plan: GroupPlan, use: SupplementUse) -> str:
    """One supplement rule's share of the plan, with the rule's reason."""
    registry = " and ".join(use.registry) if use.registry else "no module"
    return (
        f"supplement: {use.tensors} tensors ({human(use.params)} params; {', '.join(use.keys)}) placed in "
        f"{use.module} by lf-multilr's supplement (model type `{plan.model_type}`; registry: {registry}): "
        f"{use.rule.reason}"
    )


def muon_lines(plan: GroupPlan) -> list[str]:
    """Under LLaMA-Factory's Muon (groups of roles ``muon`` / ``adamw``): what of each module steps with Muon and what
    with its AdamW. Nothing for other optimizers."""
    if not any(group["role"] in ("muon", "adamw") for group in plan.param_groups):
        return []
    describe = plan.split.describe if isinstance(plan.split, MuonSplit) else MuonSplit.describe
    lines = [f"{describe}; every tensor decays at its module's weight_decay"]
    for module in plan.rows:
        parts = []
        for role, label in (("muon", "Muon"), ("adamw", "AdamW")):
            tensors = [t for g in plan.param_groups if g["module"] == module and g["role"] == role for t in g["params"]]
            if tensors:
                parts.append(f"{label} {len(tensors)} tensors ({human(sum(numel(t) for t in tensors))} params)")
        if parts:
            lines.append(f"{module}: {', '.join(parts)}")
    return lines


def format_table(plan: GroupPlan, warnings: bool = True) -> str:
    """One line per module that has parameters, then the frozen total and (optionally) the warnings."""
    lines = [
        f"lf-multilr param groups for model type `{plan.model_type}`:",
        f"  {'module':<22} {'tensors':>8} {'params':>9} {'trainable':>10} {'lr':>10} {'weight_decay':>13}",
    ]
    for row in plan.rows.values():
        module = row.module
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
    lines.extend(f"  {supplement_line(plan, use)}" for use in plan.supplement)
    lines.extend(f"  {note}" for note in plan.notes)
    lines.extend(f"  {line}" for line in muon_lines(plan))
    if warnings:
        lines.extend(f"  warning: {warning}" for warning in plan.warnings)
    return "\n".join(lines)


def format_tensors(plan: GroupPlan, module: str) -> str:
    """``lf-multilr plan --tensors MODULE``: one line per tensor of ``module`` that trains, with its group (which names
    the role and, under layer-wise decay, the block, after its stack's name where the module holds several), LR and
    weight decay; then where its other tensors are."""
    groups = [group for group in plan.param_groups if group["module"] == module]
    width = max((len(name) for group in groups for name in plan.names_of(group)), default=6)
    named = max([28, *(len(group["name"]) for group in groups)])
    lines = [
        f"lf-multilr tensors of {module} (model type `{plan.model_type}`):",
        f"  {'tensor':<{width}}  {'group':<{named}} {'lr':>10} {'weight_decay':>13}",
    ]
    for group in groups:
        for name in plan.names_of(group):
            lines.append(
                f"  {name:<{width}}  {group['name']:<{named}} {group['lr']:>10.3e} {group['weight_decay']:>13g}"
            )
    row = plan.rows.get(module)
    frozen = (row.tensors - row.trainable_tensors) if row is not None else 0
    lines.append(f"  {sum(len(group['params']) for group in groups)} tensors train; {frozen} frozen")
    return "\n".join(lines)
