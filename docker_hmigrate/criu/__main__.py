"""Command line: `python -m docker_hmigrate.criu show|isa|check DIR`."""

from __future__ import annotations

import argparse
import sys

from docker_hmigrate.criu.imageset import ImageSet
from docker_hmigrate.criu.isa import check_supported, isa_specific_parts
from docker_hmigrate.criu.show import summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m docker_hmigrate.criu",
                                 description="Inspect a CRIU image set (checkpoint directory).")
    ap.add_argument("command", choices=("show", "isa", "check"),
                    help="show: summary; isa: parts recode must change; check: unsupported files")
    ap.add_argument("dir", help="the checkpoint directory")
    args = ap.parse_args(argv)
    s = ImageSet.load(args.dir)
    if args.command == "show":
        print(summary(s))
    elif args.command == "isa":
        print("\n".join(isa_specific_parts(s)))
    else:
        problems = check_supported(s)
        print("\n".join(problems) if problems else "all files understood")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
