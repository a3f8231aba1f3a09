"""Host/context resolution: must match the docker CLI (checked against the real CLI)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
from http.server import HTTPServer
from pathlib import Path

import pytest

from docker_hmigrate import errors, hosts
from docker_hmigrate.hosts import Endpoint, GlobalOptions, TLSConfig
from tests.support.dockercli import DOCKER, needs_docker_cli
from tests.support.fakes import FakeDaemon

DOCKER_ENV = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_TLS",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
)


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty docker config dir in DOCKER_CONFIG, and a clean environment."""
    for var in DOCKER_ENV:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    d = tmp_path / "cfg"
    d.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


def write_context(
    cfg_dir: Path,
    name: str,
    host: str,
    skip_verify: bool = False,
    tls_files: tuple[str, ...] = (),
    description: str = "",
) -> None:
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta_dir = cfg_dir / "contexts" / "meta" / digest
    meta_dir.mkdir(parents=True)
    meta = {
        "Name": name,
        "Metadata": {"Description": description} if description else {},
        "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": skip_verify}},
    }
    (meta_dir / "meta.json").write_text(json.dumps(meta))
    if tls_files:
        tls_dir = cfg_dir / "contexts" / "tls" / digest / "docker"
        tls_dir.mkdir(parents=True)
        for f in tls_files:
            (tls_dir / f"{f}.pem").write_text(f"fake {f}\n")


def set_current(cfg_dir: Path, name: str) -> None:
    (cfg_dir / "config.json").write_text(json.dumps({"auths": {}, "currentContext": name}))


# ---- precedence --------------------------------------------------------------------------


def test_default_when_nothing_set(cfg: Path) -> None:
    ep = hosts.resolve_source(GlobalOptions())
    assert ep == Endpoint(
        name="default",
        host="unix:///var/run/docker.sock",
        tls=None,
        source="default",
        description=ep.description,
    )


