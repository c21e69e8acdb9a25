"""The built wheel, installed into a fresh virtual environment, activates itself and trains; without its .pth,
`lf-multilr train` activates it explicitly."""

import importlib.util
import sys
import sysconfig
import zipfile
from pathlib import Path

from tools.testing import ROOT, run, write_config


def dependency_paths() -> list[Path]:
    """Where this environment's packages are: its site-packages, and LLaMA-Factory's source root when LLaMA-Factory
    is an editable install (a clone of its main, as its README installs it)."""
    site = Path(sysconfig.get_paths()["purelib"])
    llamafactory = Path(importlib.util.find_spec("llamafactory").origin).parent.parent
    return [site] if llamafactory == site else [site, llamafactory]


def test_wheel_in_a_fresh_venv(tiny, data, tmp_path, env):
    dist = tmp_path / "dist"
    result = run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)], env)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = dist.glob("lf_multilr-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    # the activation hook once, at the top of site-packages; `patches/` inside the package, through package-dir
    assert [name for name in names if name.endswith(".pth")] == ["lf_multilr.pth"], names
    assert {"lf_multilr/patches/__init__.py", "lf_multilr/patches/targets.py", "lf_multilr/py.typed"} <= set(names)

    venv = tmp_path / "fresh"
    base_python = getattr(sys, "_base_executable", sys.executable)
    assert run([base_python, "-m", "venv", "--without-pip", str(venv)], env).returncode == 0
    python = venv / "bin" / "python"
    site = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env).stdout.strip()
    )
    # torch, LLaMA-Factory, ... without copying gigabytes (plain path lines: the .pth files there are not run)
    (site / "deps.pth").write_text("".join(f"{path}\n" for path in dependency_paths()))
    result = run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (site / "lf_multilr.pth").is_file() and (site / "lf_multilr" / "patches" / "targets.py").is_file()

    where = run([str(python), "-c", "import lf_multilr; print(lf_multilr.__file__)"], env)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    assert run([str(python), "-c", "pass"], env).stderr == ""

    config, out = write_config(tmp_path, tiny("qwen2_vl"), data, "qwen2_vl", vision_tower_lr=1.0e-4)
    cli = "import sys; from llamafactory.cli import main; sys.argv = ['llamafactory-cli', 'train', sys.argv[1]]; main()"
    result = run([str(python), "-c", cli, str(config)], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lf-multilr param groups" in result.stdout and (out / "trainer_log.jsonl").is_file()

    (site / "lf_multilr.pth").unlink()
    result = run([str(python), "-c", cli, str(config)], env, cwd=tmp_path)
    assert (
        result.returncode != 0
        and "Some keys are not used by the HfArgumentParser: ['vision_tower_lr']" in result.stderr
    )
    result = run(
        [
            str(venv / "bin" / "lf-multilr"),
            "train",
            str(config),
            "language_model_lr=2.0e-3",
            "overwrite_output_dir=true",
        ],
        env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lf-multilr param groups" in result.stdout and "2.000e-03" in result.stdout
