"""The README and docs/design.md stay true to the code: every key, every leg, every patch target and every source
file is listed, and every page the README links to is there."""

from __future__ import annotations

import re

from lf_multilr.config.keys import KEYS, LR_GROUPS, SWITCHES
from lf_multilr.modules import TABLE
from lf_multilr.patches.targets import TARGETS
from tools.testing import ROOT

README = (ROOT / "README.md").read_text()
DESIGN = (ROOT / "docs" / "design.md").read_text()


def _section(text: str, title: str) -> str:
    return text.split(title, 1)[1].split("\n#", 1)[0]


def test_the_first_screen_has_the_two_commands_and_a_config():
    first_screen = "\n".join(README.splitlines()[:60])
    assert "make demo" in first_screen and "make test" in first_screen
    assert "vision_tower_lr:" in first_screen and "llamafactory-cli train" in first_screen


def test_every_key_is_in_the_readme_table():
    table = _section(README, "## Keys")
    named = set(re.findall(r"^\| `([^`]+)`", table, flags=re.M))
    for key in (*KEYS, LR_GROUPS, *SWITCHES):
        module = getattr(key, "module", None)  # a switch sets no module
        pattern = key.name.replace(module, "<module>", 1) if module in TABLE.names else key.name
        assert key.name in named or pattern in named, key.name


def test_every_leg_of_the_matrix_is_in_the_versions_table():
    table = _section(README, "## Supported versions")
    for environment in (".venv`", ".venv-main", ".venv-t57", ".venv-lf094"):
        assert environment in table, environment


def test_every_page_the_readme_links_to_exists():
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+?)(?:#[\w-]+)?\)", README):
        assert (ROOT / link).exists(), link


def test_every_patch_target_is_in_the_design_table():
    table = _section(DESIGN, "### Patch targets")
    missing = [t.dotted for t in TARGETS if f"{t.attr.rsplit('.', 1)[-1]}`" not in table]
    assert not missing, f"add these targets to the patch-target table of docs/design.md: {missing}"


def test_every_source_file_is_in_the_design_layout():
    layout = _section(DESIGN, "## Layout")
    package = [p for p in (ROOT / "lf_multilr").rglob("*.py") if "patches" not in p.relative_to(ROOT).parts]
    files = [*package, *(ROOT / "patches").glob("*.py")]
    missing = sorted(
        str(p.relative_to(ROOT)) for p in files if p.name != "__init__.py" and f"  {p.name} " not in layout
    )
    assert not missing, f"add these files to the layout of docs/design.md: {missing}"


def test_the_v1_example_is_a_config_the_plugins_accept():
    """The README's v1 YAML, read by the checks v1's parser runs on it: accepted, with the floor it shows."""
    import yaml

    from lf_multilr.config.v1 import read_optim_config, read_scheduler_config

    section = README.split("### LLaMA-Factory's v1 engine", 1)[1]
    example = yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])
    optim = read_optim_config(example["optim_config"])
    assert optim.settings.floors() == [("language_model_min_lr", 1.0e-6)]
    assert optim.settings.values["vision_tower_lr"] == 2.0e-6
    assert read_scheduler_config(example["lr_scheduler_config"]).warmup_steps == 10
