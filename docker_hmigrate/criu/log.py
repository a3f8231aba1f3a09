"""CRIU's text logs (dump.log, restore.log): why a dump or a restore failed, in words a
user can act on, and a private local copy of the log for them to read.

CRIU writes every failure as `(00.475788) Error (criu/sk-unix.c:874): unix: External
socket is used. ...`, then its summary (`Dumping FAILED.`). Some errors are benign and
appear in logs of dumps that succeed (the rlimit one); they are not the reason.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_ERROR = re.compile(r"^\([\d.]+\)\s+Error \(([^)]*)\): (.*)$")
# Printed by every dump or restore that fails: a summary, not the cause.
_SUMMARY = ("Dumping FAILED", "Restoring FAILED")
# Logged as errors by dumps that succeed (CRIU goes on).
_BENIGN = ("rlimit: Can't setup RLIMIT_NOFILE",)

# (what CRIU says, what it means for a container, whether any retry would fail the same way)
_KNOWN: list[tuple[str, str, bool]] = [
    ("External socket is used",
     "a process holds a unix socket connected to a peer outside the container (a "
     "bind-mounted host socket such as docker.sock or /dev/log): CRIU cannot move a "
     "connection whose other end stays behind (Docker gives no way to pass CRIU's "
     "--ext-unix-sk); close that connection, or run its peer inside the container", True),
    ("Can't dump file",
     "a process holds a file of a kind CRIU cannot save (a device, say): close it, or "
     "do not pass that device to the container", True),
    ("No space left on device",
     "the folder the images were written to is full", False),
]


# Refusals about a moment, not about the process: CRIU resumed it, and the same dump a
# moment later usually succeeds. (what CRIU says, what it means for a container)
_TRANSIENT: list[tuple[str, str]] = [
    ("In-flight connection",
     "a listening TCP socket held a connection its program had not accepted yet (a client "
     "connecting at the moment of the freeze, or a program that does not accept): CRIU "
     "cannot save a half-accepted connection"),
]


def errors(text: str) -> list[str]:
    """CRIU's error messages in a log, in order, without the summary and benign ones."""
    found = []
    for line in text.splitlines():
        m = _ERROR.match(line.strip())
        if not m:
            continue
        msg = m.group(2).strip()
        if msg.startswith(_SUMMARY) or msg.startswith(_BENIGN):
            continue
        found.append(msg)
    return found


def failed(text: str) -> bool:
    """The log ends a dump or restore that CRIU itself gave up (not a runc failure)."""
    return any(s in text for s in _SUMMARY)


def reason(text: str) -> str:
    """The cause, as CRIU said it: its first real error (later ones are consequences),
    or "" when the log names none."""
    errs = errors(text)
    return errs[0] if errs else ""


def explain(text: str) -> tuple[str, bool]:
    """What CRIU's reason means for the container ("" if not a known one), and whether
    it is a property of the process's state (trying again, by any path, fails alike)."""
    why = reason(text)
    for needle, meaning, permanent in _KNOWN:
        if needle in why:
            return meaning, permanent
    return transient(text), False


def transient(text: str) -> str:
    """What CRIU's reason means when it is about the moment of the dump (a new attempt
    may succeed), else ""."""
    why = reason(text)
    return next((meaning for needle, meaning in _TRANSIENT if needle in why), "")


def keep(text: str, name: str) -> Path | None:
    """A private local copy of a log (0600 in a 0700 folder of ours, never through a
    symlink): the original is deleted with the container's task or the migration's
    helpers. None if there is nothing to keep or the folder is not ours."""
    if not text.strip():
        return None
    try:
        folder = Path(tempfile.gettempdir()) / f"hmigrate-logs-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        if folder.is_symlink() or folder.stat().st_uid != os.getuid():
            return None
        os.chmod(folder, 0o700)
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError:  # a help for the user, never a new failure
        return None
    return path


def log_path(api_error: str) -> str:
    """The log a daemon's checkpoint error names: dockerd 20.10 says `path= X`, newer
    ones `log file: X`."""
    m = re.search(r"(?:path=|log file:)\s*(/\S+?\.log)", api_error)
    return m.group(1) if m else ""
