"""The migration commands: migrate, check, checkpoint, restore (registered on cli.app)."""

from __future__ import annotations

import contextlib
import os
import tarfile
import uuid
from pathlib import Path
from typing import Annotated, Any

import docker.errors
import typer

from docker_hmigrate import errors, hosts, transfer
from docker_hmigrate.cli import (
    FormatOpt,
    JsonOpt,
    get_globals,
    get_reporter,
)
from docker_hmigrate.criu import stats as criu_stats
from docker_hmigrate.dockerstyle import DockerCommand
from docker_hmigrate.engine import Host, api_error_text
from docker_hmigrate.migrate import Migration, MigrationOptions, cross_isa_checks
from docker_hmigrate.spec import target_spec
from docker_hmigrate.validate import image_check, validate

ContainerArg = Annotated[
    str, typer.Argument(metavar="CONTAINER", help="Container name or id on the source host")]


def open_source(ctx: typer.Context) -> Host:
    endpoint = hosts.resolve_source(get_globals(ctx))
    return Host(endpoint.name, hosts.connect(endpoint))


def open_target(ctx: typer.Context, name_or_url: str) -> Host:
    endpoint = hosts.resolve_target(name_or_url, get_globals(ctx))
    return Host(endpoint.name, hosts.connect(endpoint))


