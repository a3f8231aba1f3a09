"""Read the stacks of a parked process (the x86-64 variant) with nothing but the metadata.

A dry run of what recode does first: for every thread parked by the runtime, walk
its frames from the futex syscall down to musl's start frame, map every return
address to a call site and its twin on the other ISA, and read the variables of each
frame from their recorded stack slots. No DWARF is read. Needs ptrace access to the
process (/proc/PID/mem), e.g. root or the same user with ptrace_scope 0.

    python -m docker_hmigrate.toolchain walk PID NAME.hmigrate.json [--json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import struct
import sys

from docker_hmigrate.isa import AARCH64, X86_64, ThreadRegs
from docker_hmigrate.toolchain import contract
from docker_hmigrate.toolchain.contract import CallSite, Function, Metadata

# hmigrate-cc runs on x86-64 hosts: the walked process is the x86-64 variant. Reading its
# frames from /proc needs a park function with a frame record (a leaf would keep the
# caller's frame pointer and return address in registers /proc does not show).
HOST, OTHER_ISA = X86_64, AARCH64
ISA, OTHER = HOST.name, OTHER_ISA.name


class Index:
    def __init__(self, md: Metadata):
        self.md = md
        self.calls: dict[int, tuple[Function, CallSite, CallSite | None]] = {}
        starts = []
        for f in md.functions:
            g = f.isa[ISA]
            starts.append((g.addr, g.addr + g.size, f.name))
            twins = {ix: ia for ix, ia in f.call_site_pairs}
            other = f.isa[OTHER].call_sites if OTHER in f.isa else []
            for c in g.call_sites:
                t = twins.get(c.index)
                self.calls[c.return_address] = (f, c, other[t] if t is not None else None)
        for s in md.symbols:
            x = s.at(ISA)
            if s.kind == "func" and x and x[1]:
                starts.append((x[0], x[0] + x[1], s.name))
        starts.sort()
        self.starts = starts
        self.keys = [s[0] for s in starts]

    def function_at(self, pc: int) -> str | None:
        i = bisect.bisect_right(self.keys, pc) - 1
        if i >= 0 and pc < self.starts[i][1]:
            return self.starts[i][2]
        return None


class ProcMem:
    """A process's memory through /proc/PID/mem, as the ISA objects read it."""

    def __init__(self, f):
        self.f = f

    def read(self, addr: int, n: int) -> bytes:
        self.f.seek(addr)
        return self.f.read(n)

    def read_u64(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]


def walk_thread(pid: int, tid: int, idx: Index) -> dict:
    with open(f"/proc/{pid}/task/{tid}/syscall") as f:
        fields = f.read().split()
    rt = idx.md.runtime
    park = rt.park_pc(ISA)
    out: dict = {"tid": tid, "frames": [], "ok": True, "problems": []}
    if fields[0] != str(HOST.sys_futex) or int(fields[-1], 16) != park.blocked_pc:
        out["ok"] = False
        out["problems"].append(f"not parked at the runtime's futex wait ({fields[0]}, pc "
                               f"{fields[-1]})")
        return out
    if park.frame_size is None:
        raise SystemExit("walk: metadata has no runtime.park_points frame_size; relink "
                         "with this hmigrate-cc")
    sp = int(fields[-2], 16)
    fp = HOST.park_frame_pointer(sp, park.frame_size)
    if fp is None:
        raise SystemExit(f"walk: on {ISA} the park frame's registers are not readable "
                         f"through /proc")
    bottoms = {b.return_address for b in rt.bottoms(ISA)}
    with open(f"/proc/{pid}/mem", "rb") as f:
        mem = ProcMem(f)
        regs = ThreadRegs(pc=park.blocked_pc or 0, sp=sp, fp=fp, tp=0, syscall_nr=-1,
                          result=0, args=(0, 0, 0, 0), callee_saved={})
        cfa, fp, ret = HOST.park_frame(mem, regs, park.frame_size)
        out["frames"].append({"pc": regs.pc, "function": idx.function_at(regs.pc)})
        for _ in range(4096):
            entry = idx.calls.get(ret)
            name = idx.function_at(ret)
            if entry is None:
                # A frame without metadata: musl's start code at the bottom.
                out["frames"].append({"pc": ret, "function": name, "bottom": True})
                if ret not in bottoms:
                    out["ok"] = False
                    out["problems"].append(f"unknown frame at 0x{ret:x} ({name})")
                break
            fn, c, twin = entry
            frame: dict = {"pc": ret, "function": name, "call_site": c.index, "kind": c.kind,
                           "target": c.target, "translatable": c.translatable,
                           "twin_return_address": twin.return_address if twin else None}
            if not c.translatable or (not fn.translatable and fn.instrumented):
                out["problems"].append(f"{name}: call site {c.index} untranslatable")
            layout = fn.isa[ISA].frame
            if not layout.has_frame_record:
                out["ok"] = False
                out["problems"].append(f"{name}: no frame record in the metadata")
                out["frames"].append(frame)
                break
            cfa = fp - layout.fp_cfa_offset  # type: ignore[operator]
            frame["vars"] = {v.name: int.from_bytes(mem.read(cfa + v.cfa_offset,  # type: ignore[operator]
                                                             v.type.size), "little")
                             for v in fn.isa[ISA].stack_vars
                             if v.type.size in (1, 2, 4, 8) and v.in_scope(ret)}
            out["frames"].append(frame)
            fp = mem.read_u64(cfa + layout.saved_fp_cfa_offset)  # type: ignore[operator]
            ret = mem.read_u64(cfa + layout.return_address_cfa_offset)  # type: ignore[operator]
    out["ok"] = out["ok"] and not out["problems"]
    return out


def walk(pid: int, md: dict | Metadata) -> list[dict]:
    idx = Index(contract.load(md))
    return [walk_thread(pid, int(t), idx) for t in sorted(os.listdir(f"/proc/{pid}/task"))]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="walk", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pid", type=int)
    ap.add_argument("metadata")
    ap.add_argument("--json", action="store_true")
    ns = ap.parse_args(argv)
    with open(ns.metadata) as f:
        md = json.load(f)
    threads = walk(ns.pid, md)
    if ns.json:
        json.dump(threads, sys.stdout, indent=1)
        print()
    else:
        for t in threads:
            print(f"thread {t['tid']}: {'translatable' if t['ok'] else 'NOT translatable'}")
            for p in t["problems"]:
                print(f"  ! {p}")
            for fr in t["frames"]:
                twin = fr.get("twin_return_address")
                tw = f" -> {OTHER} 0x{twin:x}" if twin else ""
                vs = " ".join(f"{k}={v}" for k, v in (fr.get("vars") or {}).items())
                print(f"  0x{fr['pc']:x} {fr['function']}"
                      f"{' [bottom]' if fr.get('bottom') else ''}{tw} {vs}".rstrip())
    return 0 if all(t["ok"] for t in threads) else 1
