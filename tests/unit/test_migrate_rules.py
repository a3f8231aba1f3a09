"""The migration's failure rules against a fake engine (no daemon): the commit point, the
rollback of a maybe-frozen source, interrupts (duplicates, shields), the lock, hooks and
option values. What needs real CRIU is in tests/lab/test_faults_lab.py."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import docker.errors
import pytest
import requests

from docker_hmigrate import errors, interrupts, migrate, transfer
from docker_hmigrate.cli import app as cli
from docker_hmigrate.engine import Host
from docker_hmigrate.migrate import Created, Migration, MigrationOptions
from docker_hmigrate.output import Reporter

CID = "c" * 64
TID = "t" * 64


def api_error(cls=docker.errors.APIError, code=500, text="boom"):
    resp = requests.Response()
    resp.status_code = code
    return cls(text, response=resp, explanation=text)


class FakeAPI:
    """A daemon with containers {id: state}; records calls."""

    timeout = 600

    def __init__(self):
        self.states: dict[str, dict] = {}
        self.checkpoints: dict[str, set[str]] = {}
        self.calls: list[tuple] = []
        self.remove_error: Exception | None = None
        self.names: dict[str, str] = {}

    def inspect_container(self, cid):
        cid = self.names.get(cid, cid)
        if cid not in self.states:
            raise api_error(docker.errors.NotFound, 404, f"no such container {cid}")
        state = dict(self.states[cid])
        return {"Id": cid, "Name": f"/{cid}", "State": state,
                "Config": {"Labels": state.pop("Labels", None) or {}},
                "HostConfig": {"RestartPolicy": state.pop("RestartPolicy", {"Name": "no"})}}

    def update_container(self, cid, restart_policy=None):
        self.calls.append(("update", cid, restart_policy["Name"]))
        self.states[cid]["RestartPolicy"] = restart_policy

    def remove_container(self, cid, force=False, v=False):
        self.calls.append(("remove", cid))
        if self.remove_error:
            raise self.remove_error
        if cid not in self.states and cid not in self.names:
            raise api_error(docker.errors.NotFound, 404, "gone")
        self.states.pop(self.names.pop(cid, cid), None)

    def unpause(self, cid):
        self.calls.append(("unpause", cid))
        self.states[cid] = {"Running": True, "Paused": False, "Status": "running"}

    def start(self, cid):
        self.calls.append(("start", cid))
        self.states[cid] = {"Running": True, "Status": "running"}

    def containers(self, all=False, filters=None):
        return []

    def remove_volume(self, name, force=False):
        pass

    def create_container(self, image, command=None, name=None, labels=None, **kw):
        if name in self.names:
            raise api_error(docker.errors.APIError, 409, f"name {name} is in use")
        cid = f"lock-{len(self.names)}"
        self.names[name] = cid
        self.states[cid] = {"Running": False, "Status": "created", "Labels": labels}
        return {"Id": cid}

    def create_host_config(self, **kw):
        return kw


class FakeHost:
    answer_within = Host.answer_within
    def __init__(self, name):
        self.name, self.isa, self.api = name, "x86-64", FakeAPI()
        self.info: dict[str, str] = {"ID": name}
        self.labels: dict[str, str] = {}
        self.scratch_image = "scratch"

    def inspect(self, cid):
        return self.api.inspect_container(cid)

    def checkpoint_list(self, cid):
        return sorted(self.api.checkpoints.get(cid, set()))

    def checkpoint_delete(self, cid, name):
        self.api.checkpoints.get(cid, set()).discard(name)

    def checkpoint_create(self, cid, name, exit=True):
        self.api.checkpoints.setdefault(cid, set()).add(name)
        if exit:
            self.api.states[cid] = {"Running": False, "Status": "exited", "ExitCode": 137}

    def start(self, cid, checkpoint=None):
        self.api.calls.append(("start", cid, checkpoint))
        self.api.states[cid] = {"Running": True, "Status": "running"}

    def remove_labelled(self, label, value):
        return []

    def run_probe(self, script, timeout=120):
        self.api.calls.append(("probe", script))
        return 0, ""

    def remove_quietly(self, cid):
        self.api.names = {k: v for k, v in self.api.names.items() if v != cid and k != cid}
        self.api.states.pop(cid, None)

    def remove_checkpoint_staging(self, ids, since=0):
        self.api.calls.append(("staging", tuple(ids)))
        return 0


def migration(**opts) -> tuple[Migration, FakeHost, FakeHost]:
    src, dst = FakeHost("a"), FakeHost("b")
    src.api.states[CID] = {"Running": True, "Status": "running"}
    m = Migration(src, dst, MigrationOptions("web", verify_seconds=0, **opts),
                  Reporter(json_mode=True, err=io.StringIO(), out=io.StringIO()))
    m.inspect = {"Id": CID, "Name": "/web"}
    return m, src, dst


@pytest.fixture(autouse=True)
def fresh_interrupts():
    interrupts.reset()
    yield
    interrupts.reset()


# ---- rollback ----------------------------------------------------------------------------


def test_rollback_target_already_gone_is_not_a_failure():
    """NotFound is an APIError: a suppress(NotFound) around try/except APIError reported a
    target already gone as a rollback failure (exit 13)."""
    m, src, dst = migration()
    m.created = Created(target_container=TID)  # never existed on dst: NotFound
    m.roll_back(RuntimeError("cause"))
    assert ("remove", TID) in dst.api.calls


def test_rollback_volume_already_gone_is_not_a_failure():
    m, src, dst = migration()

    def remove_volume(name, force=False):
        dst.api.calls.append(("remove_volume", name))
        raise api_error(docker.errors.NotFound, 404, f"get {name}: no such volume")

    dst.api.remove_volume = remove_volume
    m.created = Created(volumes=["data"])
    m.roll_back(RuntimeError("cause"))
    assert ("remove_volume", "data") in dst.api.calls


def test_rollback_target_being_removed_by_its_daemon_is_not_a_failure():
    """A target started with --rm (AutoRemove from the source's config) that died is
    removed by its own daemon: our removal meets 409 "removal ... already in progress",
    and then its volume is still "in use" for a moment. Both mean "going away": the
    rollback waits for it to be gone instead of reporting exit 13."""
    m, src, dst = migration()
    dst.api.states[TID] = {"Running": False, "Status": "removing"}
    dst.api.remove_error = api_error(
        code=409, text=f"removal of container {TID} is already in progress")
    polls = []

    def inspect_container(cid):
        polls.append(cid)
        if len(polls) >= 3:  # the daemon finishes the removal
            dst.api.states.pop(TID, None)
        return FakeAPI.inspect_container(dst.api, cid)

    dst.api.inspect_container = inspect_container
    m.created = Created(target_container=TID)
    m.roll_back(RuntimeError("cause"))
    assert ("remove", TID) in dst.api.calls and TID not in dst.api.states


def test_rollback_target_stuck_in_removal_is_reported(monkeypatch):
    monkeypatch.setattr(migrate, "REMOVAL_WAIT", 0.3)
    m, src, dst = migration()
    dst.api.states[TID] = {"Running": False, "Status": "removing"}
    dst.api.remove_error = api_error(
        code=409, text=f"removal of container {TID} is already in progress")
    m.created = Created(target_container=TID)
    with pytest.raises(errors.RollbackFailed) as exc:
        m.roll_back(RuntimeError("cause"))
    assert exc.value.exit_code == 13 and "still being removed" in exc.value.message


def test_rollback_other_errors_still_reported():
    m, src, dst = migration()
    dst.api.states[TID] = {"Running": False}
    dst.api.remove_error = api_error(text="device busy")
    m.created = Created(target_container=TID)
    with pytest.raises(errors.RollbackFailed) as exc:
        m.roll_back(RuntimeError("cause"))
    assert exc.value.exit_code == 13 and "device busy" in exc.value.message


def test_interrupted_dump_restores_source_from_checkpoint():
    """The daemon finished the dump after the interrupt: the source exited with its
    checkpoint. The rollback (source marked maybe-frozen before the request) restores it."""
    m, src, dst = migration()
    src.checkpoint_create(CID, m.checkpoint, exit=True)  # what the daemon did anyway
    m.created = Created(source_frozen=True)
    m.roll_back(KeyboardInterrupt())
    assert ("start", CID, m.checkpoint) in src.api.calls
    assert src.api.states[CID]["Running"]
    assert src.checkpoint_list(CID) == []  # process memory not left behind


def test_phase_checkpoint_marks_maybe_frozen_before_the_request():
    m, src, dst = migration()
    seen = []

    def create(cid, name, exit=True):
        seen.append(m.created.source_frozen)
        raise KeyboardInterrupt  # the interrupt lands while the daemon dumps

    src.checkpoint_create = create
    with pytest.raises(KeyboardInterrupt):
        m.phase_checkpoint()
    assert seen == [True] and m.created.source_frozen


def test_rollback_unpauses_a_paused_source():
    m, src, dst = migration()
    src.api.states[CID] = {"Running": True, "Paused": True, "Status": "paused"}
    m.created = Created(source_frozen=True)
    m.roll_back(KeyboardInterrupt())
    assert ("unpause", CID) in src.api.calls


def test_rollback_starts_a_stopped_source_without_checkpoint():
    m, src, dst = migration()
    src.api.states[CID] = {"Running": False, "Status": "exited"}
    m.created = Created(source_frozen=True)
    m.roll_back(KeyboardInterrupt())
    assert ("start", CID) in src.api.calls and m.warnings


# ---- the commit point --------------------------------------------------------------------


def settle(m: Migration, exc: BaseException) -> BaseException:
    with pytest.raises(BaseException) as raised:
        m._settle(exc)
    return raised.value


def started(m: Migration, src: FakeHost, dst: FakeHost) -> None:
    src.checkpoint_create(CID, m.checkpoint, exit=True)
    dst.api.states[TID] = {"Running": True, "Status": "running"}
    m.created = Created(target_container=TID, source_frozen=True)
    m._mark_started()


def test_interrupt_after_target_started_keeps_target():
    m, src, dst = migration()
    started(m, src, dst)
    exc = settle(m, KeyboardInterrupt())
    assert isinstance(exc, errors.Interrupted) and exc.exit_code == 130
    assert "runs on b" in exc.message
    assert dst.api.states[TID]["Running"]  # kept
    assert CID not in src.api.states  # source cleaned up
    assert ("start", CID, m.checkpoint) not in src.api.calls


def test_failing_post_restore_hook_keeps_target():
    m, src, dst = migration(hooks={"post-restore": "exit 3"})
    m.spec = None
    started(m, src, dst)
    with pytest.raises(errors.HookFailed) as hook:
        m._hook("post-restore")
    exc = settle(m, hook.value)
    assert isinstance(exc, errors.HookFailed)
    assert exc.exit_code == 15 and "runs on b" in exc.message
    assert dst.api.states[TID]["Running"] and CID not in src.api.states


def test_target_dying_in_verify_resumes_source_and_says_what_is_lost():
    m, src, dst = migration()
    started(m, src, dst)
    dst.api.states[TID] = {"Running": False, "Status": "exited", "ExitCode": 139}
    exc = settle(m, KeyboardInterrupt())  # even an interrupt: the target is dead
    assert isinstance(exc, errors.TargetDied) and exc.exit_code == 11
    assert "lost" in exc.message
    assert ("start", CID, m.checkpoint) in src.api.calls and src.api.states[CID]["Running"]


def test_interrupt_before_target_started_rolls_back():
    m, src, dst = migration()
    src.checkpoint_create(CID, m.checkpoint, exit=True)
    dst.api.states[TID] = {"Running": False, "Status": "created"}
    m.created = Created(target_container=TID, source_frozen=True)
    exc = settle(m, KeyboardInterrupt())
    assert isinstance(exc, errors.Interrupted) and exc.exit_code == 130
    assert "rolled back" in exc.message and "runs on a" in exc.message
    assert TID not in dst.api.states and src.api.states[CID]["Running"]


# ---- interrupts --------------------------------------------------------------------------


def test_duplicate_sigint_is_one_interrupt(capsys):
    with pytest.raises(KeyboardInterrupt):
        interrupts.on_signal(signal.SIGINT, None)
    interrupts.on_signal(signal.SIGINT, None)  # the same Ctrl-C, forwarded by docker
    assert "interrupt once more" not in capsys.readouterr().err
    time.sleep(interrupts.DUPLICATE_WINDOW + 0.05)
    interrupts.on_signal(signal.SIGINT, None)  # a second, distinct one: a notice only
    assert "interrupt once more" in capsys.readouterr().err


def test_shield_defers_the_interrupt_to_its_end():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.shielded():
            interrupts.on_signal(signal.SIGINT, None)
            done.append("finished")
    assert done == ["finished"]
    interrupts.reset()
    with interrupts.shielded(consume=True):  # a rollback swallows it
        interrupts.on_signal(signal.SIGINT, None)
    assert interrupts.interrupted()


def test_rollback_not_aborted_by_the_duplicate():
    m, src, dst = migration()
    src.checkpoint_create(CID, m.checkpoint, exit=True)
    m.created = Created(source_frozen=True)
    real_resume = m._resume_source

    def resume():
        os.kill(os.getpid(), signal.SIGINT)  # the duplicate, mid-rollback
        time.sleep(0.1)
        return real_resume()

    m._resume_source = resume
    old = signal.signal(signal.SIGINT, interrupts.on_signal)
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupts.on_signal(signal.SIGINT, None)  # the first copy
        m.roll_back(KeyboardInterrupt())
    finally:
        signal.signal(signal.SIGINT, old)
    assert src.api.states[CID]["Running"]


# ---- lock --------------------------------------------------------------------------------


def second(src, dst, inspect) -> Migration:
    m2 = Migration(src, dst, MigrationOptions("web"),
                   Reporter(json_mode=True, err=io.StringIO(), out=io.StringIO()))
    m2.inspect = inspect
    return m2


def test_second_migration_of_the_same_container_is_refused():
    m1, src, dst = migration()
    m1._take_lock()
    with pytest.raises(errors.ContainerBusy) as exc:
        second(src, dst, m1.inspect)._take_lock()
    assert exc.value.exit_code == 16
    assert "pid" in exc.value.message


def test_stale_lock_is_recovered_then_taken_over():
    """A migration killed outright (its pid gone) had held the source's restart policy at
    "no": the next one gives it back before it starts, and takes the lock."""
    m1, src, dst = migration()
    m1.inspect = {"Id": CID, "Name": "/web", "State": {"Running": True},
                  "HostConfig": {"RestartPolicy": {"Name": "always"}}, "Config": {}}
    m1._take_lock()
    lock = src.api.names[f"hmigrate-lock-{CID[:32]}"]
    labels = src.api.states[lock]["Labels"]
    assert labels["org.hmigrate.lock.checkpoint"] == m1.checkpoint
    assert json.loads(labels["org.hmigrate.lock.restart"]) == {"Name": "always"}
    labels["org.hmigrate.lock.pid"] = "999999999"  # killed: no such process
    src.api.states[CID]["RestartPolicy"] = {"Name": "no"}  # as it held it
    m2 = second(src, dst, m1.inspect)
    m2._target_image = lambda: "img"
    m2._take_lock()
    assert m2._lock  # a new lock, this process's
    assert src.api.states[m2._lock]["Labels"]["org.hmigrate.lock.pid"] == str(os.getpid())
    assert src.api.states[m2._lock]["Labels"]["org.hmigrate.lock.checkpoint"] == m2.checkpoint
    assert ("update", CID, "always") in src.api.calls
    assert any("recovered first" in w for w in m2.warnings)


def test_stale_lock_on_a_stopped_source_asks_for_recover():
    m1, src, dst = migration()
    m1._take_lock()
    src.api.states[src.api.names[f"hmigrate-lock-{CID[:32]}"]]["Labels"][
        "org.hmigrate.lock.pid"] = "999999999"
    m2 = second(src, dst, {"Id": CID, "Name": "/web", "State": {"Running": False}})
    with pytest.raises(errors.RollbackFailed) as exc:
        m2._take_lock()
    assert "hmigrate recover web" in exc.value.hint


# ---- hooks and options -------------------------------------------------------------------


def test_hook_timeout_kills_the_hook_group():
    m, src, dst = migration(hooks={"pre-restore": "sleep 30 & sleep 30"}, hook_timeout=0.5)
    m.spec = None
    t0 = time.monotonic()
    with pytest.raises(errors.HookFailed) as exc:
        m._hook("pre-restore")
    assert time.monotonic() - t0 < 5
    assert "within 0.5s" in exc.value.message and exc.value.exit_code == 15


def test_hook_output_goes_to_stderr(capfd):
    m, src, dst = migration(hooks={"post-restore": "echo HOOK-SAYS-HI"})
    m.spec = None
    m._hook("post-restore")
    out, err = capfd.readouterr()
    assert "HOOK-SAYS-HI" in err and "HOOK-SAYS-HI" not in out


@pytest.mark.parametrize("args,text", [
    (["--verify-seconds", "nan"], "--verify-seconds"),
    (["--verify-seconds", "-1"], "--verify-seconds"),
    (["--verify-seconds", "inf"], "--verify-seconds"),
    (["--hook-timeout", "0"], "--hook-timeout"),
    (["--name", "bad/name"], "--name"),
])
def test_bad_option_values_refused_up_front(monkeypatch, capsys, args, text):
    """A usage error (docker's 125), before any host is contacted."""
    from docker_hmigrate import hosts

    def never(*a, **k):
        raise AssertionError("a host was contacted before the options were checked")

    monkeypatch.setattr(hosts, "resolve_source", never)
    monkeypatch.setattr(hosts, "resolve_target", never)
    code = cli.run(["migrate", "web", "--to", "hm-b", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == errors.UsageError.exit_code == 125, (out, err)
    doc = json.loads(out)
    assert doc["error"]["exit_code"] == 125 and text in doc["error"]["message"]


# ---- checkpoint -o -----------------------------------------------------------------------


def test_private_file_refuses_symlinks_and_is_created_fresh(tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    link = tmp_path / "ck.tar"
    link.symlink_to(target)
    with pytest.raises(errors.UsageError):
        transfer.create_private_file(link)
    assert target.read_text() == "keep"
    old = tmp_path / "old.tar"
    old.write_text("x")
    old.chmod(0o644)
    os.close(transfer.create_private_file(old))
    assert old.stat().st_mode & 0o777 == 0o600 and old.stat().st_size == 0


def test_dump_retried_when_runc_cannot_freeze(monkeypatch):
    m, src, dst = migration()
    tries = []

    def create(cid, name, exit=True):
        tries.append(name)
        if len(tries) < 3:
            raise api_error(text="OCI runtime pause failed: unable to freeze: unknown")

    src.checkpoint_create = create
    monkeypatch.setattr("docker_hmigrate.migrate.time.sleep", lambda s: None)
    m._dump()
    assert len(tries) == 3
    src.checkpoint_create = lambda *a, **k: (_ for _ in ()).throw(api_error(text="other"))
    with pytest.raises(docker.errors.APIError):
        m._dump()


# ---- strategies: what a cross-ISA move does more, at fixed points ------------------------


def test_strategy_follows_the_hosts_isas():
    from docker_hmigrate import strategy

    m, src, dst = migration()
    assert type(m.strategy) is strategy.SameIsa
    dst.isa = "aarch64"
    m2 = Migration(src, dst, MigrationOptions("web"), m.rep)
    assert type(m2.strategy) is strategy.CrossIsa


def test_same_isa_move_skips_recode_and_parks_nothing():
    m, src, dst = migration()
    m.strategy.before_freeze()
    m.strategy.transform()
    phases = {p.name: p for p in m.rep.phases}
    assert "park" not in phases and phases["recode"].status == "skipped"
    assert not m.created.source_parked


def test_cross_isa_without_a_program_is_refused_before_the_freeze():
    """--force gets past the failed checks, never past a program recode cannot read."""
    m, src, dst = migration()
    dst.isa = "aarch64"
    m = Migration(src, dst, MigrationOptions("web", force=True), m.rep)
    m.inspect = {"Id": CID, "Name": "/web"}
    with pytest.raises(errors.NotMigratableCrossISA):
        m.strategy.before_freeze()
    assert not m.created.source_parked and not m.created.source_frozen


def test_rollback_withdraws_a_pending_park_request(monkeypatch):
    from docker_hmigrate import park

    m, src, dst = migration()
    dst.isa = "aarch64"
    m = Migration(src, dst, MigrationOptions("web", verify_seconds=0), m.rep)
    m.inspect = {"Id": CID, "Name": "/web"}
    m.strategy.program = type("P", (), {"park_protocol": park.ParkProtocol()})()
    resumed = []
    monkeypatch.setattr(park, "resume_all", lambda host, cid, proto: resumed.append((host, cid)))
    m.created = Created(source_parked=True, template="tmpl")
    dst.api.states["tmpl"] = {"Running": False}
    m.roll_back(KeyboardInterrupt())
    assert resumed == [(src, CID)]  # the source's threads go on
    assert ("remove", "tmpl") in dst.api.calls and m.created == Created()


def cross_migration(monkeypatch, take):
    """A cross-ISA migration whose template is `take(stop)` (template.target_facts)."""
    from docker_hmigrate import template

    m, src, dst = migration()
    dst.isa = "aarch64"
    m = Migration(src, dst, MigrationOptions("web", verify_seconds=0), m.rep)
    m.inspect = {"Id": CID, "Name": "/web", "Mounts": []}
    m.spec = type("S", (), {"body": {"Image": "app", "HostConfig": {}}})()

    def facts(dst_, body, inspect, into, name, record, stop, keep=False):
        return take(record, stop, into)

    monkeypatch.setattr(template, "target_facts", facts)
    return m, src, dst


def test_template_is_taken_while_validating_and_prepare_waits_for_it(monkeypatch):
    import threading

    from docker_hmigrate import template

    go = threading.Event()

    def take(record, stop, into):
        go.wait(5)
        return template.Facts(into, "t1", "k", cached=False, seconds=1.5)

    m, _src, _dst = cross_migration(monkeypatch, take)
    m.strategy._movable = True  # the program's own checks passed
    m.strategy.start()
    assert not m.strategy._facts_call.done()  # running beside validation
    go.set()
    with m.rep.phase("prepare target") as ph:
        m.strategy.prepare(ph)
    assert m.strategy.template_id == "t1"
    assert m.rep.data["template"] == "taken" and m.rep.data["template_seconds"]["total"] == 1.5
    m.strategy.close()


def test_a_move_refused_by_its_checks_takes_no_template(monkeypatch):
    taken = []
    m, _src, _dst = cross_migration(monkeypatch, lambda *a: taken.append(a))
    m.strategy.start()  # _movable is False: the program's checks failed
    assert m.strategy._facts_call is None and not taken
    m.strategy.close()


def test_rollback_stops_the_background_template_and_removes_it(monkeypatch):
    import threading

    from docker_hmigrate import template

    inside = threading.Event()

    def take(record, stop, into):
        record("tmpl")  # created on the target
        inside.set()
        while not stop.wait(0.01):  # a step in flight, until told to stop
            pass
        raise template.Stopped("given up")

    m, _src, dst = cross_migration(monkeypatch, take)
    m.strategy._movable = True
    m.strategy.start()
    assert inside.wait(5)
    dst.api.states["tmpl"] = {"Running": True}
    m.roll_back(errors.ValidationFailed("a check failed"))
    assert m.strategy._facts_call.done()
    assert ("remove", "tmpl") in dst.api.calls and m.created.template is None
    m.strategy.close()


def test_a_target_that_never_finishes_the_template_refuses_the_move_in_time(monkeypatch):
    """A wedged target (its daemon accepts calls and never answers): prepare gives up after
    HMIGRATE_TEMPLATE_TIMEOUT, before anything is frozen, and the rollback does not wait
    for the stuck step either; later calls to that daemon are made impatient."""
    import threading
    import time

    from docker_hmigrate import engine

    release = threading.Event()

    def take(record, stop, into):
        record("tmpl")
        release.wait(30)  # a call that never returns (until the test ends)
        raise AssertionError("not reached in time")

    monkeypatch.setenv("HMIGRATE_TEMPLATE_TIMEOUT", "0.5")
    m, src, dst = cross_migration(monkeypatch, take)
    dst.api.timeout = 600
    m.strategy._movable = True
    m.strategy.start()
    began = time.monotonic()
    with pytest.raises(errors.HostUnreachable, match="did not checkpoint the inert template"):
        with m.rep.phase("prepare target") as ph:
            m.strategy.prepare(ph)
    dst.api.states["tmpl"] = {"Running": True}
    m.roll_back(errors.HostUnreachable("stuck"))
    assert time.monotonic() - began < 10
    assert dst.api.timeout == engine.STUCK_TIMEOUT
    assert ("remove", "tmpl") in dst.api.calls
    assert not src.api.calls or all(c[0] != "checkpoint" for c in src.api.calls)
    release.set()
    m.strategy.close()


def test_a_bad_template_timeout_is_a_usage_error(monkeypatch):
    from docker_hmigrate import polling

    monkeypatch.setenv("HMIGRATE_TEMPLATE_TIMEOUT", "soon")
    with pytest.raises(errors.UsageError, match="HMIGRATE_TEMPLATE_TIMEOUT='soon' is not"):
        polling.wait_limit("HMIGRATE_TEMPLATE_TIMEOUT", 300)
    monkeypatch.setenv("HMIGRATE_TEMPLATE_TIMEOUT", "")
    assert polling.wait_limit("HMIGRATE_TEMPLATE_TIMEOUT", 300) == 300


INFLIGHT_LOG = ("(00.1) Error (criu/sk-inet.c:200): inet: In-flight connection (l) for 4f4858\n"
                "(00.2) Error (criu/cr-dump.c:2000): Dumping FAILED.\n")
EXTSOCK_LOG = "(00.1) Error (criu/sk-unix.c:874): unix: External socket is used. ...\n"


def refusing_dumps(monkeypatch, log: str, succeed_at: int = 0):
    """A migration whose API dumps CRIU refuses with `log` (until try `succeed_at`)."""
    m, src, dst = migration()
    tries = []

    def create(cid, name, exit=True):
        tries.append(name)
        if len(tries) != succeed_at:
            raise api_error(text="Cannot checkpoint container web: ... path= /x/criu-dump.log")
        FakeHost.checkpoint_create(src, cid, name, exit)

    src.checkpoint_create = create
    m._read_dump_log = lambda path: log if path == "/x/criu-dump.log" else ""
    monkeypatch.setattr("docker_hmigrate.migrate.time.sleep", lambda s: None)
    return m, src, tries


def test_dump_refused_for_a_passing_reason_is_tried_again(monkeypatch):
    """CRIU refuses a listening socket with a connection not yet accepted ("In-flight
    connection"): a client connecting at the moment of the freeze. CRIU resumed the
    source; the dump is asked again and the move goes on (seen in the cross-ISA soak)."""
    m, src, tries = refusing_dumps(monkeypatch, INFLIGHT_LOG, succeed_at=3)
    m.phase_checkpoint()
    assert len(tries) == 3 and m.checkpoint in src.checkpoint_list(CID)
    assert m.rep.data["checkpoint_attempts"] == 3


def test_dump_refused_for_a_passing_reason_every_time_says_so(monkeypatch):
    m, src, tries = refusing_dumps(monkeypatch, INFLIGHT_LOG)
    with pytest.raises(errors.CriuError) as exc:
        m.phase_checkpoint()
    assert len(tries) == migrate.DUMP_ATTEMPTS
    assert "In-flight connection" in str(exc.value)
    assert "not accepted yet" in exc.value.hint and "tried 4 times" in exc.value.hint
    assert "still runs on a" in exc.value.hint


def test_dump_refused_for_the_process_state_is_not_tried_again(monkeypatch):
    m, src, tries = refusing_dumps(monkeypatch, EXTSOCK_LOG)
    with pytest.raises(errors.CriuError):
        m.phase_checkpoint()
    assert len(tries) == 1


def test_a_failed_restore_with_derived_facts_sends_the_configuration_to_its_own_template(
        monkeypatch, tmp_path):
    from docker_hmigrate import template

    monkeypatch.setenv("HMIGRATE_CACHE", str(tmp_path / "cache"))

    def take(record, stop, into):
        return template.Facts(into, "host-tpl", "hostkey", cached=True, config_key="own",
                              derived=True)

    m, _src, _dst = cross_migration(monkeypatch, take)
    m.strategy._movable = True
    m.strategy.start()
    with m.rep.phase("prepare target") as ph:
        m.strategy.prepare(ph)
    assert m.rep.data["template_facts"] == "derived"
    host = template.cache_dir() / "hostkey"
    host.mkdir(parents=True)
    (host / "inventory.img").write_bytes(b"x")
    m.strategy.restore_failed()
    assert template.cached("hostkey") is None  # the host template is taken again
    assert template.underivable("own") and not template.underivable("hostkey")
    m.strategy.close()


def test_a_container_that_stopped_on_its_own_has_nothing_to_move_or_resume() -> None:
    """Its program ended while the move went on (the corpus's short runs): the park's
    process list says so plainly (not "cannot list the processes"), and the rollback's
    withdrawal of the park request has nothing to do (no "rollback failed" either)."""
    from types import SimpleNamespace

    from docker_hmigrate import park, strategy

    host = FakeHost("a")
    host.api.states[CID] = {"Running": False, "Status": "exited", "ExitCode": 0}

    def top(cid, ps_args=None):
        raise api_error(docker.errors.APIError, 409, f"Container {cid} is not running")
    host.api.top = top
    with pytest.raises(errors.ContainerStopped, match=r"web stopped on a during the "
                       r"migration \(exited, exit code 0\): nothing is left to move"):
        park.container_pids(host, CID, "web")
    with pytest.raises(errors.ContainerStopped, match=f"^{CID} stopped"):  # its name
        park.container_pids(host, CID)
    cross = strategy.CrossIsa.__new__(strategy.CrossIsa)
    cross.m = SimpleNamespace(created=Created(source_parked=True), src=host,
                              inspect={"Id": CID})
    cross.program = SimpleNamespace(park_protocol=None)
    cross.release_source()  # nothing raised: no process holds the request
    host.api.states[CID] = {"Running": True, "Status": "running"}
    with pytest.raises(errors.NotMigratableCrossISA, match="cannot list the processes"):
        park.container_pids(host, CID, "web")


def test_the_local_images_go_whatever_the_cleanup_meets(monkeypatch) -> None:
    """The cross-ISA strategy's local folder holds the process's memory: it is removed
    even when an earlier cleanup step fails (a lock that cannot be released)."""
    m, src, dst = migration()
    src.api.names["web"] = CID
    closed = []
    m.strategy = type("S", (), {"close": lambda self: closed.append(True)})()
    monkeypatch.setattr(migrate, "target_spec", lambda *a: None)
    monkeypatch.setattr(m, "_target_image", lambda: "img")
    monkeypatch.setattr(m, "_take_lock", lambda: None)
    monkeypatch.setattr(m, "_run_phases", lambda: None)

    def fail() -> None:
        raise errors.HmigrateError("the lock stays")
    monkeypatch.setattr(m, "_release_lock", fail)
    with pytest.raises(errors.HmigrateError, match="the lock stays"):
        m.run()
    assert closed == [True]
