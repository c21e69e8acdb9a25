"""``lf-multilr``: explicit activation (``lf-multilr train CONFIG.yaml [key=value ...]``)."""

from __future__ import annotations

import sys

USAGE = """usage: lf-multilr train CONFIG.yaml [key=value ...]
  train    run `llamafactory-cli train` with lf-multilr applied (no .pth needed)
"""


def train(argv: list[str]) -> int:
    import lf_multilr

    if not lf_multilr.apply():
        print("lf-multilr: LF_MULTILR_DISABLE is set; running stock LLaMA-Factory.", file=sys.stderr)
    from llamafactory.cli import main as llamafactory_main

    sys.argv = ["llamafactory-cli", "train", *argv]
    result = llamafactory_main()
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train(rest)
    print(f"lf-multilr: unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
