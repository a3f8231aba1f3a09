"""python -m docker_hmigrate.toolchain {check-align,metadata,walk,cc} ..."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "check-align":
        from .check import main as check_main

        return check_main(rest)
    if cmd == "metadata":
        from .metadata import main as md_main

        return md_main(rest)
    if cmd == "walk":
        from .stackwalk import main as walk_main

        return walk_main(rest)
    if cmd == "cc":
        from .driver import cc
        from .objects import ToolchainError

        try:
            return cc(rest)
        except ToolchainError as e:  # the compiler's or linker's own message came first
            print(f"hmigrate-cc: error: {e}", file=sys.stderr)
            return 1
    print(f"unknown command {cmd!r}; try check-align, metadata, walk or cc", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
