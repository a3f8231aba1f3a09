"""The corpus runner's pure parts: output comparison, refusal classification, table."""

from __future__ import annotations

import json

from bench import corpus


def test_compare_finds_missing_doubled_and_changed_lines() -> None:
    ref = ["step 1 a", "step 2 b", "done"]
    assert corpus.compare(ref, list(ref)) == (True, "")
    ok, why = corpus.compare(ref, ["step 1 a", "step 2 b", "step 2 b", "done"])
    assert not ok and "line 3" in why and "step 2 b" in why  # doubled
    ok, why = corpus.compare(ref, ["step 1 a", "step 2 b"])
    assert not ok and "1 lines missing" in why
    ok, why = corpus.compare(ref, ref + ["[exit status 139]"])
    assert not ok and "extra" in why


def test_refusal_before_or_after_the_freeze() -> None:
    before = {"ok": False, "phases": [{"name": "validate", "status": "ok"},
                                      {"name": "park", "status": "failed"}],
              "error": {"message": "lua did not reach its equivalence points"}}
    assert corpus.classify(before, "") == ("lua did not reach its equivalence points", True)
    after = {"ok": False, "phases": [{"name": "checkpoint", "status": "ok"},
                                     {"name": "recode", "status": "failed"}],
             "error": {"message": "x"}}
    assert corpus.classify(after, "") == ("x", False)
    assert corpus.classify({}, "error: boom\n") == ("error: boom", True)


def test_last_step_and_table() -> None:
    assert corpus.last_step(["step 3 x", "step 4 y", "noise"], r"^step (\d+) ") == 4
    assert corpus.last_step([], r"^step (\d+) ") == 0
    r = corpus.Result("lua5.4", builds=True, identical=True, moves=[
        corpus.Move("hm-a", "hm-arm", 6, True, 40.0),
        corpus.Move("hm-arm", "hm-a", 12, True, 30.0),
        corpus.Move("hm-a", "hm-arm", 20, False, 9.0, "refused: setjmp", True)])
    bad = corpus.Result("mawk", builds=False, build_error="make failed")
    text = corpus.table([r, bad])
    lines = text.splitlines()
    assert lines[0].split(" | ")[0].strip() == "program"
    row = [c.strip() for c in lines[2].split(" | ")]
    assert row == ["lua5.4", "yes", "1/2", "1/1", "yes", "1 (refused: setjmp)"]
    assert "no (make failed)" in lines[3]


def test_every_recipe_is_complete() -> None:
    for spec_file in corpus.CORPUS.glob("*/corpus.json"):
        spec = json.loads(spec_file.read_text())
        assert {"package", "image", "progress", "done", "moves_at"} <= spec.keys(), spec_file
        assert spec["image"].startswith("localhost:5000/hmigrate/corpus/")
        assert (spec_file.parent / "Dockerfile").exists()
        assert len(spec["moves_at"]) >= 6 and spec["moves_at"] == sorted(spec["moves_at"])
        dockerfile = (spec_file.parent / "Dockerfile").read_text()
        assert "apt-get source" in dockerfile and "hmigrate-cc" in dockerfile


def test_image_folder_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("HMIGRATE_CORPUS_REPO", "hmigrate/me/corpus")
    image = corpus.load_recipe("lua5.4")["image"]
    assert image == "localhost:5000/hmigrate/me/corpus/lua5.4:latest"
    monkeypatch.delenv("HMIGRATE_CORPUS_REPO")
    assert corpus.load_recipe("lua5.4")["image"] == "localhost:5000/hmigrate/corpus/lua5.4:latest"