def test_precedence_chain(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_context(cfg, "cfgctx", "tcp://10.0.0.1:2375")
    write_context(cfg, "envctx", "tcp://10.0.0.2:2375")
    write_context(cfg, "flagctx", "tcp://10.0.0.3:2375")
    set_current(cfg, "cfgctx")

    ep = hosts.resolve_source(GlobalOptions())
    assert (ep.name, ep.host, ep.source) == (
        "cfgctx",
        "tcp://10.0.0.1:2375",
        "config.json currentContext",
    )

    monkeypatch.setenv("DOCKER_CONTEXT", "envctx")
    ep = hosts.resolve_source(GlobalOptions())
    assert (ep.name, ep.source) == ("envctx", "DOCKER_CONTEXT")

    # DOCKER_HOST beats DOCKER_CONTEXT: it selects the default context.
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.9:2375")
    ep = hosts.resolve_source(GlobalOptions())
    assert (ep.name, ep.host, ep.source) == ("default", "tcp://10.0.0.9:2375", "DOCKER_HOST")

    # -H beats DOCKER_HOST.
    ep = hosts.resolve_source(GlobalOptions(hosts=["unix:///tmp/x.sock"]))
    assert (ep.name, ep.host, ep.source) == ("default", "unix:///tmp/x.sock", "--host flag")

    # --context beats everything in the environment.
    ep = hosts.resolve_source(GlobalOptions(context="flagctx"))
    assert (ep.name, ep.host, ep.source) == ("flagctx", "tcp://10.0.0.3:2375", "--context flag")

    # --context default with DOCKER_HOST: default context, which uses DOCKER_HOST.
    ep = hosts.resolve_source(GlobalOptions(context="default"))
    assert ep.host == "tcp://10.0.0.9:2375"


def test_context_and_host_conflict(cfg: Path) -> None:
    with pytest.raises(errors.UsageError) as ei:
        hosts.resolve_source(GlobalOptions(context="x", hosts=["tcp://a:1"]))
    assert "cannot specify both --host and --context" in ei.value.message
    assert ei.value.exit_code == 125


def test_config_flag_overrides_env_config_dir(cfg: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    write_context(other, "o", "tcp://10.1.1.1:2375")
    set_current(other, "o")
    ep = hosts.resolve_source(GlobalOptions(config_dir=str(other)))
    assert (ep.name, ep.host) == ("o", "tcp://10.1.1.1:2375")
    # Without --config, the DOCKER_CONFIG dir (empty) is used.
    assert hosts.resolve_source(GlobalOptions()).name == "default"


def test_home_default_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in DOCKER_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    d = tmp_path / ".docker"
    d.mkdir()
    write_context(d, "homectx", "ssh://me@box")
    set_current(d, "homectx")
    ep = hosts.resolve_source(GlobalOptions())
    assert (ep.name, ep.host, ep.tls) == ("homectx", "ssh://me@box", None)


def test_unknown_context(cfg: Path) -> None:
    with pytest.raises(errors.UnknownContext) as ei:
        hosts.resolve_source(GlobalOptions(context="nope"))
    assert ei.value.message == "context 'nope' not found: run `docker context ls`"
    assert ei.value.exit_code == 3
    with pytest.raises(errors.UnknownContext):
        hosts.resolve_target("nope", GlobalOptions())


def test_broken_config_json(cfg: Path) -> None:
    (cfg / "config.json").write_text("{not json")
    with pytest.raises(errors.HmigrateError) as ei:
        hosts.resolve_source(GlobalOptions())
    assert "config.json" in ei.value.message


# ---- TLS ---------------------------------------------------------------------------------


def test_context_tls_files(cfg: Path) -> None:
    write_context(cfg, "secure", "tcp://10.0.0.5:2376", tls_files=("ca", "cert", "key"))
    ep = hosts.resolve_target("secure", GlobalOptions())
    tls_dir = cfg / "contexts" / "tls" / hashlib.sha256(b"secure").hexdigest() / "docker"
    assert ep.tls == TLSConfig(
        ca=str(tls_dir / "ca.pem"),
        cert=str(tls_dir / "cert.pem"),
        key=str(tls_dir / "key.pem"),
        verify=True,
    )


def test_context_skip_verify_without_files(cfg: Path) -> None:
    write_context(cfg, "insecure", "tcp://10.0.0.6:2376", skip_verify=True)
    ep = hosts.resolve_target("insecure", GlobalOptions())
    assert ep.tls == TLSConfig(verify=False)


def test_context_without_tls(cfg: Path) -> None:
    write_context(cfg, "plain", "tcp://10.0.0.7:2375")
    assert hosts.resolve_target("plain", GlobalOptions()).tls is None


def test_tlsverify_env_and_cert_path(cfg: Path, tmp_path: Path, monkeypatch) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    for f in ("ca", "cert", "key"):
        (certs / f"{f}.pem").write_text("x")
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.8")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(certs))
    ep = hosts.resolve_source(GlobalOptions())
    # TLS picks the TLS default port when none is given, as the CLI does.
    assert ep.host == "tcp://10.0.0.8:2376"
    assert ep.tls == TLSConfig(
        ca=str(certs / "ca.pem"), cert=str(certs / "cert.pem"), key=str(certs / "key.pem")
    )


def test_tls_flags(cfg: Path, tmp_path: Path) -> None:
    g = GlobalOptions(hosts=["tcp://h:2376"], tls=True)
    ep = hosts.resolve_source(g)
    # --tls without verify: no CA check; cert/key dropped because the defaults don't exist.
    assert ep.tls == TLSConfig(ca=None, cert=None, key=None, verify=False)
    g = GlobalOptions(
        hosts=["tcp://h:2376"], tlsverify=True, tlscacert="/c/ca", tlscert="/c/c", tlskey="/c/k"
    )
    assert hosts.resolve_source(g).tls == TLSConfig(ca="/c/ca", cert="/c/c", key="/c/k")
    # --tlsverify=false still turns TLS on, without verification (cli/flags/options.go).
    g = GlobalOptions(hosts=["tcp://h:2376"], tlsverify=False)
    assert hosts.resolve_source(g).tls == TLSConfig(verify=False)
    # TLS settings don't apply to unix sockets.
    assert hosts.resolve_source(GlobalOptions(hosts=["unix:///s"], tls=True)).tls is None


# ---- targets and listing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("tcp://10.77.0.2:2375", "tcp://10.77.0.2:2375"),
        ("tcp://10.77.0.2", "tcp://10.77.0.2:2375"),
        ("unix:///var/run/hmlab-b.sock", "unix:///var/run/hmlab-b.sock"),
        ("ssh://root@box", "ssh://root@box"),
        ("ssh://root@box:2222", "ssh://root@box:2222"),
        ("tcp://[::1]:2375", "tcp://[::1]:2375"),
    ],
)
def test_resolve_target_url(cfg: Path, given: str, expected: str) -> None:
    ep = hosts.resolve_target(given, GlobalOptions())
    assert (ep.name, ep.host, ep.source, ep.tls) == (given, expected, "URL", None)


