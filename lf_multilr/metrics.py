"""What a training log records per module: ``lr/<module>`` for every module that has a param group, and
``grad_norm/<module>``, the L2 norm of each module's gradient where HF measures ``grad_norm``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .groups import ORDER
from .modules import ModuleMap

PREFIXES: tuple[str, ...] = ("lr/", "grad_norm/")
#: Sums a tensor over the ranks that each hold a piece of every gradient.
Reduce = Callable[[torch.Tensor], torch.Tensor]


def module_lrs(param_groups: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The current LR of each module, read from its first group with an lr relative to the module's.

    Groups that lf-multilr did not build carry no ``module`` key and are ignored, so a stock optimizer
    yields ``{}``.
    """
    lrs: dict[str, float] = {}
    absolute: dict[str, float] = {}
    for group in param_groups:
        module = group.get("module")
        if module is None or module in lrs:
            continue
        scale = group.get("lr_scale")
        if scale:
            lrs[module] = float(group["lr"]) / scale
        else:
            absolute.setdefault(module, float(group["lr"]))
    for module, lr in absolute.items():
        lrs.setdefault(module, lr)
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
        return cls({module: params[module] for module in ORDER if module in params}, reduce)

    @classmethod
    def of_groups(cls, param_groups: Iterable[Mapping[str, Any]], reduce: Reduce | None = None) -> GradNormMonitor:
        """For lf-multilr's optimizer: the parameters of each module and custom group, as grouped."""
        params: dict[str, list[torch.Tensor]] = {}
        for group in param_groups:
            params.setdefault(group["module"], []).extend(group["params"])
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
