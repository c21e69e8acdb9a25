"""Installs ``lf_multilr.pth`` at the top of site-packages, for regular and editable installs alike.

Everything else is in pyproject.toml; setuptools has no declarative way to place a file there.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = Path(__file__).parent / "lf_multilr" / "lf_multilr.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(str(PTH), str(Path(self.build_lib) / PTH.name))

    def get_outputs(self, *args, **kwargs):
        return [*super().get_outputs(*args, **kwargs), str(Path(self.build_lib) / PTH.name)]


class EditableWheelWithPth(editable_wheel):
    def _install_namespaces(self, installation_dir, pth_prefix):  # the hook that writes into the wheel's root
        super()._install_namespaces(installation_dir, pth_prefix)
        self.copy_file(str(PTH), str(Path(installation_dir) / PTH.name))


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
