"""CRIU's logs: the reason a dump failed, what it means, the private local copy."""

from __future__ import annotations

import os
import stat

from docker_hmigrate.criu import log

DUMP_LOG = "".join(line + "\n" for line in (
    "(00.000000) Version: 4.2 (gitid 0)",
    "(00.129887) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: "
    "Operation not permitted",
    "(00.475000) unix: \tDumping extern: ino 0x1f3 peer_ino 0x1f4 family 1 name /ext/sock",
    "(00.475788) Error (criu/sk-unix.c:874): unix: External socket is used. Consider using "
    "--ext-unix-sk option.",
    "(00.475800) Error (criu/cr-dump.c:1234): Dump files (pid: 8771) failed with -1",
    "(00.557881) Error (criu/cr-dump.c:1975): Dumping FAILED.",
))


def test_reason_is_the_first_real_error():
    assert log.failed(DUMP_LOG)
    assert log.reason(DUMP_LOG) == (
        "unix: External socket is used. Consider using --ext-unix-sk option.")
    assert len(log.errors(DUMP_LOG)) == 2  # neither rlimit nor the summary


def test_known_reason_is_explained_and_permanent():
    meaning, permanent = log.explain(DUMP_LOG)
    assert "unix socket connected to a peer outside the container" in meaning
    assert permanent


def test_unknown_or_missing_reason():
    assert log.explain("(00.1) Error (criu/x.c:1): something new\n") == ("", False)
    assert log.reason("runc said no") == "" and not log.failed("runc said no")


def test_log_path_from_both_daemon_versions():
    old = ("criu failed: type NOTIFY errno 0 path= /var/run/x/moby/abc/criu-dump.log: "
           "unknown")
    new = "criu failed: type NOTIFY errno 0\nlog file: /var/lib/docker/x/criu-dump.log"
    assert log.log_path(old) == "/var/run/x/moby/abc/criu-dump.log"
    assert log.log_path(new) == "/var/lib/docker/x/criu-dump.log"
    assert log.log_path("no log named") == ""


def test_kept_copy_is_private_and_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    path = log.keep(DUMP_LOG, "ck-dump.log")
    assert path is not None and path.read_text() == DUMP_LOG
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert log.keep("other", "ck-dump.log") is None  # O_EXCL: an existing file stays
    assert path.read_text() == DUMP_LOG
    assert log.keep("  \n", "empty.log") is None
    os.unlink(path)
