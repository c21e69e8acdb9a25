"""lf-multilr: per-module learning rates for LLaMA-Factory's multimodal fine-tuning.

Installing the package activates it (see ``_boot``). :func:`apply` and :func:`revert` do the same by hand.
This module imports nothing heavy: it is imported at every interpreter start-up.
"""

import os
import sys

from ._boot import disabled

# `patches/` installs as `lf_multilr.patches` (pyproject.toml's package-dir). In a source tree (a clone, the editable
# install, the tests) it sits beside this package instead: a finder for that one name finds it there
# (docs/design.md#packaging). Two `stat` calls; an installed wheel has the folder and skips this.
_PATCHES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "patches")
if not os.path.isdir(os.path.join(os.path.dirname(__file__), "patches")) and os.path.isfile(
    os.path.join(_PATCHES, "__init__.py")
):

    class _SourceTreePatches:
        """Finds ``lf_multilr.patches`` in ``patches/`` beside the package, and nothing else (its submodules are
        found in its folder as usual)."""

        @staticmethod
        def find_spec(name: str, path: object = None, target: object = None) -> object:
            if name != "lf_multilr.patches":
                return None
            from importlib.util import spec_from_file_location

            init = os.path.join(_PATCHES, "__init__.py")
            return spec_from_file_location(name, init, submodule_search_locations=[_PATCHES])

    sys.meta_path.append(_SourceTreePatches)  # type: ignore[arg-type]


__all__ = ["apply", "disabled", "revert"]
__version__ = "0.1.0"


def apply() -> bool:
    """Activate lf-multilr in this interpreter: patch LLaMA-Factory now or when it is imported.

    Idempotent. Returns False (and changes nothing) when ``LF_MULTILR_DISABLE`` is set.
    """
    from . import _boot

    if disabled():
        return False
    from .patches import enable

    enable()
    _boot.install()
    return True


def revert() -> None:
    """Undo :func:`apply` exactly: every patched name gets its original object back. Idempotent."""
    from . import _boot

    _boot.uninstall()
    if "lf_multilr.patches" in sys.modules:
        from .patches import disable

        disable()
