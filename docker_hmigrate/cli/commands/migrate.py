"""Moving a container: `migrate` (the whole pipeline, docker_hmigrate/migrate.py) and
`check` (its validations alone, against one target or every context)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from docker_hmigrate import errors, hosts, recover
from docker_hmigrate.cli.state import (
    ContainerArg,
    FormatOpt,
    JsonOpt,
    get_globals,
    get_reporter,
    open_source,
    open_target,
)
from docker_hmigrate.criu import stats as criu_stats
from docker_hmigrate.migrate import Migration, MigrationOptions, cross_isa_checks
from docker_hmigrate.spec import target_spec
from docker_hmigrate.validate import image_check, validate


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
    lazy: Annotated[bool, typer.Option(
        "--lazy", help="Post-copy: restore at once, pull the memory afterwards (CRIU lazy "
                       "pages). Checked before the freeze; see docs/lazy.md for what it "
                       "needs and where it is refused")] = False,
    direct: Annotated[bool, typer.Option(
        "--direct", help="Send the memory from the source host straight to the target "
                         "host during the dump (CRIU's page server on a private link), not "
                         "through this machine; the source stays frozen in place until the "
                         "target runs. Same ISA, fast path; see docs/downtime.md")] = False,
    compress: Annotated[str, typer.Option(
        "--compress", metavar="none|gzip",
        help="Compress the move's archives on their way to the target (gzip level 1, "
             "unpacked by the target daemon): pays on links slower than ~100 MB/s, costs "
             "CPU on fast ones (docs/downtime.md)")] = "none",
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

      docker hmigrate migrate redis --to hm-b --direct

      docker hmigrate migrate web --to hm-b --name web2 --keep-source
        --hook-post-restore 'curl -fsS http://lb/reload'
    """
    rep = get_reporter(ctx, json_mode=json_mode, fmt=fmt)
    json_mode = rep.json_mode
    hooks = {k: v for k, v in (("pre-restore", hook_pre_restore),
                               ("post-restore", hook_post_restore),
                               ("failed-restore", hook_failed_restore)) if v}
    opts = MigrationOptions(container, target_name=name, keep_source=keep_source, force=force,
                            hooks=hooks, verify_seconds=verify_seconds, hook_timeout=hook_timeout,
                            lazy=lazy, direct=direct, compress=compress)
    opts.check()  # bad values are refused before any host is touched
    src, dst = open_source(ctx), open_target(ctx, to)
    result = Migration(src, dst, opts, rep).run()
    rep.summary({
        "container": f"{result['container']} -> {result['target_container']} on {dst.name}",
        "ISA": f"{result['source_isa']} -> {result['target_isa']}",
        "downtime": f"{result['downtime_seconds']:.3f} s (freeze to running on the target)",
        "total": f"{result['total_seconds']:.3f} s",
        "moved": f"{result['bytes_moved'] / 1e6:.1f} MB"
                 + (f" ({result['bytes_sent'] / 1e6:.1f} MB sent, {result['compress']})"
                    if result["compress"] != "none" else ""),
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


def recover_cmd(
    ctx: typer.Context,
    container: ContainerArg,
    json_mode: JsonOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Undo a migration of the container that was killed outright (SIGKILL, a crash).

    A migration interrupted by Ctrl-C or SIGTERM rolls back by itself; one killed
    outright leaves its lock, helper containers and images behind, and possibly the source
    stopped with its dump. This decides as the migration would have: if the target runs
    the container, the move had completed and the stopped source is removed; otherwise
    the source is restored from its dump. Then the restart policy, the helpers, the
    images (process memory) and the lock are put right on both hosts. A later `migrate`
    of a running container does this by itself; a stopped one needs this command.
    Nothing to recover: exit 0.

    Examples:

      docker hmigrate recover web

      docker --context hm-a hmigrate recover redis --json
    """
    rep = get_reporter(ctx, json_mode=json_mode, fmt=fmt)
    src = open_source(ctx)
    with rep.phase("recover") as ph:
        result = recover.recover(src, container, lambda target: open_target(ctx, target),
                                 ph.update)
    for key, value in result.items():
        rep.set(key, value)
    where = {"source": f"on {src.name}", "target": f"on {result.get('target')}"}
    rep.summary({
        "container": result["container"],
        "interrupted migration": result["interrupted"] or "none found",
        "runs": where.get(result.get("runs_on") or "", "as it was (nothing to recover)"),
        **{f"done {i + 1}": action for i, action in enumerate(result["actions"])},
    }, title="Recovery complete" if result["actions"] else "Nothing to recover")
    rep.finish()


COMMANDS = {"migrate": migrate_cmd, "check": check_cmd, "recover": recover_cmd}
