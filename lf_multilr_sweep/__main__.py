"""``python -m lf_multilr_sweep``: the same as ``lf-multilr sweep``."""

import sys

from . import main

sys.exit(main(sys.argv[1:]))
