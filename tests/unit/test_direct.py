"""--direct (direct.py): what refuses it before the freeze, the page server's address, and
the freezer scripts run by this machine's sh on a real cgroup and process."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from docker_hmigrate import direct, errors, lazy
from docker_hmigrate.migrate import MigrationOptions

OK = direct.DirectFacts(src_isa="x86-64", dst_isa="x86-64", fast_path=None,
                        network_mode="bridge")


def test_nothing_refuses_a_same_isa_fast_path_move_with_its_own_network() -> None:
    assert direct.refusals(OK) == []
    direct.check(OK)
    assert direct.refusals(OK.__class__(**{**OK.__dict__, "network_mode": ""})) == []


def test_every_reason_is_given_at_once() -> None:
    facts = direct.DirectFacts(src_isa="x86-64", dst_isa="aarch64",
                               fast_path="runtime kata, not runc", network_mode="host")
    reasons = direct.refusals(facts)
    assert len(reasons) == 3
    assert "same ISA" in reasons[0] and "kata" in reasons[1] and "--network host" in reasons[2]
    with pytest.raises(errors.ValidationFailed) as exc:
        direct.check(facts)
    assert "nothing was frozen" in (exc.value.hint or "")
    shared = direct.DirectFacts(src_isa="x86-64", dst_isa="x86-64", fast_path=None,
                                network_mode="container:db")
    assert "container:db" in direct.refusals(shared)[0]


def test_containers_joined_to_its_network_namespace_refuse_it() -> None:
    rows = [{"Names": ["/web"], "HostConfig": {"NetworkMode": "bridge"}},
            {"Names": ["/sidecar"], "HostConfig": {"NetworkMode": "container:web"}},
            {"Names": ["/probe"], "HostConfig": {"NetworkMode": "container:abcdef012345"}}]
    joined = direct.joined_by(rows, "abcdef012345" + "0" * 52, "web")
    assert joined == ("probe", "sidecar")
    facts = direct.DirectFacts(src_isa="x86-64", dst_isa="x86-64", fast_path=None,
                               network_mode="bridge", joined_by=joined)
    assert "probe, sidecar" in direct.refusals(facts)[0]
    assert direct.joined_by(rows[:1], "abcdef012345" + "0" * 52, "web") == ()


def test_lazy_and_direct_together_are_a_usage_error() -> None:
    with pytest.raises(errors.UsageError):
        MigrationOptions("web", lazy=True, direct=True).check()
    MigrationOptions("web", direct=True).check()


def test_the_page_server_listens_on_the_targets_side_of_a_private_link() -> None:
    src = [("192.0.2.2", 24), ("10.77.0.1", 24), ("172.17.0.1", 16)]
    dst = [("172.17.0.1", 16), ("10.77.0.2", 24)]  # docker0 on both: not that one
    assert lazy.page_server_address(dst, src) == "10.77.0.2"
    assert lazy.page_server_address([("10.99.0.2", 24)], src) is None  # no shared link
    public = [("8.8.8.5", 24)]  # never a public address: no authentication
    assert lazy.page_server_address(public, [("8.8.8.6", 24)]) is None


def test_freezer_output_parsed() -> None:
    assert direct.parse_freezer("v1 /sys/fs/cgroup/freezer/docker/abc\n") == direct.Freezer(
        "/sys/fs/cgroup/freezer/docker/abc", False)
    assert direct.parse_freezer("v2 /sys/fs/cgroup/system.slice/docker-abc.scope") == \
        direct.Freezer("/sys/fs/cgroup/system.slice/docker-abc.scope", True)
    assert direct.parse_freezer("no freezer") is None
    assert direct.parse_freezer("v1 /etc/passwd") is None


def test_scripts_are_valid_sh() -> None:
    for freezer in (direct.Freezer("/sys/fs/cgroup/freezer/x y", False),
                    direct.Freezer("/sys/fs/cgroup/x", True)):
        for script in (freezer.freeze(), freezer.thaw(), freezer.frozen(),
                       freezer.end_silently(), direct.freezer_script(1),
                       direct.wait_for_dump("abc")):
            subprocess.run(["sh", "-n", "-c", script], check=True)


def test_wait_for_dump_does_not_wait_for_itself() -> None:
    """The pattern would match the shell that runs it ("runc ... checkpoint ... ID" is in
    its own command line) and wait its whole bound; with no dump running it returns."""
    started = time.monotonic()
    subprocess.run(["sh", "-c", direct.wait_for_dump("c0ffee" * 10)], check=True, timeout=60)
    assert time.monotonic() - started < 5


def test_a_root_cgroup_is_no_freezer() -> None:
    """pid 1 here is in the root cgroups, which cannot be frozen: no freezer found."""
    res = subprocess.run(["sh", "-c", direct.freezer_script(1)], capture_output=True,
                         text=True)
    if any(line.split(":", 2)[2] != "/" for line in
           Path("/proc/1/cgroup").read_text().splitlines() if "freezer" in line
           or line.startswith("0::")):
        pytest.skip("pid 1 is not in the root freezer cgroup here")
    assert res.returncode == 1 and direct.parse_freezer(res.stdout) is None


V1_FREEZER = Path("/sys/fs/cgroup/freezer")
# cgroup v2: the whole tree on a v2 host, the "unified" mount beside v1 on a hybrid one
V2_ROOT = next((p for p in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
                if (p / "cgroup.subtree_control").exists()), None)


@pytest.mark.parametrize("v2", [False, True], ids=["cgroup-v1", "cgroup-v2"])
def test_freeze_thaw_and_end_silently_on_a_real_cgroup(v2: bool) -> None:
    """A process in its own network namespace and a freezer cgroup of its own: frozen (it
    stops), thawed (it goes on), frozen again and ended without running again (SIGKILL
    while frozen, then thawed), as the commit does."""
    root = V2_ROOT if v2 else (V1_FREEZER if V1_FREEZER.is_dir() else None)
    if os.geteuid() != 0 or root is None or shutil.which("unshare") is None:
        pytest.skip(f"needs root, a cgroup {'v2' if v2 else 'v1 freezer'} tree and unshare")
    group = root / f"hmigrate-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    proc = subprocess.Popen(["unshare", "-n", "sh", "-c",
                             "i=0; while :; do i=$((i+1)); "
                             "echo $i > /dev/shm/hmigrate-test-tick; sleep 0.02; done"])
    try:
        (group / "cgroup.procs").write_text(str(proc.pid))
        out = subprocess.run(["sh", "-c", direct.freezer_script(proc.pid)],
                             capture_output=True, text=True).stdout
        freezer = direct.parse_freezer(out)
        assert freezer == direct.Freezer(str(group), v2), out

        def ticks() -> str:
            time.sleep(0.3)
            return Path("/dev/shm/hmigrate-test-tick").read_text()

        def rules() -> str:  # the process's own network namespace's filter rules
            if shutil.which("iptables") is None:
                return ""  # nothing to block with here
            return subprocess.run(["nsenter", "-t", str(proc.pid), "-n", "iptables", "-S"],
                                  capture_output=True, text=True).stdout

        assert direct.BLOCK_TAG not in rules()
        subprocess.run(["sh", "-c", freezer.freeze()], check=True, timeout=30)
        if v2:
            assert "frozen 1" in (group / "cgroup.events").read_text()
        else:
            assert (group / "freezer.state").read_text().strip() == "FROZEN"
        assert subprocess.run(["sh", "-c", freezer.frozen()]).returncode == 0
        assert ticks() == ticks()  # stopped
        if shutil.which("iptables"):  # nothing sent while frozen
            assert rules().count(direct.BLOCK_TAG) == 1, rules()
            assert f"-A OUTPUT -m comment --comment {direct.BLOCK_TAG} -j DROP" in rules()
        subprocess.run(["sh", "-c", freezer.thaw()], check=True, timeout=30)
        assert ticks() != ticks()  # going on
        assert direct.BLOCK_TAG not in rules()  # opened again
        subprocess.run(["sh", "-c", freezer.freeze()], check=True, timeout=30)
        subprocess.run(["sh", "-c", freezer.end_silently()], check=True, timeout=30)
        assert proc.wait(timeout=10) == -9
        assert (group / "cgroup.procs").read_text().strip() == ""
    finally:
        proc.kill()
        proc.wait()
        Path("/dev/shm/hmigrate-test-tick").unlink(missing_ok=True)
        group.rmdir()
