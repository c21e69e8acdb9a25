"""Installs ``lf_multilr.pth``, the activation hook, at the top of site-packages, for regular and editable installs.

Everything else is in pyproject.toml: setuptools has no declarative way to place a file at the top of site-packages.
The hook's one line is written here, so that the wheel holds it once (and the sdist needs no extra file). Two small
overrides, kept as narrow as setuptools allows, for the range pyproject.toml's build requirement pins
(setuptools>=77,<85; tests/test_wheel.py checks both results):
- ``build_py``: the regular wheel (a public command: ``run`` and ``get_outputs`` are its documented hooks);
- ``editable_wheel._install_namespaces``: the editable wheel. setuptools offers no public hook there; this private
  method is the one that writes files into the editable wheel's root, and runs once per editable build.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "lf_multilr.pth"
#: Runs at every interpreter start-up: never raises, imports only the standard-library-only ``lf_multilr._boot``.
HOOK = (
    'import sys; exec("try:\\n from lf_multilr._boot import boot\\nexcept Exception:\\n boot = None\\n'
    'if boot is not None:\\n boot()")\n'
)


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        Path(self.build_lib, PTH).write_text(HOOK)

    def get_outputs(self, *args, **kwargs):
        return [*super().get_outputs(*args, **kwargs), str(Path(self.build_lib, PTH))]


class EditableWheelWithPth(editable_wheel):
    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        Path(installation_dir, PTH).write_text(HOOK)


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
