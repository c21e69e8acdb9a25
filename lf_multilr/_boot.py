"""Activation: a lazy post-import hook that patches LLaMA-Factory when its modules are first imported.

``lf_multilr.pth`` (installed next to the package) imports this module at interpreter start-up and calls
:func:`install`. Everything here uses the standard library only and costs a few microseconds: nothing of
LLaMA-Factory, torch or lf-multilr's own logic is imported until LLaMA-Factory itself is. It never raises:
a failure prints one line on stderr and leaves LLaMA-Factory stock. ``LF_MULTILR_DISABLE=1`` turns it off.
"""

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # the annotations only; `typing` and `importlib.abc` cost milliseconds at start-up
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

DISABLE_ENV = "LF_MULTILR_DISABLE"

#: The modules whose import triggers patching (their names must match ``patches.targets``' owners).
WATCHED = frozenset(
    {
        "llamafactory.hparams.parser",
        "llamafactory.train.trainer_utils",
        "llamafactory.train.callbacks",
        "llamafactory.train.tuner",
        "llamafactory.extras.ploting",
        "llamafactory.model.model_utils.visual",
        "llamafactory.webui.locales",
        "llamafactory.webui.manager",
        "llamafactory.webui.components.train",
        "llamafactory.webui.runner",
        "llamafactory.v1.config",
        "llamafactory.v1.plugins.trainer_plugins.optimizers.optimizer",
        "llamafactory.v1.plugins.trainer_plugins.lr_scheduler",
        "llamafactory.v1.utils.callbacks.trainer_callback",
        "llamafactory.v1.core.utils.checkpoint",
    }
)


#: The one truth table of lf-multilr's environment flags: these values (case and surrounding blanks ignored) are off,
#: any other value is on.
OFF = frozenset({"", "0", "false", "no", "off"})


def flag(name: str, environ: "Any" = None) -> bool:
    """Whether the environment flag ``name`` is on (read from ``environ``, default ``os.environ``)."""
    return (os.environ if environ is None else environ).get(name, "").strip().lower() not in OFF


def disabled(environ: "Any" = None) -> bool:
    """Whether the kill switch ``LF_MULTILR_DISABLE`` is on."""
    return flag(DISABLE_ENV, environ)


def _notify(name: str) -> None:
    """Hand a freshly executed module to the patches; never let a failure escape into the import."""
    try:
        from lf_multilr.patches import on_import

        on_import(name)
    except Exception as error:  # noqa: BLE001 - an import must never fail because of the plugin
        sys.stderr.write(f"lf-multilr: not active ({type(error).__name__}: {error}); set {DISABLE_ENV}=1 to silence\n")


class _Loader:
    """Runs the real loader, then notifies (a duck-typed ``importlib.abc.Loader``)."""

    def __init__(self, wrapped: "Loader") -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> "Any":
        return getattr(self._wrapped, name)

    def create_module(self, spec: "ModuleSpec") -> "ModuleType | None":
        return self._wrapped.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        module.__loader__ = self._wrapped
        if module.__spec__ is not None:
            module.__spec__.loader = self._wrapped
        self._wrapped.exec_module(module)
        _notify(module.__name__)


class Finder:
    """A duck-typed meta path finder that finds nothing itself.

    For a watched module it asks the other finders and wraps the loader they return.
    """

    def find_spec(self, fullname: str, path: "Any" = None, target: "ModuleType | None" = None) -> "ModuleSpec | None":
        if fullname not in WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)  # type: ignore[assignment]
                return spec
        return None


def installed() -> bool:
    return any(isinstance(finder, Finder) for finder in sys.meta_path)


def install() -> None:
    """Register the hook (once) and patch what is already imported. Honours the kill switch."""
    if disabled() or installed():
        return
    sys.meta_path.insert(0, Finder())
    for name in sorted(WATCHED & sys.modules.keys()):
        _notify(name)


def uninstall() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, Finder)]


def boot() -> None:
    """The ``.pth`` entry point."""
    try:
        install()
    except Exception as error:  # noqa: BLE001 - interpreter start-up must never fail because of the plugin
        sys.stderr.write(f"lf-multilr: activation failed ({error}); set {DISABLE_ENV}=1 to silence\n")
