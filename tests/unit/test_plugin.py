"""The docker CLI plugin protocol: metadata, argv handling, the CLI socket, real docker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from docker_hmigrate.cli import flags, plugin
from docker_hmigrate.cli.flags import ArgError, parse_global_flags
from docker_hmigrate.cli.plugin import split_argv
from tests.support.dockercli import DOCKER, clean_env, needs_docker_cli, plugin_executable

REPO = Path(__file__).resolve().parents[2]


# ---- metadata --------------------------------------------------------------------------


def test_metadata_json() -> None:
    out = subprocess.run(
        [str(plugin_executable()), "docker-cli-plugin-metadata"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    meta = json.loads(out.stdout)
    assert meta["SchemaVersion"] == "0.1.0"
    assert meta["Vendor"] == "docker-hmigrate"
    assert meta["Version"] == __import__("docker_hmigrate").__version__
    assert meta["ShortDescription"] == (
        "Live-migrate running containers between Docker hosts (same or different ISA)"
    )
    assert meta["URL"].startswith("https://")
    assert out.stderr == ""


def test_metadata_file_in_sync() -> None:
    on_disk = json.loads((REPO / "plugin-metadata" / "metadata.json").read_text())
    assert on_disk == plugin.METADATA


def test_metadata_via_python_m() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "docker_hmigrate", "docker-cli-plugin-metadata"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert json.loads(out.stdout) == plugin.METADATA


def test_metadata_imports_nothing_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", str(plugin_executable()),
         "docker-cli-plugin-metadata"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    for heavy in ("docker", "typer", "rich", "click", "requests", "docker_hmigrate.cli.app",
                  "docker_hmigrate.hosts"):
        assert heavy not in imported, f"{heavy} imported on the metadata path"


# ---- argv --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "opts", "rest"),
    [
        (["hmigrate", "migrate", "web"], {}, ["hmigrate", "migrate", "web"]),
        (["--context", "b", "hmigrate", "x"], {"context": "b"}, ["hmigrate", "x"]),
        (["--context=b", "hmigrate"], {"context": "b"}, ["hmigrate"]),
        (["-c", "b", "hmigrate"], {"context": "b"}, ["hmigrate"]),
        (["-cb", "hmigrate"], {"context": "b"}, ["hmigrate"]),
        (["-c=b", "hmigrate"], {"context": "b"}, ["hmigrate"]),
        (["-H", "tcp://h:1", "--host=unix:///s", "hmigrate"],
         {"hosts": ["tcp://h:1", "unix:///s"]}, ["hmigrate"]),
        (["--tls", "--tlsverify=false", "hmigrate"], {"tls": True, "tlsverify": False},
         ["hmigrate"]),
        (["--tlscacert", "/ca", "--tlscert", "/c", "--tlskey", "/k", "hmigrate"],
         {"tlscacert": "/ca", "tlscert": "/c", "tlskey": "/k"}, ["hmigrate"]),
        (["--config", "/cfg", "-D", "-l", "debug", "hmigrate"],
         {"config_dir": "/cfg", "debug": True, "log_level": "debug"}, ["hmigrate"]),
        (["-Dl", "warn", "hmigrate"], {"debug": True, "log_level": "warn"}, ["hmigrate"]),
        (["--debug=false", "hmigrate"], {"debug": False}, ["hmigrate"]),
        (["--help"], {}, ["--help"]),
        (["-D", "--bogus", "x"], {"debug": True}, ["--bogus", "x"]),
        (["-Dx", "y"], {}, ["-Dx", "y"]),
    ],
)  # fmt: skip
def test_parse_global_flags(argv: list[str], opts: dict, rest: list[str]) -> None:
    assert parse_global_flags(argv) == (opts, rest)


@pytest.mark.parametrize("argv", [["--context"], ["-H"], ["--tls=maybe", "x"]])
def test_parse_global_flags_errors(argv: list[str]) -> None:
    with pytest.raises(ArgError):
        parse_global_flags(argv)


@pytest.mark.parametrize(
    ("argv", "opts", "rest", "completing"),
    [
        # As run by the docker CLI: its own argv after `docker`.
        (["--context", "a", "hmigrate", "migrate", "web", "--to", "b"], {"context": "a"},
         ["migrate", "web", "--to", "b"], False),
        # Global flags after the plugin name too; later ones win.
        (["-c", "a", "hmigrate", "-c", "b", "-D", "version"], {"context": "b", "debug": True},
         ["version"], False),
        (["hmigrate", "--tlsverify", "version", "--to", "x"], {"tlsverify": True},
         ["version", "--to", "x"], False),
        # Direct use: `docker-hmigrate version`.
        (["version"], {}, ["version"], False),
        (["-H", "unix:///s", "version"], {"hosts": ["unix:///s"]}, ["version"], False),
        # `docker help hmigrate [cmd]`.
        (["help", "hmigrate"], {}, ["--help"], False),
        # Completion, cobra-style.
        (["__complete", "hmigrate", "migrate", ""], {}, ["migrate", ""], True),
    ],
)  # fmt: skip
def test_split_argv(argv, opts, rest, completing) -> None:
    assert split_argv(argv) == (opts, rest, completing)


def test_flags_given_twice_follow_one_rule() -> None:
    """Later flags win, a later -H replaces every earlier one, -D sticks: flags.merge, used
    for docker's argv, the app's own global options and completion alike."""
    first = {"context": "a", "debug": True, "hosts": ["tcp://x:1"], "log_level": "info"}
    later = {"context": "b", "debug": False, "hosts": ["unix:///s"]}
    assert flags.merge(first, later) == {"context": "b", "debug": True,
                                         "hosts": ["unix:///s"], "log_level": "info"}
    assert flags.merge({}, {"debug": True}) == {"debug": True}
    assert first["context"] == "a"  # neither input is changed


def test_bad_global_flag_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert plugin.main(["--context"]) == 125  # docker's code for a usage error
    assert capsys.readouterr().err == ("flag needs an argument: --context\n"
                                       "See 'docker hmigrate --help'.\n")


# ---- the docker CLI's socket -------------------------------------------------------------


class _HangingDaemon:
    """A TCP listener that accepts and never answers: keeps a command busy."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            while True:
                self.conns.append(self.sock.accept()[0])
        except OSError:
            pass

    def wait_connected(self, timeout: float = 30) -> None:
        """Until the plugin has connected (it has started and installed its handlers):
        a fixed sleep raced with a slow start on a loaded machine."""
        deadline = time.monotonic() + timeout
        while not self.conns and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