def test_normalize_host() -> None:
    assert hosts.normalize_host("") == "unix:///var/run/docker.sock"
    assert hosts.normalize_host("10.0.0.1:1234") == "tcp://10.0.0.1:1234"
    assert hosts.normalize_host("tcp://:2375") == "tcp://localhost:2375"
    assert hosts.normalize_host("tcp://h", tls=True) == "tcp://h:2376"
    with pytest.raises(errors.UsageError):
        hosts.normalize_host("gopher://x")


def test_list_contexts(cfg: Path) -> None:
    write_context(cfg, "zeta", "tcp://10.0.0.1:2375", description="last")
    write_context(cfg, "alpha", "unix:///a.sock")
    names = [e.name for e in hosts.list_contexts(GlobalOptions())]
    assert names == ["default", "alpha", "zeta"]


# ---- the real docker CLI's store format --------------------------------------------------


def _docker(cfg_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full_env = {k: v for k, v in os.environ.items() if k not in DOCKER_ENV}
    full_env["DOCKER_CONFIG"] = str(cfg_dir)
    full_env.update(env or {})
    out = subprocess.run(
        [DOCKER, *args], env=full_env, capture_output=True, text=True, timeout=30, check=True
    )
    return out.stdout


@needs_docker_cli
def test_matches_docker_context_create(cfg: Path, tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl needed to make a certificate for docker context create")
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=hmigrate-test", "-keyout", str(certs / "key.pem"),
         "-out", str(certs / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    shutil.copy(certs / "cert.pem", certs / "ca.pem")
    _docker(cfg, "context", "create", "real-tls", "--description", "made by docker",
            "--docker", f"host=tcp://10.0.0.9:2376,ca={certs}/ca.pem,"
            f"cert={certs}/cert.pem,key={certs}/key.pem")  # fmt: skip
    _docker(cfg, "context", "create", "real-skip", "--docker",
            "host=tcp://10.0.0.10:2376,skip-tls-verify=true")  # fmt: skip
    _docker(cfg, "context", "create", "real-ssh", "--docker", "host=ssh://me@box")

    ep = hosts.resolve_target("real-tls", GlobalOptions())
    assert ep.host == "tcp://10.0.0.9:2376"
    assert ep.description == "made by docker"
    assert ep.tls is not None and ep.tls.verify
    for f in ("ca", "cert", "key"):
        path = getattr(ep.tls, f)
        assert path and Path(path).read_bytes() == (certs / f"{f}.pem").read_bytes()
    assert hosts.resolve_target("real-skip", GlobalOptions()).tls == TLSConfig(verify=False)
    assert hosts.resolve_target("real-ssh", GlobalOptions()).host == "ssh://me@box"

    # Same list and endpoints as `docker context ls`.
    listed = [json.loads(line) for line in _docker(cfg, "context", "ls", "--format", "json")
              .splitlines()]  # fmt: skip
    ours = {e.name: e.host for e in hosts.list_contexts(GlobalOptions())}
    assert ours == {c["Name"]: c["DockerEndpoint"] for c in listed}

    # `docker context use` writes config.json; we must follow it.
    _docker(cfg, "context", "use", "real-ssh")
    assert hosts.resolve_source(GlobalOptions()).name == "real-ssh"


@needs_docker_cli
def test_current_context_matches_docker_context_show(cfg: Path) -> None:
    write_context(cfg, "c1", "tcp://10.0.0.1:2375")
    write_context(cfg, "c2", "tcp://10.0.0.2:2375")
    set_current(cfg, "c1")
    cases: list[tuple[list[str], dict[str, str], GlobalOptions]] = [
        ([], {}, GlobalOptions()),
        ([], {"DOCKER_CONTEXT": "c2"}, GlobalOptions()),
        ([], {"DOCKER_CONTEXT": "c2", "DOCKER_HOST": "tcp://x:1"}, GlobalOptions()),
        (["--context", "c2"], {"DOCKER_HOST": "tcp://x:1"}, GlobalOptions(context="c2")),
        (["-H", "tcp://y:1"], {"DOCKER_CONTEXT": "c2"}, GlobalOptions(hosts=["tcp://y:1"])),
    ]
    for flags, env, g in cases:
        expected = _docker(cfg, *flags, "context", "show", env=env).strip()
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            assert hosts.current_context_name(g)[0] == expected, (flags, env)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# ---- connecting --------------------------------------------------------------------------


def test_connect_tcp_negotiates_version(cfg: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), FakeDaemon)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ep = hosts.resolve_target(f"tcp://127.0.0.1:{server.server_port}", GlobalOptions())
        client = hosts.connect(ep, timeout=5)
        assert client.api.api_version == "1.41"
        assert client.api.timeout == 5
        assert client.version()["Version"] == "99.0.0"
        client.close()
    finally:
        server.shutdown()


def test_connect_timeout_default(cfg: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), FakeDaemon)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = hosts.connect(hosts.resolve_target(f"tcp://127.0.0.1:{server.server_port}",
                                                    GlobalOptions()))  # fmt: skip
        assert client.api.timeout == hosts.DEFAULT_TIMEOUT
        client.close()
    finally:
        server.shutdown()


def test_connect_unreachable(cfg: Path, tmp_path: Path) -> None:
    ep = hosts.resolve_target(f"unix://{tmp_path}/missing.sock", GlobalOptions())
    with pytest.raises(errors.HostUnreachable) as ei:
        hosts.connect(ep, timeout=2)
    assert ei.value.exit_code == 4
    assert "missing.sock" in ei.value.message
    assert "socket not found" in ei.value.message
    assert ei.value.hint and "docker -H" in ei.value.hint


def test_connect_refused_named_context(cfg: Path) -> None:
    write_context(cfg, "down", "tcp://127.0.0.1:1")
    ep = hosts.resolve_target("down", GlobalOptions())
    with pytest.raises(errors.HostUnreachable) as ei:
        hosts.connect(ep, timeout=2)
    assert "connection refused" in ei.value.message
    assert "docker --context down version" in (ei.value.hint or "")


# ---- ssh:// --------------------------------------------------------------------------------

FAKE_SSH = """#!{python}
# Stands in for ssh: records its argv, then pipes stdio to a TCP "remote dockerd".
import os, socket, sys, threading
with open(os.environ["FAKE_SSH_LOG"], "a") as f:
    f.write(repr(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_SSH_FAIL"):
    sys.stderr.write("me@box: Permission denied (publickey).\\n")
    sys.exit(255)
s = socket.create_connection(("127.0.0.1", int(os.environ["FAKE_DAEMON_PORT"])))
def up():
    while data := os.read(0, 65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    os.write(1, data)
"""


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import sys

    bindir = tmp_path / "sshbin"
    bindir.mkdir()
    ssh = bindir / "ssh"
    ssh.write_text(FAKE_SSH.format(python=sys.executable))
    ssh.chmod(0o755)
    log = tmp_path / "ssh.log"
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    return log


def test_ssh_command_matches_docker_cli() -> None:
    # As captured from docker 28.2.2 with a fake ssh on PATH.
    assert hosts.ssh_command("ssh://me@box:2222") == [
        "ssh", "-o ConnectTimeout=30", "-T", "-l", "me", "-p", "2222", "--", "box",
        "docker", "system", "dial-stdio",
    ]  # fmt: skip
    assert hosts.ssh_command("ssh://box/run/x.sock") == [
        "ssh", "-o ConnectTimeout=30", "-T", "--", "box",
        "docker", "--host", "unix:///run/x.sock", "system", "dial-stdio",
    ]  # fmt: skip
    with pytest.raises(errors.UsageError):
        hosts.ssh_command("ssh://me:secret@box")


@needs_docker_cli
def test_ssh_argv_same_as_docker_cli(cfg: Path, fake_ssh: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SSH_FAIL", "1")
    subprocess.run([DOCKER, "-H", "ssh://me@box:2222", "version"], capture_output=True,
                   timeout=60, env=dict(os.environ))  # fmt: skip
    docker_argv = fake_ssh.read_text().splitlines()[-1]
    assert docker_argv == repr(hosts.ssh_command("ssh://me@box:2222")[1:])


def test_connect_over_ssh(cfg: Path, fake_ssh: Path, monkeypatch) -> None:
    server = HTTPServer(("127.0.0.1", 0), FakeDaemon)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("FAKE_DAEMON_PORT", str(server.server_port))
    try:
        ep = hosts.resolve_target("ssh://me@box", GlobalOptions())
        client = hosts.connect(ep, timeout=10)
        assert client.version()["Version"] == "99.0.0"
        assert [c.name for c in client.containers.list()] == ["web"]
        client.close()
    finally:
        server.shutdown()
    assert "'--', 'box', 'docker', 'system', 'dial-stdio'" in fake_ssh.read_text()


def test_connect_over_ssh_failure(cfg: Path, fake_ssh: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SSH_FAIL", "1")
    ep = hosts.resolve_target("ssh://me@box", GlobalOptions())
    with pytest.raises(errors.HostUnreachable) as ei:
        hosts.connect(ep, timeout=10)
    assert "Permission denied (publickey)" in ei.value.message


def test_connect_silent_daemon_times_out(cfg: Path, monkeypatch) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts (in the kernel) but never answers
    monkeypatch.setattr(hosts, "CONNECT_TIMEOUT", 1.0)
    try:
        ep = hosts.resolve_target(f"tcp://127.0.0.1:{listener.getsockname()[1]}", GlobalOptions())
        with pytest.raises(errors.HostUnreachable) as ei:
            hosts.connect(ep)
        assert "timed out" in ei.value.message
    finally:
        listener.close()


# ---- connections kept alive over a unix socket ------------------------------------------


def test_one_connection_serves_every_url(tmp_path: Path) -> None:
    """docker-py opens a connection per distinct URL on a unix socket; connect() makes
    requests share one kept-alive connection (each one is an ssh channel over ssh://)."""
    import socketserver

    from tests.support.fakes import FakeDaemon

    connections: list[int] = []

    class KeepAlive(FakeDaemon):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            connections.append(1)
            super().setup()

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self):  # BaseHTTPRequestHandler wants a (host, port) address
            conn, _ = self.socket.accept()
            return conn, ("local", 0)

    sock = tmp_path / "d.sock"
    server = Server(str(sock), KeepAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ep = hosts.resolve_target(f"unix://{sock}", GlobalOptions())
        client = hosts.connect(ep, timeout=10)
        opened = len(connections)
        for _ in range(3):
            client.version()
            client.containers.list()
            client.api.inspect_container("c0ffee")
        assert len(connections) - opened <= 1, len(connections)
        client.close()
    finally:
        server.shutdown()
        server.server_close()


def test_context_ca_wins_over_requests_ca_bundle(tmp_path: Path, monkeypatch) -> None:
    """A TLS context's CA verifies its daemon even with REQUESTS_CA_BUNDLE set (requests
    would otherwise verify against the bundle: every lab TLS move failed so)."""
    import docker.tls

    from docker_hmigrate.engine import EngineAPIClient

    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    api = EngineAPIClient(base_url="tcp://127.0.0.1:1", version="1.41",
                          tls=docker.tls.TLSConfig(verify=str(ca)))
    settings = api.merge_environment_settings("https://127.0.0.1:1/version", {}, False,
                                              None, None)
    assert settings["verify"] == str(ca)
    # a caller's explicit choice still wins
    assert api.merge_environment_settings("https://127.0.0.1:1/", {}, False, False,
                                          None)["verify"] is False


def test_a_daemon_that_let_a_call_time_out_gets_short_timeouts_after():
    """A timed-out call raises DaemonUnreachable (an APIError: clean-ups tolerate it) and
    later calls wait STUCK_TIMEOUT at most; a refused connection changes no timeout."""
    import pytest
    import requests.exceptions

    from docker_hmigrate import engine

    class Api:
        timeout = 600
        failure: Exception = requests.exceptions.ConnectionError("refused")

        def send(self, request, **kwargs):
            raise self.failure

    api = Api()
    engine.raise_unreachable_as_api_errors(api, "tcp://h:1")
    with pytest.raises(engine.DaemonUnreachable):
        api.send(None)
    assert api.timeout == 600
    api.failure = requests.exceptions.ReadTimeout("read timed out")
    request = requests.Request("GET", "http+docker://localhost/v1.45/containers/json?all=1")
    with pytest.raises(engine.DaemonUnreachable,
                       match="did not answer GET /containers/json within 600 s"):
        api.send(request)
    assert api.timeout == engine.STUCK_TIMEOUT


def _pull_daemon(lines: list[bytes], then_stall: bool):
    """An HTTP server answering /images/create with `lines` (chunked), then silence."""
    import http.server
    import threading

    hold = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in lines:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            if then_stall:
                hold.wait(10)
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hold


def test_a_pull_that_stops_progressing_fails_instead_of_hanging():
    """docker-py's pull has no timeout: Host.pull gives each read `stall` seconds."""
    import time

    import docker
    import pytest

    from docker_hmigrate import engine

    server, hold = _pull_daemon([b'{"status":"Pulling fs layer","id":"a1"}\n'], then_stall=True)
    try:
        host = engine.Host("t", docker.DockerClient(
            base_url=f"tcp://127.0.0.1:{server.server_address[1]}", version="1.41"))
        seen = []
        began = time.monotonic()
        with pytest.raises(engine.DaemonUnreachable, match="made no progress in 1 s"):
            host.pull("reg:5000/app:1", "linux/arm64", stall=1, progress=seen.append)
        assert time.monotonic() - began < 8
        assert seen == [{"status": "Pulling fs layer", "id": "a1"}]
    finally:
        hold.set()
        server.shutdown()


def test_a_pull_error_in_the_stream_is_an_api_error():
    import docker
    import docker.errors
    import pytest

    from docker_hmigrate import engine

    server, hold = _pull_daemon([b'{"error":"no matching manifest for linux/arm64"}\n'],
                                then_stall=False)
    try:
        host = engine.Host("t", docker.DockerClient(
            base_url=f"tcp://127.0.0.1:{server.server_address[1]}", version="1.41"))
        with pytest.raises(docker.errors.APIError, match="no matching manifest"):
            host.pull("reg:5000/app:1", "linux/arm64", stall=5)
    finally:
        server.shutdown()


def test_answer_within_bounds_calls_meanwhile_and_keeps_a_stuck_daemons_short_timeout():
    from docker_hmigrate import engine

    class Api:
        timeout = 600

    host = engine.Host.__new__(engine.Host)
    host.client = type("C", (), {"api": Api()})()
    with host.answer_within(120):
        assert host.api.timeout == 120
    assert host.api.timeout == 600
    with host.answer_within(120):
        engine.impatient(host.api)  # found stuck meanwhile
    assert host.api.timeout == engine.STUCK_TIMEOUT
