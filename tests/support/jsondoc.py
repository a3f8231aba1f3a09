"""docs/json.md as data: each command's example document and its optional keys, and the
comparison of a produced document's keys with them (used by unit and lab tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "json.md"


def sections() -> dict[str, dict[str, Any]]:
    """`command` -> {"example": dict, "optional": set of paths, "free": set of paths};
    the early-failure example is under "error"."""
    text = DOC.read_text()
    out = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        title = part.splitlines()[0]
        m = re.match(r"`(\w+)`", title)
        name = m.group(1) if m else ("error" if "failed early" in title else None)
        blocks = re.findall(r"```json\n(.*?)```", part, re.S)
        if name is None or not blocks:
            continue

        out[name] = {"example": json.loads(blocks[0]),
                     "optional": _listed(part, "Present only sometimes:"),
                     "free": _listed(part, "Free-form maps:")}
    return out


def _listed(part: str, label: str) -> set[str]:
    """The `key` paths named in the sentence that starts with `label`."""
    found = re.search(label + r"(.*?)(?:\.\n|\n\n|$)", part, re.S)
    return set(re.findall(r"`([\w.\[\]]+)`", found.group(1))) if found else set()


def paths(obj: Any, free: set[str], prefix: str = "") -> set[str]:
    """Dotted key paths; list elements as `key[].sub`; free-form maps not entered."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f"{prefix}{key}"
            out.add(path)
            if path in free:
                continue
            if isinstance(value, dict):
                out |= paths(value, free, path + ".")
            elif isinstance(value, list):
                for item in value:
                    out |= paths(item, free, path + "[].")
    return out


def empty_lists(obj: Any, prefix: str = "") -> set[str]:
    """Paths of the lists that are empty (their elements' keys cannot be there)."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f"{prefix}{key}"
            if isinstance(value, list):
                if not value:
                    out.add(path)
                for item in value:
                    out |= empty_lists(item, path + "[].")
            elif isinstance(value, dict):
                out |= empty_lists(value, path + ".")
    return out


def check_keys(command: str, produced: dict[str, Any]) -> None:
    """Every key produced is documented; every documented key that is not optional is
    produced (unless it sits in a list that is empty here)."""
    sec = sections()[command]
    documented = paths(sec["example"], sec["free"]) | sec["optional"]
    got = paths(produced, sec["free"])
    undocumented = {p for p in got - documented if not any(
        p.startswith((f + ".", f + "[].")) for f in sec["free"])}
    assert not undocumented, f"{command}: keys produced but not in docs/json.md: {undocumented}"
    empty = empty_lists(produced)
    def optional(p: str) -> bool:  # an optional key, or inside one, or in an empty list
        return any(p == o or p.startswith((o + ".", o + "[].")) for o in sec["optional"]) \
            or any(p.startswith(e + "[].") for e in empty)

    missing = {p for p in documented - got if not optional(p)}
    assert not missing, f"{command}: documented keys not produced: {missing}"
    assert produced["schema"] == "hmigrate/v1" and produced["command"] in (command, "migrate")
