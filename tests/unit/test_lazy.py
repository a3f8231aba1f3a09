"""--lazy's checks before the freeze (lazy.py): every reason is found and worded."""

from __future__ import annotations

import pytest

from docker_hmigrate import errors, lazy

OK = lazy.LazyFacts(src_isa="x86_64", dst_isa="x86_64", dst_api="1.45",
                    dst_server="26.1.5", fast_path=None)


def test_api_versions_are_compared_as_numbers():
    assert lazy.parse_api("1.41") == (1, 41)
    assert lazy.parse_api("1.9") < lazy.parse_api("1.43") <= lazy.parse_api("1.45")
    assert lazy.parse_api("") == (0, 0) and lazy.parse_api("x.y") == (0, 0)


def test_dockerd_20_10_is_refused_with_the_reason():
    facts = lazy.LazyFacts(src_isa="x86_64", dst_isa="x86_64", dst_api="1.41",
                           dst_server="20.10.24+dfsg1", fast_path=None)
    (reason,) = lazy.refusals(facts)
    assert "20.10.24+dfsg1 (API 1.41)" in reason and "org.criu.config" in reason
    assert "1.43" in reason


def test_every_reason_is_listed():
    facts = lazy.LazyFacts(src_isa="x86_64", dst_isa="aarch64", dst_api="1.41",
                           dst_server="20.10", fast_path="runtime crun, not runc",
                           uffd="no userfaultfd")
    reasons = lazy.refusals(facts)
    assert len(reasons) == 4
    assert "same ISA" in reasons[0] and "crun" in reasons[2] and "userfaultfd" in reasons[3]


def test_hosts_that_allow_it_pass():
    assert lazy.refusals(OK) == []
    lazy.check(OK)  # no exception


def test_check_reports_the_hosts_reasons_first():
    with pytest.raises(errors.ValidationFailed) as caught:
        lazy.check(lazy.LazyFacts("x86_64", "x86_64", "1.41", "20.10.24", None))
    assert "20.10.24" in caught.value.message
    assert "without --lazy" in caught.value.hint and caught.value.exit_code == 12


@pytest.mark.parametrize(("output", "refused"), [
    ("uffd-noncoop is supported\nrc=0\n", False),
    ("Error (criu/cr-check.c:1330): UFFD is not supported\nrc=1\n", True),
    ("sh: criu: not found\nrc=127\n", True),
    ("", True),
])
def test_uffd_probe_output(output, refused):
    reason = lazy.uffd_reason(output)
    assert (reason is not None) == refused
    if refused:
        assert "uffd-noncoop" in reason


IP_A = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever
2: eth0    inet 10.0.2.15/24 scope global eth0\\       valid_lft forever
4: c0    inet 10.78.0.1/24 scope global c0\\       valid_lft forever
5: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\       valid_lft forever
"""
IP_B = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever
2: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\       valid_lft forever
3: c2-0    inet 10.78.0.2/24 scope global c2-0\\       valid_lft forever
"""


def test_page_server_binds_the_link_between_the_hosts_not_docker0():
    src, dst = lazy.addresses(IP_A), lazy.addresses(IP_B)
    assert ("127.0.0.1", 8) not in src and ("10.78.0.1", 24) in src
    # docker0 is on both hosts (172.17.0.1 each): it is no link between them
    assert lazy.page_server_address(src, dst) == "10.78.0.1"
    assert lazy.page_server_address(dst, src) == "10.78.0.2"


def test_no_shared_private_link_means_no_page_server():
    assert lazy.page_server_address([("11.0.0.10", 24)], [("11.0.0.11", 24)]) is None
    assert lazy.page_server_address([("10.1.0.1", 24)], [("10.2.0.1", 24)]) is None


def test_port_is_in_range_and_follows_the_name():
    ports = {lazy.port_for(f"hmigrate-{n:010x}") for n in range(50)}
    assert all(27000 <= p < 29000 for p in ports) and len(ports) > 10
    assert lazy.port_for("hmigrate-abc") == lazy.port_for("hmigrate-abc")


def test_only_what_a_lazy_restore_reads_crosses_and_lands_at_its_offsets(tmp_path):
    """A pagemap with lazy and non-lazy runs (and one in a parent image): the plan names
    the non-lazy runs of pages-M.img; pack_script and unpack_script, run by the shell as
    the agents run them, rebuild a file of the dump's size whose non-lazy pages are the
    dump's and whose lazy pages are holes."""
    import subprocess

    from docker_hmigrate.criu.image import ImageFile
    from docker_hmigrate.criu.memory import PE_LAZY, PE_PARENT, PE_PRESENT
    from docker_hmigrate.criu.schema import new

    page = lazy.PAGE
    runs = [(0x1000, 2, PE_PRESENT), (0x10000, 3, PE_PRESENT | PE_LAZY),
            (0x20000, 1, PE_PARENT), (0x30000, 1, PE_PRESENT), (0x31000, 2, PE_PRESENT),
            (0x40000, 4, PE_PRESENT | PE_LAZY), (0x50000, 1, PE_PRESENT)]
    entries = [new("pagemap_head", pages_id=7)] + [
        new("pagemap_entry", vaddr=v, compat_nr_pages=n, flags=f) for v, n, f in runs]
    blob = ImageFile.new("pagemap-1.img", 0x56084025, entries).to_bytes()
    plan = lazy.restore_reads("pagemap-1.img", blob)
    assert plan == lazy.PagesPlan("pages-7.img", 13, ((0, 2), (5, 3), (12, 1)))

    images, moved, target = tmp_path / "ck", tmp_path / "move" / "ck", tmp_path / "dst"
    images.mkdir()
    dump = bytes((i // page + 1) % 256 for i in range(13 * page))
    (images / "pages-7.img").write_bytes(dump)
    (images / "core-1.img").write_bytes(b"core")
    subprocess.run(["sh", "-c", lazy.pack_script(str(images), str(moved), [plan])], check=True)
    assert sorted(p.name for p in moved.iterdir()) == ["core-1.img", "pages-7.img.runs"]
    assert (moved / "pages-7.img.runs").stat().st_size == 6 * page  # not the 7 lazy pages
    target.mkdir()
    for f in moved.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    subprocess.run(["sh", "-c", lazy.unpack_script(str(target), [plan])], check=True)
    rebuilt = (target / "pages-7.img").read_bytes()
    assert len(rebuilt) == len(dump) and not (target / "pages-7.img.runs").exists()
    for first, n in plan.runs:
        assert rebuilt[first * page:(first + n) * page] == dump[first * page:(first + n) * page]
    for first, n in ((2, 3), (8, 4)):  # the lazy runs: holes
        assert rebuilt[first * page:(first + n) * page] == bytes(n * page)


def test_the_dumps_pagemaps_are_read_in_one_go(tmp_path):
    """read_pagemaps_script's output, as the shell prints it, split back into files."""
    import subprocess

    (tmp_path / "pagemap-1.img").write_bytes(b"\x00\n1 2\n" * 3)
    (tmp_path / "pagemap-23.img").write_bytes(b"")
    (tmp_path / "pagemap-shmem-4.img").write_bytes(b"s")
    (tmp_path / "pages-1.img").write_bytes(b"p" * 4096)
    out = subprocess.run(["sh", "-c", lazy.read_pagemaps_script(str(tmp_path))],
                         capture_output=True, check=True).stdout
    assert dict(lazy.named_files(out)) == {"pagemap-1.img": b"\x00\n1 2\n" * 3,
                                           "pagemap-23.img": b"",
                                           "pagemap-shmem-4.img": b"s"}
