"""Exception hierarchy of docker-hmigrate.

Every failure a user can meet is an HmigrateError subclass carrying a message (what went
wrong), a hint (what to do about it) and the process exit code. The CLI layer renders them
as ``error: ...`` / ``hint: ...`` on stderr and never shows a traceback unless ``-D`` is set.

Exit codes (documented in docs/plugin.md, keep both in sync; tests check it):

====  ===========================  ==============================================
code  class                        meaning
====  ===========================  ==============================================
0     -                            success
1     HmigrateError                generic failure
3     UnknownContainer,            container or Docker context does not exist
      UnknownContext
4     HostUnreachable              a Docker daemon cannot be reached
5     DaemonNotExperimental        checkpoint needs an experimental daemon
6     CriuError                    CRIU missing or failing
7     UnsupportedContainer         container cannot be checkpointed (TTY, ...)
8     InsufficientResources        target lacks memory/disk/...
9     ImageUnavailable             image (variant) not available on the target
10    TransferInterrupted          moving state between hosts failed
11    RestoreFailed                restore failed on target; source restored
12    ValidationFailed             pre-migration validation failed
13    RollbackFailed               rollback failed: needs attention
14    NotMigratableCrossISA        container cannot be moved to another ISA
15    HookFailed                   a hook failed or timed out
16    ContainerBusy                another migration of the container is running
17    BuildFailed                  `build`: the toolchain image or the program failed
125   UsageError                   bad command line (docker's own code for usage errors)
130   Interrupted                  interrupted by the user (Ctrl-C)
====  ===========================  ==============================================
"""

from __future__ import annotations


class HmigrateError(Exception):
    """Base class: a failure with a user-facing message, a hint and an exit code."""

    exit_code: int = 1
    default_hint: str | None = None

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form, used by ``--json`` output."""
        return {
            "class": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }


class UsageError(HmigrateError):
    exit_code = 125  # what the docker CLI and buildx return for a bad command line
    default_hint = "run `docker hmigrate --help` for usage"


class UnknownContainer(HmigrateError):
    exit_code = 3
    default_hint = "run `docker ps` on the source host to list running containers"


class UnknownContext(HmigrateError):
    exit_code = 3
    default_hint = (
        "create it with `docker context create NAME --docker host=URL`, "
        "or pass a URL (tcp://, ssh://)"
    )


class HostUnreachable(HmigrateError):
    exit_code = 4
    default_hint = "check that the daemon runs and that `docker --context NAME info` works"


class DaemonNotExperimental(HmigrateError):
    exit_code = 5
    default_hint = (
        'enable experimental features: add "experimental": true to the daemon\'s '
        "daemon.json and restart dockerd"
    )


class CriuError(HmigrateError):
    exit_code = 6
    default_hint = "install CRIU >= 4 on the host and check that `criu check` says 'Looks good.'"


class UnsupportedContainer(HmigrateError):
    exit_code = 7
    default_hint = "containers with a TTY (-t) cannot be checkpointed; recreate it without -t"


class InsufficientResources(HmigrateError):
    exit_code = 8
    default_hint = "free memory/disk on the target or choose another target with --to"


class ImageUnavailable(HmigrateError):
    exit_code = 9
    default_hint = "build or push the image for the target's platform, then retry"


class TransferInterrupted(HmigrateError):
    exit_code = 10
    default_hint = "check the connection between the hosts and retry; the source was kept"


class RestoreFailed(HmigrateError):
    exit_code = 11
    default_hint = "the container runs again on the source; rerun with -D for CRIU's log"


class ValidationFailed(HmigrateError):
    exit_code = 12
    default_hint = "fix the reported problems, or pass --force to skip validation"


class RollbackFailed(HmigrateError):
    exit_code = 13
    default_hint = (
        "the container may not be running anywhere: inspect both hosts with `docker ps -a` "
        "and the checkpoint kept on the source"
    )


class NotMigratableCrossISA(HmigrateError):
    exit_code = 14
    default_hint = "build the program with hmigrate-cc for both ISAs, or migrate to the same ISA"


class TargetDied(RestoreFailed):
    """The target stopped during verify, after it had started: the source resumes."""


class HookFailed(HmigrateError):
    exit_code = 15
    default_hint = "fix the hook command (or raise --hook-timeout), then retry"


class ContainerBusy(HmigrateError):
    exit_code = 16
    default_hint = "wait for the other migration of this container to finish"


class BuildFailed(HmigrateError):
    exit_code = 17
    default_hint = "fix the Dockerfile or the program, then rerun `docker hmigrate build`"


class Interrupted(HmigrateError):
    exit_code = 130
    default_hint = None


def _declared_exit_codes() -> dict[int, tuple[type[HmigrateError], ...]]:
    """Exit code -> the classes above that declare it (not those that inherit it, such as
    TargetDied), in the order they are written."""
    table: dict[int, list[type[HmigrateError]]] = {}
    todo: list[type[HmigrateError]] = [HmigrateError]
    while todo:
        cls = todo.pop(0)
        if "exit_code" in vars(cls):
            table.setdefault(cls.exit_code, []).append(cls)
        todo[:0] = cls.__subclasses__()
    return {code: tuple(classes) for code, classes in sorted(table.items())}


# Exit code -> classes; the docs table and the tests are checked against this.
EXIT_CODES: dict[int, tuple[type[HmigrateError], ...]] = _declared_exit_codes()
