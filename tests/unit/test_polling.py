"""Retry and poll loops go through tenacity (docker_hmigrate/polling.py) with the deadlines
and messages of the hand-written loops they replace (issue 13)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from docker_hmigrate import errors, park
from docker_hmigrate.polling import poll, watch

PACKAGE = Path(__file__).resolve().parents[2] / "docker_hmigrate"


def test_no_hand_written_deadline_loops() -> None:
    """`deadline = time.monotonic() + ...` loops were in park.py, migrate.py (and a
    counted relink loop in toolchain/driver.py); tenacity is declared and must be used."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if re.search(r"deadline\s*=\s*time\.monotonic\(\)\s*\+", text) or \
                re.search(r"for attempt in range\(", text):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []
    users = [p.name for p in PACKAGE.rglob("*.py") if "from tenacity import" in p.read_text()]
    assert {"polling.py", "driver.py"} <= set(users)


def test_poll_returns_the_value_as_soon_as_there_is_one() -> None:
    calls = iter([None, None, "ready"])
    started = time.monotonic()
    assert poll(lambda: next(calls), timeout=5, interval=0.01) == "ready"
    assert time.monotonic() - started < 1


def test_poll_keeps_the_deadline() -> None:
    started = time.monotonic()
    assert poll(lambda: None, timeout=0.3, interval=0.05) is None
    assert 0.3 <= time.monotonic() - started < 1.0


def test_poll_lets_a_failing_check_through_at_once() -> None:
    calls = []

    def boom() -> None:
        calls.append(1)
        raise RuntimeError("engine said no")

    with pytest.raises(RuntimeError, match="engine said no"):
        poll(boom, timeout=5, interval=0.01)
    assert calls == [1]


def test_watch_checks_for_the_whole_period_and_at_least_once() -> None:
    calls: list[float] = []
    watch(lambda: calls.append(time.monotonic()), seconds=0, interval=0.01)
    assert len(calls) == 1
    calls.clear()
    started = time.monotonic()
    watch(lambda: calls.append(time.monotonic()), seconds=0.3, interval=0.05)
    assert 0.3 <= time.monotonic() - started < 1.0 and len(calls) >= 4


def test_park_times_out_with_its_message_and_withdraws(monkeypatch) -> None:
    resumed = []
    monkeypatch.setattr(park, "read_container_file", lambda host, c, path: None)
    monkeypatch.setattr(park, "resume", lambda host, c, proto: resumed.append(c))
    host = SimpleNamespace(api=SimpleNamespace(kill=lambda c, signal: None))
    started = time.monotonic()
    with pytest.raises(errors.NotMigratableCrossISA) as exc:
        park.park(host, "web", park.ParkProtocol(), timeout=0.3)
    # the withdrawal: resumed WITHDRAW_REPEAT times, WITHDRAW_GAP apart (park.withdraw)
    gaps = (park.WITHDRAW_REPEAT - 1) * park.WITHDRAW_GAP
    assert 0.3 + gaps <= time.monotonic() - started < 1.5 + gaps
    assert "web did not reach its equivalence points within 0.3s" in exc.value.message
    assert resumed == ["web"] * park.WITHDRAW_REPEAT


def test_park_returns_the_announcement(monkeypatch) -> None:
    answers = iter([None, None, None, b"tid=7\npc=0x40"])
    monkeypatch.setattr(park, "read_container_file", lambda host, c, path: next(answers))
    host = SimpleNamespace(api=SimpleNamespace(kill=lambda c, signal: None))
    assert park.park(host, "web", park.ParkProtocol(), timeout=5) == {"tid": "7", "pc": "0x40"}


def test_verify_running_fails_when_the_target_dies() -> None:
    from docker_hmigrate.migrate import Migration, MigrationOptions

    states = iter([{"Running": True}, {"Running": True},
                   {"Running": False, "Status": "exited", "ExitCode": 137}])
    host = SimpleNamespace(name="hm-b", api=SimpleNamespace(
        inspect_container=lambda cid: {"State": next(states)}))
    m = Migration.__new__(Migration)
    m.dst, m.opts = host, MigrationOptions("web", verify_seconds=5)
    m.target_started = False  # a restore that never ran: RestoreFailed, not TargetDied
    with pytest.raises(errors.RestoreFailed, match="exited \\(exit code 137\\)"):
        m._verify_running("cid")
