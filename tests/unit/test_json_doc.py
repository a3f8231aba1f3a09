"""docs/json.md matches what the commands print (schema hmigrate/v1, issue 13)."""

from __future__ import annotations

import io
import json
import threading
from http.server import HTTPServer
from pathlib import Path

import pytest

from docker_hmigrate import errors
from docker_hmigrate.cli import app as cli
from docker_hmigrate.cli.commands import migrate as commands
from docker_hmigrate.output import Reporter
from tests.support import jsondoc
from tests.support.fakes import IMAGE_OK, INSPECT, FakeDaemon, FakeHost


@pytest.fixture(autouse=True)
def clean_docker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CLI_PLUGIN_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "cfg"))


def test_every_reporting_command_is_documented() -> None:
    assert set(jsondoc.sections()) == {"migrate", "check", "checkpoint", "restore", "recode",
                                       "recover", "version", "error"}
    for name, sec in jsondoc.sections().items():
        ex = sec["example"]
        assert ex["schema"] == "hmigrate/v1", name
        assert {"schema", "command", "ok", "phases", "total_seconds", "messages",
                "error"} <= set(ex), name


def test_examples_have_no_display_duplicates() -> None:
    """migrate --json had `isa` and `ISA`, `downtime_seconds` and `downtime` ("1.4 s"),
    `"phase validate": "0.424 s"`."""
    for name, sec in jsondoc.sections().items():
        keys = jsondoc.paths(sec["example"], sec["free"])
        lowered = [k.lower() for k in keys]
        assert len(lowered) == len(set(lowered)), name
        assert not any(k.startswith("phase ") for k in keys), name


def test_usage_error_document(capsys) -> None:
    assert cli.run(["migrate", "web", "--json"]) == 125
    doc = json.loads(capsys.readouterr().out)
    jsondoc.check_keys("error", doc)


def test_version_document(monkeypatch, capsys) -> None:
    server = HTTPServer(("127.0.0.1", 0), FakeDaemon)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.server_port}")
        assert cli.run(["version", "--format", "json"]) == 0
    finally:
        server.shutdown()
    doc = json.loads(capsys.readouterr().out)
    jsondoc.check_keys("version", doc)
    assert doc["source"]["version"] == "99.0.0"


def test_check_document_with_a_failure(monkeypatch, capsys) -> None:
    tty = {**INSPECT, "Config": {"Image": "web", "Tty": True}}

    class Src(FakeHost):
        def inspect(self, name):
            return tty

    monkeypatch.setattr(commands, "open_source", lambda ctx: Src("a"))
    monkeypatch.setattr(commands, "open_target", lambda ctx, t: FakeHost("b"))
    monkeypatch.setattr(commands, "image_check", lambda *a: IMAGE_OK)
    assert cli.run(["check", "web", "--to", "hm-b", "--json"]) == 7
    doc = json.loads(capsys.readouterr().out)
    jsondoc.check_keys("check", doc)
    failed = [c for c in doc["targets"][0]["checks"] if not c["ok"]]
    assert failed[0]["error"] == {"class": "UnsupportedContainer", "exit_code": 7}
    assert doc["error"]["class"] == "UnsupportedContainer"


def test_migrate_document_from_the_migration(monkeypatch) -> None:
    """The keys Migration records (at start, in the move, and in its result)."""
    from docker_hmigrate import migrate
    from docker_hmigrate.spec import target_spec

    out = io.StringIO()
    rep = Reporter(json_mode=True, out=out, err=io.StringIO(), command="migrate")
    m = migrate.Migration(FakeHost("a"), FakeHost("b"), migrate.MigrationOptions("web"), rep)
    m.inspect, m.spec, m.target_id = INSPECT, target_spec(INSPECT, "web"), "f" * 64
    monkeypatch.setattr(m, "_run_phases", lambda: rep.set("transfers", [
        {"what": "checkpoint", "bytes": 1, "seconds": 0.1}]))
    monkeypatch.setattr(m.src, "inspect", lambda name: INSPECT, raising=False)
    monkeypatch.setattr(m, "_target_image", lambda: "web", raising=False)
    m.run()
    with rep.phase("validate"):
        pass
    rep.finish()
    doc = json.loads(out.getvalue())
    jsondoc.check_keys("migrate", doc)
    assert doc["container_id"] == INSPECT["Id"] and doc["target_container_id"] == "f" * 64
    assert isinstance(doc["downtime_seconds"], float)


def test_failure_document_error_object() -> None:
    out = io.StringIO()
    rep = Reporter(json_mode=True, out=out, err=io.StringIO(), command="migrate")
    rep.fail(errors.RestoreFailed("restore on hm-b failed"))
    doc = json.loads(out.getvalue())
    assert doc["error"] == {"class": "RestoreFailed", "message": "restore on hm-b failed",
                            "hint": errors.RestoreFailed.default_hint, "exit_code": 11}
    jsondoc.check_keys("error", doc)
