"""The typer app, error handling, Reporter, install and shell-init."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from docker_hmigrate import errors, hosts
from docker_hmigrate.cli import app as cli
from docker_hmigrate.cli.commands import install
from docker_hmigrate.output import Reporter, render_error

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_docker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH",
                "DOCKER_TLS", "DOCKER_CLI_PLUGIN_SOCKET"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    return home


# ---- errors ------------------------------------------------------------------------------


def test_exit_codes_distinct_and_documented() -> None:
    for code, classes in errors.EXIT_CODES.items():
        for cls in classes:
            assert cls("x").exit_code == code
    doc = (REPO / "docs" / "plugin.md").read_text()
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`(\w+)`", doc, re.M)
    documented = {(int(code), name) for code, name in rows}
    expected = {(code, cls.__name__) for code, cs in errors.EXIT_CODES.items() for cls in cs}
    assert documented == expected


def test_error_hint_override() -> None:
    e = errors.UnknownContainer("no such container: web", hint="try `docker ps -a`")
    assert (e.message, e.hint, e.exit_code) == ("no such container: web", "try `docker ps -a`", 3)
    assert errors.HmigrateError("x", exit_code=42).exit_code == 42
    buf = io.StringIO()
    render_error(e, buf)
    assert buf.getvalue() == "error: no such container: web\nhint: try `docker ps -a`\n"


# ---- run(): top-level handling ------------------------------------------------------------


def test_unknown_context_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["version"], {"context": "ghost"}) == 3
    err = capsys.readouterr().err
    assert "error: context 'ghost' not found: run `docker context ls`" in err
    assert "hint: " in err


def test_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    # docker's (and buildx's) code and two lines for a bad flag
    assert cli.run(["version", "--bogus"]) == 125
    assert capsys.readouterr().err == ("unknown flag: --bogus\n"
                                       "See 'docker hmigrate version --help'.\n")


def test_unexpected_exception_is_one_line(monkeypatch, capsys) -> None:
    def boom(_g: hosts.GlobalOptions) -> hosts.Endpoint:
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(hosts, "resolve_source", boom)
    assert cli.run(["version"]) == 1
    err = capsys.readouterr().err
    assert "error: unexpected RuntimeError: kaboom\n" in err
    assert "rerun with -D" in err
    assert "Traceback" not in err
    # With -D (before or after hmigrate) the traceback is shown.
    assert cli.run(["version"], {"debug": True}) == 1
    assert "Traceback" in capsys.readouterr().err
    assert cli.run(["-D", "version"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_keyboard_interrupt_130(monkeypatch, capsys) -> None:
    def interrupted(_g: hosts.GlobalOptions) -> hosts.Endpoint:
        raise KeyboardInterrupt

    monkeypatch.setattr(hosts, "resolve_source", interrupted)
    assert cli.run(["version"]) == 130
    assert "error: interrupted" in capsys.readouterr().err


def test_globals_after_hmigrate_via_typer(monkeypatch) -> None:
    seen: list[hosts.GlobalOptions] = []

    def capture(g: hosts.GlobalOptions) -> hosts.Endpoint:
        seen.append(g)
        raise errors.HostUnreachable("down")

    monkeypatch.setattr(hosts, "resolve_source", capture)
    code = cli.run(["--context", "b", "--tlsverify", "-l", "error", "version"], {"debug": True})
    assert code == 4
    g = seen[0]
    assert (g.context, g.tlsverify, g.log_level, g.debug) == ("b", True, "error", True)


def test_bad_log_level(capsys) -> None:
    assert cli.run(["-l", "loud", "version", "--client"]) == 125
    assert "unable to parse logging level" in capsys.readouterr().err


def test_version_client_json(capsys) -> None:
    assert cli.run(["version", "--client", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["plugin"]["version"] == "0.1.0"


def test_every_command_family_is_registered(capsys) -> None:
    """The families of cli/commands/ are all on the app, each command with docker's help."""
    assert cli.run(["--help"]) == 0
    listed = capsys.readouterr().out.split("Commands:\n")[1].split("\n\n")[0]
    names = [line.split()[0] for line in listed.splitlines() if line.startswith("  ")
             and not line.startswith("   ")]
    assert names == ["build", "check", "checkpoint", "help", "install", "migrate", "recode",
                     "recover",
                     "restore", "shell-init", "version"]


# ---- Reporter ----------------------------------------------------------------------------


def test_reporter_plain_lines_and_summary() -> None:
    err, out = io.StringIO(), io.StringIO()
    rep = Reporter(err=err, out=out, tty=False)
    with rep.phase("validate"):
        pass
    with pytest.raises(errors.CriuError), rep.phase("checkpoint", detail="web"):
        raise errors.CriuError("criu dump failed")
    rep.summary({"container": "web", "downtime_s": 0.1234, "hosts": ["a", "b"]})
    text = err.getvalue()
    assert "==> validate\n    done in " in text
    assert "==> checkpoint (web)\n    FAILED in " in text
    assert out.getvalue().splitlines() == [
        "Summary:",
        "  container   web",
        "  downtime_s  0.123",
        "  hosts       a, b",
    ]
    assert [p.status for p in rep.phases] == ["ok", "failed"]
    assert rep.phases[1].error == "criu dump failed"


