"""Resolve Docker hosts the way the docker CLI (28.x) does, and connect to them.

Source host precedence (cli/command/cli.go resolveContextName):
  --context  >  --host/-H (the "default" context)  >  DOCKER_HOST (default context)
  >  DOCKER_CONTEXT  >  currentContext in config.json  >  "default".
Giving both --context and --host is an error, as in the CLI. The "default" context's
host is -H, else DOCKER_HOST, else unix:///var/run/docker.sock; its TLS comes from the
--tls* flags and DOCKER_TLS / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH.

The context store lives in the config dir (--config, else DOCKER_CONFIG, else ~/.docker):
  contexts/meta/<sha256(name)>/meta.json     Endpoints.docker.{Host,SkipTLSVerify}
  contexts/tls/<sha256(name)>/docker/{ca,cert,key}.pem

This module imports the docker SDK only inside connect(), so resolving stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from docker_hmigrate import errors

if TYPE_CHECKING:
    import docker

DEFAULT_CONTEXT = "default"
DEFAULT_UNIX_HOST = "unix:///var/run/docker.sock"
# Engine calls such as a CRIU dump of a large container can take minutes; the version
# negotiation at connect time uses a short timeout so a dead host fails fast.
DEFAULT_TIMEOUT = 600.0
CONNECT_TIMEOUT = 15.0


@dataclass
class GlobalOptions:
    """The docker CLI's global flags, as given before or after `hmigrate` (flags given
    twice are merged by cli/flags.py's rule).

    None means "not given", so that environment defaults apply as in the CLI.
    """

    context: str | None = None
    hosts: list[str] = field(default_factory=list)
    tls: bool | None = None
    tlsverify: bool | None = None
    tlscacert: str | None = None
    tlscert: str | None = None
    tlskey: str | None = None
    config_dir: str | None = None
    debug: bool = False
    log_level: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> GlobalOptions:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        opts = cls(**known)  # type: ignore[arg-type]
        opts.hosts = list(opts.hosts)
        return opts


@dataclass(frozen=True)
class TLSConfig:
    """Client TLS settings; None paths mean "not used"."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True


@dataclass(frozen=True)
class Endpoint:
    name: str  # context name ("default" for -H/DOCKER_HOST) or the URL given
    host: str  # normalised daemon URL: unix://, tcp://, ssh://, npipe://
    tls: TLSConfig | None
    source: str  # why this endpoint was chosen, e.g. "--context flag", "DOCKER_HOST"
    description: str = ""


# ---- config dir and config.json -----------------------------------------------------


def env_config_dir() -> Path:
    """config.Dir() of the CLI: DOCKER_CONFIG, else ~/.docker (ignores --config)."""
    env = os.environ.get("DOCKER_CONFIG")
    if env:
        return Path(env)
    return Path.home() / ".docker"


def config_dir(globals_: GlobalOptions) -> Path:
    if globals_.config_dir:
        return Path(os.path.expanduser(globals_.config_dir))
    return env_config_dir()


def _load_config_file(cfg_dir: Path) -> dict[str, object]:
    path = cfg_dir / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise errors.HmigrateError(
            f"cannot read {path}: {exc.strerror}", hint="check the file's permissions"
        ) from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise errors.HmigrateError(
            f"{path} is not valid JSON: {exc}", hint="fix or remove the file"
        ) from exc
    return data if isinstance(data, dict) else {}


def current_context_name(globals_: GlobalOptions) -> tuple[str, str]:
    """(context name, source) with the CLI's precedence; does not check existence."""
    if globals_.context and globals_.hosts:
        raise errors.UsageError(
            "conflicting options: cannot specify both --host and --context",
            hint="use either -H URL or --context NAME",
        )
    if globals_.context:
        return globals_.context, "--context flag"
    if globals_.hosts:
        return DEFAULT_CONTEXT, "--host flag"
    if os.environ.get("DOCKER_HOST"):
        return DEFAULT_CONTEXT, "DOCKER_HOST"
    env_ctx = os.environ.get("DOCKER_CONTEXT")
    if env_ctx:
        return env_ctx, "DOCKER_CONTEXT"
    current = _load_config_file(config_dir(globals_)).get("currentContext")
    if isinstance(current, str) and current:
        return current, "config.json currentContext"
    return DEFAULT_CONTEXT, "default"


# ---- host URLs -------------------------------------------------------------------------


