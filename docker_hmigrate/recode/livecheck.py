"""Before the freeze: the parked stacks, read from the live process, translated into
nowhere.

A recode refuses a stack it cannot translate (a pointer into the stack at no variable,
a frame whose values the metadata cannot place), and that check used to come only after
the checkpoint, so the source was frozen, dumped and restored for nothing. Every input
that check needs is there while the program is parked: the threads' stacks (memory),
their stack pointer and pc (/proc/TID/syscall, while blocked in the runtime's futex
wait), and the registers the walk starts from, which follow from those and the metadata
(x86-64: the futex wait's frame record sits at a fixed distance from its SP; aarch64:
the futex wait is a leaf, so x29/x30 are its one caller's frame pointer and return
address, from that call site's frame facts). The same unwind, plan and frame rebuild as
the recode run on them, writing into nothing: a refusal here lets the caller let the
program go on and park it again at a later point.

What is not checked here is checked by the recode as before (TLS, CRIU's images, static
jmp_bufs, shared memory): those do not depend on where the threads stopped. Callee-saved
registers that no frame saved are unknown here (zeros): a value the recode would refuse
in one of them is still refused after the freeze.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from docker_hmigrate.isa import ThreadRegs
from docker_hmigrate.recode import frames, process, rebuild
from docker_hmigrate.recode.frames import Index, Untranslatable

# Bounds of what is read per thread: the stack mapping from the SP up (a main thread's
# grown stack is ~100 KiB, a thread's mapping its whole stack size; a stack inside a
# bigger mapping, e.g. given with pthread_attr_setstack, is read up to this).
MAX_STACK_BYTES = 16 << 20


@dataclass
class LiveThread:
    """One parked thread as the host showed it."""

    pid: int
    tid: int
    syscall_nr: int
    args: tuple[int, ...]
    sp: int
    pc: int
    base: int  # address of data[0]: the SP's page
    data: bytes  # the stack mapping from base up

    @property
    def memory(self) -> LiveMemory:
        return LiveMemory(self.base, self.data)


class LiveMemory:
    """The bytes of one stack area, with the reads frames.py and rebuild.py make."""

    def __init__(self, base: int, data: bytes):
        self.base, self.data = base, data

    def contains(self, addr: int, n: int) -> bool:
        return self.base <= addr and addr + n <= self.base + len(self.data)

    def read(self, addr: int, n: int) -> bytes:
        if not self.contains(addr, n):
            raise LookupError(f"{addr:#x}+{n} is outside the stack read from the process")
        return self.data[addr - self.base:addr - self.base + n]

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")


class Nowhere:
    """A target memory that takes every write and keeps none."""

    def write(self, addr: int, data: bytes) -> None:
        pass

    def write_u64(self, addr: int, value: int) -> None:
        pass


# The probe's script: wait until every thread of the given processes sits in the futex
# wait (pc at one of `pcs`), then print per thread a header line and its stack mapping
# from the SP's page up, base64 (one line). Header: T pid tid base nr a1..a6 sp pc.
READ_SCRIPT = """pids='{pids}'; nr={nr}; pcs=' {pcs} '; max={max_pages}
i=0
while :; do
  ok=1
  for p in $pids; do for t in /proc/$p/task/*; do
    set -- $(cat $t/syscall 2>/dev/null)
    if [ "$1" = "$nr" ]; then case "$pcs" in *" $9 "*) ;; *) ok=0 ;; esac; else ok=0; fi
  done; done
  [ $ok = 1 ] && break
  i=$((i+1)); [ $i -ge {tries} ] && {{ echo "U not settled"; exit 2; }}
  sleep 0.05
done
for p in $pids; do for t in /proc/$p/task/*; do
  set -- $(cat $t/syscall)
  sp=$(($8)); lo=
  while read -r range rest; do
    lo=$((0x${{range%-*}})); hi=$((0x${{range#*-}}))
    [ $sp -ge $lo ] && [ $sp -lt $hi ] && break
    lo=
  done < /proc/$p/maps
  [ -n "$lo" ] || {{ echo "U no mapping holds the stack pointer of $p/${{t##*/}}"; exit 3; }}
  start=$((sp / 4096 * 4096)); n=$(((hi - start) / 4096)); [ $n -gt $max ] && n=$max
  echo "T $p ${{t##*/}} $start $*"
  dd if=/proc/$p/mem bs=4096 skip=$((start / 4096)) count=$n 2>/dev/null | base64 -w0
  echo
