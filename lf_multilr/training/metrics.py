"""What a training log records per module: ``lr/<module>`` for every module that has a param group, and
``grad_norm/<module>``, the L2 norm of each module's gradient where HF measures ``grad_norm``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from lf_multilr.grouping.placement import ModuleMap
from lf_multilr.grouping.schema import module_lr, module_of, ours

PREFIXES: tuple[str, ...] = ("lr/", "grad_norm/")
#: Sums a tensor over the ranks that each hold a piece of every gradient.
Reduce = Callable[[torch.Tensor], torch.Tensor]


def module_lrs(param_groups: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The current LR of each module (and custom group), from its first group whose LR derives from the module's;
    from its first group when none does (a LoRA+ embedding group alone has an LR of its own).

    Groups that lf-multilr did not build are ignored, so a stock optimizer yields ``{}``.
    """
    derived: dict[str, float] = {}
    own: dict[str, float] = {}
    for group in ours(param_groups):
        module = str(module_of(group))
        lr = module_lr(group)
        if lr is not None:
            derived.setdefault(module, lr)
        else:
            own.setdefault(module, float(group["lr"]))
    lrs = {**derived, **{module: lr for module, lr in own.items() if module not in derived}}
    return {f"lr/{module}": lr for module, lr in lrs.items()}


def module_entries(logs: Mapping[str, Any]) -> dict[str, Any]:
    """The per-module entries of one log record."""
    return {key: value for key, value in logs.items() if key.startswith(PREFIXES)}


def _norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of the gradients of ``params`` this rank holds; whole for DTensor gradients (FSDP2), whose norm
    torch reduces over their mesh like HF's own ``grad_norm``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    norm = torch.nn.utils.get_total_norm(grads)
    full_tensor = getattr(norm, "full_tensor", None)
    return full_tensor() if full_tensor is not None else norm


class GradNormMonitor:
    """Per-module gradient norms of a model's trainable parameters, measured only when asked.

    ``measure(step)`` reads the gradients as they are at that moment (call it where HF measures its own
    ``grad_norm``: accumulated, before clipping) and keeps one norm tensor per module; ``entries(step)`` turns them
    into log entries once, for the step they were measured at. The square root of the sum of the squared module
    norms is the norm over all trainable parameters, which is HF's ``grad_norm``.
    """

    def __init__(self, params: dict[str, list[torch.Tensor]], reduce: Reduce | None = None) -> None:
        self.params = params
        #: Where each rank holds a disjoint piece of every gradient (FSDP1): sums a tensor over those ranks.
        self.reduce = reduce
        self._measured: tuple[int, dict[str, torch.Tensor]] | None = None

    @classmethod
    def of_model(
        cls, named_parameters: Iterable[tuple[str, torch.Tensor]], module_map: ModuleMap, reduce: Reduce | None = None
    ) -> GradNormMonitor:
        """For a stock optimizer: the model's trainable parameters by module."""
        params: dict[str, list[torch.Tensor]] = {}
        for name, param in named_parameters:
            if param.requires_grad:
                params.setdefault(module_map.owner(name), []).append(param)
        order = module_map.table.group_names
        return cls({module: params[module] for module in order if module in params}, reduce)

    @classmethod
    def of_groups(cls, param_groups: Iterable[Mapping[str, Any]], reduce: Reduce | None = None) -> GradNormMonitor:
        """For lf-multilr's optimizer: the parameters of each module and custom group, as grouped."""
        params: dict[str, list[torch.Tensor]] = {}
        for group in ours(param_groups):
            params.setdefault(str(module_of(group)), []).extend(group["params"])
        return cls(params, reduce)

    def measure(self, step: int) -> None:
        """Every rank calls this at the same steps: with sharded gradients the norms are collective."""
        norms = {module: _norm(params) for module, params in self.params.items()}
        if self.reduce is not None:  # the pieces' squares add up to the whole's square
            squares = self.reduce(torch.stack([norm.float().square() for norm in norms.values()]))
            norms = dict(zip(norms, squares.sqrt(), strict=True))
        self._measured = (step, norms)

    def entries(self, step: int) -> dict[str, float]:
        """The ``grad_norm/<module>`` entries measured at ``step`` ({} if none were), each handed out once."""
        if self._measured is None or self._measured[0] != step:
            return {}
        norms = self._measured[1]
        self._measured = None
        return {f"grad_norm/{module}": float(norm) for module, norm in norms.items()}


def will_log(args: Any, state: Any) -> bool:
    """Whether the optimizer step being taken ends in a log (HF's ``DefaultFlowCallback`` rules). ``global_step``
    counts the step only after the optimizer and the scheduler stepped, so it is one behind here."""
    step = state.global_step + 1
    strategy = str(getattr(args.logging_strategy, "value", args.logging_strategy))
    if strategy == "epoch":  # the last step of an epoch is not known here: measure every step
        return True
    return (step == 1 and bool(args.logging_first_step)) or (
        strategy == "steps" and state.logging_steps > 0 and step % state.logging_steps == 0
    )


#: What a PPO run does not log, and why: its loop writes its own log records and its step never clips through HF.
PPO_UNLOGGED = (
    "stage ppo: lr/<module> and grad_norm/<module> are not logged: PPO's loop writes its own log records (not "
    "through Trainer.log) and its step never calls HF's gradient clipping, where lf-multilr measures the norms"
)


def stage_notes(stage: str | None) -> list[str]:
    """The table's lines about what the run's stage leaves out of the per-module logs."""
    return [PPO_UNLOGGED] if stage == "ppo" else []


#: What a layer-wise GaLore / APOLLO run does not log, and why (LLaMA-Factory warns the same of its ``grad_norm``).
LAYERWISE_UNLOGGED = (
    "layer-wise GaLore / APOLLO: grad_norm/<module> is not logged: each tensor's optimizer steps and clears its "
    "gradient inside the backward pass, so no gradient is left where HF measures the norm (HF's own grad_norm reads "
    "0); lr/<module> is logged from the per-tensor optimizers"
)
