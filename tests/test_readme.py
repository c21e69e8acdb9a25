"""The README's tables stay true to the code: every patch target and every source file is listed."""

from __future__ import annotations

from pathlib import Path

from lf_multilr.patches.targets import TARGETS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(title, 1)[1].split("\n#", 1)[0]


def test_every_patch_target_is_in_the_readme_table():
    table = _section("### Patch targets")
    missing = [t.dotted for t in TARGETS if f"{t.attr.rsplit('.', 1)[-1]}`" not in table]
    assert not missing, f"add these targets to the README's patch-target table: {missing}"


def test_every_source_file_is_in_the_readme_layout():
    layout = _section("## Layout")
    files = [p for folder in ("lf_multilr", "patches") for p in sorted((ROOT / folder).glob("*.py"))]
    missing = [f"{p.parent.name}/{p.name}" for p in files if p.name != "__init__.py" and f"  {p.name} " not in layout]
    assert not missing, f"add these files to the README's layout: {missing}"