done; done
"""


def read_script(pids: list[int], syscall_nr: int, pcs: list[int], settle: float = 3.0) -> str:
    return READ_SCRIPT.format(pids=" ".join(map(str, pids)), nr=syscall_nr,
                              pcs=" ".join(hex(p) for p in pcs),
                              max_pages=MAX_STACK_BYTES // 4096,
                              tries=max(1, int(settle / 0.05)))


class NotRead(Exception):
    """The stacks could not be read or walked here (not settled, no mapping, output cut,
    a walk beyond the bytes read): the recode after the dump checks them."""


def parse(out: str) -> list[LiveThread]:
    """The threads READ_SCRIPT printed."""
    threads: list[LiveThread] = []
    lines = iter(out.splitlines())
    for line in lines:
        if line.startswith("U "):
            raise NotRead(line[2:].strip())
        if not line.startswith("T "):
            continue
        f = line.split()
        if len(f) != 13:  # T pid tid base nr a1..a6 sp pc
            raise NotRead(f"unexpected thread line: {line[:120]}")
        data = next(lines, "")
        try:
            pid, tid, base, nr = (int(x, 0) for x in f[1:5])
            args = tuple(int(x, 16) for x in f[5:11])
            sp, pc = int(f[11], 16), int(f[12], 16)
            raw = base64.b64decode(data, validate=True)
        except ValueError as exc:
            raise NotRead(f"unreadable output for thread {f[2]}: {exc}") from None
        threads.append(LiveThread(pid, tid, nr, args, sp, pc, base, raw))
    if not threads:
        raise NotRead("no thread read")
    return threads


def registers(t: LiveThread, idx: Index) -> ThreadRegs:
    """What the recode reads from a parked thread's registers, from its SP and pc."""
    isa, park = idx.src_isa, idx.src_park
    size = park.frame_size or 0
    fp, lr = isa.park_frame_pointer(t.sp, size), 0
    if fp is None:  # a leaf futex wait: its caller's frame record is in registers
        fp, lr = _leaf_caller(t.sp + size, idx)
    return ThreadRegs(pc=t.pc, sp=t.sp, fp=fp, tp=0, syscall_nr=t.syscall_nr, result=0,
                      args=tuple(t.args[:4]),  # type: ignore[arg-type]
                      callee_saved={r: 0 for r in isa.callee_saved}, lr=lr)


def _leaf_caller(leaf_cfa: int, idx: Index) -> tuple[int, int]:
    """The frame pointer and return address of the one call of the futex wait: the
    caller's SP at that call is the leaf's CFA."""
    sites = [cs for cs in idx.calls.values() if cs.site.target == idx.park_function]
    if len(sites) != 1:
        raise Untranslatable(f"the runtime calls {idx.park_function} from {len(sites)} "
                             f"places on {idx.src}, not one")
    cs = sites[0]
    frame = cs.function.isa[idx.src].frame
    if frame.fp_cfa_offset is None:
        raise Untranslatable(f"{cs.function.name} has no frame pointer on {idx.src}")
    caller_cfa = leaf_cfa - cs.site.sp_cfa_offset
    return caller_cfa + frame.fp_cfa_offset, cs.site.return_address


def problem(program, src_isa: str, dst_isa: str, threads: list[LiveThread]) -> str | None:
    """Why the recode would refuse these parked stacks (None: it would translate them;
    NotRead: a walk left the bytes read, so this cannot tell).
    `program`: a recode.Program (its metadata, and its binaries: the source's code tells
    which locals a stopped frame has not written yet, as in the recode)."""
    idx = Index.of(program.md, src_isa, dst_isa)
    src_bin = program.binaries.get(src_isa)
    if idx.src_code is None and src_bin:
        idx.src_code = process.Elf.parse(src_bin).reader(src_bin)
    for t in threads:
        mem = t.memory
        try:
            regs = registers(t, idx)
            stack = frames.planned(mem, regs, idx)
            bottom = idx.bottoms[stack.bottom_return]
            rebuild.write_target(mem, Nowhere(), stack, idx, frames.stack_map(stack, idx),
                                 bottom)
        except Untranslatable as exc:
            return f"thread {t.tid}: {exc}"
        except LookupError as exc:  # the walk left what was read (a stack deeper than
            # MAX_STACK_BYTES, or a chain the recode will refuse): not checked here
            raise NotRead(f"thread {t.tid}: {exc}") from None
    return None
