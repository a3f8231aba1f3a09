"""The recode's stack checks run before the freeze on stacks read from a live parked
process (recode/livecheck.py): registers from SP and pc alone on both ISAs, the same
refusals as the recode after the dump, the probe's output read back, and its script run
for real on a local process."""

from __future__ import annotations

import base64
import os
import subprocess
import time

import pytest

from docker_hmigrate.isa import ThreadRegs
from docker_hmigrate.recode import frames, livecheck
from tests.unit.test_recode import (
    OUTER,
    STACK,
    A,
    FakeMem,
    X,
    metadata,
    program,
    to_aarch64,
    x86_stack,
)


def live(mem: FakeMem, regs: ThreadRegs, tid: int = 7) -> livecheck.LiveThread:
    return livecheck.LiveThread(1, tid, regs.syscall_nr, (*regs.args, 0, 0), regs.sp,
                                regs.pc, mem.base, bytes(mem.data))


def md_with_targets() -> dict:
    """The synthetic program with its call of the futex wait named (as real metadata
    has it): aarch64's leaf futex wait needs it."""
    md = metadata()
    park = next(f for f in md["functions"] if f["name"] == "hmigrate_park")
    for isa in (X, A):
        park["isa"][isa]["call_sites"][0]["target"] = "hm_futex_wait"
    return md


def test_x86_stack_read_live_passes_and_its_frame_pointer_follows_from_sp() -> None:
    md = md_with_targets()
    mem, regs = x86_stack()
    t = live(mem, regs)
    assert livecheck.registers(t, frames.Index.of(md, X, A)).fp == regs.fp
    assert livecheck.problem(program(md), X, A, [t]) is None


def test_stale_stack_address_is_found_before_the_freeze() -> None:
    md = md_with_targets()
    mem, regs = x86_stack()
    mem.write_u64(OUTER - 32, OUTER - 12)  # main's p points into its saved-rbp slot
    why = livecheck.problem(program(md), X, A, [live(mem, regs, tid=9)])
    assert why is not None and why.startswith("thread 9: main: p") \
        and "matches no variable slot" in why


def test_thread_not_in_the_futex_wait_is_a_problem_not_an_error() -> None:
    md = md_with_targets()
    mem, regs = x86_stack()
    regs.pc = 0x401000
    assert "not parked" in livecheck.problem(program(md), X, A, [live(mem, regs)])


def test_walk_beyond_what_was_read_is_not_a_refusal() -> None:
    """A stack deeper than what is read cannot be judged here: NotRead (the move goes on
    and the recode checks it after the dump), never a refusal of a good point."""
    md = md_with_targets()
    mem, regs = x86_stack()
    short = FakeMem(STACK, 0x1000)
    short.data = mem.data[:OUTER - 0x40 - STACK]  # cut below main's frame
    with pytest.raises(livecheck.NotRead, match="outside the stack read"):
        livecheck.problem(program(md), X, A, [live(short, regs)])


def aarch64_stack(md: dict) -> tuple[FakeMem, ThreadRegs]:
    _stack, arm, regs = to_aarch64(md)
    return arm, regs


def test_aarch64_leaf_futex_wait_registers_follow_from_its_one_call_site() -> None:
    md = md_with_targets()
    arm, regs = aarch64_stack(md)
    t = live(arm, regs)
    got = livecheck.registers(t, frames.Index.of(md, A, X))
    assert (got.fp, got.lr) == (regs.fp, regs.lr)
    assert livecheck.problem(program(md), A, X, [t]) is None


def test_aarch64_without_a_single_call_of_the_futex_wait_is_a_problem() -> None:
    md = metadata()  # call sites without targets: the futex wait's caller is unknown
    arm, regs = aarch64_stack(md)
    assert "from 0 places" in livecheck.problem(program(md), A, X, [live(arm, regs)])


def test_probe_output_parsed_and_refusals_of_the_probe_raised() -> None:
    data = bytes(range(256)) * 16
    out = (f"T 10 11 {0x7ff000} 202 0x600000 0x80 0x1 0x0 0x0 0x0 0x7ff010 0x401408\n"
           f"{base64.b64encode(data).decode()}\n")
    (t,) = livecheck.parse("noise\n" + out)
    assert (t.pid, t.tid, t.syscall_nr, t.sp, t.pc, t.base) == \
        (10, 11, 202, 0x7ff010, 0x401408, 0x7ff000)
    assert t.args[:3] == (0x600000, 0x80, 1) and t.data == data
    assert t.memory.read_u64(0x7ff008) == int.from_bytes(data[8:16], "little")
    with pytest.raises(livecheck.NotRead, match="not settled"):
        livecheck.parse("U not settled\n")
    with pytest.raises(livecheck.NotRead, match="no thread"):
        livecheck.parse("")
    with pytest.raises(livecheck.NotRead, match="unreadable"):
        livecheck.parse(out.replace(base64.b64encode(data).decode()[:8], "!!!!!!!!"))


