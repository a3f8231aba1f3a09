"""toolchain/metadata.type_fields on DWARF-shaped DIEs: integer leaves get their signedness
from the base type's encoding (DW_ATE_*), so that a member of another size per ISA
(musl's struct stat: st_nlink is `unsigned long` on x86-64, `unsigned int` on aarch64) is
converted instead of refused."""

from __future__ import annotations

from types import SimpleNamespace

from docker_hmigrate.isa import AARCH64, X86_64
from docker_hmigrate.toolchain import jmpbuf_layout
from docker_hmigrate.toolchain.contract import TypeInfo
from docker_hmigrate.toolchain.metadata import type_fields


class Die:
    def __init__(self, tag: str, children: list[Die] | None = None, ref: Die | None = None,
                 **attrs):
        self.tag, self._children, self._ref = tag, children or [], ref
        self.attributes = {f"DW_AT_{k}": SimpleNamespace(value=v) for k, v in attrs.items()}
        if ref is not None:
            self.attributes["DW_AT_type"] = SimpleNamespace(value=0)

    def iter_children(self):
        return iter(self._children)

    def get_DIE_from_attribute(self, name):  # noqa: N802 - pyelftools' name
        return self._ref


def base(name: str, size: int, encoding: int) -> Die:
    return Die("DW_TAG_base_type", name=name.encode(), byte_size=size, encoding=encoding)


def member(name: str, offset: int, type_: Die) -> Die:
    return Die("DW_TAG_member", ref=type_, name=name.encode(), data_member_location=offset)


def test_integer_leaves_are_marked_by_their_encoding():
    # DWARF 5 7.8: boolean 2, signed 5, signed_char 6, unsigned 7, unsigned_char 8, float 4
    kinds = {"u": [base("long unsigned int", 8, 0x07), base("unsigned char", 1, 0x08),
                   base("_Bool", 1, 0x02)],
             "s": [base("long int", 8, 0x05), base("char", 1, 0x06)],
             None: [base("double", 8, 0x04)]}
    for want, types in kinds.items():
        for t in types:
            (leaf,) = type_fields(Die("DW_TAG_typedef", ref=t, name=b"alias"))
            assert leaf.get("int") == want, _name(t)


def _name(die: Die) -> str:
    return die.attributes["DW_AT_name"].value.decode()


def test_a_stat_like_struct_pairs_across_isas_with_integer_conversion():
    nlink_x = Die("DW_TAG_typedef", ref=base("long unsigned int", 8, 0x07), name=b"nlink_t")
    nlink_a = Die("DW_TAG_typedef", ref=base("unsigned int", 4, 0x07), name=b"nlink_t")
    mode = base("unsigned int", 4, 0x07)
    x86 = Die("DW_TAG_structure_type", [member("st_dev", 0, base("long unsigned int", 8, 7)),
                                        member("st_nlink", 8, nlink_x),
                                        member("st_mode", 16, mode)], name=b"stat", byte_size=24)
    arm = Die("DW_TAG_structure_type", [member("st_dev", 0, base("long unsigned int", 8, 7)),
                                        member("st_mode", 8, mode),
                                        member("st_nlink", 12, nlink_a)], name=b"stat",
              byte_size=16)
    tx = TypeInfo({"name": "struct stat", "size": 24, "fields": type_fields(x86)})
    ta = TypeInfo({"name": "struct stat", "size": 16, "fields": type_fields(arm)})
    assert jmpbuf_layout.layout_problem(tx, ta, X86_64, AARCH64) is None
