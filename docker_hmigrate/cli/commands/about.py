"""The commands about the plugin itself: version (plugin and daemons) and help."""

from __future__ import annotations

import platform
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from docker_hmigrate import __version__, hosts
from docker_hmigrate.cli.dockerstyle import click
from docker_hmigrate.cli.state import FormatOpt, JsonOpt, get_globals, get_reporter


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


COMMANDS = {"version": version_cmd, "help": help_cmd}
