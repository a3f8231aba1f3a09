"""Entry point of the ``docker-hmigrate`` executable (a Docker CLI plugin).

How the docker CLI (28.x) runs a plugin, as observed with a probe plugin:

* discovery: ``docker-hmigrate docker-cli-plugin-metadata`` must print the metadata JSON;
  the CLI does this for every plugin on ``docker --help`` and before each run, so this
  path must stay fast: it imports nothing heavy (no docker/typer/rich/click).
* run: the CLI execs the plugin with *its own* argv unchanged, e.g.
  ``docker --context b -D hmigrate migrate web`` runs
  ``docker-hmigrate --context b -D hmigrate migrate web``; global flags are not turned into
  environment variables, so we parse them here (cli/flags.py). ``docker help hmigrate`` runs
  ``docker-hmigrate help hmigrate``.
* env: DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND (path of docker), DOCKER_CLI_PLUGIN_SOCKET
  (an abstract unix socket ``@docker_cli_<hex>``; the CLI closes it when it receives
  SIGINT/SIGTERM while its stdout is not a terminal, asking the plugin to stop),
  OTEL_RESOURCE_ATTRIBUTES; DOCKER_HOST/DOCKER_CONTEXT/DOCKER_CONFIG pass through as-is.
* completion: the CLI runs ``docker-hmigrate __complete hmigrate ARGS... INCOMPLETE`` and
  expects cobra's format: one candidate a line, then ``:<directive>``.
* the plugin's exit code becomes docker's exit code.
"""

from __future__ import annotations

import os
import sys

from docker_hmigrate import __version__
from docker_hmigrate.cli.flags import ArgError, merge, parse_global_flags

METADATA_SUBCOMMAND = "docker-cli-plugin-metadata"
PLUGIN_NAME = "hmigrate"
COMPLETE_SUBCOMMAND = "__complete"

METADATA: dict[str, str] = {
    "SchemaVersion": "0.1.0",
    "Vendor": "docker-hmigrate",
    "Version": __version__,
    "ShortDescription": (
        "Live-migrate running containers between Docker hosts (same or different ISA)"
    ),
    "URL": "https://github.com/docker-hmigrate/docker-hmigrate",
}


def split_argv(argv: list[str]) -> tuple[dict[str, object], list[str], bool]:
    """Split the plugin's argv (without argv[0]) into (docker globals, app args, completing).

    Handles ``[globals] hmigrate ARGS``, ``help hmigrate [CMD]``, ``__complete hmigrate ...``
    and direct use as ``docker-hmigrate ARGS``.
    """
    if argv[:1] == [COMPLETE_SUBCOMMAND]:
        rest = argv[1:]
        if rest[:1] == [PLUGIN_NAME]:
            rest = rest[1:]
        return {}, rest, True
    opts, rest = parse_global_flags(argv)
    if rest[:1] == [PLUGIN_NAME]:
        # docker's globals may also follow the plugin name: `hmigrate -c b migrate ...`
        after, rest = parse_global_flags(rest[1:])
        opts = merge(opts, after)
    elif rest[:2] == ["help", PLUGIN_NAME]:
        rest = rest[2:] + ["--help"]
    return opts, rest, False


def print_metadata() -> None:
    import json  # small, and only needed here

    sys.stdout.write(json.dumps(METADATA, indent=5) + "\n")


# ---- cooperation with the docker CLI process -------------------------------------------

def install_signal_handlers() -> None:
    """SIGINT/SIGTERM: see interrupts.py (duplicates merged, rollbacks shielded)."""
    from docker_hmigrate import interrupts

    interrupts.install()


def watch_cli_socket() -> None:
    """Connect to DOCKER_CLI_PLUGIN_SOCKET; EOF on it means the CLI wants us to stop.

    The CLI closes the socket when it gets SIGINT/SIGTERM and its stdout is not a TTY
    (on a TTY the kernel delivers the signal to us directly).
    """
    addr = os.environ.get("DOCKER_CLI_PLUGIN_SOCKET")
    if not addr:
        return
    import socket
    import threading

    # Go spells Linux abstract socket names with a leading '@'; the kernel wants NUL.
    path = "\0" + addr[1:] if addr.startswith("@") else addr
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    except OSError:
        return  # an older CLI or no socket: behave as a plain program

    main_ident = threading.main_thread().ident

    def wait_for_eof() -> None:
        import signal

        try:
            while sock.recv(64):
                pass
        except OSError:
            pass
        # Signal the main thread itself: this interrupts a blocking syscall there (EINTR)
        # so its handler runs now, not when the call eventually returns.
        if main_ident is not None:
            signal.pthread_kill(main_ident, signal.SIGTERM)

    threading.Thread(target=wait_for_eof, name="docker-cli-socket", daemon=True).start()
    # Keep a reference so the socket is not garbage collected while we run.
    globals()["_cli_socket"] = sock


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # Fast path: the docker CLI probes this on every `docker` invocation that lists plugins.
    if args[:1] == [METADATA_SUBCOMMAND]:
        print_metadata()
        return 0
    try:
        pre_globals, rest, completing = split_argv(args)
    except ArgError as exc:
        # docker's two lines and exit code for a usage error
        sys.stderr.write(f"{exc}\nSee 'docker hmigrate --help'.\n")
        return 125

    if completing:
        from docker_hmigrate.cli import app

        return app.complete(rest)
    # Before the (slow, on a busy host) imports: a Ctrl-C while they run ends the command
    # quietly with 130, nothing having been touched yet.
    install_signal_handlers()
    try:
        watch_cli_socket()  # early too: the CLI may close it while we import
        from docker_hmigrate.cli import app
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    return app.run(rest, pre_globals)


if __name__ == "__main__":
    sys.exit(main())
