"""The building blocks of a migration, each on its own: `checkpoint` a container into a
tar file, `restore` it from one, `recode` a checkpoint for another ISA."""

from __future__ import annotations

import contextlib
import os
import tarfile
import uuid
from pathlib import Path
from typing import Annotated

import docker.errors
import typer

from docker_hmigrate import errors, transfer
from docker_hmigrate.cli.state import (
    ContainerArg,
    FormatOpt,
    JsonOpt,
    get_reporter,
    open_source,
)
from docker_hmigrate.engine import api_error_text


def checkpoint_cmd(
    ctx: typer.Context,
    container: ContainerArg,
    output: Annotated[Path, typer.Option(
        "--output", "-o", metavar="FILE",
        help="Write the checkpoint as a tar file here (mode 0600)")],
    leave_running: Annotated[bool, typer.Option(
        "--leave-running", help="Keep the container running after the dump")] = False,
    json_mode: JsonOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Checkpoint a running container into a local tar file (a building block of migrate).

    The tar holds process memory: it is created readable by its owner only.

    Examples:

      docker hmigrate checkpoint web -o web.ckpt.tar

      docker hmigrate checkpoint web -o web.ckpt.tar --leave-running
    """
    rep = get_reporter(ctx, json_mode=json_mode, fmt=fmt)
    json_mode = rep.json_mode
    # Before anything is frozen: a file that cannot be written would leave the container
    # stopped with its checkpoint deleted.
    folder = output.parent if str(output.parent) else Path(".")
    if output.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise errors.UsageError(
            f"cannot write the checkpoint to {output}: "
            + ("it is a folder" if output.is_dir() else f"{folder} is not a writable folder"),
            hint="name a file in an existing folder you can write to")
    transfer.check_private_target(output)  # no symlink: refused before the freeze
    src = open_source(ctx)
    inspect = src.inspect(container)
    name = f"hmigrate-{uuid.uuid4().hex[:10]}"
    with rep.phase("checkpoint"):
        try:
            src.checkpoint_create(inspect["Id"], name, exit=not leave_running)
        except docker.errors.APIError as exc:
            raise errors.CriuError(f"checkpoint failed: {api_error_text(exc)}") from exc
    size = 0
    try:
        with rep.phase("export") as ph:
            fd = transfer.create_private_file(output)
            with os.fdopen(fd, "wb") as f, src.helper(
                    [f"{src.checkpoint_dir(inspect['Id'])}/{name}:/ck:ro"]) as h:
                stream, _ = src.api.get_archive(h, "/ck/.", chunk_size=1 << 20)
                for chunk in stream:
                    f.write(chunk)
                    size += len(chunk)
            ph.update(f"{size / 1e6:.1f} MB -> {output}")
    finally:
        with contextlib.suppress(docker.errors.APIError):
            src.checkpoint_delete(inspect["Id"], name)
    values = {"container": inspect["Name"].lstrip("/"), "container_id": inspect["Id"],
              "file": str(output), "bytes": size,
              "state": "running" if leave_running else "stopped"}
    for k, v in values.items():
        rep.set(k, v)
    rep.summary(values, title="Checkpoint")
    rep.finish()


def restore_cmd(
    ctx: typer.Context,
    container: ContainerArg,
    input_: Annotated[Path, typer.Option(
        "--input", "-i", metavar="FILE", exists=True, dir_okay=False,
        help="A tar made by `checkpoint`")],
    json_mode: JsonOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Restore a created or stopped container from a checkpoint tar (a building block).

    The container must have the configuration and filesystem of the checkpointed one.

    Example:

      docker hmigrate restore web -i web.ckpt.tar
    """
    rep = get_reporter(ctx, json_mode=json_mode, fmt=fmt)
    json_mode = rep.json_mode
    host = open_source(ctx)
    inspect = host.inspect(container)
    if inspect["State"].get("Running"):
        raise errors.UsageError(f"{container} is running", hint=f"docker stop {container}")
    try:
        with tarfile.open(input_):
            pass
    except tarfile.TarError as exc:
        raise errors.UsageError(f"{input_} is not a tar file: {exc}") from None
    name = f"hmigrate-{uuid.uuid4().hex[:10]}"
    with rep.phase("import"), input_.open("rb") as f, host.helper(
            [f"{host.checkpoint_dir(inspect['Id'])}/{name}:/ck"]) as h:
        host.api.put_archive(h, "/ck", f)
    with rep.phase("restore"):
        try:
            host.start(inspect["Id"], checkpoint=name)
        except docker.errors.APIError as exc:
            raise errors.RestoreFailed(
                f"restore failed: {api_error_text(exc)}",
                hint="was the tar made from this container's image?") from exc
        finally:
            with contextlib.suppress(docker.errors.APIError):
                host.checkpoint_delete(inspect["Id"], name)
    values = {"container": inspect["Name"].lstrip("/"), "container_id": inspect["Id"],
              "state": "running"}
    for k, v in values.items():
        rep.set(k, v)
    rep.summary(values, title="Restore")
    rep.finish()


def recode_cmd(
    ctx: typer.Context,
    images: Annotated[Path, typer.Argument(
        help="A CRIU image set (checkpoint folder) taken on the source ISA",
        exists=True, file_okay=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR",
                                         help="Folder for the result")],
    program_dir: Annotated[Path, typer.Option(
        "--program", "-p", metavar="DIR", exists=True, file_okay=False,
        help="Folder with NAME_x86-64, NAME_aarch64 and NAME.hmigrate.json")],
    to_isa: Annotated[str, typer.Option("--to-isa", metavar="ISA", help="x86-64 or aarch64")],
    path: Annotated[str, typer.Option(
        "--path", metavar="PATH", help="The program's path inside the container")] = "",
    template: Annotated[Path | None, typer.Option(
        "--template", metavar="DIR", exists=True, file_okay=False,
        help="A checkpoint of the same program taken on the target host: its vDSO, auxv "
             "and register layout are used (migrate always takes one)")] = None,
    json_mode: JsonOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Recode a checkpoint for another ISA (a building block of migrate).

    Example:

      docker hmigrate recode ck/ -o ck-arm/ -p helloworld/ --to-isa aarch64 --path /hello

      docker hmigrate recode ck-arm/ -o ck-x86/ -p helloworld/ --to-isa x86-64 \\
          --path /hello --template native-x86-ck/
    """
    import json as _json

    from docker_hmigrate import recode
    from docker_hmigrate.criu.imageset import ImageSet
    from docker_hmigrate.engine import ISA_NAMES

    rep = get_reporter(ctx, json_mode=json_mode, fmt=fmt)
    json_mode = rep.json_mode
    if to_isa not in recode.ISAS:
        raise errors.UsageError(f"unknown ISA {to_isa!r}", hint="use x86-64 or aarch64")
    metas = sorted(program_dir.glob("*.hmigrate.json"))
    if len(metas) != 1:
        raise errors.UsageError(f"{program_dir} must hold exactly one NAME.hmigrate.json")
    stem = metas[0].name.removesuffix(".hmigrate.json")
    binaries = {isa: (program_dir / f"{stem}_{isa}").read_bytes() for isa in recode.ISAS
                if (program_dir / f"{stem}_{isa}").is_file()}
    program = recode.Program(path or f"/{stem}", _json.loads(metas[0].read_text()), binaries)
    from_isa = ISA_NAMES.get(ImageSet.load(images).arch.name.lower(), "unknown")
    with rep.phase("recode") as ph:
        facts = recode.template_facts(template) if template else None
        timings = recode.recode(images, output, program, from_isa, to_isa, facts)
        ph.update(f"{from_isa} -> {to_isa}")
    rep.set("from_isa", from_isa)
    rep.set("to_isa", to_isa)
    rep.set("output", str(output))
    rep.set("recode_seconds", {k: round(v, 4) for k, v in timings.items()})
    rep.summary({"from": from_isa, "to": to_isa, "output": str(output),
                 **{f"step {k}": f"{v:.4f} s" for k, v in timings.items()}}, title="Recode")
    rep.finish()


COMMANDS = {"checkpoint": checkpoint_cmd, "restore": restore_cmd, "recode": recode_cmd}