def test_reporter_json_mode() -> None:
    err, out = io.StringIO(), io.StringIO()
    rep = Reporter(json_mode=True, err=err, out=out, tty=False)
    with rep.phase("transfer") as ph:
        ph.update("12 MiB")
    rep.info("quiet in json mode")
    rep.set("downtime_seconds", 0.5)
    rep.summary({"downtime": "0.500 s"})  # display only: never in the document
    assert out.getvalue() == "" and err.getvalue() == ""
    rep.finish()
    rep.finish()  # only once
    doc = json.loads(out.getvalue())
    assert doc["ok"] is True and doc["schema"] == "hmigrate/v1"
    assert doc["phases"][0]["name"] == "transfer" and doc["phases"][0]["detail"] == "12 MiB"
    assert doc["downtime_seconds"] == 0.5 and "downtime" not in doc
    assert doc["messages"] == [{"level": "info", "message": "quiet in json mode"}]


def test_reporter_fail_json() -> None:
    err, out = io.StringIO(), io.StringIO()
    rep = Reporter(json_mode=True, err=err, out=out, tty=False)
    rep.fail(errors.RestoreFailed("restore failed on hm-b"))
    doc = json.loads(out.getvalue())
    assert doc["ok"] is False and doc["error"]["exit_code"] == 11
    assert err.getvalue().startswith("error: restore failed on hm-b\nhint: ")


def test_reporter_tty_renders(monkeypatch) -> None:
    err, out = io.StringIO(), io.StringIO()
    rep = Reporter(err=err, out=out, tty=True)
    with rep.phase("restore"):
        pass
    rep.summary({"downtime": "120 ms"}, title="Migrated web")
    assert "restore" in err.getvalue() and "✓" in err.getvalue()
    assert "Migrated web" in out.getvalue() and "120 ms" in out.getvalue()


# ---- install -----------------------------------------------------------------------------


def test_install_idempotent(clean_docker_env: Path, capsys) -> None:
    assert cli.run(["install", "--user"]) == 0
    dest = clean_docker_env / ".docker" / "cli-plugins" / "docker-hmigrate"
    assert dest.is_symlink() or dest.is_file()
    out = capsys.readouterr().out
    assert f"installed: {dest}" in out
    assert "note: docker finds it only while its config dir is" in out  # explained
    assert cli.run(["install", "--user"]) == 0
    assert "already installed" in capsys.readouterr().out


@pytest.mark.parametrize("root", [True, False])
def test_install_default_is_where_docker_always_looks(clean_docker_env: Path, tmp_path: Path,
                                                      monkeypatch, capsys, root: bool) -> None:
    """As root, the default is the system plugin folder (found with any --config), as
    buildx; otherwise the per-user folder, with the explanation."""
    system = tmp_path / "system-cli-plugins"
    monkeypatch.setattr(install, "SYSTEM_PLUGIN_DIR", str(system))
    monkeypatch.setattr(install.os, "geteuid", lambda: 0 if root else 1000)
    assert cli.run(["install"]) == 0
    out = capsys.readouterr().out
    user_dest = clean_docker_env / ".docker" / "cli-plugins" / "docker-hmigrate"
    assert (system / "docker-hmigrate").exists() is root
    assert user_dest.exists() is not root
    assert ("note: docker finds it only" in out) is not root
    assert cli.run(["install", "--user", "--system"]) == 125


def test_install_copy_and_dir(tmp_path: Path, capsys) -> None:
    target = tmp_path / "plugins"
    assert cli.run(["install", "--dir", str(target), "--copy"]) == 0
    dest = target / "docker-hmigrate"
    assert dest.is_file() and not dest.is_symlink() and os.access(dest, os.X_OK)
    assert cli.run(["install", "--dir", str(target), "--copy"]) == 0
    assert "already installed" in capsys.readouterr().out


def test_install_permission_denied(tmp_path: Path, capsys) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert cli.run(["install", "--dir", str(ro / "sub")]) == 1
    assert "permission denied" in capsys.readouterr().err


# ---- shell-init --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("docker container hmigrate migrate web --to hm-b", "hmigrate migrate web --to hm-b"),
        ("docker --context hm-a container hmigrate migrate web",
         "--context hm-a hmigrate migrate web"),
        ("docker -H tcp://h:1 -D container hmigrate check 'a b'",
         "-H tcp://h:1 -D hmigrate check a b"),
        ("docker container ls -a", "container ls -a"),
        ("docker ps", "ps"),
        ("docker", ""),
        ("docker run --rm alpine container hmigrate", "run --rm alpine container hmigrate"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_init(tmp_path: Path, capsys, typed: str, expected: str, shell: str) -> None:
    if not shutil.which(shell):
        pytest.skip(f"{shell} not installed")
    assert cli.run(["shell-init", shell]) == 0
    script = capsys.readouterr().out
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "args.log"
    fake = bindir / "docker"
    # Records each argument on its own line, to check quoting is preserved.
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {log}\n')
    fake.chmod(0o755)
    (tmp_path / "init.sh").write_text(script)
    subprocess.run(
        [shell, "--norc" if shell == "bash" else "-f", "-c", f". {tmp_path}/init.sh; {typed}"],
        env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
        check=True, timeout=30,
    )  # fmt: skip
    got = log.read_text().splitlines()
    want = expected.split() if "'" not in typed else expected.rsplit(" ", 2)[0].split() + ["a b"]
    assert got == want


def test_shell_init_rejects_unknown_shell(capsys) -> None:
    assert cli.run(["shell-init", "fish"]) == 125
    assert "unsupported shell" in capsys.readouterr().err
