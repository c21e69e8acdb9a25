"""LLaMA-Factory's other training back ends, which build their optimizers without ``create_custom_optimizer``.

The module groups exist only where LLaMA-Factory's own trainers build the optimizer through
``create_custom_optimizer``. The back ends below do not (or lf-multilr has not seen them do it), so a run that sets
a key there is refused before any weight loads, naming the back end. Hyper-parallel training on LLaMA-Factory's
``main`` is no such case: its ``HyperParallelTrainer`` is LLaMA-Factory's own and builds the optimizer through the
same factory, so the keys work there (the run-time check confirms it at the first step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lf_multilr.errors import ConfigError

#: LLaMA-Factory's reading of its own environment switches (`is_env_enabled`): not lf-multilr's flags (`_boot.flag`).
_TRUE = ("1", "true", "y")


def env_enabled(environ: Mapping[str, str], name: str) -> bool:
    """LLaMA-Factory's reading of a switch in the environment (``is_env_enabled``)."""
    return environ.get(name, "0").lower() in _TRUE


@dataclass(frozen=True)
class Backend:
    """A back end: how it is selected, what builds its optimizer, and what to do instead."""

    selected_by: str
    builds: str
    fix: str

    def why(self) -> str:
        return f"{self.selected_by} trains with {self.builds}, so the module groups would never be built"


MCA = Backend(
    "`USE_MCA=1` (mcore_adapter is installed)",
    "mcore_adapter's Megatron trainer, whose optimizer is Megatron's and never comes from create_custom_optimizer",
    "unset USE_MCA to train with LLaMA-Factory's own trainers, or remove the lf-multilr keys",
)
MEGATRON_BRIDGE = Backend(
    "`USE_MEGATRON_BRIDGE=1`",
    "Megatron Bridge, which builds Megatron's own optimizer and never calls create_custom_optimizer",
    "unset USE_MEGATRON_BRIDGE to train with LLaMA-Factory's own trainers, or remove the lf-multilr keys",
)
HYPER_PARALLEL_EXTERNAL = Backend(
    "`use_hyper_parallel: true`",
    "the hyper_parallel package's own HyperParallelTrainer (this LLaMA-Factory release has none of its own), which "
    "lf-multilr has not seen build its optimizer through create_custom_optimizer",
    "use LLaMA-Factory's main, whose own HyperParallelTrainer takes the keys, or FSDP2 (`fsdp_version: 2`), or "
    "remove `use_hyper_parallel`",
)
KTRANSFORMERS = Backend(
    "`use_kt: true`",
    "KTransformers' optimized kernels, whose LoRA training lf-multilr has not verified to keep the module groups",
    "remove `use_kt` (plain LoRA on LLaMA-Factory's trainers takes the keys), or remove the lf-multilr keys",
)
V1 = Backend(
    "`USE_V1=1`",
    "LLaMA-Factory's v1 engine, which builds its optimizer from `optim_config` through its own plugin registry",
    "unset USE_V1 to train with LLaMA-Factory's default engine, or remove the lf-multilr keys",
)


def backends_at_parse(
    environ: Mapping[str, str],
    use_hyper_parallel: bool,
    own_hyper_parallel: bool,
    mcore_available: bool,
    has_megatron_bridge: bool,
) -> list[Backend]:
    """The back ends a run selects that are known while its finetuning arguments are parsed.

    ``has_megatron_bridge``: the installed LLaMA-Factory reads ``USE_MEGATRON_BRIDGE`` (main does; 0.9.5 ignores
    it and trains with its own trainers).
    """
    found = []
    if env_enabled(environ, "USE_MCA") and mcore_available:
        found.append(MCA)
    if env_enabled(environ, "USE_MEGATRON_BRIDGE") and has_megatron_bridge:
        found.append(MEGATRON_BRIDGE)
    if use_hyper_parallel and not own_hyper_parallel:
        found.append(HYPER_PARALLEL_EXTERNAL)
    return found


#: LLaMA-Factory's switch for its Ray launcher: `llamafactory-cli train` then starts one Ray actor per worker.
RAY = "USE_RAY"


def explicit_activation_refusal(environ: Mapping[str, str]) -> ConfigError | None:
    """Why ``lf-multilr train`` cannot serve this run, or None.

    Explicit activation patches its own process only. Under ``USE_RAY`` that process is only Ray's driver: the
    training runs in the Ray worker processes, which parse the arguments and build the optimizers themselves, and
    are lf-multilr's only where its start-up hook (the installed ``.pth``) activates it."""
    if not env_enabled(environ, RAY):
        return None
    return ConfigError(
        RAY,
        environ[RAY],
        "`lf-multilr train` activates lf-multilr in its own process only, and with USE_RAY LLaMA-Factory trains in Ray "
        "worker processes (Ray actors, on any node of the cluster), which parse the arguments and build the optimizers "
        "themselves; explicit activation cannot reach them",
        "run `llamafactory-cli train` instead, with lf-multilr installed in the environment the Ray workers run in: "
        "its start-up hook activates it in every worker (`lf-multilr doctor` there shows the hook); or unset USE_RAY",
    )
