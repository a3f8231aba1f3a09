"""Help pages and usage errors in the docker CLI's own style (as buildx and compose do).

The typer/click defaults differ from what `docker` users see everywhere else: a 4-line
usage-error box, `{CONTAINER}` and `<str>` in the usage, command descriptions cut after
45 characters. Here, as the docker 28 CLI prints them:

    Usage:  docker hmigrate migrate [OPTIONS] CONTAINER      (help page)

    unknown flag: --bogus                                     (usage error, stderr)
    See 'docker hmigrate migrate --help'.

and the exit code of docker's usage errors, 125 (errors.UsageError.exit_code).
Commands are registered with `cls=DockerCommand` (cli/app.py; the app uses `cls=DockerGroup`).
"""

from __future__ import annotations

import inspect
import re
import shutil
import textwrap
from pathlib import PurePath
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

try:
    # typer >= 0.2x vendors its own click; its exceptions and contexts live there. The
    # rest of the cli package takes `click` from here.
    from typer import _click as click
except ImportError:  # older typer: plain click
    import click  # type: ignore[no-redef]

# click's type names -> the words docker's help uses for a flag's value
_TYPE_WORDS = {"text": "string", "integer": "int", "float": "float", "path": "string",
               "boolean": "bool", "choice": "string"}


def _width() -> int:
    return max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))


def description(cmd: click.Command) -> tuple[str, str]:
    """(first paragraph as one line, the rest verbatim) of a command's help."""
    text = inspect.cleandoc(cmd.help or "")
    first, _, rest = text.partition("\n\n")
    return " ".join(first.split()), rest.strip("\n")


def short_description(cmd: click.Command) -> str:
    """The full first paragraph (never cut off), as docker lists its commands."""
    return " ".join((cmd.short_help or "").split()) or description(cmd)[0]


def value_type(param: Any) -> str:
    """The kind of a parameter's value: "string", "float", "int", "bool" or "path"."""
    desc = getattr(param, "type_descriptor", None)  # typer >= 0.2x
    if desc is not None:
        ann = desc.annotation
        args = [a for a in getattr(ann, "__args__", ()) if a is not type(None)]
        ann = args[0] if args and not isinstance(ann, type) else ann
        if isinstance(ann, type) and issubclass(ann, PurePath):
            return "path"
        return {str: "string", float: "float", int: "int", bool: "bool"}.get(ann, "string")
    name = getattr(getattr(param, "type", None), "name", "text")  # plain click
    return _TYPE_WORDS.get(name, "string")


def dirs_only(param: Any) -> bool:
    """A path parameter that must name a folder (file_okay=False)."""
    desc = getattr(param, "type_descriptor", None)
    info = getattr(desc, "parameter_info", None) if desc is not None else None
    if info is not None:
        return getattr(info, "file_okay", True) is False
    return getattr(getattr(param, "type", None), "file_okay", True) is False


def value_word(param: Any) -> str:
    """What a flag's value is called: its metavar, else docker's type word."""
    if param.metavar:
        return param.metavar
    kind = value_type(param)
    return "string" if kind == "path" else kind


def usage_line(ctx: click.Context) -> str:
    cmd = ctx.command
    pieces = [ctx.command_path]
    if any(isinstance(p, TyperOption) and not p.hidden for p in cmd.get_params(ctx)):
        pieces.append("[OPTIONS]")
    if isinstance(cmd, TyperGroup):
        pieces.append("COMMAND")
    for p in cmd.get_params(ctx):
        if isinstance(p, TyperArgument):
            name = (p.metavar or p.name or "ARG").upper()
            name += "..." if p.nargs != 1 else ""
            pieces.append(name if p.required else f"[{name}]")
    return "Usage:  " + " ".join(pieces)


def _table(rows: list[tuple[str, str]], width: int) -> list[str]:
    if not rows:
        return []
    col = min(max(len(k) for k, _ in rows) + 2, 34)
    out = []
    for key, text in rows:
        wrapped = textwrap.wrap(text, max(30, width - col - 2)) or [""]
        if len(key) + 2 > col:
            out.append(f"  {key}")
            out.extend(" " * (col + 2) + w for w in wrapped)
        else:
            out.append(f"  {key.ljust(col)}{wrapped[0]}")
            out.extend(" " * (col + 2) + w for w in wrapped[1:])
    return out


def option_rows(ctx: click.Context, params: list[click.Parameter]) -> list[tuple[str, str]]:
    rows = []
    for p in params:
        if not isinstance(p, TyperOption) or p.hidden:
            continue
        shorts = [o for o in p.opts + p.secondary_opts if not o.startswith("--")]
        longs = [o for o in p.opts + p.secondary_opts if o.startswith("--")]
        key = (f"{shorts[0]}, " if shorts else "    ") + ", ".join(longs or shorts[1:])
        if not p.is_flag:
            key += " " + value_word(p)
        text = " ".join((p.help or "").split())
        if p.required:
            text += " (required)"
        elif (not p.is_flag and p.default not in (None, "", (), [])
              and not callable(p.default)):
            text += f" (default {p.default})"
        if p.multiple:
            text += " (repeatable)"
        rows.append((key, text))
    return rows


