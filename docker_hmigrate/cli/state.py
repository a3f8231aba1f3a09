"""What every command shares: the run's state, its parameters, its hosts, its completers.

A leaf of the cli package (it imports nothing of it), so that command modules use it and
the app imports the command modules, never the other way round:

* get_globals(ctx) -> GlobalOptions        docker's global flags for this run
* get_reporter(ctx, json_mode=..., fmt=...) the run's progress/summary/JSON Reporter
* open_source(ctx) / open_target(ctx, to)  the hosts, connected
* JsonOpt, FormatOpt, ContainerArg         parameters declared once
* VALUE_SOURCES, CHOICES                   what completion offers for a parameter, by name
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import typer

from docker_hmigrate import errors, hosts
from docker_hmigrate.engine import Host
from docker_hmigrate.hosts import GlobalOptions
from docker_hmigrate.output import Reporter


@dataclass
class CliState:
    """Per-run state, kept in the root click context's obj; run() holds it too, so that it
    can honour -D and emit the JSON document after the exception left click."""

    pre_globals: dict[str, object] = field(default_factory=dict)
    globals: GlobalOptions = field(default_factory=GlobalOptions)
    reporter: Reporter | None = None

    @classmethod
    def start(cls, pre_globals: dict[str, object] | None) -> CliState:
        pre = dict(pre_globals or {})
        return cls(pre_globals=pre, globals=GlobalOptions.from_dict(pre))


def root_state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState.start(root.obj if isinstance(root.obj, dict) else {})
    return root.obj


def get_globals(ctx: typer.Context) -> GlobalOptions:
    """docker's global options for this run (flags before and after `hmigrate`)."""
    return root_state(ctx).globals


def get_reporter(ctx: typer.Context, json_mode: bool = False, quiet: bool = False,
                 fmt: str | None = None) -> Reporter:
    """The run's Reporter (created on first call). On failure, run() makes it emit the
    JSON document (in --json mode) and the error/hint lines. `fmt` is --format's value."""
    state = root_state(ctx)
    if state.reporter is None:
        json_mode = json_mode or fmt == "json"
        state.reporter = Reporter(json_mode=json_mode, debug=state.globals.debug, quiet=quiet,
                                  command=ctx.info_name)
        if fmt not in (None, "json", "text"):
            raise errors.UsageError(f'invalid argument "{fmt}" for "--format" flag',
                                    hint='use --format json (or text)')
    return state.reporter


def open_source(ctx: typer.Context) -> Host:
    endpoint = hosts.resolve_source(get_globals(ctx))
    return Host(endpoint.name, hosts.connect(endpoint))


def open_target(ctx: typer.Context, name_or_url: str) -> Host:
    endpoint = hosts.resolve_target(name_or_url, get_globals(ctx))
    return Host(endpoint.name, hosts.connect(endpoint))


# ---- parameters shared by several commands ---------------------------------------------

# Every command that reports takes both (docs/json.md).
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout "
                                                      "(docs/json.md)")]
FormatOpt = Annotated[str | None, typer.Option(
    "--format", metavar="FORMAT", help='Output format: "json" (as --json) or "text"')]
ContainerArg = Annotated[
    str, typer.Argument(metavar="CONTAINER", help="Container name or id on the source host")]


# ---- completers: what `docker hmigrate ... <TAB>` offers for a parameter's value ------------

Candidates = list[tuple[str, str]]


def contexts(g: GlobalOptions) -> Candidates:
    """Docker context names, described by their endpoint."""
    return [(e.name, e.host) for e in hosts.list_contexts(g)]


def containers(g: GlobalOptions, command: str = "") -> Candidates:
    """Containers of the source host (the current context), described by image and state:
    the running ones, except for `restore`, which wants a stopped or created one."""
    endpoint = hosts.resolve_source(g)
    client = hosts.connect(endpoint, timeout=5)
    try:
        found = client.api.containers(all=True)
        running = command != "restore"
        found = [c for c in found if (c.get("State") == "running") == running]
    finally:
        client.close()
    out = []
    for c in found:
        names = [n.lstrip("/") for n in c.get("Names") or [] if n.count("/") == 1]
        if names:
            out.append((names[0], f"{c.get('Image', '')} ({c.get('Status', '')})"))
    return sorted(out)


# Parameters whose values come from the docker side, by parameter name.
VALUE_SOURCES: dict[str, Callable[[GlobalOptions, str], Candidates]] = {
    "container": containers,
    "to": lambda g, _command: contexts(g),
    "context": lambda g, _command: contexts(g),
}
CHOICES: dict[str, Candidates] = {
    "to_isa": [("x86-64", "Intel/AMD 64-bit"), ("aarch64", "Arm 64-bit")],
    "shell": [("bash", ""), ("zsh", "")],
    "log_level": [(v, "") for v in ("debug", "info", "warn", "error", "fatal")],
    "fmt": [("json", "one JSON document (docs/json.md)"), ("text", "for people")],
}