@pytest.mark.skipif(os.geteuid() != 0, reason="reads another process's memory: root")
def test_read_script_reads_a_real_blocked_process() -> None:
    """The probe's script, run by this machine's sh on a process blocked in a system
    call (sleep), prints its SP, pc and stack mapping as /proc shows them."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        fields: list[str] = []
        before: list[str] = []
        for _ in range(100):  # settled in its sleep: the same system call twice in a row
            # (a start-up call, e.g. a page-in during exec, shows here for a moment)
            with open(f"/proc/{proc.pid}/syscall") as f:
                fields = f.read().split()
            if len(fields) == 9 and fields == before:
                break
            before = fields
            time.sleep(0.05)
        assert len(fields) == 9, fields
        nr, pc = int(fields[0]), int(fields[8], 16)
        script = livecheck.read_script([proc.pid], nr, [pc], settle=2)
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                             timeout=60, check=True).stdout
        (t,) = livecheck.parse(out)
        assert (t.pid, t.tid, t.syscall_nr, t.pc) == (proc.pid, proc.pid, nr, pc)
        assert t.sp == int(fields[7], 16) and t.base == t.sp // 4096 * 4096
        with open(f"/proc/{proc.pid}/mem", "rb") as mem:
            mem.seek(t.base)
            assert mem.read(len(t.data)) == t.data and len(t.data) >= 4096
        # a pc it never reaches: not settled within the bound
        script = livecheck.read_script([proc.pid], nr, [pc + 1], settle=0.2)
        res = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 2
        with pytest.raises(livecheck.NotRead, match="not settled"):
            livecheck.parse(res.stdout)
    finally:
        proc.kill()
        proc.wait()


class _Program:
    park_protocol = object()


def loop(monkeypatch, answers: list, bound: float = 5.0, **kw):
    """safepoint.park_where_translatable with the host calls replaced: each park answers
    the next of `answers` (a reason, None, or an exception the stacks' reading raises)."""
    from docker_hmigrate import park, safepoint

    calls: list[str] = []
    monkeypatch.setattr(park, "park_all", lambda *a, **k: calls.append("park") or {})
    monkeypatch.setattr(park, "withdraw", lambda *a, **k: calls.append("withdraw"))
    monkeypatch.setattr(safepoint, "read_parked", lambda *a, **k: [])
    monkeypatch.setattr(safepoint, "FIRST_GAP", 0.01)
    monkeypatch.setattr(safepoint, "MAX_GAP", 0.02)
    it = iter(answers)

    def problem(*_a):
        a = next(it)
        if isinstance(a, Exception):
            raise a
        return a

    monkeypatch.setattr(livecheck, "problem", problem)

    class H:
        isa = X

    return calls, lambda: safepoint.park_where_translatable(
        H(), "c", _Program(), A, bound=bound, **kw)


def test_a_refused_point_is_let_go_and_the_next_one_taken(monkeypatch) -> None:
    said: list[str] = []
    calls, run = loop(monkeypatch, ["thread 1: p: matches no variable slot", None],
                      report=said.append)
    assert run()["tries"] == "2"
    assert calls == ["park", "withdraw", "park"]
    assert "not translatable here (thread 1: p" in said[0]


def test_no_translatable_point_within_the_bound_is_refused_before_the_freeze(
        monkeypatch) -> None:
    from docker_hmigrate import errors

    calls, run = loop(monkeypatch, ["thread 1: held: matches no variable slot"] * 1000,
                      bound=0.2)
    with pytest.raises(errors.NotMigratableCrossISA) as exc:
        run()
    assert "reached no point that can be translated" in str(exc.value)
    assert "held: matches no variable slot" in str(exc.value)
    assert "refused before the freeze" in str(exc.value)
    assert calls[-1] == "withdraw" and calls.count("park") == calls.count("withdraw") >= 2


def test_stacks_that_cannot_be_read_are_left_to_the_recode(monkeypatch) -> None:
    warned: list[str] = []
    calls, run = loop(monkeypatch, [livecheck.NotRead("not settled")], warn=warned.append)
    assert run()["tries"] == "1" and calls == ["park"]
    assert "not checked before the freeze (not settled)" in warned[0]
