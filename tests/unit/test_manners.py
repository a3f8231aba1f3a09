"""First-party plugin manners (issue 13): docker-style help and usage errors, the help
subcommand, completion through docker's `__complete` protocol, no typer installer,
install where docker always looks."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
from http.server import HTTPServer
from pathlib import Path

import pytest

from docker_hmigrate import errors, hosts
from docker_hmigrate.cli import app as cli
from docker_hmigrate.cli import completion
from tests.support.dockercli import DOCKER, clean_env, needs_docker_cli, plugin_executable
from tests.support.fakes import FakeDaemon


@pytest.fixture(autouse=True)
def clean_docker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH",
                "DOCKER_TLS", "DOCKER_CLI_PLUGIN_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    return home


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.run(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- usage errors: docker's two lines, docker's exit code ------------------------------


@pytest.mark.parametrize(("argv", "first"), [
    (["migrate"], "docker: 'docker hmigrate migrate' requires 1 argument"),
    (["migrate", "web"], 'required flag "--to" not set'),
    (["migrate", "web", "--to"], "flag needs an argument: --to"),
    (["migrate", "web", "--bogus"], "unknown flag: --bogus"),
    (["checkpoint", "web", "-x"], "unknown shorthand flag: 'x' in -x"),
    (["migrate", "web", "--to", "b", "--verify-seconds", "soon"],
     'invalid argument for "--verify-seconds" flag: '),
    (["migrate", "web", "extra", "--to", "b"],
     "docker: 'docker hmigrate migrate' accepts 1 argument, got more: extra"),
])
def test_usage_errors_in_docker_style(capsys, argv: list[str], first: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 125 == errors.UsageError.exit_code
    message, see = err.splitlines()
    assert message.startswith(first) and (message == first or first.endswith(": "))
    assert see == f"See 'docker hmigrate {argv[0]} --help'."
    assert out == ""


def test_unknown_command(capsys) -> None:
    code, _, err = run(capsys, "bogus")
    assert code == 125
    assert err == "docker: unknown command: docker hmigrate bogus\nSee 'docker hmigrate --help'.\n"


def test_usage_error_with_json_prints_the_document(capsys) -> None:
    """`migrate C --json` without --to: the error as JSON on stdout (it printed nothing)."""
    code, out, err = run(capsys, "migrate", "web", "--json")
    assert code == 125
    doc = json.loads(out)
    assert doc["schema"] == "hmigrate/v1" and doc["command"] == "migrate"
    assert doc["ok"] is False
    assert doc["error"]["class"] == "UsageError" and doc["error"]["exit_code"] == 125
    assert 'required flag "--to" not set' in err


# ---- help ----------------------------------------------------------------------------


def test_help_subcommand_equals_dash_dash_help(capsys) -> None:
    code, via_help, _ = run(capsys, "help", "migrate")
    assert code == 0
    code, via_flag, _ = run(capsys, "migrate", "--help")
    assert code == 0 and via_help == via_flag
    assert via_help.startswith("Usage:  docker hmigrate migrate [OPTIONS] CONTAINER\n")
    code, root, _ = run(capsys, "help")
    assert code == 0 and root.startswith("Usage:  docker hmigrate [OPTIONS] COMMAND\n")
    code, _, err = run(capsys, "help", "bogus")
    assert code == 125 and "unknown command: docker hmigrate bogus" in err


def test_help_pages_have_no_click_artifacts(capsys) -> None:
    for cmd in ("migrate", "check", "checkpoint", "restore", "recode", "version", "install",
                "shell-init", "help"):
        code, out, _ = run(capsys, cmd, "--help")
        assert code == 0, cmd
        usage = out.splitlines()[0]
        assert usage.startswith(f"Usage:  docker hmigrate {cmd}"), usage
        for artifact in ("{", "<str>", "<float>", "<path>", "[required]"):
            assert artifact not in out, (cmd, artifact)


def test_root_help_lists_full_descriptions(capsys) -> None:
    import typer
    from typer import _click as click

    code, out, _ = run(capsys, "--help")
    assert code == 0
    flat = " ".join(out.split())
    group = typer.main.get_command(cli.app)
    ctx = click.Context(group, info_name="hmigrate")
    for name in group.list_commands(ctx):
        first = " ".join(group.get_command(ctx, name).help.split("\n\n")[0].split())
        assert first in flat, (name, first)  # the whole first paragraph, never cut
    assert "..." not in out.split("Commands:")[1].split("Global options")[0]


def test_no_typer_completion_installer(capsys) -> None:
    """`--show-completion bash` printed `_DOCKER HMIGRATE_COMPLETE=...`, which broke
    docker's own completion once sourced."""
    code, out, err = run(capsys, "--show-completion", "bash")
    assert code == 125 and "unknown flag: --show-completion" in err
    assert "_COMPLETE" not in out
    code, out, _ = run(capsys, "--help")
    assert "completion" not in out


