"""lf-multilr: per-module learning rates for LLaMA-Factory's multimodal fine-tuning.

Installing the package activates it (see ``_boot``). :func:`apply` and :func:`revert` do the same by hand.
This module imports nothing heavy: it is imported at every interpreter start-up.
"""

import os
import sys

from ._boot import disabled

# `patches/` installs as `lf_multilr.patches` (pyproject.toml's package-dir). In a source tree (a clone, the editable
# install, the tests) it sits beside this package instead: the package's search path reaches it there
# (docs/design.md#packaging). Two `stat` calls; an installed wheel has the folder and skips this.
_HERE = os.path.dirname(__file__)
if not os.path.isdir(os.path.join(_HERE, "patches")) and os.path.isfile(
    os.path.join(_HERE, os.pardir, "patches", "__init__.py")
):
    __path__.append(os.path.dirname(_HERE))

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
