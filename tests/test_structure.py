"""The shape of the code: the two rooms and their doors, the boot hook's watch list, no import cycles.

``lf_multilr/`` computes and never reaches into LLaMA-Factory or the patches but through its doors: the package's
``apply`` / ``revert`` (``__init__.py``), the boot hook (``_boot.py``) and the command line (``cli.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from lf_multilr import _boot
from lf_multilr.patches.targets import TARGETS
from tools.testing import ROOT

PACKAGE = ROOT / "lf_multilr"
PATCHES = ROOT / "patches"
SWEEP = ROOT / "lf_multilr_sweep"
DOORS = {"lf_multilr", "lf_multilr._boot", "lf_multilr.cli"}
#: The sweep's stack (the `sweep` extra and PostgreSQL's driver), which the plugin never imports.
SWEEP_STACK = ("optuna", "sqlalchemy", "psycopg", "psycopg2", "tqdm", "lf_multilr_sweep")


def module_name(path: Path) -> str:
    if path.is_relative_to(PATCHES):
        parts = ("lf_multilr", "patches", *path.relative_to(PATCHES).with_suffix("").parts)
    else:
        parts = ("lf_multilr", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(part for part in parts if part != "__init__")


def sources() -> dict[str, Path]:
    files = [p for p in PACKAGE.rglob("*.py") if "patches" not in p.relative_to(PACKAGE).parts]
    return {module_name(path): path for path in [*files, *PATCHES.glob("*.py")]}


def imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from package import module`
    return found


def test_nothing_outside_the_doors_imports_llamafactory_or_the_patches():
    offenders = {
        name: sorted(
            m for m in imports(name, path) if m.split(".")[0] == "llamafactory" or m.startswith("lf_multilr.patches")
        )
        for name, path in sources().items()
        if not name.startswith("lf_multilr.patches") and name not in DOORS
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_plugin_never_imports_the_sweep_s_stack_but_its_command_line_door_runs_the_sweep():
    found = {
        name: sorted(m for m in imports(name, path) if m.split(".")[0] in SWEEP_STACK)
        for name, path in sources().items()
    }
    assert {name: modules for name, modules in found.items() if modules} == {
        "lf_multilr.cli": ["lf_multilr_sweep", "lf_multilr_sweep.main"]
    }


def test_the_sweep_reaches_llamafactory_only_through_the_runs_it_starts():
    """The sweep package imports neither LLaMA-Factory nor the patches: it lists LLaMA-Factory's keys through a
    subprocess of the patches (``python -m lf_multilr.patches.parser_keys``) and talks to a run through the callbacks
    hook."""
    sweep = {".".join(("lf_multilr_sweep", *p.relative_to(SWEEP).with_suffix("").parts)): p for p in SWEEP.glob("*.py")}
    found = {
        name.removesuffix(".__init__"): sorted(
            m
            for m in imports(name.removesuffix(".__init__"), path)
            if m.split(".")[0] == "llamafactory" or m.startswith("lf_multilr.patches")
        )
        for name, path in sweep.items()
    }
    assert len(found) > 8 and {name: modules for name, modules in found.items() if modules} == {}


def test_the_boot_hook_watches_exactly_the_trigger_modules_of_the_target_table():
    assert _boot.WATCHED == {target.trigger_module for target in TARGETS}


def test_no_import_cycles_in_either_room():
    modules = sources()
    graph = {
        name: {m for m in imports(name, path) if m in modules and m != name and not name.startswith(m + ".")}
        for name, path in modules.items()
        if name not in DOORS
    }
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        seen[name] = 1
        for other in sorted(graph.get(name, ())):
            assert seen.get(other) != 1, " -> ".join([*path, name, other])
            if other not in seen:
                visit(other, [*path, name])
        seen[name] = 2

    for name in sorted(graph):
        if name not in seen:
            visit(name, [])
    assert len(graph) > 40  # both rooms were read
