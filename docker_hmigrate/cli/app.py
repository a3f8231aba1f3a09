"""The `docker hmigrate` command line: the typer app, docker's global options given after
`hmigrate`, and run(), which turns every outcome into docker's exit codes and messages.

Commands live in cli/commands/, one module per family, each listing its commands in
COMMANDS; they are registered here and share cli/state.py (the run's globals, reporter,
hosts and parameters). Completion (docker's `__complete` protocol, cli/completion.py)
reads the command tree, so a new subcommand needs nothing there.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Annotated

import typer

from docker_hmigrate import errors
from docker_hmigrate.cli import completion, flags
from docker_hmigrate.cli.commands import about, blocks, build, install, migrate
from docker_hmigrate.cli.dockerstyle import DockerCommand, DockerGroup, click, format_usage_error
from docker_hmigrate.cli.state import CliState, root_state
from docker_hmigrate.engine import DaemonUnreachable
from docker_hmigrate.hosts import GlobalOptions
from docker_hmigrate.output import Reporter, render_error

PROG = "docker hmigrate"

log = logging.getLogger("docker_hmigrate")

HELP = """\
Live-migrate running containers between Docker hosts (same or different ISA).

The source is the current Docker context (or --context/-H); the target is a
context name or a daemon URL given with --to.

Examples:

  docker hmigrate migrate web --to hm-b

  docker --context hm-a hmigrate migrate redis --to tcp://10.0.0.2:2375

  docker hmigrate check web --to hm-b

  docker hmigrate version --to hm-b
"""

app = typer.Typer(
    name="hmigrate",
    help=HELP,
    cls=DockerGroup,
    no_args_is_help=True,
    # No typer completion installer: it registers `docker hmigrate` as a command name
    # and breaks docker's own completion. Completion goes through `docker __complete`
    # (cli/completion.py).
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _register_commands() -> None:
    for family in (migrate, blocks, build, about, install):
        for name, func in family.COMMANDS.items():
            app.command(name, cls=DockerCommand)(func)  # help pages in docker's style


_register_commands()


# ---- global options --------------------------------------------------------------------


@app.callback()
def _globals_callback(
    ctx: typer.Context,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            "-c",
            metavar="NAME",
            help="Docker context of the source host (overrides DOCKER_HOST and `docker "
            "context use`)",
        ),
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", "-H", metavar="URL", help="Daemon socket of the source host"),
    ] = None,
    tls: Annotated[
        bool | None, typer.Option("--tls", help="Use TLS; implied by --tlsverify")
    ] = None,
    tlsverify: Annotated[
        bool | None, typer.Option("--tlsverify", help="Use TLS and verify the remote")
    ] = None,
    tlscacert: Annotated[
        str | None,
        typer.Option("--tlscacert", metavar="FILE", help="Trust certs signed only by this CA"),
    ] = None,
    tlscert: Annotated[
        str | None, typer.Option("--tlscert", metavar="FILE", help="Path to TLS certificate file")
    ] = None,
    tlskey: Annotated[
        str | None, typer.Option("--tlskey", metavar="FILE", help="Path to TLS key file")
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", metavar="DIR", help="Location of client config files")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", "-D", help="Enable debug mode")] = False,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            "-l",
            metavar="LEVEL",
            help='Logging level ("debug", "info", "warn", "error")',
        ),
    ] = None,
) -> None:
    """Collect docker's global flags given after `hmigrate` on top of those before it."""
    state = root_state(ctx)
    given = {"context": context, "hosts": host, "tls": tls, "tlsverify": tlsverify,
             "tlscacert": tlscacert, "tlscert": tlscert, "tlskey": tlskey,
             "config_dir": config, "debug": debug, "log_level": log_level}
    given = {k: v for k, v in given.items() if v not in (None, [])}  # only those given
    state.globals = GlobalOptions.from_dict(flags.merge(state.pre_globals, given))
    _setup_logging(state.globals)