# ---- completion: the handler, as docker calls it -----------------------------------------


def complete(*args: str) -> list[str]:
    buf = io.StringIO()
    assert completion.answer(cli.app, list(args), buf) == 0
    return buf.getvalue().splitlines()


def test_complete_commands_with_descriptions() -> None:
    lines = complete("")
    assert lines[-1] == ":4"
    found = dict(line.split("\t", 1) for line in lines[:-1])
    assert {"migrate", "check", "checkpoint", "restore", "recode", "version", "help"} <= set(found)
    assert found["migrate"] == "Live-migrate a running container to another Docker host."
    assert complete("mi") == ["migrate\tLive-migrate a running container to another Docker host.",
                              ":4"]
    assert complete("help", "chec")[:-1] == [line for line in lines if line.startswith("check")]


def test_complete_flags_with_descriptions() -> None:
    lines = complete("migrate", "web", "--ke")
    assert lines == ["--keep-source\tLeave the stopped source container instead of removing it",
                     ":4"]


@pytest.mark.parametrize(("args", "directive"), [
    (("checkpoint", "web", "-o", ""), 0),          # a file to write: the shell's file names
    (("checkpoint", "web", "--output", "w"), 0),
    (("restore", "web", "-i", ""), 0),
    (("recode", ""), 16),                         # a checkpoint folder: folders only
    (("recode", "ck", "-p", ""), 16),
    (("recode", "ck", "-o", ""), 16),
    (("install", "--dir", ""), 16),
    (("--tlscacert", ""), 0),
    (("migrate", "web", "--name", ""), 4),        # free text: nothing to offer
    (("migrate", "web", "--hook-post-restore", ""), 4),
])
def test_complete_paths_where_a_path_is_expected(args: tuple[str, ...], directive: int) -> None:
    assert complete(*args)[-1] == f":{directive}"


def test_complete_contexts_for_to(clean_docker_env: Path) -> None:
    meta = clean_docker_env / ".docker" / "contexts" / "meta" / hosts.context_dir_name("hm-b")
    meta.mkdir(parents=True)
    ep = {"docker": {"Host": "tcp://x:1"}}
    (meta / "meta.json").write_text(json.dumps({"Name": "hm-b", "Endpoints": ep}))
    assert complete("migrate", "web", "--to", "hm") == ["hm-b\ttcp://x:1", ":4"]
    assert complete("migrate", "web", "--to=hm") == ["--to=hm-b\ttcp://x:1", ":4"]
    assert complete("check", "web", "--to", "") == [
        "default\tunix:///var/run/docker.sock", "hm-b\ttcp://x:1", ":4"]
    assert complete("recode", "ck", "--to-isa", "a") == ["aarch64\tArm 64-bit", ":4"]


