"""The `docker hmigrate` command line: global options, shell commands, error handling.

Migration commands (migrate, check, checkpoint, restore) live in docker_hmigrate.commands,
which registers itself on `app` through `register(app)` at the end of this module. They
use:

* get_globals(ctx) -> GlobalOptions        docker's global flags for this run
* get_reporter(ctx, json_mode=...) -> Reporter  progress/summary/JSON output
* command(name)                            registers a subcommand with docker-style help

Completion (docker's `__complete` protocol) is in docker_hmigrate/completion.py; it
reads the command tree, so a new subcommand needs nothing there.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

try:
    # typer >= 0.2x vendors its own click; its exceptions and completion live there.
    from typer import _click as click
except ImportError:  # older typer: plain click
    import click  # type: ignore[no-redef]

from docker_hmigrate import __version__, errors, hosts
from docker_hmigrate.dockerstyle import DockerCommand, DockerGroup, TyperGroup, format_usage_error
from docker_hmigrate.hosts import GlobalOptions
from docker_hmigrate.output import Reporter, render_error

PROG = "docker hmigrate"
SYSTEM_PLUGIN_DIR = "/usr/local/lib/docker/cli-plugins"
EXECUTABLE = "docker-hmigrate"

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


@dataclass
class CliState:
    """Per-run state kept in the root click context's obj."""

    pre_globals: dict[str, object] = field(default_factory=dict)
    globals: GlobalOptions = field(default_factory=GlobalOptions)
    reporter: Reporter | None = None


# Last state created, so that run() can honour -D and flush a JSON document on failure
# even though the exception escaped the click context.
_state: CliState | None = None
_commands_error: BaseException | None = None

app = typer.Typer(
    name="hmigrate",
    help=HELP,
    cls=DockerGroup,
    no_args_is_help=True,
    # No typer completion installer: it registers `docker hmigrate` as a command name
    # and breaks docker's own completion. Completion goes through `docker __complete`
    # (docker_hmigrate/completion.py).
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def command(name: str, **kwargs: Any) -> Any:
    """`app.command` with docker-style help; new subcommands register through this."""
    return app.command(name, cls=DockerCommand, **kwargs)


# ---- helpers for commands --------------------------------------------------------------


def _root_state(ctx: click.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        pre = root.obj if isinstance(root.obj, dict) else {}
        root.obj = CliState(pre_globals=pre, globals=GlobalOptions.from_dict(pre))
    return root.obj


def get_globals(ctx: click.Context) -> GlobalOptions:
    """docker's global options for this run (flags before and after `hmigrate`)."""
    return _root_state(ctx).globals


def get_reporter(ctx: click.Context, json_mode: bool = False, quiet: bool = False,
                 fmt: str | None = None) -> Reporter:
    """The run's Reporter (created on first call). On failure, run() makes it emit the
    JSON document (in --json mode) and the error/hint lines. `fmt` is --format's value."""
    state = _root_state(ctx)
    if state.reporter is None:
        json_mode = json_mode or fmt == "json"
        state.reporter = Reporter(json_mode=json_mode, debug=state.globals.debug, quiet=quiet,
                                  command=ctx.info_name)
        if fmt not in (None, "json", "text"):
            raise errors.UsageError(f'invalid argument "{fmt}" for "--format" flag',
                                    hint='use --format json (or text)')
    return state.reporter


# Every command that reports takes both (docs/json.md).
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout "
                                                      "(docs/json.md)")]
FormatOpt = Annotated[str | None, typer.Option(
    "--format", metavar="FORMAT", help='Output format: "json" (as --json) or "text"')]


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
    global _state
    state = _root_state(ctx)
    given = GlobalOptions(
        context=context,
        hosts=list(host or []),
        tls=tls,
        tlsverify=tlsverify,
        tlscacert=tlscacert,
        tlscert=tlscert,
        tlskey=tlskey,
        config_dir=config,
        debug=debug,
        log_level=log_level,
    )
    state.globals = GlobalOptions.from_dict(state.pre_globals).merged(given)
    _state = state
    _setup_logging(state.globals)
    if _commands_error is not None:
        sys.stderr.write(f"warning: migration commands unavailable: {_commands_error!r}\n")


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


# ---- version ---------------------------------------------------------------------------


