"""Parking a program where its stacks can be translated (issue 10).

park.py brings every thread to an equivalence point; whether the recode can translate
the stacks found there depends on their values (a stale stack address at no variable, a
value the metadata cannot place), which are known only once the threads stopped. Here
they are read live and put through the recode's own checks (recode/livecheck.py) before
the freeze; a point they refuse is let go and the program parked again later.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_delay,
    wait_exponential,
)

from docker_hmigrate import errors, park
from docker_hmigrate.engine import Host
from docker_hmigrate.isa import get as isa_of
from docker_hmigrate.recode import livecheck

# How long a move waits for a point the recode can translate (livecheck.py): parked,
# checked, let go on and parked again with growing gaps. HMIGRATE_SAFE_POINT_WAIT=SECONDS.
SAFE_POINT_WAIT, FIRST_GAP, MAX_GAP = 10.0, 0.1, 1.6


def park_where_translatable(host: Host, container: str, program, dst_isa: str,
                            report: Callable[[str], None] = lambda msg: None,
                            warn: Callable[[str], None] = lambda msg: None,
                            bound: float = SAFE_POINT_WAIT,
                            label: str | None = None, reader=None) -> dict:
    """park_all(), then the recode's stack checks on the parked threads, read live
    (recode/livecheck.py). A point they refuse (a stale stack address at no variable, a
    value the metadata cannot place) is let go: the program runs on and is parked again
    a moment later, at another point, until `bound` seconds have passed; then the move
    is refused, before the freeze, with the last reason. Returns park_all's answer and
    "tries". `reader`: a fastpath.Agent on the host that reads the stacks (else a probe
    container per try)."""
    proto = program.park_protocol
    tries, last = 0, ""

    def attempt() -> dict | None:
        nonlocal tries, last
        parked = park.park_all(host, container, proto, label=label)
        tries += 1
        try:
            why = livecheck.problem(program, host.isa, dst_isa,
                                    read_parked(host, container, proto, parked, reader))
        except livecheck.NotRead as exc:  # the recode after the dump still checks them
            warn(f"the parked stacks were not checked before the freeze ({exc}): "
                 "the recode checks them after it")
            why = None
        if why is None:
            return {**parked, "tries": str(tries)}
        pids = _pids(parked)
        if len(pids) > 1:
            park.resume_all(host, container, proto, pids)
        else:
            park.withdraw(host, container, proto)
        last = why
        return None

    def again(state: RetryCallState) -> None:
        gap = state.next_action.sleep if state.next_action else 0
        report(f"not translatable here ({last}); parked again in {gap:.1f}s")

    parked = Retrying(
        stop=stop_after_delay(bound),
        wait=wait_exponential(multiplier=FIRST_GAP, min=FIRST_GAP, max=MAX_GAP),
        retry=retry_if_result(lambda value: value is None),
        before_sleep=again,
        retry_error_callback=lambda _state: None,
    )(attempt)
    if parked is None:
        raise errors.NotMigratableCrossISA(
            f"{label or container} reached no point that can be translated to {dst_isa} in "
            f"{bound:g}s ({tries} tries); the last: {last}; refused before the freeze",
            hint="the request was withdrawn and the container runs on; retry at "
                 "another moment of its work, or migrate to a host of the same ISA "
                 "(docs/toolchain.md, C constructs); HMIGRATE_SAFE_POINT_WAIT=SECONDS "
                 "waits longer")
    return parked


def read_parked(host: Host, container: str, proto: park.ParkProtocol, parked: dict,
                reader=None) -> list:
    """The parked threads' stack pointers, pcs and stacks, read by a probe on the host
    (host pid namespace): by `reader`'s exec, or a probe container's attach stream with
    no log driver (process memory: no log keeps it)."""
    pids = _pids(parked) or park.container_pids(host, container)
    pcs = list(proto.parked_pcs)
    md = proto.metadata
    if md is not None:
        own = md.runtime.park_pc(host.isa).blocked_pc
        pcs = [own] if own is not None else pcs
    script = livecheck.read_script(pids, isa_of(host.isa).sys_futex, pcs)
    if reader is not None:  # an exec: its output goes to us alone, no log driver
        status, raw = reader.run(script, stderr=False)
        out = raw.decode(errors="replace")
    else:
        status, out = host.run_probe(script, timeout=60, private=True)
    if status not in (0, 2, 3):
        raise livecheck.NotRead(f"the probe exited with {status}: {out.strip()[-200:]}")
    return livecheck.parse(out)


def _pids(parked: dict) -> list[int]:
    """The host pids park_all() parked (several processes), else none."""
    return [int(p) for p in parked.get("pids", "").split(",") if p.isdigit()]
