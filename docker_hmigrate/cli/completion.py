"""Shell completion through the docker CLI's plugin protocol (cobra's `__complete`).

`docker hmigrate mi<TAB>` makes docker's completion script run
`docker __complete hmigrate mi`, and docker runs `docker-hmigrate __complete hmigrate mi`
(docker's global flags given before `hmigrate` are not passed on; those after it are).
The answer is cobra's: one candidate a line, optionally `<TAB>description`, then
`:<directive>`:

    0  default: the shell completes file names
    4  no file completion
    16 complete folder names only

Candidates come from the command tree itself (typer/click), so a new subcommand
completes with no change here: subcommand names and flags with their help, container
names of the source host (`CONTAINER`), context names (`--to`, `--context`), file names
for path parameters, folders for path parameters that must be folders (the value
sources, by parameter name, are in cli/state.py).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from docker_hmigrate.cli.dockerstyle import click, dirs_only, short_description, value_type
from docker_hmigrate.cli.flags import ArgError, merge, parse_global_flags
from docker_hmigrate.cli.state import CHOICES, VALUE_SOURCES, Candidates
from docker_hmigrate.hosts import GlobalOptions

DEFAULT = 0  # cobra's ShellCompDirectiveDefault: the shell completes files
ERROR = 1
NO_FILES = 4
DIRS = 16


def _options(cmd: Any, ctx: Any) -> list[Any]:
    return [p for p in cmd.get_params(ctx) if isinstance(p, TyperOption) and not p.hidden]


def _find_option(cmd: Any, ctx: Any, word: str) -> Any | None:
    for p in _options(cmd, ctx):
        if word in p.opts or word in p.secondary_opts:
            return p
    return None


def _values(param: Any, g: GlobalOptions, command: str = "") -> tuple[Candidates, int]:
    """Candidates for a parameter's value (of `command`) and the directive."""
    name = param.name or ""
    if name in CHOICES:
        return CHOICES[name], NO_FILES
    if name in VALUE_SOURCES:
        try:
            return VALUE_SOURCES[name](g, command), NO_FILES
        except Exception:  # noqa: BLE001 - completion must never fail loudly
            return [], NO_FILES
    if value_type(param) == "path" or (getattr(param, "metavar", "") or "") in ("FILE", "DIR"):
        return [], DIRS if (dirs_only(param) or param.metavar == "DIR") else DEFAULT
    return [], NO_FILES


def candidates(app: typer.Typer, args: list[str]) -> tuple[Candidates, int]:
    """What to offer for `docker hmigrate ARGS...` (the last arg is being typed)."""
    words, incomplete = (args[:-1], args[-1]) if args else ([], "")
    try:
        pre, words = parse_global_flags(words)
    except ArgError:
        pre = {}
    g = GlobalOptions.from_dict(pre)
    cmd: Any = typer.main.get_command(app)
    ctx = click.Context(cmd, info_name="hmigrate")
    positional = 0
    expecting: Any = None  # an option waiting for its value
    for word in words:
        if expecting is not None:
            if expecting.name in ("context", "config", "host", "log_level"):
                # docker's globals after `hmigrate` select the source like before it
                extra, _ = parse_global_flags([expecting.opts[0], word])
                g = GlobalOptions.from_dict(merge(pre, extra))
            expecting = None
            continue
        if word.startswith("-") and word != "-":
            opt = _find_option(cmd, ctx, word.split("=", 1)[0])
            if opt is not None and not opt.is_flag and "=" not in word:
                expecting = opt
            continue
        if isinstance(cmd, TyperGroup):
            sub = cmd.get_command(ctx, word)
            if sub is None:
                return [], NO_FILES
            ctx = click.Context(sub, info_name=word, parent=ctx)
            cmd, positional = sub, 0
            continue
        positional += 1
    if expecting is not None:
        found, directive = _values(expecting, g, cmd.name or "")
        return [c for c in found if c[0].startswith(incomplete)], directive
    if incomplete.startswith("-"):
        name, eq, typed = incomplete.partition("=")
        if eq:  # --to=hm<TAB>
            opt = _find_option(cmd, ctx, name)
            if opt is None or opt.is_flag:
                return [], NO_FILES
            found, directive = _values(opt, g, cmd.name or "")
            return [(f"{name}={v}", d) for v, d in found if v.startswith(typed)], directive
        out = []
        for p in _options(cmd, ctx):
            if p.name == "help":
                continue
            for flag in [o for o in p.opts + p.secondary_opts if o.startswith("--")]:
                if flag.startswith(incomplete):
                    out.append((flag, " ".join((p.help or "").split())))
        return out, NO_FILES
    if isinstance(cmd, TyperGroup):
        out = []
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden and name.startswith(incomplete):
                out.append((name, short_description(sub)))
        return out, NO_FILES
    arguments = [p for p in cmd.get_params(ctx) if isinstance(p, TyperArgument)]
    for i, p in enumerate(arguments):
        if i == positional or (i == len(arguments) - 1 and p.nargs == -1):
            if cmd.name == "help":  # `help <TAB>`: the commands
                return candidates(app, [incomplete])
            found, directive = _values(p, g, cmd.name or "")
            return [c for c in found if c[0].startswith(incomplete)], directive
    return [], NO_FILES


def answer(app: typer.Typer, args: list[str], out: TextIO | None = None) -> int:
    """Write cobra's completion answer for `args` (after `__complete hmigrate`)."""
    out = out if out is not None else sys.stdout
    try:
        found, directive = candidates(app, args)
    except Exception:  # noqa: BLE001 - a broken completion must not print a traceback
        out.write(f":{ERROR}\n")
        return 0
    for value, desc in found:
        desc = " ".join(desc.split())
        out.write(f"{value}\t{desc}\n" if desc else f"{value}\n")
    out.write(f":{directive}\n")
    return 0
