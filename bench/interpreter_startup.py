"""What the interpreter costs every test: LLaMA-Factory's start-up under two CPython builds, on the same packages.

Each test that trains starts `llamafactory-cli` (or `lf-multilr`, or `python -c`), which first imports LLaMA-Factory's
training modules: 10 to 15 s of one core on the 2-core machine, most of a tiny training's time. The interpreter the
environments are made from changes that cost: a distribution's CPython is built with profile-guided and link-time
optimisation, a default pyenv build is not. This times `import llamafactory.train.tuner` under each interpreter
given, all reading one environment's site-packages (the same files and bytecode: CPython 3.11 of any patch release
shares them), after one untimed start-up of each, in repeats whose order rotates (`bench/order.py`: each interpreter
first equally often), and reports the median wall and CPU seconds and their ratios to the first interpreter.

Usage: python bench/interpreter_startup.py PYTHON PYTHON [...] [--site .venv] [--runs 6]
(--runs: a multiple of the number of interpreters)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.order import check_repeats, orders, warm_up  # noqa: E402

CODE = "import site, sys; site.addsitedir(sys.argv[1]); import llamafactory.train.tuner"


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3.*/site-packages")
    return found


def once(python: str, site: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one start-up in a fresh interpreter without its own site-packages."""
    env = {**os.environ, "LF_MULTILR_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([python, "-S", "-c", CODE, str(site)], check=True, env=env, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pythons", nargs="+", help="interpreters to compare (the first is the reference)")
    parser.add_argument("--site", type=Path, default=ROOT / ".venv", help="the environment whose packages load")
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    if problem := check_repeats(args.runs, len(args.pythons)):
        parser.error(f"--runs: {problem}")
    site = site_packages(args.site)
    warm_up(args.pythons, lambda python: once(python, site))  # the page cache, and a check that each one runs
    times: dict[str, list[tuple[float, float]]] = {python: [] for python in args.pythons}
    for order in orders(args.pythons, args.runs):
        for python in order:
            times[python].append(once(python, site))
    reference = args.pythons[0]
    wall0 = statistics.median(w for w, _ in times[reference])
    cpu0 = statistics.median(c for _, c in times[reference])
    print(
        f"import llamafactory.train.tuner from {site.relative_to(ROOT) if site.is_relative_to(ROOT) else site}, "
        f"median of {args.runs} runs, order rotated"
    )
    for python in args.pythons:
        version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True)
        wall = statistics.median(w for w, _ in times[python])
        cpu = statistics.median(c for _, c in times[python])
        print(
            f"  {python} ({version.stdout.decode().strip()}): wall {wall:.2f} s ({wall / wall0:.3f} x), "
            f"CPU {cpu:.2f} s ({cpu / cpu0:.3f} x)"
        )


if __name__ == "__main__":
    main()
