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

    def __init_subclass__(cls, code: int | None = None, hint: str | None = None,
                          **kwargs: object) -> None:
        """`class X(HmigrateError, code=N, hint="...")`: X's exit code and default hint."""
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.exit_code = code
        if hint is not None:
            cls.default_hint = hint

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


class UsageError(HmigrateError, code=125, hint="run `docker hmigrate --help` for usage"):
    """A bad command line: docker's own code for usage errors (the CLI, buildx)."""


class UnknownContainer(HmigrateError, code=3, hint=(
        "run `docker ps` on the source host to list running containers")):
    """No such container on the source."""


class UnknownContext(HmigrateError, code=3, hint=(
        "create it with `docker context create NAME --docker host=URL`, or pass a URL "
        "(tcp://, ssh://)")):
    """No such Docker context."""


class HostUnreachable(HmigrateError, code=4, hint=(
        "check that the daemon runs and that `docker --context NAME info` works")):
    """A Docker daemon does not answer."""


class DaemonNotExperimental(HmigrateError, code=5, hint=(
        'enable experimental features: add "experimental": true to the daemon\'s '
        "daemon.json and restart dockerd")):
    """Checkpoints need an experimental daemon."""


class CriuError(HmigrateError, code=6, hint=(
        "install CRIU >= 4 on the host and check that `criu check` says 'Looks good.'")):
    """CRIU is missing or failing."""


class UnsupportedContainer(HmigrateError, code=7, hint=(
        "containers with a TTY (-t) cannot be checkpointed; recreate it without -t")):
    """The container cannot be checkpointed (a TTY, ...)."""


class ContainerStopped(UnsupportedContainer):
    """The container stopped on its own while the migration was under way (its program
    ended): nothing is left to move, and nothing of it to resume."""


class InsufficientResources(HmigrateError, code=8, hint=(
        "free memory/disk on the target or choose another target with --to")):
    """The target lacks memory, disk, ..."""


class ImageUnavailable(HmigrateError, code=9, hint=(
        "build or push the image for the target's platform, then retry")):
    """The image (its variant for the target) is not available there."""


class TransferInterrupted(HmigrateError, code=10, hint=(
        "check the connection between the hosts and retry; the source was kept")):
    """Moving state between the hosts failed."""


class RestoreFailed(HmigrateError, code=11, hint=(
        "the container runs again on the source; rerun with -D for CRIU's log")):
    """The restore failed on the target; the source was restored."""


class ValidationFailed(HmigrateError, code=12, hint=(
        "fix the reported problems, or pass --force to skip validation")):
    """A pre-migration validation failed."""


class RollbackFailed(HmigrateError, code=13, hint=(
        "the container may not be running anywhere: inspect both hosts with `docker ps "
        "-a` and the checkpoint kept on the source")):
    """The rollback failed too: needs attention."""


class NotMigratableCrossISA(HmigrateError, code=14, hint=(
        "build the program with hmigrate-cc for both ISAs, or migrate to the same ISA")):
    """The container cannot move to another ISA."""


class TargetDied(RestoreFailed):
    """The target stopped during verify, after it had started: the source resumes."""


class HookFailed(HmigrateError, code=15, hint=(
        "fix the hook command (or raise --hook-timeout), then retry")):
    """A hook failed or timed out."""


class ContainerBusy(HmigrateError, code=16, hint=(
        "wait for the other migration of this container to finish")):
    """Another migration of the container is running."""


class BuildFailed(HmigrateError, code=17, hint=(
        "fix the Dockerfile or the program, then rerun `docker hmigrate build`")):
    """`build`: the toolchain image or the program failed."""


class Interrupted(HmigrateError, code=130):
    """Interrupted by the user (Ctrl-C)."""


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