def command_help(ctx: click.Context) -> str:
    cmd = ctx.command
    width = _width()
    first, rest = description(cmd)
    lines = [usage_line(ctx), ""]
    if first:
        lines += textwrap.wrap(first, width) + [""]
    if rest:
        lines += [rest, ""]
    args = [(((p.metavar or p.name or "").upper()), " ".join((getattr(p, "help", "") or "")
             .split())) for p in cmd.get_params(ctx) if isinstance(p, TyperArgument)]
    if args:
        lines += ["Arguments:", *_table(args, width), ""]
    opts = option_rows(ctx, cmd.get_params(ctx))
    if opts:
        lines += ["Options:", *_table(opts, width), ""]
    return "\n".join(lines).rstrip("\n")


def group_help(ctx: click.Context, extra: str = "") -> str:
    group = ctx.command
    assert isinstance(group, TyperGroup)
    width = _width()
    first, rest = description(group)
    lines = [usage_line(ctx), ""]
    if first:
        lines += textwrap.wrap(first, width) + [""]
    if rest:
        lines += [rest, ""]
    rows = []
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is not None and not sub.hidden:
            rows.append((name, short_description(sub)))
    lines += ["Commands:", *_table(rows, width), ""]
    opts = option_rows(ctx, group.get_params(ctx))
    if opts:
        lines += ["Global options (docker's own; also accepted before `hmigrate`):",
                  *_table(opts, width), ""]
    lines.append(f"Run '{ctx.command_path} COMMAND --help' for more information on a command.")
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


class DockerCommand(TyperCommand):
    """A command whose --help page looks like docker's."""

    def get_help(self, ctx: click.Context) -> str:
        return command_help(ctx)


class DockerGroup(TyperGroup):
    """The root command: docker-style help listing every command's full description."""

    def get_help(self, ctx: click.Context) -> str:
        return group_help(ctx)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(super().list_commands(ctx))  # as docker lists its commands

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if type(cmd) is TyperCommand:
            # a subcommand registered with plain `app.command()` still gets docker's help
            # (DockerCommand adds behaviour only, no state)
            cmd.__class__ = DockerCommand
        return cmd


# ---- usage errors ----------------------------------------------------------------------


def _required_args(cmd: click.Command | None, ctx: click.Context | None) -> int:
    if cmd is None or ctx is None:
        return 0
    return sum(1 for p in cmd.get_params(ctx)
               if isinstance(p, TyperArgument) and p.required)


def _flag_name(param: Any) -> str:
    opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return opts[0] if opts else (getattr(param, "opts", None) or ["?"])[0]


def usage_error_text(exc: click.exceptions.UsageError,
                     fallback_path: str = "docker hmigrate") -> tuple[str, str]:
    """(message, command path) of a click usage error, worded as docker words them.
    `fallback_path` names the command when click's parser gave no context."""
    ctx = exc.ctx
    path = ctx.command_path if ctx is not None else fallback_path
    cmd = ctx.command if ctx is not None else None
    msg = exc.message
    if isinstance(exc, click.exceptions.MissingParameter):
        if exc.param_type == "argument" or isinstance(exc.param, TyperArgument):
            n = _required_args(cmd, ctx)
            return f"docker: '{path}' requires {n} argument{'s' if n != 1 else ''}", path
        return f'required flag "{_flag_name(exc.param)}" not set', path
    if isinstance(exc, click.exceptions.NoSuchOption):
        name = exc.option_name
        if not name.startswith("--") and len(name) == 2:
            return f"unknown shorthand flag: '{name[1]}' in {name}", path
        return f"unknown flag: {name}", path
    if isinstance(exc, click.exceptions.BadOptionUsage):
        if "requires" in msg and "argument" in msg:
            return f"flag needs an argument: {exc.option_name}", path
        if "does not take a value" in msg:
            return f"flag {exc.option_name} does not take a value", path
        return msg, path
    if isinstance(exc, click.exceptions.BadParameter):
        param = exc.param
        if isinstance(param, TyperOption):
            return f'invalid argument for "{_flag_name(param)}" flag: {msg}', path
        name = (getattr(param, "metavar", None) or getattr(param, "name", "") or "").upper()
        return f"invalid {name or 'argument'}: {msg}", path
    m = re.match(r"No such command '(.*)'", msg)
    if m:
        return f"docker: unknown command: {path} {m.group(1)}", path
    m = re.match(r"Got unexpected extra argument(?:s|\(s\))? \((.*)\)", msg)
    if m:
        n = _required_args(cmd, ctx)
        return (f"docker: '{path}' accepts {n} argument{'s' if n != 1 else ''}, "
                f"got more: {m.group(1)}"), path
    if msg == "Missing command.":
        return f"docker: '{path}' requires a command", path
    return msg, path


def format_usage_error(exc: click.exceptions.UsageError,
                       fallback_path: str = "docker hmigrate") -> str:
    """The two lines docker prints for a usage error (buildx's form)."""
    message, path = usage_error_text(exc, fallback_path)
    return f"{message}\nSee '{path} --help'.\n"