class ContainersDaemon(FakeDaemon):
    """Lists a running and a stopped container."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?")[0].endswith("/containers/json"):
            body = json.dumps([
                {"Id": "c0ffee", "Names": ["/web"], "Image": "nginx", "State": "running",
                 "Status": "Up 2 minutes"},
                {"Id": "0ld", "Names": ["/old"], "Image": "nginx", "State": "exited",
                 "Status": "Exited (0) 1 minute ago"},
            ]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


def test_complete_containers_of_the_source(monkeypatch) -> None:
    server = HTTPServer(("127.0.0.1", 0), ContainersDaemon)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.server_port}")
        assert complete("migrate", "w") == ["web\tnginx (Up 2 minutes)", ":4"]
        assert complete("migrate", "x") == [":4"]
        assert complete("restore", "") == ["old\tnginx (Exited (0) 1 minute ago)", ":4"]
        # -H after `hmigrate` selects the source, as before it
        monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
        assert complete("-H", f"tcp://127.0.0.1:{server.server_port}", "check", "") == [
            "web\tnginx (Up 2 minutes)", ":4"]
    finally:
        server.shutdown()
    # Unreachable source: no candidates, no error, no file completion.
    assert complete("migrate", "") == [":4"]


# ---- install: found whatever --config says -----------------------------------------------


@needs_docker_cli
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare (a private mount namespace)")
def test_docker_finds_the_plugin_with_any_config(tmp_path: Path) -> None:
    """`docker --config /tmp/x hmigrate version` said "unknown command" after a per-user
    install. As root, `docker-hmigrate install` goes where docker always looks. Run in a
    private mount namespace with a tmpfs over /usr/local/lib, so the machine's own
    plugin folders are not touched."""
    other = tmp_path / "x"
    other.mkdir()
    system_dir = Path("/usr/local/lib/docker")
    existed = system_dir.exists()  # lab/test itself installs the plugin there
    script = (
        "set -e; mount --make-rprivate /; mount -t tmpfs tmpfs /usr/local/lib; "
        f"{plugin_executable()} install; "
        f"{DOCKER} --config {other} hmigrate version --client"
    )
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script],
                          env=clean_env(HOME=str(tmp_path)), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "installed: /usr/local/lib/docker/cli-plugins/docker-hmigrate" in proc.stdout
    assert "docker-hmigrate 0.1.0" in proc.stdout
    assert system_dir.exists() == existed  # nothing created outside the namespace


@pytest.mark.parametrize("where", ["missing/x.tar", "."])
def test_checkpoint_refuses_an_unwritable_output_before_freezing(capsys, tmp_path, monkeypatch,
                                                                 where: str) -> None:
    """`checkpoint C -o /nonexistent/x.tar` stopped the container, deleted the checkpoint
    and said "unexpected FileNotFoundError"."""
    from docker_hmigrate.cli.commands import blocks

    opened = []
    monkeypatch.setattr(blocks, "open_source", lambda ctx: opened.append(1))
    code, _, err = run(capsys, "checkpoint", "web", "-o", str(tmp_path / where))
    assert code == 125 and opened == []
    assert "error: cannot write the checkpoint to" in err and "unexpected" not in err


def test_reference_documents_every_command_and_flag() -> None:
    """docs/reference.md: a section per command with each of its flags."""
    import re

    import typer
    from typer import _click as click

    text = (Path(__file__).resolve().parents[2] / "docs" / "reference.md").read_text()
    sections = dict(re.findall(r"^## `docker hmigrate (\S+)`\n(.*?)(?=^## |\Z)", text,
                               re.S | re.M))
    group = typer.main.get_command(cli.app)
    ctx = click.Context(group, info_name="hmigrate")
    for name in group.list_commands(ctx):
        assert name in sections, f"docs/reference.md has no section for {name}"
        cmd = group.get_command(ctx, name)
        for p in cmd.get_params(ctx):
            for flag in getattr(p, "opts", []):
                if flag.startswith("--") and flag != "--help":
                    assert flag in sections[name], f"{name} {flag}: add it to docs/reference.md"
        assert "Exit codes:" in sections[name], name
