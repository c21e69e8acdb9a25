"""What the patches decided in this interpreter, and the one-line warnings they print (each once)."""

from __future__ import annotations

import sys

from lf_multilr import compat

_warned: set[str] = set()
#: The decision for each target whose modules are imported, by dotted name, in the order they were made.
decided: dict[str, compat.Decision] = {}


def warn_once(message: str, topic: str = "") -> None:
    """One line on stderr per ``topic`` (default: the message itself)."""
    if (topic or message) not in _warned:
        _warned.add(topic or message)
        sys.stderr.write(f"lf-multilr: {message}\n")  # one write: every rank may say it, on one shared pipe


def refusal() -> tuple[str, str] | None:
    """(why, fix) when an essential target is lost here, so that setting a key must be refused; else None."""
    return compat.refusal(decided.values())


def warn_unverified() -> None:
    """The run's one line about targets applied on versions they were not verified on (if any)."""
    line = compat.unverified_line(decided.values())
    if line is not None:
        warn_once(line, topic="unverified")