def test_cli_socket_eof_stops_plugin(tmp_path: Path) -> None:
    """EOF on DOCKER_CLI_PLUGIN_SOCKET (abstract '@name') makes a busy command exit 130."""
    hang = _HangingDaemon()
    name = f"hmigrate_test_{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(1)
    server.settimeout(20)
    try:
        proc = subprocess.Popen(
            [str(plugin_executable()), "-H", f"tcp://127.0.0.1:{hang.port}", "hmigrate",
             "version"],
            env=clean_env(DOCKER_CLI_PLUGIN_SOCKET="@" + name, DOCKER_CONFIG=str(tmp_path)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        conn, _ = server.accept()  # the plugin connects at start-up
        time.sleep(0.5)  # let it block on the daemon
        assert proc.poll() is None
        t0 = time.monotonic()
        conn.close()  # what the CLI does on SIGINT/SIGTERM
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 3
        assert proc.returncode == 130
        assert "error: interrupted" in err
        assert "Traceback" not in err
    finally:
        server.close()
        hang.close()


def test_sigint_exits_130(tmp_path: Path) -> None:
    hang = _HangingDaemon()
    try:
        proc = subprocess.Popen(
            [str(plugin_executable()), "-H", f"tcp://127.0.0.1:{hang.port}", "hmigrate",
             "version", "--json"],
            env=clean_env(DOCKER_CONFIG=str(tmp_path)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        hang.wait_connected()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 130
        doc = json.loads(out)
        assert doc["ok"] is False and doc["error"]["exit_code"] == 130
    finally:
        hang.close()


# ---- through the real docker CLI ---------------------------------------------------------


@pytest.fixture
def docker_home(tmp_path: Path) -> dict[str, str]:
    """A HOME/DOCKER_CONFIG with the plugin installed by `docker-hmigrate install`."""
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(HOME=str(home), DOCKER_CONFIG=str(home / ".docker"))
    out = subprocess.run(
        [str(plugin_executable()), "install", "--user"], env=env, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (home / ".docker" / "cli-plugins" / "docker-hmigrate").exists()
    return env


def _run_docker(env: dict[str, str], *args: str, timeout: float = 60):
    return subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True, timeout=timeout)


@needs_docker_cli
def test_docker_lists_plugin(docker_home: dict[str, str]) -> None:
    out = _run_docker(docker_home, "--help")
    assert "hmigrate*" in out.stdout
    assert "Live-migrate running containers" in out.stdout


@needs_docker_cli
def test_docker_hmigrate_version(docker_home: dict[str, str], tmp_path: Path) -> None:
    out = _run_docker(docker_home, "hmigrate", "version", "--client")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("docker-hmigrate 0.1.0")
    # With a daemon that is not there: the plugin line, then error + hint, exit 4.
    out = _run_docker(docker_home, "-H", f"unix://{tmp_path}/none.sock", "hmigrate", "version")
    assert out.returncode == 4
    assert out.stdout.startswith("docker-hmigrate 0.1.0")
    assert f"error: cannot reach the Docker daemon of 'default' at unix://{tmp_path}" in out.stderr
    assert "hint: " in out.stderr
    assert "Traceback" not in out.stderr


@needs_docker_cli
def test_docker_unknown_context(docker_home: dict[str, str]) -> None:
    out = _run_docker(docker_home, "--context", "nope", "hmigrate", "version")
    assert out.returncode == 3
    assert "error: context 'nope' not found: run `docker context ls`" in out.stderr


@needs_docker_cli
def test_docker_help_and_completion(docker_home: dict[str, str]) -> None:
    out = _run_docker(docker_home, "help", "hmigrate")
    assert out.stdout.startswith("Usage:  docker hmigrate [OPTIONS] COMMAND\n")
    assert "docker hmigrate migrate web --to hm-b" in out.stdout
    out = _run_docker(docker_home, "hmigrate", "--help")
    assert out.stdout.startswith("Usage:  docker hmigrate [OPTIONS] COMMAND\n")
    out = _run_docker(docker_home, "hmigrate", "help", "migrate")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage:  docker hmigrate migrate [OPTIONS] CONTAINER\n")
    out = _run_docker(docker_home, "hmigrate", "migrate")
    assert (out.returncode, out.stderr) == (125, "docker: 'docker hmigrate migrate' requires "
                                            "1 argument\nSee 'docker hmigrate migrate --help'.\n")
    # completion through the real CLI: commands with descriptions, files for a path
    out = _run_docker(docker_home, "__complete", "hmigrate", "")
    lines = out.stdout.splitlines()
    assert {"version", "install", "shell-init"} <= {line.split("\t")[0] for line in lines}
    assert "migrate\tLive-migrate a running container to another Docker host." in lines
    assert lines[-1] == ":4"
    out = _run_docker(docker_home, "__complete", "hmigrate", "checkpoint", "web", "-o", "")
    assert out.stdout.splitlines()[-1] == ":0"


@needs_docker_cli
def test_docker_interrupt_via_cli(docker_home: dict[str, str]) -> None:
    """SIGINT to `docker` (stdout not a TTY) -> CLI closes the socket -> plugin exits 130."""
    hang = _HangingDaemon()
    try:
        proc = subprocess.Popen(
            [DOCKER, "-H", f"tcp://127.0.0.1:{hang.port}", "hmigrate", "version"],
            env=docker_home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        hang.wait_connected()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 130
        assert "error: interrupted" in err
    finally:
        hang.close()


@needs_docker_cli
def test_docker_passes_global_flags(docker_home: dict[str, str], tmp_path: Path) -> None:
    """--config and --context given to docker reach the plugin and select the context."""
    other = tmp_path / "other"
    env = dict(docker_home)
    out = subprocess.run(
        [str(plugin_executable()), "--config", str(other), "install", "--user"], env=env,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (other / "cli-plugins" / "docker-hmigrate").exists()
    sock = f"unix://{tmp_path}/ctx1.sock"
    out = _run_docker(env, "--config", str(other), "context", "create", "ctx1", "--docker",
                      f"host={sock}")  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = _run_docker(env, "--config", str(other), "--context", "ctx1", "-D", "hmigrate",
                      "version")  # fmt: skip
    assert out.returncode == 4, out.stderr
    assert f"'ctx1' at {sock}" in out.stderr
    # The same flags after `hmigrate`.
    out = _run_docker(env, "--config", str(other), "hmigrate", "--context", "ctx1", "version")
    assert out.returncode == 4, out.stderr
    assert f"'ctx1' at {sock}" in out.stderr
