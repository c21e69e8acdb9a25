"""``python -m lf_multilr.patches.parser_keys``: print the keys LLaMA-Factory's training parser accepts, as one JSON
list (:func:`.hparams.parser_keys`). ``lf-multilr sweep`` runs it once per installation, in a subprocess, since
importing LLaMA-Factory costs seconds; run it with ``LF_MULTILR_DISABLE=1`` for LLaMA-Factory's keys alone."""

from __future__ import annotations

import json

from .hparams import parser_keys

if __name__ == "__main__":
    print(json.dumps(parser_keys()))
