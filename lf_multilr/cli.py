"""``lf-multilr``: explicit activation, the dry-run plan, ratio sweeps and the environment check (see USAGE)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

USAGE = """usage: lf-multilr train CONFIG.yaml [key=value ...]
       lf-multilr plan CONFIG.yaml [key=value ...] [--json | --tensors MODULE]
       lf-multilr sweep CONFIG.yaml [--set KEY=V1,V2 ...] [--range KEY=LOW:HIGH[:log] ...] [--trials N] [--prune]
                        [--reduction-factor N] [--workers N] [--storage URL] [--seed S] [--max-steps N]
                        [--out DIR] [key=value ...]
       lf-multilr doctor
  train    run `llamafactory-cli train` with lf-multilr applied (no .pth needed)
  plan     print the module table the run would use (no weights loaded: needs only config.json); --json: as
           JSON, each param group naming its tensors; --tensors MODULE: each tensor of MODULE, its group and LR
  sweep    search module LRs with short real trainings as an Optuna study (grid, TPE, pruning, shared storage)
  doctor   show versions, the verified range, the activation hook and the applied patches
"""


def train(argv: list[str]) -> int:
    import lf_multilr

    from .config.backends import explicit_activation_refusal

    refusal = explicit_activation_refusal(os.environ)
    if refusal is not None:  # before LLaMA-Factory is imported: nothing is loaded, nothing written
        print(refusal, file=sys.stderr)
        return 1
    if not lf_multilr.apply():
        print("lf-multilr: LF_MULTILR_DISABLE is set; running stock LLaMA-Factory.", file=sys.stderr)
    from llamafactory.cli import main as llamafactory_main

    sys.argv = ["llamafactory-cli", "train", *argv]
    return int(llamafactory_main() or 0)


def _option(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    """``argv`` without ``flag VALUE``, and the value (None when absent)."""
    if flag not in argv:
        return argv, None
    at = argv.index(flag)
    return argv[:at] + argv[at + 2 :], (argv[at + 1] if at + 1 < len(argv) else "")


def plan(argv: list[str]) -> int:
    as_json = "--json" in argv
    argv, tensors = _option([arg for arg in argv if arg != "--json"], "--tensors")
    if not argv or tensors == "":
        print(USAGE, end="", file=sys.stderr)
        return 2
    os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "WARN")
    from .errors import ConfigError
    from .patches.dry_run import make_plan, read_config

    try:
        with contextlib.redirect_stdout(sys.stderr):  # LLaMA-Factory logs to stdout; stdout is the plan's
            result = make_plan(read_config(argv))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    return show(result, as_json, tensors)


def show(result: Any, as_json: bool, tensors: str | None) -> int:
    """Print the plan as the options ask: the module table, JSON, or one module's tensors."""
    if tensors is not None:
        from .reports.table import format_tensors

        if tensors not in result.rows:
            known = ", ".join(name for name, row in result.rows.items() if row.tensors)
            print(f"lf-multilr plan: --tensors {tensors}: no such module; this model has: {known}", file=sys.stderr)
            return 2
        print(format_tensors(result, tensors))
    elif as_json:
        from .reports.as_json import plan_to_dict

        print(json.dumps(plan_to_dict(result), indent=2))
    else:
        from .reports.table import format_table

        print(format_table(result))
    return 0


def sweep(argv: list[str]) -> int:
    """``lf-multilr sweep``: the ``lf_multilr_sweep`` package, shipped in the same wheel, which checks for its own
    dependencies (the ``sweep`` extra); the plugin itself never imports them."""
    from lf_multilr_sweep import main as sweep_main

    return sweep_main(argv)


def doctor() -> int:
    from .patches.doctor import report

    lines, ok = report()
    print("\n".join(lines))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train(rest)
    if command == "plan":
        return plan(rest)
    if command == "sweep":
        return sweep(rest)
    if command == "doctor" and not rest:
        return doctor()
    print(f"lf-multilr: unknown command {' '.join(argv)!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