def _daemon_info(endpoint: hosts.Endpoint) -> dict[str, Any]:
    client = hosts.connect(endpoint, timeout=10)
    try:
        v = client.version()
        try:
            info = client.info()
        except Exception:  # info is optional here; version is what was asked
            info = {}
    finally:
        client.close()
    return {
        "context": endpoint.name,
        "host": endpoint.host,
        "version": v.get("Version"),
        "api_version": v.get("ApiVersion"),
        "os": v.get("Os"),
        "arch": v.get("Arch"),
        "kernel": v.get("KernelVersion"),
        "experimental": bool(v.get("Experimental", info.get("ExperimentalBuild", False))),
    }


@command("version")
def version_cmd(
    ctx: typer.Context,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="CONTEXT|URL",
            help="Also show this target host (context or URL)",
        ),
    ] = None,
    client_only: Annotated[
        bool, typer.Option("--client", help="Only the plugin's version, no daemon")
    ] = False,
    json_mode: JsonOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Show the plugin's version and the Docker daemons' versions.

    Examples:

      docker hmigrate version

      docker --context hm-a hmigrate version --to hm-b
    """
    import platform

    g = get_globals(ctx)
    rep = get_reporter(ctx, json_mode=json_mode, fmt=fmt)
    json_mode = rep.json_mode
    plugin = {
        "version": __version__,
        "python": platform.python_version(),
        "executable": sys.argv[0],
    }
    rep.set("plugin", plugin)
    if not json_mode:
        typer.echo(f"docker-hmigrate {__version__} (Python {plugin['python']})")
    if client_only:
        rep.finish()
        return
    endpoints = [("source", hosts.resolve_source(g))]
    if to:
        endpoints.append(("target", hosts.resolve_target(to, g)))
    for role, ep in endpoints:
        d = _daemon_info(ep)
        rep.set(role, d)
        if not json_mode:
            exp = "experimental" if d["experimental"] else "NOT experimental"
            typer.echo(
                f"{role}: {ep.name} ({ep.host}): Docker {d['version']} API {d['api_version']} "
                f"{d['os']}/{d['arch']} kernel {d['kernel']}, {exp}"
            )
    rep.finish()


# ---- help ------------------------------------------------------------------------------


@command("help")
def help_cmd(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None, typer.Argument(metavar="COMMAND", help="The command to explain")
    ] = None,
) -> None:
    """Show the help of a command, like `docker hmigrate COMMAND --help`.

    Examples:

      docker hmigrate help migrate

      docker help hmigrate
    """
    group_ctx = ctx.parent or ctx
    group = group_ctx.command
    if not names:
        typer.echo(group.get_help(group_ctx))
        return
    sub = group.get_command(group_ctx, names[0]) if isinstance(group, TyperGroup) else None
    if sub is None:
        raise click.exceptions.UsageError(f"No such command '{names[0]}'.", group_ctx)
    with click.Context(sub, info_name=names[0], parent=group_ctx) as sub_ctx:
        typer.echo(sub.get_help(sub_ctx))


# ---- install ---------------------------------------------------------------------------


def _own_executable() -> Path | None:
    """The installed `docker-hmigrate` console script of this Python environment."""
    candidates = [
        Path(sys.argv[0]) if Path(sys.argv[0]).name == EXECUTABLE else None,
        Path(sys.executable).parent / EXECUTABLE,
    ]
    found = shutil.which(EXECUTABLE)
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c is not None and c.is_file() and os.access(c, os.X_OK):
            return c.resolve()
    return None


def _wrapper_script() -> str:
    # Used when no console script exists (e.g. run as `python -m docker_hmigrate`).
    return f'#!/bin/sh\nexec "{sys.executable}" -m docker_hmigrate "$@"\n'


@command("install")
def install_cmd(
    ctx: typer.Context,
    system: Annotated[
        bool, typer.Option("--system", help=f"Install for all users into {SYSTEM_PLUGIN_DIR}")
    ] = False,
    user: Annotated[
        bool,
        typer.Option("--user", help="Install into this user's <config dir>/cli-plugins only"),
    ] = False,
    directory: Annotated[
        str | None, typer.Option("--dir", metavar="DIR", help="Install into this plugin directory")
    ] = None,
    copy: Annotated[
        bool, typer.Option("--copy", help="Copy the executable instead of symlinking it")
    ] = False,
) -> None:
    """Install the plugin so that `docker hmigrate` works (idempotent).

    Like buildx and compose, it goes into the docker CLI's system plugin folder,
    /usr/local/lib/docker/cli-plugins, where docker looks whatever --config or
    DOCKER_CONFIG says: the default when run as root (or with --system). Otherwise
    (or with --user) it goes into <config dir>/cli-plugins (~/.docker/cli-plugins, or
    $DOCKER_CONFIG/cli-plugins), which docker searches only while it uses that config dir.

    Examples:

      sudo docker-hmigrate install

      docker-hmigrate install --user
    """
    g = get_globals(ctx)
    if sum((system, user, directory is not None)) > 1:
        raise errors.UsageError("give only one of --system, --user and --dir")
    if directory:
        dest_dir = Path(directory).expanduser()
    elif system or (not user and os.geteuid() == 0):
        dest_dir = Path(SYSTEM_PLUGIN_DIR)
    else:
        dest_dir = hosts.config_dir(g) / "cli-plugins"
    _install_into(dest_dir, copy)
    if not directory and dest_dir != Path(SYSTEM_PLUGIN_DIR):
        typer.echo(
            f"note: docker finds it only while its config dir is {dest_dir.parent} "
            "(`docker --config DIR` or DOCKER_CONFIG=DIR elsewhere hide it); to have it "
            "with any config dir: `sudo docker-hmigrate install` (system-wide, as buildx), "
            f'or add "cliPluginsExtraDirs": ["{dest_dir}"] to that config.json'
        )
    typer.echo("run `docker hmigrate --help` to check")


def _install_into(dest_dir: Path, copy: bool) -> None:
    dest = dest_dir / EXECUTABLE
    src = _own_executable()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        if src is not None and not copy:
            if dest.is_symlink() and dest.resolve() == src:
                typer.echo(f"already installed: {dest} -> {src}")
                return
            _replace(dest, lambda tmp: tmp.symlink_to(src))
            typer.echo(f"installed: {dest} -> {src}")
        else:
            content = src.read_bytes() if src is not None else _wrapper_script().encode()
            if dest.is_file() and not dest.is_symlink() and dest.read_bytes() == content:
                typer.echo(f"already installed: {dest}")
                return

            def write(tmp: Path) -> None:
                tmp.write_bytes(content)
                tmp.chmod(0o755)

            _replace(dest, write)
            typer.echo(f"installed: {dest}")
    except PermissionError as exc:
        raise errors.HmigrateError(
            f"cannot write to {dest_dir}: permission denied",
            hint="run it with sudo for a system-wide install, or add --user",
        ) from exc


def _replace(dest: Path, make: Any) -> None:
    """Create via a temporary name and rename, so a concurrent `docker` never sees a
    half-written plugin."""
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    make(tmp)
    os.replace(tmp, dest)


# ---- shell-init ------------------------------------------------------------------------

# Works in bash and zsh: finds the first non-flag word after docker's global flags and,
# if it is `container hmigrate`, drops `container`.
SHELL_FUNCTION = r"""# docker-hmigrate: `docker container hmigrate ...` runs `docker hmigrate ...`.
# Everything else goes to the real docker unchanged. Enable with:
#   eval "$(docker hmigrate shell-init {shell})"
docker() {{
  local _hm_i=0 _hm_pos=0 _hm_skip= _hm_a
  for _hm_a in "$@"; do
    _hm_i=$((_hm_i + 1))
    if [ -n "$_hm_skip" ]; then _hm_skip=; continue; fi
    case "$_hm_a" in
      --context|-c|--host|-H|--config|--log-level|-l|--tlscacert|--tlscert|--tlskey)
        _hm_skip=1 ;;
      -*) ;;
      *) _hm_pos=$_hm_i; break ;;
    esac
  done
  if [ "$_hm_pos" -gt 0 ] && [ "${{@:$_hm_pos:1}}" = container ] \
     && [ "${{@:$((_hm_pos + 1)):1}}" = hmigrate ]; then
    command docker "${{@:1:$((_hm_pos - 1))}}" "${{@:$((_hm_pos + 1))}}"
  else
    command docker "$@"
  fi
}}
"""


@command("shell-init")
def shell_init_cmd(
    shell: Annotated[str, typer.Argument(help="bash or zsh")] = "bash",
) -> None:
    """Print an opt-in shell function adding `docker container hmigrate`.

    Docker CLI plugins can only add top-level commands; this function rewrites
    `docker container hmigrate ...` to `docker hmigrate ...`.

    Example (in ~/.bashrc or ~/.zshrc):

      eval "$(docker hmigrate shell-init bash)"
    """
    if shell not in ("bash", "zsh"):
        raise errors.UsageError(f"unsupported shell {shell!r}", hint="use bash or zsh")
    typer.echo(SHELL_FUNCTION.format(shell=shell), nl=False)


# ---- running ---------------------------------------------------------------------------


def _exception_types(name: str) -> tuple[type[BaseException], ...]:
    found = {getattr(typer, name, None), getattr(getattr(click, "exceptions", None), name, None)}
    return tuple(t for t in found if isinstance(t, type))


_EXIT_EXCEPTIONS = _exception_types("Exit")
_ABORT_EXCEPTIONS = (*_exception_types("Abort"), KeyboardInterrupt)


def _debug_enabled() -> bool:
    if _state is not None:
        return _state.globals.debug
    return False


def run(argv: list[str], pre_globals: dict[str, object] | None = None) -> int:
    """Run the app on argv (after docker's globals and `hmigrate`); returns the exit code.

    Never lets a traceback reach the user unless -D was given.
    """
    global _state
    if not argv:
        argv = ["--help"]  # like `docker container`: usage, exit 0
    _state = CliState(
        pre_globals=dict(pre_globals or {}), globals=GlobalOptions.from_dict(pre_globals or {})
    )
    debug = _state.globals.debug
    try:
        rv = app(args=argv, prog_name=PROG, obj=_state, standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        if code == 130:  # newer typer turns KeyboardInterrupt into a silent Exit(130)
            _report_failure(errors.Interrupted("interrupted"), argv)
        return code
    except errors.HmigrateError as exc:
        _report_failure(exc, argv)
        if debug or _debug_enabled():
            traceback.print_exc()
        return exc.exit_code
    except _EXIT_EXCEPTIONS as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except _ABORT_EXCEPTIONS:
        _report_failure(errors.Interrupted("interrupted"), argv)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help())  # `docker hmigrate` alone: the help, as docker does
        return 0
    except click.exceptions.UsageError as exc:
        return _usage_error(exc, argv)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Exception as exc:  # anything unexpected: one line, traceback only with -D
        if debug or _debug_enabled():
            traceback.print_exc()
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        err = errors.HmigrateError(
            f"unexpected {type(exc).__name__}" + (f": {first_line}" if first_line else ""),
            hint="rerun with -D (`docker -D hmigrate ...`) for the traceback and report it",
        )
        _report_failure(err, argv)
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
        from docker_hmigrate.output import Reporter

        command = exc.ctx.info_name if exc.ctx is not None and exc.ctx.parent else None
        Reporter(json_mode=True, command=command or _command_name(argv)).finish(
            ok=False, error=err)
    sys.stderr.write(text)
    return err.exit_code


def _report_failure(exc: errors.HmigrateError, argv: list[str] | None = None) -> None:
    rep = _state.reporter if _state is not None else None
    if rep is None and argv is not None and wants_json(argv):
        # failed before the command made its reporter: the JSON error document all the same
        rep = Reporter(json_mode=True, command=_command_name(argv))
    if rep is not None:
        rep.fail(exc)
    else:
        render_error(exc)


def _command_name(argv: list[str]) -> str | None:
    from docker_hmigrate.plugin import parse_global_flags

    try:
        rest = parse_global_flags(argv)[1]
    except Exception:  # noqa: BLE001 - only a label for the document
        return None
    return rest[0] if rest and not rest[0].startswith("-") else None


def complete(args: list[str]) -> int:
    """Answer the docker CLI's completion request (`docker-hmigrate __complete hmigrate
    ARGS...`): see docker_hmigrate/completion.py."""
    from docker_hmigrate import completion

    return completion.answer(app, args)


# ---- hook for the migration commands (docker_hmigrate/commands.py) ----------------------


def _register_commands() -> None:
    global _commands_error
    import importlib

    try:
        commands = importlib.import_module("docker_hmigrate.commands")
    except ModuleNotFoundError as exc:
        if exc.name == "docker_hmigrate.commands":
            return  # not written yet: the shell works without it
        _commands_error = exc
        return
    except Exception as exc:  # a broken commands module must not break install/version
        _commands_error = exc
        return
    try:
        commands.register(app)
    except Exception as exc:
        _commands_error = exc


_register_commands()
