"""Build-time metadata for recode (placeholder, filled below)."""
from __future__ import annotations

import json


def build_metadata(bin_x86: str, bin_a64: str, plan) -> dict:
    return {"schema": "hmigrate-toolchain/1"}


def write(md: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(md, f, indent=1)


def main(argv: list[str]) -> int:
    return 0
