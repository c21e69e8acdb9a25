"""Cross-references stay true: every Sphinx-style role in a docstring or comment (:mod:, :func:, :class:, :meth:,
:data:, :attr:, :exc:) names something that exists, and every relative link in the docs points to a file, and to a
heading of that file when it names one."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from tools.testing import ROOT

ROLE = re.compile(r":(mod|func|class|meth|data|attr|exc):`~?([\w.]+)`")
#: The packages whose files are read, and the module name each folder installs as.
PACKAGES = {"lf_multilr": "lf_multilr", "patches": "lf_multilr.patches", "lf_multilr_sweep": "lf_multilr_sweep"}
LINK = re.compile(r"\]\(((?!https?:|mailto:)[^)\s#]*)(?:#([\w-]+))?\)")


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> list[Path]:
    return sorted(p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py") if (ROOT / folder).is_dir())


def resolve(dotted: str, within: str, package: str) -> bool:
    """Whether ``dotted`` names something: as an absolute module path (then attributes), relative to ``package``
    (leading dots), or as attributes of the module ``within`` (the names it defines or imports)."""
    if dotted.startswith("."):
        dotted = importlib.util.resolve_name(dotted, package)
    parts = dotted.split(".")
    for start in (None, within):
        for cut in range(len(parts), 0, -1):
            name = ".".join(parts[:cut]) if start is None else start
            rest = parts[cut:] if start is None else parts
            try:
                value: object = importlib.import_module(name)
            except ImportError:
                if start is not None:
                    break
                continue
            if all_attributes(value, rest):
                return True
            if start is not None:
                break
    # a bare name in a class's docstring: a member of a class of that module
    module = importlib.import_module(within)
    classes = [value for value in vars(module).values() if isinstance(value, type) and value.__module__ == within]
    return len(parts) == 1 and any(all_attributes(cls, parts) for cls in classes)


def all_attributes(value: object, names: list[str]) -> bool:
    """Whether ``value.a.b...`` exists; a dataclass field or an annotated class attribute counts."""
    for name in names:
        if hasattr(value, name):
            value = getattr(value, name)
        elif isinstance(value, type) and name in getattr(value, "__annotations__", {}):
            return name == names[-1]
        else:
            return False
    return True


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_role_names_something_that_exists(path: Path):
    within = module_name(path)
    package = within if path.name == "__init__.py" else within.rpartition(".")[0]
    found = ROLE.findall(path.read_text())
    broken = [f":{role}:`{target}`" for role, target in found if not resolve(target, within, package)]
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_every_relative_link_in_the_docs_resolves(page: str):
    path = ROOT / page if (ROOT / page).exists() else ROOT / "docs" / page
    text = path.read_text()
    for target, anchor in LINK.findall(text):
        linked = (path.parent / target).resolve() if target else path
        assert linked.exists(), f"{page}: ({target}) does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked.read_text()), f"{page}: ({target}#{anchor}) names no heading there"
