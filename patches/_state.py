"""What the patches decided in this interpreter, and how they speak: LLaMA-Factory's logger, and lines said once."""

from __future__ import annotations

import sys
from typing import Any

from lf_multilr.support import compat

#: The logger lf-multilr writes to, under LLaMA-Factory's own (so its verbosity and rank-0 rules apply).
LOGGER_NAME = "llamafactory.lf_multilr"

_said: set[str] = set()
#: The decision for each target whose modules are imported, by dotted name, in the order they were made.
decided: dict[str, compat.Decision] = {}


def logger() -> Any:
    from llamafactory.extras import logging

    return logging.get_logger(LOGGER_NAME)


def warn_once(message: str, topic: str = "", every_rank: bool = True) -> None:
    """Say ``message`` once per ``topic`` (default: the message itself), prefixed with ``lf-multilr:``.

    ``every_rank``: on stderr, from every process, in one write (every rank may say it, on one shared pipe; it works
    before LLaMA-Factory's logging is set up). Otherwise as a warning of LLaMA-Factory's logger, from rank 0.
    """
    if (topic or message) in _said:
        return
    _said.add(topic or message)
    if every_rank:
        sys.stderr.write(f"lf-multilr: {message}\n")
    else:
        logger().warning_rank0(f"lf-multilr: {message}")


def refusal() -> tuple[str, str] | None:
    """(why, fix) when an essential target is lost here, so that setting a key must be refused; else None."""
    return compat.refusal(decided.values())


def warn_unverified() -> None:
    """The run's one line about targets applied on versions they were not verified on (if any)."""
    line = compat.unverified_line(decided.values())
    if line is not None:
        warn_once(line, topic="unverified")