def _setup_logging(g: GlobalOptions) -> None:
    levels = {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warn": logging.WARNING,
        "warning": logging.WARNING,
        "error": logging.ERROR,
        "fatal": logging.CRITICAL,
    }
    level_name = "debug" if g.debug else (g.log_level or "warn").lower()
    if level_name not in levels:
        raise errors.UsageError(
            f"unable to parse logging level: {g.log_level}",
            hint='use one of "debug", "info", "warn", "error", "fatal"',
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(levels[level_name])
    log.propagate = False



# ---- running ---------------------------------------------------------------------------


def _exception_types(name: str) -> tuple[type[BaseException], ...]:
    found = {getattr(typer, name, None), getattr(getattr(click, "exceptions", None), name, None)}
    return tuple(t for t in found if isinstance(t, type))


_EXIT_EXCEPTIONS = _exception_types("Exit")
_ABORT_EXCEPTIONS = (*_exception_types("Abort"), KeyboardInterrupt)


def run(argv: list[str], pre_globals: dict[str, object] | None = None) -> int:
    """Run the app on argv (after docker's globals and `hmigrate`); returns the exit code.

    Never lets a traceback reach the user unless -D was given.
    """
    if not argv:
        argv = ["--help"]  # like `docker container`: usage, exit 0
    # The app's root context holds this same object: its globals (with -D given after
    # `hmigrate`) and its reporter stay readable here once an exception has left click.
    state = CliState.start(pre_globals)
    try:
        rv = app(args=argv, prog_name=PROG, obj=state, standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        if code == 130:  # newer typer turns KeyboardInterrupt into a silent Exit(130)
            _report_failure(state, errors.Interrupted("interrupted"), argv)
        return code
    except errors.HmigrateError as exc:
        _report_failure(state, exc, argv)
        if state.globals.debug:
            traceback.print_exc()
        return exc.exit_code
    except _EXIT_EXCEPTIONS as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except _ABORT_EXCEPTIONS:
        _report_failure(state, errors.Interrupted("interrupted"), argv)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help())  # `docker hmigrate` alone: the help, as docker does
        return 0
    except click.exceptions.UsageError as exc:
        return _usage_error(exc, argv)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except DaemonUnreachable as exc:  # a daemon stopped answering mid-command
        err = errors.HostUnreachable(str(exc.args[0] if exc.args else exc).split(": HTTP")[0])
        _report_failure(state, err, argv)
        if state.globals.debug:
            traceback.print_exc()
        return err.exit_code
    except Exception as exc:  # anything unexpected: one line, traceback only with -D
        if state.globals.debug:
            traceback.print_exc()
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        err = errors.HmigrateError(
            f"unexpected {type(exc).__name__}" + (f": {first_line}" if first_line else ""),
            hint="rerun with -D (`docker -D hmigrate ...`) for the traceback and report it",
        )
        _report_failure(state, err, argv)
        return 1


def wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for JSON output (--json, --format json)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--json" or arg == "--format=json" or (
                arg == "--format" and argv[i + 1 : i + 2] == ["json"]):
            return True
    return False


def _usage_error(exc: click.exceptions.UsageError, argv: list[str]) -> int:
    """A command line click cannot parse: docker's two lines on stderr, exit 125; with
    --json also the error document on stdout (scripts read stdout only)."""
    name = _command_name(argv)
    text = format_usage_error(exc, f"{PROG} {name}" if name else PROG)
    err = errors.UsageError(text.splitlines()[0], hint=text.splitlines()[1])
    if wants_json(argv):
        command = exc.ctx.info_name if exc.ctx is not None and exc.ctx.parent else None
        Reporter(json_mode=True, command=command or _command_name(argv)).finish(
            ok=False, error=err)
    sys.stderr.write(text)
    return err.exit_code


def _report_failure(state: CliState, exc: errors.HmigrateError,
                    argv: list[str] | None = None) -> None:
    rep = state.reporter
    if rep is None and argv is not None and wants_json(argv):
        # failed before the command made its reporter: the JSON error document all the same
        rep = Reporter(json_mode=True, command=_command_name(argv))
    if rep is not None:
        rep.fail(exc)
    else:
        render_error(exc)


def _command_name(argv: list[str]) -> str | None:
    try:
        rest = flags.parse_global_flags(argv)[1]
    except Exception:  # noqa: BLE001 - only a label for the document
        return None
    return rest[0] if rest and not rest[0].startswith("-") else None


def complete(args: list[str]) -> int:
    """Answer the docker CLI's completion request (`docker-hmigrate __complete hmigrate
    ARGS...`): see cli/completion.py."""
    return completion.answer(app, args)