def normalize_host(host: str, tls: bool = False) -> str:
    """Like the CLI's opts.ParseHost: fill in scheme, default address and port."""
    host = host.strip()
    if not host:
        return DEFAULT_UNIX_HOST
    if "://" not in host:
        host = "tcp://" + host
    scheme, rest = host.split("://", 1)
    scheme = scheme.lower()
    if scheme == "unix":
        return "unix://" + (rest or "/var/run/docker.sock")
    if scheme == "tcp":
        addr, slash, path = rest.partition("/")
        port = "2376" if tls else "2375"
        if addr.startswith("["):  # IPv6 literal
            h, _, p = addr[1:].partition("]")
            h, p = "[" + h + "]", p.lstrip(":")
        else:
            h, _, p = addr.rpartition(":") if ":" in addr else (addr, "", "")
        h = h or "localhost"
        p = p or port
        if not p.isdigit():
            raise errors.UsageError(f"invalid host address {host!r}: bad port")
        return f"tcp://{h}:{p}" + (slash + path if path else "")
    if scheme in ("ssh", "npipe", "fd", "http", "https"):
        return f"{scheme}://{rest}"
    raise errors.UsageError(
        f"invalid host {host!r}: unsupported scheme {scheme!r}",
        hint="use unix://PATH, tcp://HOST:PORT or ssh://USER@HOST",
    )


def _flag_tls(globals_: GlobalOptions) -> TLSConfig | None:
    """TLS of the default context, from flags and env (cli/flags/options.go)."""
    tls = globals_.tls if globals_.tls is not None else bool(os.environ.get("DOCKER_TLS"))
    verify_given = globals_.tlsverify is not None
    verify = globals_.tlsverify if verify_given else bool(os.environ.get("DOCKER_TLS_VERIFY"))
    # Giving --tlsverify at all (even =false) or DOCKER_TLS_VERIFY turns TLS on.
    if verify_given or verify:
        tls = True
    if not tls:
        return None
    cert_dir = Path(os.environ.get("DOCKER_CERT_PATH") or env_config_dir())
    ca = globals_.tlscacert or str(cert_dir / "ca.pem")
    cert = globals_.tlscert or str(cert_dir / "cert.pem")
    key = globals_.tlskey or str(cert_dir / "key.pem")
    # Default cert/key files are dropped when missing; explicit ones are kept (and fail).
    if globals_.tlscert is None and not os.path.exists(cert):
        cert = None
    if globals_.tlskey is None and not os.path.exists(key):
        key = None
    return TLSConfig(ca=ca if verify else None, cert=cert, key=key, verify=bool(verify))


def _default_endpoint(globals_: GlobalOptions, source: str) -> Endpoint:
    if len(globals_.hosts) > 1:
        raise errors.UsageError("specify only one -H", hint="give a single --host URL")
    tls = _flag_tls(globals_)
    raw = globals_.hosts[0] if globals_.hosts else os.environ.get("DOCKER_HOST", "")
    host = normalize_host(raw, tls is not None)
    if not host.startswith("tcp://"):
        tls = None  # TLS only matters for TCP connections
    return Endpoint(
        name=DEFAULT_CONTEXT,
        host=host,
        tls=tls,
        source=source,
        description="Current DOCKER_HOST based configuration",
    )


# ---- context store ---------------------------------------------------------------------


def context_dir_name(name: str) -> str:
    """The store's directory name for a context: hex sha256 of its name."""
    return hashlib.sha256(name.encode()).hexdigest()


def _store_root(globals_: GlobalOptions) -> Path:
    return config_dir(globals_) / "contexts"


def _endpoint_from_meta(root: Path, meta: dict[str, object], source: str) -> Endpoint:
    name = str(meta.get("Name", ""))
    endpoints = meta.get("Endpoints") or {}
    docker_ep = endpoints.get("docker") if isinstance(endpoints, dict) else None
    if not isinstance(docker_ep, dict):
        raise errors.HmigrateError(
            f"context '{name}' has no docker endpoint",
            hint=f"recreate it: docker context create {name} --docker host=URL",
        )
    raw_host = str(docker_ep.get("Host") or "")
    skip_verify = bool(docker_ep.get("SkipTLSVerify", False))
    tls_dir = root / "tls" / context_dir_name(name) / "docker"
    files = {f: tls_dir / f"{f}.pem" for f in ("ca", "cert", "key")}
    present = {f: str(p) for f, p in files.items() if p.is_file()}
    tls: TLSConfig | None = None
    # As in the CLI's context loader: TLS when the context has TLS data or skips verify.
    if present or skip_verify:
        tls = TLSConfig(
            ca=present.get("ca"),
            cert=present.get("cert"),
            key=present.get("key"),
            verify=not skip_verify,
        )
    host = normalize_host(raw_host, tls is not None)
    if not host.startswith("tcp://"):
        tls = None
    metadata = meta.get("Metadata") or {}
    description = ""
    if isinstance(metadata, dict):
        description = str(metadata.get("Description") or "")
    return Endpoint(name=name, host=host, tls=tls, source=source, description=description)


