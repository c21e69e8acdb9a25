"""Interpreter start-up cost of the activation hook, as installed from the wheel.

Builds the wheel, installs it into a fresh virtual environment (bytecode compiled, as pip does), then:
- reads `python -X importtime -c pass` for lf-multilr's modules (median of N runs);
- times `python -c pass` with the `.pth` present and removed, in pairs whose order alternates (`bench/order.py`)
  after one untimed start-up of each, and reports the median ratio;
- lists the modules the hook imports beyond a bare interpreter (no torch, transformers or LLaMA-Factory).

Usage: python bench/startup.py [--runs 40]   (an even number: each pair runs both orders equally often)
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.order import check_repeats, orders, warm_up  # noqa: E402

HEAVY = ("torch", "transformers", "llamafactory", "typing", "importlib.abc", "lf_multilr.patches")


def sh(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout + ""


def install(tmp: Path) -> tuple[Path, Path]:
    sh(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"), str(ROOT))
    wheel = next((tmp / "dist").glob("*.whl"))
    venv = tmp / "venv"
    sh(getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    sh(sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel))
    site = Path(sh(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    compileall.compile_dir(str(site / "lf_multilr"), quiet=1)
    return python, site


def importtime_us(python: Path, env: dict[str, str]) -> int:
    """Cumulative microseconds of lf-multilr's top-level imports in one start-up."""
    err = subprocess.run(
        [str(python), "-X", "importtime", "-c", "pass"], env=env, capture_output=True, text=True
    ).stderr
    entries = []  # (depth, cumulative us) of lf-multilr's modules
    for line in err.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[2].strip().startswith("lf_multilr"):
            entries.append((len(parts[2]) - len(parts[2].lstrip()), int(parts[1])))
    top = min(depth for depth, _ in entries)
    return sum(us for depth, us in entries if depth == top)


def wall_s(python: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    runs = parser.parse_args().runs
    if problem := check_repeats(runs, 2):
        parser.error(f"--runs: {problem}")
    # The fresh environment's packages only: with a PYTHONPATH to a checkout pip finds lf-multilr there and
    # installs nothing, and the checkout would shadow the wheel.
    os.environ.pop("PYTHONPATH", None)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "LF_MULTILR_DISABLE")}
    with tempfile.TemporaryDirectory() as folder:
        python, site = install(Path(folder))
        pth = site / "lf_multilr.pth"
        hook = [importtime_us(python, env) for _ in range(runs)]
        probe = f"import sys; print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))"
        heavy = sh(str(python), "-c", probe, env=env).strip()
        text = pth.read_text()

        def start_up(hooked: bool) -> float:
            pth.write_text(text) if hooked else pth.unlink(missing_ok=True)
            return wall_s(python, env)

        warm_up([True, False], start_up)
        times: dict[bool, list[float]] = {True: [], False: []}
        for order in orders([True, False], runs):
            for hooked in order:
                times[hooked].append(start_up(hooked))
        pth.write_text(text)
    with_hook, without = times[True], times[False]
    ratios = [a / b for a, b in zip(with_hook, without, strict=True)]
    print(
        f"| hook import time (-X importtime, median of {runs}) | {statistics.median(hook)} us "
        f"(min {min(hook)}, max {max(hook)}) |"
    )
    print(
        f"| `python -c pass` wall time, with / without the .pth (median of {runs} pairs, alternating order) | "
        f"{statistics.median(ratios):.3f} ({statistics.median(with_hook) * 1e3:.1f} ms vs "
        f"{statistics.median(without) * 1e3:.1f} ms) |"
    )
    print(f"| heavy modules imported at start-up {HEAVY} | {heavy} |")


if __name__ == "__main__":
    main()
