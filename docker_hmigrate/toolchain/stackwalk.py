"""Read the stacks of a parked x86-64 process with nothing but the metadata.

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

from docker_hmigrate.isa import AARCH64, X86_64

ISA = X86_64.name
OTHER = AARCH64.name


class Index:
    def __init__(self, md: dict):
        self.md = md
        self.calls: dict[int, tuple[dict, dict, dict | None]] = {}
        starts = []
        for f in md["functions"]:
            g = f["isa"][ISA]
            starts.append((g["addr"], g["addr"] + g["size"], f["name"]))
            twins = {ix: ia for ix, ia in f["call_site_pairs"]}
            for c in g["call_sites"]:
                t = twins.get(c["index"])
                tc = f["isa"][OTHER]["call_sites"][t] if t is not None else None
                self.calls[c["return_address"]] = (f, c, tc)
        for s in md["symbols"]:
            x = s.get(ISA)
            if s["kind"] == "func" and x and x[1]:
                starts.append((x[0], x[0] + x[1], s["name"]))
        starts.sort()
        self.starts = starts
        self.keys = [s[0] for s in starts]

    def function_at(self, pc: int) -> str | None:
        i = bisect.bisect_right(self.keys, pc) - 1
        if i >= 0 and pc < self.starts[i][1]:
            return self.starts[i][2]
        return None


def read_word(mem, addr: int) -> int:
    mem.seek(addr)
    return struct.unpack("<Q", mem.read(8))[0]


def walk_thread(pid: int, tid: int, idx: Index) -> dict:
    with open(f"/proc/{pid}/task/{tid}/syscall") as f:
        fields = f.read().split()
    park = idx.md["runtime"]["park_points"][ISA]
    out: dict = {"tid": tid, "frames": [], "ok": True, "problems": []}
    if fields[0] != "202" or int(fields[-1], 16) != park["blocked_pc"]:
        out["ok"] = False
        out["problems"].append(f"not parked at the runtime's futex wait ({fields[0]}, pc "
                               f"{fields[-1]})")
        return out
    if "frame_size" not in park:
        raise SystemExit("walk: metadata has no runtime.park_points frame_size; relink "
                         "with this hmigrate-cc")
    sp = int(fields[-2], 16)
    # hm_futex_wait: rbp = sp + its frame size - 16 (a fixed frame, see metadata).
    rbp = sp + park["frame_size"] - 16
    pc = park["blocked_pc"]
    with open(f"/proc/{pid}/mem", "rb") as mem:
        for _ in range(4096):
            name = idx.function_at(pc)
            frame: dict = {"pc": pc, "function": name}
            entry = idx.calls.get(pc)
            cfa = rbp + 16
            if entry is not None:
                f, c, twin = entry
                frame.update({"call_site": c["index"], "kind": c["kind"],
                              "target": c["target"], "translatable": c["translatable"],
                              "twin_return_address": twin["return_address"] if twin else None})
                if not c["translatable"] or (not f["translatable"] and f["instrumented"]):
                    out["problems"].append(f"{name}: call site {c['index']} untranslatable")
                vals = {}
                for v in f["isa"][ISA].get("vars", []):
                    if "cfa_offset" not in v or v["type"]["size"] not in (1, 2, 4, 8):
                        continue
                    if v["scope"] and not (v["scope"][0] <= pc - 1 < v["scope"][1]):
                        continue
                    mem.seek(cfa + v["cfa_offset"])
                    raw = mem.read(v["type"]["size"])
                    vals[v["name"]] = int.from_bytes(raw, "little")
                frame["vars"] = vals
            out["frames"].append(frame)
            if rbp == 0:
                break
            next_pc = read_word(mem, rbp + 8)
            next_rbp = read_word(mem, rbp)
            caller = idx.function_at(next_pc)
            if next_pc not in idx.calls:
                # A frame without metadata: musl's start code at the bottom.
                out["frames"].append({"pc": next_pc, "function": caller, "bottom": True})
                bottoms = {b["return_address"] for b in
                           idx.md["runtime"]["bottom_frames"][ISA]}
                if next_pc not in bottoms:
                    out["ok"] = False
                    out["problems"].append(f"unknown frame at 0x{next_pc:x} ({caller})")
                break
            pc, rbp = next_pc, next_rbp
    out["ok"] = out["ok"] and not out["problems"]
    return out


def walk(pid: int, md: dict) -> list[dict]:
    idx = Index(md)
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