def test_a_server_driver_runs_each_step_once_where_the_container_is(monkeypatch) -> None:
    """A recipe with a driver: one `docker exec` per step, numbered from 1 to LAST, on
    the host given at that moment; finish() stops when the container stops."""
    execs: list[tuple[str, tuple[str, ...]]] = []
    log: list[str] = []
    running = {"v": True}

    class Proc:
        def __init__(self, out: str = "", code: int = 0):
            self.stdout, self.stderr, self.returncode = out, "", code

    def fake_docker(context, *args, **kw):
        if args[0] == "exec":
            execs.append((context, args[2:]))
            n, last = int(args[-2]), int(args[-1])
            log.append(f"step {n:03d}: x")
            if n == last:
                running["v"] = False  # the last step shuts the server down
            return Proc()
        if args[0] == "inspect":
            return Proc("running" if running["v"] else "exited")
        raise AssertionError(args)

    monkeypatch.setattr(corpus, "docker", fake_docker)
    monkeypatch.setattr(corpus, "logs", lambda context, name: list(log))
    spec = corpus.load_recipe("memcached", small=True)
    d = corpus.Driver(spec)
    assert d.pending and d.steps == 16
    d.advance("hm-a", "mc")
    d.advance("hm-arm", "mc")  # moved meanwhile: the next step runs on the target
    assert execs == [("hm-a", ("/mcstep", "1", "16")), ("hm-arm", ("/mcstep", "2", "16"))]
    d.finish("hm-arm", "mc")
    assert [int(a[1]) for _, a in execs] == list(range(1, 17)) and not d.pending
    assert corpus.last_step(log, spec["progress"]) == 16
    batch = corpus.Driver(corpus.load_recipe("lua5.4", small=True))
    assert not batch.pending


def test_back_move_not_at_a_park_point() -> None:
    """--offline recodes to aarch64 and back at one point; when the way back fails on a
    return address the aarch64 runtime's table holds, that runtime would never have
    parked there: the move back is not counted as refused."""
    from types import SimpleNamespace

    from bench.corpus import _not_a_park_point
    from docker_hmigrate.toolchain import contract
    md = contract.load({"unclean_ranges": {"aarch64": [[0x42C513, 0x42C514]]}})
    program = SimpleNamespace(md=md)
    msg = "thread 7: f: call site at 0x42c514 has no translatable twin on x86-64"
    assert _not_a_park_point(msg, program, "aarch64") == "0x42c514"
    assert _not_a_park_point("call site at 0x42c518 ...", program, "aarch64") is None


def test_park_explains_one_isa_code() -> None:
    """zstd's ZSTD_encodeSequences_bmi2 exists in the x86-64 binary only (BMI2 dispatch):
    a thread kept from parking by it is told so, not 'a callback from libc'."""
    from docker_hmigrate.park import ParkProtocol
    from docker_hmigrate.toolchain import contract

    md = contract.load({"symbols": [
        {"name": "ZSTD_encodeSequences_bmi2", "kind": "func", "x86-64": [0x5000, 0x100]},
        {"name": "qsort", "kind": "func", "x86-64": [0x6000, 0x80],
         "aarch64": [0x6000, 0x90]},
        {"name": "__restore", "kind": "func", "aarch64": [0x7000, 0x8]}]})
    proto = ParkProtocol(metadata=md)
    assert "code only the x86-64 binary has" in proto.explain(0x5010)
    assert "called back from it" in proto.explain(0x6010)
    # a signal handler returns into libc's trampoline (named per ISA)
    assert "code without metadata (libc)" in proto.explain(0x7004)


def test_withdrawn_park_request_is_resumed_again(monkeypatch) -> None:
    """A refused park sends the resume signal more than once: a kick of the park signal
    sent just before the first resume arms a new request after it (zstd stayed parked)."""
    from types import SimpleNamespace

    from docker_hmigrate import park

    sent: list[int] = []
    host = SimpleNamespace(api=SimpleNamespace(kill=lambda c, signal: sent.append(signal)))
    monkeypatch.setattr(park.time, "sleep", lambda s: None)
    park.withdraw(host, "c", park.ParkProtocol())
    assert sent == [park.ParkProtocol().resume_signal] * park.WITHDRAW_REPEAT
    assert park.WITHDRAW_REPEAT >= 2
