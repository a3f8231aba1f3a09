"""When the fast checkpoint path applies (pure logic; the path itself: test_fastpath_lab)."""

from __future__ import annotations

from types import SimpleNamespace

from docker_hmigrate import fastpath


def _inspect(runtime: str = "", policy: str = "always") -> dict:
    return {"Id": "c" * 64, "HostConfig": {"Runtime": runtime,
                                           "RestartPolicy": {"Name": policy}}}


def test_runc_containers_take_it_whatever_their_restart_policy(monkeypatch):
    monkeypatch.delenv("HMIGRATE_FASTPATH", raising=False)
    host = SimpleNamespace(info={"DefaultRuntime": "runc"})
    assert fastpath.refusal(host, _inspect("runc")) is None
    assert fastpath.refusal(host, _inspect("", "no")) is None  # the daemon's default: runc


def test_other_runtimes_and_the_user_switch_refuse_with_the_reason(monkeypatch):
    monkeypatch.delenv("HMIGRATE_FASTPATH", raising=False)
    host = SimpleNamespace(info={"DefaultRuntime": "crun"})
    assert fastpath.refusal(host, _inspect("")) == "runtime crun, not runc"
    assert fastpath.refusal(host, _inspect("kata")) == "runtime kata, not runc"
    monkeypatch.setenv("HMIGRATE_FASTPATH", "0")
    assert fastpath.refusal(SimpleNamespace(info={}), _inspect("runc")) == "HMIGRATE_FASTPATH=0"
