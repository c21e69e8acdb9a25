"""The config keys a training run accepts: those of LLaMA-Factory's parser and lf-multilr's own.

LLaMA-Factory's parser refuses any key its argument classes do not have. lf-multilr's patches list them
(``lf_multilr.patches.hparams.parser_keys``: only the patches touch LLaMA-Factory). Importing LLaMA-Factory costs
seconds (torch, transformers), so the names are listed once, by ``python -m lf_multilr.patches.parser_keys`` in a
subprocess of this interpreter with lf-multilr switched off, and kept in the user's cache, under a name that changes
with the installed LLaMA-Factory and transformers (their versions and the contents of LLaMA-Factory's ``hparams``
sources).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from lf_multilr.config.keys import CALLBACKS, FREEZE_FLAGS, KEY_NAMES, LR_GROUPS, SWITCHES

#: The module of lf-multilr's patches that prints the parser's keys as a JSON list.
LISTING = "lf_multilr.patches.parser_keys"

LF_MULTILR_KEYS = frozenset(
    (*KEY_NAMES, LR_GROUPS.name, CALLBACKS.name, *(switch.name for switch in SWITCHES), *(f.name for f in FREEZE_FLAGS))
)


class KeysUnavailable(RuntimeError):
    """LLaMA-Factory's keys could not be listed; the message is the reason."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lf-multilr"


def _fingerprint() -> str:
    """What the parser's keys depend on: LLaMA-Factory's and transformers' versions, the ``hparams`` sources."""
    spec = importlib.util.find_spec("llamafactory")  # finding a top-level package does not import it
    if spec is None or not spec.submodule_search_locations:
        raise KeysUnavailable("LLaMA-Factory is not installed in this environment")
    digest = hashlib.sha256()
    for package in ("llamafactory", "transformers"):
        digest.update(f"{package}=={importlib.metadata.version(package)}\n".encode())
    for source in sorted((Path(next(iter(spec.submodule_search_locations))) / "hparams").glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:16]


def _list_in_subprocess() -> list[str]:
    env = {**os.environ, "LF_MULTILR_DISABLE": "1", "LLAMAFACTORY_VERBOSITY": "ERROR"}
    done = subprocess.run(
        [sys.executable, "-m", LISTING], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()]
        raise KeysUnavailable(last[-1] if last else f"exit code {done.returncode}")
    names = json.loads(done.stdout.strip().splitlines()[-1])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise KeysUnavailable(f"unexpected output {done.stdout[-200:]!r}")
    return names


def llamafactory_keys() -> frozenset[str]:
    """The keys of LLaMA-Factory's training parser (without lf-multilr's), from the cache when it has them."""
    path = cache_dir() / f"train-keys-{_fingerprint()}.json"
    try:
        return frozenset(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    print(
        "lf-multilr sweep: listing the config keys LLaMA-Factory accepts (once per installation) ...", file=sys.stderr
    )
    names = _list_in_subprocess()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(names), encoding="utf-8")
        partial.replace(path)
    except OSError:  # a read-only home only costs the next sweep the same seconds
        pass
    return frozenset(names)


def known_keys() -> frozenset[str]:
    """Every key a training run with lf-multilr accepts."""
    return llamafactory_keys() | LF_MULTILR_KEYS