def migrate_cmd(
    ctx: typer.Context,
    container: ContainerArg,
    to: Annotated[str, typer.Option(
        "--to", metavar="CONTEXT|URL", help="Target host: a Docker context or a daemon URL")],
    name: Annotated[str | None, typer.Option(
        "--name", metavar="NAME",
        help="Name of the container on the target (default: the same)")] = None,
    keep_source: Annotated[bool, typer.Option(
        "--keep-source", help="Leave the stopped source container instead of removing it")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Migrate even if checks fail that forcing can get past (memory and "
                        "disk estimates, CRIU/cgroup/CPU differences)")] = False,
    hook_pre_restore: Annotated[str | None, typer.Option(
        "--hook-pre-restore", metavar="CMD",
        help="Shell command run before the restore; a failure aborts and rolls back")] = None,
    hook_post_restore: Annotated[str | None, typer.Option(
        "--hook-post-restore", metavar="CMD",
        help="Shell command run once the target runs")] = None,
    hook_failed_restore: Annotated[str | None, typer.Option(
        "--hook-failed-restore", metavar="CMD",
        help="Shell command run when the migration fails, before the rollback")] = None,
    verify_seconds: Annotated[float, typer.Option(
        "--verify-seconds", help="How long the restored container must keep running")] = 1.0,
    hook_timeout: Annotated[float, typer.Option(
        "--hook-timeout", metavar="SECONDS",
        help="Kill a hook that runs longer than this; it then counts as failed")] = 60.0,
    json_mode: JsonOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Live-migrate a running container to another Docker host.

    The container is validated, recreated on the target with the same configuration,
    checkpointed, moved (memory, changed files, named volumes) and restored there; the
    source is removed only once the target runs. On any failure the source is restored.
    Hooks get HMIGRATE_CONTAINER, HMIGRATE_SOURCE, HMIGRATE_TARGET, HMIGRATE_CHECKPOINT,
    HMIGRATE_TARGET_CONTAINER_ID ... in their environment.

    Examples:

      docker hmigrate migrate web --to hm-b

      docker --context hm-a hmigrate migrate redis --to tcp://10.77.0.2:2375 --json

      docker hmigrate migrate web --to hm-b --name web2 --keep-source
        --hook-post-restore 'curl -fsS http://lb/reload'
    """
    rep = get_reporter(ctx, json_mode=json_mode, fmt=fmt)
    json_mode = rep.json_mode
    hooks = {k: v for k, v in (("pre-restore", hook_pre_restore),
                               ("post-restore", hook_post_restore),
                               ("failed-restore", hook_failed_restore)) if v}
    opts = MigrationOptions(container, target_name=name, keep_source=keep_source, force=force,
                            hooks=hooks, verify_seconds=verify_seconds, hook_timeout=hook_timeout)
    opts.check()  # bad values are refused before any host is touched
    src, dst = open_source(ctx), open_target(ctx, to)
    result = Migration(src, dst, opts, rep).run()
    rep.summary({
        "container": f"{result['container']} -> {result['target_container']} on {dst.name}",
        "ISA": f"{result['source_isa']} -> {result['target_isa']}",
        "downtime": f"{result['downtime_seconds']:.3f} s (freeze to running on the target)",
        "total": f"{result['total_seconds']:.3f} s",
        "moved": f"{result['bytes_moved'] / 1e6:.1f} MB",
        **{f"phase {p.name}": f"{p.seconds:.3f} s" for p in rep.phases},
        "checkpoint by": result.get("checkpoint_path", "api"),
        **({"CRIU dump": criu_stats.summary(result["criu_dump"])}
           if result.get("criu_dump") else {}),
        **({"frozen": f"{result['downtime_frozen_seconds']:.3f} s (CRIU's freeze to running "
                      "on the target)"} if "downtime_frozen_seconds" in result else {}),
    }, title="Migration complete")
    rep.finish()


def check_cmd(
    ctx: typer.Context,
    container: ContainerArg,
    to: Annotated[list[str] | None, typer.Option(
        "--to", metavar="CONTEXT|URL",
        help="Target to check; repeat it to rank several. Default: every context")] = None,
    json_mode: JsonOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Run the pre-migration validations only: nothing is frozen or created.

    With one --to, every check is listed and the exit code is that of the first failure.
    With several targets (or none: every Docker context), they are ranked: hosts that
    pass every check first, then by free memory.

    Examples:

      docker hmigrate check web --to hm-b

      docker hmigrate check web            # rank every context as a target
    """
    rep = get_reporter(ctx, json_mode=json_mode, fmt=fmt)
    json_mode = rep.json_mode
    src = open_source(ctx)
    inspect = src.inspect(container)
    targets = to or [e.name for e in hosts.list_contexts(get_globals(ctx))]
    results: list[dict[str, Any]] = []
    first_failure: errors.HmigrateError | None = None
    for target in targets:
        with rep.phase(f"check {target}") as ph:
            try:
                dst = open_target(ctx, target)
                if dst.info.get("ID") == src.info.get("ID") and not to:
                    ph.skip("the source itself")
                    continue
                spec = target_spec(inspect, inspect["Name"].lstrip("/"))
                cross = (cross_isa_checks(src, dst, inspect, spec)[0]
                         if src.isa != dst.isa else None)
                validation = validate(src, dst, inspect, spec,
                                      image_check(src, dst, spec.image, inspect["Image"]), cross)
            except errors.HmigrateError as exc:
                results.append({"target": target, "ok": False, "error": exc.to_dict(),
                                "checks": []})
                first_failure = first_failure or exc
                continue
            failed = validation.failures
            ph.update("all checks pass" if not failed else f"{len(failed)} failed")
            results.append({
                "target": target, "ok": not failed,
                "mem_available_bytes": validation.target_facts.mem_available,
                "checks": [c.to_dict() for c in validation.checks],
            })
            if failed and first_failure is None:
                try:
                    validation.raise_for_failures()
                except errors.HmigrateError as exc:
                    first_failure = exc
    ranked = sorted(results, key=lambda r: (not r["ok"], -r.get("mem_available_bytes", 0)))
    rep.set("container", inspect["Name"].lstrip("/"))
    rep.set("container_id", inspect["Id"])
    rep.set("targets", ranked)
    if not json_mode:
        for r in ranked:
            typer.echo(f"{'OK  ' if r['ok'] else 'FAIL'} {r['target']}"
                       + (f": {r['error']['message']}" if r.get("error") else ""))
            for c in r["checks"]:
                mark = "ok  " if c["ok"] else ("warn" if c.get("warning") else "FAIL")
                typer.echo(f"    {mark} {c['check']}: {c['detail']}")
                if not c["ok"] and c.get("hint"):
                    typer.echo(f"         hint: {c['hint']}")
    if len(targets) == 1 and first_failure is not None:
        raise first_failure
    if not any(r["ok"] for r in ranked):
        raise errors.ValidationFailed("no suitable target", hint="see the failed checks above")
    rep.finish()


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


def register(app: typer.Typer) -> None:
    for name, func in (("migrate", migrate_cmd), ("check", check_cmd),
                       ("checkpoint", checkpoint_cmd), ("restore", restore_cmd),
                       ("recode", recode_cmd)):
        app.command(name, cls=DockerCommand)(func)