def _read_meta(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_context(name: str, globals_: GlobalOptions, source: str) -> Endpoint:
    """The endpoint of a named context; "default" is built from flags/env."""
    if name == DEFAULT_CONTEXT:
        return _default_endpoint(globals_, source)
    root = _store_root(globals_)
    meta = _read_meta(root / "meta" / context_dir_name(name) / "meta.json")
    if meta is None or meta.get("Name") != name:
        raise errors.UnknownContext(f"context '{name}' not found: run `docker context ls`")
    return _endpoint_from_meta(root, meta, source)


def resolve_source(globals_: GlobalOptions) -> Endpoint:
    """The host the CLI itself would talk to (the container's current host)."""
    name, source = current_context_name(globals_)
    if name == DEFAULT_CONTEXT:
        return _default_endpoint(globals_, source)
    return load_context(name, globals_, source)


def resolve_target(name_or_url: str, globals_: GlobalOptions) -> Endpoint:
    """A target given by --to: a context name, or a daemon URL (tcp://, unix://, ssh://).

    URLs with tcp:// use the TLS options of the --tls* flags/env, like `docker -H URL`.
    """
    value = name_or_url.strip()
    if not value:
        raise errors.UsageError("empty target", hint="pass --to CONTEXT or --to tcp://HOST:PORT")
    if "://" in value:
        tls = _flag_tls(globals_)
        host = normalize_host(value, tls is not None)
        if not host.startswith("tcp://"):
            tls = None
        return Endpoint(name=value, host=host, tls=tls, source="URL")
    if value == DEFAULT_CONTEXT:
        return _default_endpoint(globals_, "context name")
    return load_context(value, globals_, "context name")


def list_contexts(globals_: GlobalOptions) -> list[Endpoint]:
    """All contexts, "default" first then by name, like `docker context ls`."""
    out = [_default_endpoint(globals_, "default")]
    root = _store_root(globals_)
    meta_root = root / "meta"
    found: list[Endpoint] = []
    if meta_root.is_dir():
        for entry in meta_root.iterdir():
            meta = _read_meta(entry / "meta.json")
            if not meta or not meta.get("Name") or meta.get("Name") == DEFAULT_CONTEXT:
                continue
            try:
                found.append(_endpoint_from_meta(root, meta, "context store"))
            except errors.HmigrateError:
                continue  # a broken context must not hide the others
    out.extend(sorted(found, key=lambda e: e.name))
    return out


# ---- connecting ------------------------------------------------------------------------


def connect(endpoint: Endpoint, timeout: float = DEFAULT_TIMEOUT) -> docker.DockerClient:
    """A docker SDK client for the endpoint, API version negotiated with the daemon.

    `timeout` (seconds) applies to each engine call; reaching the daemon is given at most
    CONNECT_TIMEOUT.

    ssh:// runs the system `ssh` client with `docker system dial-stdio` on the remote host,
    exactly as the docker CLI does (so ~/.ssh/config applies); see SSHStdioProxy.
    Raises HostUnreachable when the daemon does not answer.
    """
    import docker
    import docker.errors
    import docker.tls
    import requests.exceptions

    from docker_hmigrate.engine import (
        EngineClient,
        raise_unreachable_as_api_errors,
        share_one_connection_pool,
    )

    tls_cfg: docker.tls.TLSConfig | bool = False
    if endpoint.tls is not None:
        t = endpoint.tls
        client_cert = (t.cert, t.key) if t.cert and t.key else None
        verify: bool | str = (t.ca or True) if t.verify else False
        try:
            tls_cfg = docker.tls.TLSConfig(client_cert=client_cert, verify=verify)
        except docker.errors.TLSParameterError as exc:
            raise errors.HostUnreachable(
                f"bad TLS settings for {endpoint.name} ({endpoint.host}): {exc}",
                hint="check the --tlscacert/--tlscert/--tlskey files or the context's TLS data",
            ) from exc
    base_url = endpoint.host
    proxy: SSHStdioProxy | None = None
    if endpoint.host.startswith("ssh://"):
        import atexit

        proxy = SSHStdioProxy(endpoint.host)
        atexit.register(proxy.close)  # clients the command never closes: ssh and its folder
        base_url = "unix://" + proxy.path
    try:
        client = EngineClient(
            base_url=base_url,
            version="auto",
            timeout=int(min(timeout, CONNECT_TIMEOUT)),
            tls=tls_cfg,
        )
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        reason = _short_reason(exc)
        if proxy is not None:
            reason = proxy.failure() or reason
            proxy.close()
        raise errors.HostUnreachable(
            f"cannot reach the Docker daemon of '{endpoint.name}' at {endpoint.host}: {reason}",
            hint=(
                f"check that dockerd runs there and that `docker --context {endpoint.name} "
                "version` works"
                if endpoint.source != "URL" and endpoint.name != DEFAULT_CONTEXT
                else f"check that dockerd listens there: `docker -H {endpoint.host} version`"
            ),
        ) from exc
    client.api.timeout = int(timeout)
    raise_unreachable_as_api_errors(client.api, endpoint.host)
    share_one_connection_pool(client.api)
    if proxy is not None:
        # Keep the proxy alive as long as the client; close both together.
        client._hmigrate_ssh_proxy = proxy  # type: ignore[attr-defined]
        original_close = client.close

        def close() -> None:
            original_close()
            proxy.close()

        client.close = close  # type: ignore[method-assign]
    return client


def ssh_command(url: str) -> list[str]:
    """The ssh command line the docker CLI (28) runs for an ssh:// host.

    ssh://[user@]host[:port][/socket/path] ->
    ssh -o ConnectTimeout=30 -T [-l user] [-p port] -- host docker [--host unix://PATH]
        system dial-stdio
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise errors.UsageError(f"invalid ssh URL {url!r}", hint="use ssh://[USER@]HOST[:PORT]")
    if parts.password is not None:
        raise errors.UsageError(f"invalid ssh URL {url!r}: plain-text password is not supported")
    args = ["ssh", "-o ConnectTimeout=30", "-T"]
    if parts.username:
        args += ["-l", parts.username]
    if parts.port:
        args += ["-p", str(parts.port)]
    args += ["--", parts.hostname, "docker"]
    if parts.path.strip("/"):
        args += ["--host", "unix://" + parts.path]
    return args + ["system", "dial-stdio"]


class SSHStdioProxy:
    """A private unix socket whose every connection is piped through
    `ssh HOST docker system dial-stdio`, the way the docker CLI reaches ssh:// hosts.

    This needs only the system ssh client (and its ~/.ssh/config, agent, known_hosts),
    not paramiko. Each HTTP connection of the docker SDK gets its own ssh process; so
    that a connection costs a channel rather than a handshake, one master connection
    (OpenSSH's ControlMaster, socket in a private 0700 folder) carries them all, and a
    few channels are opened ahead (SPARES) so that a connection made while the container
    is frozen finds its remote `docker system dial-stdio` already running.
    """

    SPARES = 4
    MASTER_WAIT = 15.0  # seconds a master may take to log in before channels stop waiting

    def __init__(self, url: str) -> None:
        import shutil
        import socket
        import tempfile
        import threading

        base = ssh_command(url)
        if shutil.which(base[0]) is None:
            raise errors.HostUnreachable(
                f"cannot reach {url}: no `ssh` client on PATH",
                hint="install an OpenSSH client (Debian: apt-get install openssh-client)",
            )
        self._dir = tempfile.mkdtemp(prefix="hmigrate-ssh-")
        self.path = os.path.join(self._dir, "docker.sock")
        self.control = os.path.join(self._dir, "master")
        mux = ["-o", f"ControlPath={self.control}"]
        # A channel uses the master when it is up and logs in by itself otherwise.
        self.argv = [base[0], *mux, "-o", "ControlMaster=no", *base[1:]]
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(16)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._spares: list[subprocess.Popen[bytes]] = []
        self._stderr: list[bytes] = []
        self._collectors: list[threading.Thread] = []  # readers of each ssh's stderr
        self._closed = False
        self._lock = threading.Lock()
        self._master = self._start_master(base, mux)
        threading.Thread(target=self._accept_loop, name="hmigrate-ssh", daemon=True).start()
        if self._master is not None:
            threading.Thread(target=self._fill_spares_when_ready, daemon=True).start()

    def _start_master(self, base: list[str], mux: list[str]) -> subprocess.Popen[bytes] | None:
        """`ssh -M -N`: logs in once and stays, without a remote command, until closed."""
        host_at = base.index("--")
        argv = [base[0], *mux, "-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N",
                *base[1:host_at + 2]]
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_die_with_parent())
        except OSError:
            return None  # each channel logs in by itself; its own error says why

    def _fill_spares_when_ready(self) -> None:
        from docker_hmigrate.polling import poll

        def master_state() -> bool | None:  # True: up; False: gone; None: logging in
            if os.path.exists(self.control):
                return True
            if self._closed or self._master is None or self._master.poll() is not None:
                return False
            return None

        if poll(master_state, timeout=self.MASTER_WAIT, interval=0.02):
            self._refill()

    def _refill(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._spares = [p for p in self._spares if p.poll() is None]
            missing = self.SPARES - len(self._spares)
        for _ in range(missing):
            proc = self._spawn()
            if proc is None:
                return
            with self._lock:
                if self._closed:
                    proc.terminate()
                    return
                self._spares.append(proc)

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,  # Ctrl-C must not kill the transport mid-rollback
            )
        except OSError as exc:
            self._stderr.append(str(exc).encode())
            return None
        with self._lock:
            self._procs.append(proc)
        return proc

    def _take(self) -> subprocess.Popen[bytes] | None:
        """A channel opened ahead if one is alive, else a new one."""
        import threading

        with self._lock:
            while self._spares:
                proc = self._spares.pop(0)
                if proc.poll() is None:
                    threading.Thread(target=self._refill, daemon=True).start()
                    return proc
        return self._spawn()

    def _accept_loop(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        import threading

        proc = self._take()
        if proc is None:
            conn.close()
            return
        assert proc.stdin and proc.stdout and proc.stderr

        def upstream() -> None:
            try:
                while data := conn.recv(65536):
                    proc.stdin.write(data)  # type: ignore[union-attr]
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # type: ignore[union-attr]

        def collect_stderr() -> None:
            data = proc.stderr.read()  # type: ignore[union-attr]
            if data:
                self._stderr.append(data)

        threading.Thread(target=upstream, daemon=True).start()
        collector = threading.Thread(target=collect_stderr, daemon=True)
        collector.start()
        with self._lock:
            self._collectors.append(collector)
        try:
            while data := os.read(proc.stdout.fileno(), 65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            with contextlib.suppress(OSError):
                proc.stdout.close()
            if proc.poll() is None:
                proc.terminate()

    def failure(self) -> str:
        """ssh's own error output (e.g. permission denied), if any."""
        # The connection may fail before ssh's stderr has been read: wait for the readers
        # (they end when ssh exits), briefly.
        with self._lock:
            collectors = list(self._collectors)
        for collector in collectors:
            collector.join(timeout=2)
        text = b"".join(self._stderr).decode(errors="replace").strip()
        return text.splitlines()[-1] if text else ""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            procs = [*self._procs, *([self._master] if self._master else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        if self._master is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._master.wait(timeout=5)  # it removes its control socket
        for leftover in (self.path, self.control):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


def _die_with_parent():  # noqa: ANN202 - a preexec_fn or None
    """For a helper process that must not outlive the plugin (killed with -9 included):
    the kernel sends it SIGTERM when the thread that started it ends, so only when that
    thread is the main one."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def arm() -> None:
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)

    return arm


def _short_reason(exc: BaseException) -> str:
    """The most telling part of a connection error, on one line."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = " ".join(repr(e) for e in chain) + " " + str(exc)
    known = [
        ("FileNotFoundError", "socket not found (is dockerd running?)"),
        ("PermissionError", "permission denied (are you in the docker group?)"),
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Name or service not known", "unknown host name"),
        ("No route to host", "no route to host"),
        ("CERTIFICATE_VERIFY_FAILED", "TLS certificate verification failed"),
        ("SSLError", "TLS handshake failed"),
    ]
    for needle, reason in known:
        if needle in text:
            return reason
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return line[:300]
