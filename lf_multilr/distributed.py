"""Several processes: every rank must build the same param groups, and FSDP must leave parameters to group.

Under DDP, FSDP or DeepSpeed each rank builds its own optimizer from its own copy of the model. If two ranks group
differently (another model, config or version on one node), the optimizers silently disagree: each rank applies
its own LRs to the same averaged gradients and the replicas drift apart. :func:`same_groups_on_every_rank` compares
the ranks' group signatures (name, tensor count and layout digest per group, see :mod:`.layout`).

FSDP1 without ``use_orig_params`` hands the optimizer one flattened tensor per wrapped block, which mixes the
modules; :func:`fsdp_of` reads the FSDP settings a run will use, so that this can be refused before the model loads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .layout import first_difference, signature

#: One rank's groups: (name, tensor count, layout digest) per group.
Signature = Sequence[Sequence[Any]]
#: Collects one picklable object from every rank, in rank order (``torch.distributed.all_gather_object``).
Gather = Callable[[Any], list[Any]]

_TRUE = ("1", "true", "yes", "y", "on", "t")


def signature_digest(groups_signature: Signature) -> str:
    """A short digest of a group signature, the same on every rank that grouped the same way."""
    text = json.dumps([list(entry) for entry in groups_signature])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _label(entry: Sequence[Any]) -> str:
    return str(entry[0] or "unnamed")


def rank_mismatch(signatures: Sequence[Signature]) -> str | None:
    """How the first rank whose groups differ from rank 0's differs; None when every rank grouped alike."""
    reference = signatures[0]
    for rank, groups in enumerate(signatures[1:], start=1):
        difference = first_difference(reference, groups)
        if difference is None:
            continue
        kind, index = difference
        if kind == "count":
            return (
                f"rank 0 has {len(reference)} param groups ({', '.join(map(_label, reference))}), "
                f"rank {rank} has {len(groups)} ({', '.join(map(_label, groups))})"
            )
        mine, theirs = reference[index], groups[index]
        if kind == "name":
            return f"group {index} is `{_label(mine)}` on rank 0 and `{_label(theirs)}` on rank {rank}"
        if kind == "size":
            where = f"group {index} ({_label(mine)})"
            return f"{where} holds {mine[1]} tensors on rank 0 and {theirs[1]} on rank {rank}"
        return (
            f"group {index} ({_label(mine)}) holds different parameters on rank 0 and on rank {rank} "
            "(same count, other names)"
        )
    return None


def same_groups_on_every_rank(groups: Sequence[dict[str, Any]], rank: int, gather: Gather) -> str:
    """Gather every rank's group signature and raise if any differs from rank 0's; the line to log otherwise.

    Every rank receives every signature, so every rank raises: none is left waiting in a later collective.
    """
    mine = [list(entry) for entry in signature(groups)]
    every = gather(mine)
    problem = rank_mismatch(every)
    if problem is not None:
        digests = ", ".join(f"rank {index}: {signature_digest(sig)}" for index, sig in enumerate(every))
        raise RuntimeError(
            f"lf-multilr: the ranks built different param groups, so each would train the same averaged gradients "
            f"at other learning rates: {problem} (signatures {digests}). Fix: give every rank the same model, "
            "training config and versions of lf-multilr and LLaMA-Factory"
        )
    return (
        f"lf-multilr: rank {rank} of {len(every)}: {len(mine)} param groups, signature {signature_digest(mine)}, "
        "the same on every rank"
    )


@dataclass(frozen=True)
class Fsdp:
    """The FSDP settings a run will use: which version, whether FSDP1 keeps the original parameters, and where
    that was read (for messages)."""

    version: int
    use_orig_params: bool
    source: str


def fsdp_of(plugin_args: Mapping[str, Any] | None, environ: Mapping[str, str]) -> Fsdp | None:
    """The run's FSDP settings, or None without FSDP.

    transformers builds accelerate's FSDP plugin from the ``fsdp`` / ``fsdp_config`` training arguments
    (``TrainingArguments.fsdp_plugin_args``, ``use_orig_params`` defaulting to true); without them accelerate
    builds it from the variables ``accelerate launch`` sets from its config (``ACCELERATE_USE_FSDP``,
    ``FSDP_VERSION``, ``FSDP_USE_ORIG_PARAMS``, the latter defaulting to false).
    """
    if plugin_args is not None:
        return Fsdp(
            int(plugin_args.get("fsdp_version", 1)),
            bool(plugin_args.get("use_orig_params", True)),
            "`use_orig_params` under `fsdp_config` in the training arguments",
        )
    if environ.get("ACCELERATE_USE_FSDP", "false").lower() not in _TRUE:
        return None
    return Fsdp(
        int(environ.get("FSDP_VERSION", "1")),
        environ.get("FSDP_USE_ORIG_PARAMS", "false").lower() in _TRUE,
        "`fsdp_use_orig_params` in the accelerate config (FSDP_USE_ORIG_PARAMS="
        f"{environ.get('FSDP_USE_ORIG_PARAMS', 'unset')})",
    )


def refuse_flat(key: str, value: Any, fsdp: Fsdp | None) -> None:
    """Refuse FSDP1 without ``use_orig_params`` for a run that sets ``key``."""
    if fsdp is not None and fsdp.version == 1 and not fsdp.use_orig_params:
        raise ConfigError(key, value, f"{FLAT_WHY} ({fsdp.source})", FLAT_FIX)


def flat_parameters(named_parameters: Iterable[tuple[str, Any]]) -> list[str]:
    """The names of FSDP1 ``FlatParameter`` s: tensors that flatten many parameters, of several modules at once."""
    return [name for name, param in named_parameters if getattr(param, "_is_flat_param", False)]


#: Why FSDP1 without ``use_orig_params`` is refused, and the fix (before the model loads and at optimizer time).
FLAT_WHY = (
    "FSDP1 without `use_orig_params` hands the optimizer one flattened tensor per wrapped block, which mixes "
    "the modules' parameters, so there is no vision tower, projector or language model to give its own LR"
)
FLAT_FIX = (
    "set `fsdp_use_orig_params: true` in the accelerate config (or `use_orig_params: true` under `fsdp_config`), "
    "or use FSDP2 (`fsdp_version: 2`), or remove the lf-multilr keys"
)
