"""`build`: a C program built with hmigrate-cc into a migratable two-platform image
(docker_hmigrate/build.py does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from docker_hmigrate.cli.state import open_source


def build_cmd(
    ctx: typer.Context,
    context: Annotated[Path, typer.Argument(
        metavar="CONTEXT", help="Build context: the folder with your sources and Dockerfile")],
    tag: Annotated[str, typer.Option(
        "--tag", "-t", metavar="REF", help="Name of the multi-ISA image, e.g. "
        "localhost:5000/me/app:1")],
    push: Annotated[bool, typer.Option(
        "--push", help="Push both platforms' images and the manifest list to REF's registry")
    ] = False,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", metavar="PATH", help="The Dockerfile (default: CONTEXT/Dockerfile)")
    ] = None,
    program: Annotated[str | None, typer.Option(
        "--program", metavar="PATH", help="The program in the built image (default: the "
        "first word of the Dockerfile's ENTRYPOINT, else CMD)")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Talk plain HTTP to REF's registry (implied for loopback ones)")
    ] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No build output; print only the image reference")] = False,
    label: Annotated[list[str] | None, typer.Option(
        "--label", metavar="KEY=VALUE", help="Set a label on both images")
    ] = None,
) -> None:
    """Build a C program with hmigrate-cc into a migratable linux/amd64 + linux/arm64 image.

    The Dockerfile starts FROM hmigrate/toolchain (made on the daemon from Debian's
    packages when missing) and compiles the program once with hmigrate-cc; the command
    assembles both platforms' images (each runs its own ISA's variant, both variants and
    the metadata under /hmigrate, org.hmigrate.* labels) and, with --push, pushes them and
    their manifest list. See docs/build.md.

    Examples:

      docker hmigrate build -t localhost:5000/me/counter --push .

      docker --context hm-a hmigrate build -t counter -f build/Dockerfile --program /counter .
    """
    import sys

    from docker_hmigrate import build

    def say(text: str) -> None:
        if not quiet:
            sys.stderr.write(f"=> {text}\n")

    def build_output(text: str) -> None:
        if not quiet:
            sys.stderr.write(text)

    labels = dict(item.partition("=")[::2] for item in label or [])
    opts = build.BuildOptions(tag, context, file, program, push, insecure, quiet, labels)
    build.check_inputs(opts)  # bad input fails before any daemon is asked
    src = open_source(ctx)
    result = build.run(src.client, opts, say, build_output)
    if quiet:
        typer.echo(result.ref)
        return
    typer.echo(f"built {result.ref}: {result.program} for linux/amd64 and linux/arm64")
    for img in result.images:
        pushed = f"  pushed {img.digest}" if img.digest else ""
        typer.echo(f"  {img.platform}  {img.tag}  {img.image_id[:19]}{pushed}")
    if result.local_tag:
        typer.echo(f"  {result.local_tag} = this daemon's platform")
    if result.manifest_list_digest:
        typer.echo(f"pushed manifest list {result.ref}@{result.manifest_list_digest}")


COMMANDS = {"build": build_cmd}
