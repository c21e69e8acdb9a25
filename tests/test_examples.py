"""The example YAMLs use only keys LLaMA-Factory (with lf-multilr) accepts, with valid values."""

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from lf_multilr.config.keys import KEY_NAMES
from lf_multilr.config.settings import Settings
from tools.testing import ROOT

EXAMPLES = sorted((ROOT / "examples" / "yaml").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_keys_are_known_and_values_valid(path: Path):
    from llamafactory.hparams import parser

    known = {f.name for cls in parser._TRAIN_ARGS for f in fields(cls)}
    config = yaml.safe_load(path.read_text())
    assert set(config) <= known, set(config) - known
    settings = Settings.read(type("Config", (), config)())
    assert settings.any_set and set(settings.set_keys()) <= {*KEY_NAMES, "lr_groups"}
