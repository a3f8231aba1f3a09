"""The toolchain -> recode contract: what hmigrate-cc writes into NAME.hmigrate.json
(format "hmigrate-toolchain/1", docs/toolchain.md) as typed records. The writer
(toolchain/metadata.py) checks its document with `load`; the reader (the recode) uses
only these records' attributes, never the JSON's keys.

Records are views over the parsed JSON (`load(doc)` wraps it, `dump()` gives it back):
Redis's metadata holds ~170,000 objects, which copying into dataclasses would take
seconds to build, while a view costs nothing until an attribute is read. Reading is
lenient the way the recode always was: a missing key reads as its default and the
recode's own checks say what is missing.

A leaf module (only the standard library), so hmigrate/toolchain's image carries it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

SCHEMA = "hmigrate-toolchain/1"

# The runtime's park protocol (runtime/hmigrate_rt.c uses the same values; the metadata
# carries them to the plugin).
SIG_PARK = 40
SIG_RESUME = 41
PARK_FILE = "/run/hmigrate/parked"
PARK_FILE_FALLBACK = "/tmp/.hmigrate-parked"
PARK_FILE_ENV = "HMIGRATE_PARK_FILE"
LR_COPY_SUFFIX = "_lr_copy"  # park_point."<isa>_lr_copy": register holding the own RA

T = TypeVar("T")


class _F(Generic[T]):
    """A typed field of a record: the JSON key (the attribute's name unless given), the
    value when the key is absent or null, and how to wrap a present value."""

    def __init__(self, default: Any = None, conv: Callable[[Any], T] | None = None,
                 key: str | None = None):
        self.default, self.conv, self.key = default, conv, key

    def __set_name__(self, owner, name: str) -> None:
        self.key = self.key or name

    @overload
    def __get__(self, obj: None, owner: Any) -> _F[T]: ...
    @overload
    def __get__(self, obj: _Record, owner: Any) -> T: ...

    def __get__(self, obj, owner):
        if obj is None:
            return self
        v = obj.raw.get(self.key)
        if v is None:
            return self.default() if callable(self.default) else self.default
        return self.conv(v) if self.conv is not None else v


class _Record:
    __slots__ = ("raw",)

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw

    @classmethod
    def load(cls, raw: dict[str, Any]):
        return cls(raw)

    def dump(self) -> dict[str, Any]:
        return self.raw

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.raw.get('name', '')!r})"


def _list(cls):
    return lambda v: [cls(x) for x in v]


def _dict(cls):
    return lambda v: {k: cls(x) for k, x in v.items()}


class TypeField(_Record):
    """A leaf of a type that holds a jmp_buf (its members, flattened)."""

    __slots__ = ()
    path: _F[str] = _F("")
    offset: _F[int] = _F(0)
    size: _F[int] = _F(0)
    kind: _F[str] = _F("")  # "jmp_buf", "pointer", "data", "opaque"
    int: _F[str | None] = _F()  # an integer leaf: "s" signed, "u" unsigned


class TypeInfo(_Record):
    __slots__ = ()
    name: _F[str] = _F("?")
    size: _F[int] = _F(0)
    kind: _F[str] = _F("")
    pointer_offsets: _F[list[int]] = _F(list)
    holds: _F[list[str]] = _F(list)  # "jmp_buf" when it contains one
    fields: _F[list[TypeField]] = _F(list, _list(TypeField))

    @property
    def holds_jmp_buf(self) -> bool:
        return "jmp_buf" in self.holds

    @property
    def by_member(self) -> bool:
        """Copied leaf by leaf across ISAs (fields): it holds a jmp_buf, or its layout
        differs per ISA ("layout": libc's struct stat inside zstd's cRess_t)."""
        return "jmp_buf" in self.holds or "layout" in self.holds


class Var(_Record):
    """A variable of a frame: where it lives (its CFA offset) and while it is in scope."""

    __slots__ = ()
    name: _F[str] = _F("")
    kind: _F[str] = _F("")  # "param", "local", "static"
    type: _F[TypeInfo] = _F(lambda: TypeInfo({}), TypeInfo)
    scope: _F[list[int] | None] = _F()  # [lo, hi) pcs; None: the whole function
    scope_ranges: _F[list[list[int]] | None] = _F()  # a split block's [lo, hi) pieces
    line: _F[int | None] = _F()
    file: _F[str | None] = _F()  # of its declaration (a #line file for generated code)
    cfa_offset: _F[int | None] = _F()  # None: not in a stack slot
    indirect: _F[bool] = _F(False)  # the slot holds the variable's address
    # optimized (-Og): where it is changes along the code; each call site says
    # (CallSite.locations, toolchain/locations.py)
    described: _F[bool] = _F(False)

    @property
    def in_stack(self) -> bool:
        return "cfa_offset" in self.raw

    def in_scope(self, pc: int) -> bool:
        """pc is a return address or the park pc: the stopped instruction is before it."""
        s = self.scope
        if not s:
            return True
        return any(lo <= pc - 1 < hi for lo, hi in self.scope_ranges or [s])


# what a variable's site location can give (read on the source) and needs (written on
# the target)
READABLE = ("slot", "reg", "value", "const", "expr")
STORED = ("slot", "reg", "value")


def derived_var(key: int | str) -> int:
    """The variable of a derived value's term (CallSite.derived): its index, or
    "<index>:sx" for its value sign-extended to 64 bits."""
    return key if isinstance(key, int) else int(str(key).split(":")[0])


def site_location(v: dict, vi: int, locs: dict[int, list]) -> list | None:
    """A variable's location at a call site (None: not in scope there)."""
    if v.get("described"):
        return locs.get(vi)
    if "cfa_offset" in v and not v.get("indirect"):
        return ["slot", v["cfa_offset"]]
    return None


def var_twins(ours: list[dict], theirs: list[dict]) -> dict[int, int]:
    """Index of each of our variables -> its twin's on the other ISA: by name, kind and
    occurrence (the DWARF of both ISAs lists a function's variables in source order)."""
    seen: dict[tuple, int] = {}
    keys: dict[tuple, int] = {}
    for j, v in enumerate(theirs):
        k = (v["name"], v["kind"])
        keys[(*k, seen.get(k, 0))] = j
        seen[k] = seen.get(k, 0) + 1
    seen.clear()
    out = {}
    for i, v in enumerate(ours):
        k = (v["name"], v["kind"])
        n = seen.get(k, 0)
        seen[k] = n + 1
        if (*k, n) in keys:
            out[i] = keys[(*k, n)]
    return out


class FrameLayout(_Record):
    """One function's frame on one ISA, as CFA offsets."""

    __slots__ = ()
    cfa: _F[str | None] = _F()
    frame_size: _F[int | None] = _F()
    fp_cfa_offset: _F[int | None] = _F()
    saved_fp_cfa_offset: _F[int | None] = _F()
    return_address_cfa_offset: _F[int | None] = _F()
    saved_regs: _F[dict[str, int]] = _F(dict)
    dynamic_sp: _F[bool] = _F(False)
    # a slot holding the function's own return address for the exit hook (aarch64 -Og)
    lr_copy_cfa_offset: _F[int | None] = _F()
    # a callee-saved register holding the function's own address for the hooks (-Og)
    self_address_reg: _F[str | None] = _F()

    @property
    def has_frame_record(self) -> bool:
        """A fixed-size frame whose frame record's place is known."""
        r = self.raw
        return not self.dynamic_sp and "fp_cfa_offset" in r and \
            "saved_fp_cfa_offset" in r and "return_address_cfa_offset" in r


class CallSite(_Record):
    """A call instruction of a function on one ISA: where a frame can be stopped."""

    __slots__ = ()
    index: _F[int] = _F(0)
    return_address: _F[int] = _F(0)
    kind: _F[str] = _F("call")  # "enter_hook", "exit_hook", "call"
    target: _F[str | None] = _F()
    line: _F[int | None] = _F()
    file: _F[str | None] = _F()  # the line table's file of the call (#line directives)
    sp_cfa_offset: _F[int] = _F(0)  # the caller's SP at the call, from its CFA
    live_callee_saved: _F[list[str]] = _F(list)
    callee_saved_temps: _F[list[str]] = _F(list)  # temporaries paired with the twin's
    # optimized (-Og) functions: [variable index, location...] of the variables in scope
    # (toolchain/locations.py), and what live state no variable names
    locations: _F[list[list]] = _F(list)
    unnamed: _F[list[str]] = _F(list)
    # at an optimized function's entry hook: live registers it has not set yet (they
    # hold its caller's values, undefined for it: the target's get 0)
    unset_regs: _F[list[str]] = _F(list)
    # variables whose place at this call is not read before being written again
    dead_vars: _F[list[int]] = _F(list)
    # [place, variable index, k]: a register or slot ("s<cfa offset>") holding an 8-byte
    # variable's value plus k where GCC's DWARF places it elsewhere (written there too)
    copies: _F[list[list]] = _F(list)
    # [place, bytes, [[variable, coefficient], ...], constant, shift]: a register or slot
    # holding (sum(coefficient * variable) + constant mod 2**64) >> shift, a value the code
    # derived from variables (toolchain/values.py); a variable "<index>:sx" is its value
    # sign-extended to 64 bits
    derived: _F[list[list]] = _F(list)  # (derived_var reads a variable's key)
    # [place, bytes, call key, bits]: a register or slot holding the low bits of an earlier
    # call's result (the call's [line, column, target, occurrence], as call sites pair)
    results: _F[list[list]] = _F(list)
    translatable: _F[bool] = _F(True)
    untranslatable_reasons: _F[list[str] | None] = _F()


class FunctionIsa(_Record):
    """A function's code on one ISA."""

    __slots__ = ()
    addr: _F[int] = _F(0)
    size: _F[int] = _F(0)
    file: _F[str | None] = _F()
    variadic: _F[bool] = _F(False)
    frame: _F[FrameLayout] = _F(lambda: FrameLayout({}), FrameLayout)
    call_sites: _F[list[CallSite]] = _F(list, _list(CallSite))
    vars: _F[list[Var]] = _F(list, _list(Var))

    @property
    def stack_vars(self) -> list[Var]:
        """The variables that live in stack slots."""
        return [v for v in self.vars if v.in_stack]


class FunctionParkPoint(_Record):
    """An instrumented function's park point: its entry hook's return address per ISA."""

    __slots__ = ()
    clean: _F[bool] = _F(True)
    problems: _F[list[str]] = _F(list)

    def lr_copy(self, isa: str) -> str | None:
        """The callee-saved register in which this function keeps its own return address
        on `isa` (for the exit hook), if any."""
        return self.raw.get(isa + LR_COPY_SUFFIX)


class Function(_Record):
    """A function of ours, on every ISA, with its call sites paired across them."""

    __slots__ = ()
    name: _F[str] = _F("")
    addr: _F[int] = _F(0)
    file: _F[str | None] = _F()
    instrumented: _F[bool] = _F(False)
    translatable: _F[bool] = _F(True)
    untranslatable_reasons: _F[list[str]] = _F(list)
    isa: _F[dict[str, FunctionIsa]] = _F(dict, _dict(FunctionIsa))
    # [index on the first ISA, index on the second] (isa.NAMES order) per matched site
    call_site_pairs: _F[list[list[int]]] = _F(list)
    park_point: _F[FunctionParkPoint] = _F(lambda: FunctionParkPoint({}), FunctionParkPoint)


class Symbol(_Record):
    """A symbol of both binaries: (address, size) per ISA."""

    __slots__ = ()
    name: _F[str] = _F("")
    kind: _F[str] = _F("")  # "func" or "object"
    aligned: _F[bool] = _F(False)

    def at(self, isa: str) -> tuple[int, int] | None:
        a = self.raw.get(isa)
        return (a[0], a[1]) if a else None

    def addr(self, isa: str) -> int | None:
        a = self.raw.get(isa)
        return a[0] if a else None


class BottomFrame(_Record):
    """Where musl's frame under every thread's stack calls our code."""

    __slots__ = ()
    function: _F[str] = _F("")
    target: _F[str | None] = _F()
    return_address: _F[int] = _F(0)


class ParkPc(_Record):
    """The runtime's futex wait on one ISA: where a parked thread stands."""

    __slots__ = ()
    blocked_pc: _F[int | None] = _F()
    syscall_pc: _F[int | None] = _F()
    frame_size: _F[int | None] = _F()  # CFA - SP while blocked


class Runtime(_Record):
    """The runtime's protocol and where its frames are on each ISA."""

    __slots__ = ()
    park_file: _F[str] = _F(PARK_FILE)
    park_file_fallback: _F[str] = _F(PARK_FILE_FALLBACK)
    park_file_env: _F[str] = _F(PARK_FILE_ENV)
    state: _F[dict[str, Any]] = _F(dict)  # hmigrate_state: symbol, addr, size
    park_functions: _F[list[str]] = _F(list)  # innermost last
    park_points: _F[dict[str, ParkPc]] = _F(dict, _dict(ParkPc))
    bottom_frames: _F[dict[str, list[BottomFrame]]] = _F(
        dict, lambda v: {k: [BottomFrame(b) for b in x or ()] for k, x in v.items()})

    @property
    def park_signal(self) -> int:
        return (self.raw.get("signals") or {}).get("park", SIG_PARK)

    @property
    def resume_signal(self) -> int:
        return (self.raw.get("signals") or {}).get("resume", SIG_RESUME)

    @property
    def park_function(self) -> str | None:
        """The innermost runtime function of a parked stack (the futex wait)."""
        fns = self.park_functions
        return fns[-1] if fns else None

    def park_pc(self, isa: str) -> ParkPc:
        return ParkPc(self.raw.get("park_points", {}).get(isa) or {})

    def bottoms(self, isa: str) -> list[BottomFrame]:
        return [BottomFrame(b) for b in (self.raw.get("bottom_frames") or {}).get(isa) or ()]


class TlsSegment(_Record):
    """PT_TLS of one binary."""

    __slots__ = ()
    vaddr: _F[int] = _F(0)
    filesz: _F[int] = _F(0)
    memsz: _F[int] = _F(0)
    align: _F[int] = _F(0)
    variant: _F[int | None] = _F()
    block_tp_offset: _F[int | None] = _F()


class TlsSymbol(_Record):
    __slots__ = ()
    name: _F[str] = _F("")
    offset: _F[dict[str, int | None]] = _F(dict)  # ISA -> offset in the TLS block
    size: _F[int] = _F(0)


class Tls(_Record):
    __slots__ = ()
    symbols: _F[list[TlsSymbol]] = _F(list, _list(TlsSymbol))

    def segment(self, isa: str) -> TlsSegment | None:
        s = self.raw.get(isa)
        return TlsSegment(s) if s else None


class Region(_Record):
    """An output section of the aligned layout: both ISAs' common units first, then each
    ISA's own tail up to max_size."""

    __slots__ = ()
    common_size: _F[int] = _F(0)
    max_size: _F[int] = _F(0)

    @property
    def base(self) -> int:
        return int(self.raw.get("base", "0"), 16)


class Layout(_Record):
    __slots__ = ()
    regions: _F[dict[str, Region]] = _F(dict, _dict(Region))


class BinaryInfo(_Record):
    __slots__ = ()
    file: _F[str] = _F("")
    sha256: _F[str | None] = _F()
    entry: _F[int | None] = _F()


class Checks(_Record):
    __slots__ = ()
    park_points_clean: _F[bool] = _F(False)
    problems: _F[list[str]] = _F(list)


class Metadata(_Record):
    """NAME.hmigrate.json: everything the recode knows about a program."""

    __slots__ = ("_symbols",)
    schema: _F[str | None] = _F()
    binaries: _F[dict[str, BinaryInfo]] = _F(dict, _dict(BinaryInfo))
    layout: _F[Layout] = _F(lambda: Layout({}), Layout)
    runtime: _F[Runtime] = _F(lambda: Runtime({}), Runtime)
    tls: _F[Tls] = _F(lambda: Tls({}), Tls)
    functions: _F[list[Function]] = _F(list, _list(Function))
    symbols: _F[list[Symbol]] = _F(list, _list(Symbol))
    unclean_ranges: _F[dict[str, list[list[int]]]] = _F(dict)
    checks: _F[Checks] = _F(lambda: Checks({}), Checks)

    def __init__(self, raw: dict[str, Any]):
        super().__init__(raw)
        self._symbols: dict[str, Symbol] | None = None

    def symbol(self, name: str) -> Symbol | None:
        if self._symbols is None:
            self._symbols = {s.name: s for s in self.symbols}
        return self._symbols.get(name)

    def binary(self, isa: str) -> BinaryInfo:
        return BinaryInfo((self.raw.get("binaries") or {}).get(isa) or {})

    @property
    def has_tls(self) -> bool:
        t = self.raw.get("tls") or {}
        return any((s or {}).get("memsz", 0) for k, s in t.items() if k != "symbols")


def load(doc: dict[str, Any] | Metadata) -> Metadata:
    """The typed view of a parsed NAME.hmigrate.json (a Metadata is returned as is)."""
    return doc if isinstance(doc, Metadata) else Metadata(doc)
