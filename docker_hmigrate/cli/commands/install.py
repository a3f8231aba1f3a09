"""Setting the plugin up: `install` (where docker finds plugins) and `shell-init` (the
opt-in `docker container hmigrate` shell function)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from docker_hmigrate import errors, hosts
from docker_hmigrate.cli.state import get_globals

SYSTEM_PLUGIN_DIR = "/usr/local/lib/docker/cli-plugins"
EXECUTABLE = "docker-hmigrate"


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


COMMANDS = {"install": install_cmd, "shell-init": shell_init_cmd}
