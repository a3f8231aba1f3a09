"""User-facing output: phase progress, summaries, errors, and --json documents.

Human output goes to stderr (progress) and stdout (summaries), so that `--json` can own
stdout entirely: in JSON mode nothing but one JSON document is written there, at the end.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from docker_hmigrate.errors import HmigrateError

# Version of the --json document's shape (docs/json.md); bump on incompatible changes.
SCHEMA = "hmigrate/v1"


@dataclass
class PhaseRecord:
    name: str
    started: float
    seconds: float = 0.0
    status: str = "running"  # running | ok | failed | skipped
    detail: str = ""
    error: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # figures of the phase (CRIU's stats)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "seconds": round(self.seconds, 6),
            "status": self.status,
        }
        if self.detail:
            d["detail"] = self.detail
        if self.error:
            d["error"] = self.error
        if self.data:
            d["data"] = self.data
        return d


@dataclass
class Phase:
    """Handle yielded by Reporter.phase(): lets the body update its line."""

    record: PhaseRecord
    reporter: Reporter
    _status: Any = field(default=None, repr=False)

    def update(self, detail: str) -> None:
        self.record.detail = detail
        if self._status is not None:
            self._status.update(self.reporter._phase_label(self.record))

    def skip(self, reason: str = "") -> None:
        self.record.status = "skipped"
        if reason:
            self.record.detail = reason


class Reporter:
    """Progress and results for one command run.

    - TTY stderr: a rich spinner per phase, then a ✓/✗ line with its duration.
    - non-TTY: plain lines (`==> phase` / `    done in 1.23s`).
    - json_mode: silent while running; finish() prints one JSON document on stdout.
    """

    def __init__(
        self,
        json_mode: bool = False,
        err: IO[str] | None = None,
        out: IO[str] | None = None,
        tty: bool | None = None,
        debug: bool = False,
        quiet: bool = False,
        command: str | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.command = command
        self.err = err if err is not None else sys.stderr
        self.out = out if out is not None else sys.stdout
        self.tty = tty if tty is not None else _isatty(self.err)
        self.debug_enabled = debug
        self.quiet = quiet
        self.phases: list[PhaseRecord] = []
        self.data: dict[str, Any] = {}
        self.messages: list[dict[str, str]] = []
        self._console: Any = None
        self._finished = False

    # ---- progress --------------------------------------------------------------------

    def _rich(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.err, force_terminal=self.tty, highlight=False)
        return self._console

    @staticmethod
    def _phase_label(rec: PhaseRecord) -> str:
        from rich.markup import escape

        # Details come from daemons and users: never let them be read as rich markup.
        return escape(rec.name) + (f" [dim]({escape(rec.detail)})[/dim]" if rec.detail else "")

    @contextmanager
    def phase(self, name: str, detail: str = "") -> Iterator[Phase]:
        """Time a phase; marks it failed (and re-raises) if the body raises."""
        rec = PhaseRecord(name=name, started=time.monotonic(), detail=detail)
        self.phases.append(rec)
        handle = Phase(rec, self)
        status_cm = None
        if not self.json_mode and not self.quiet:
            if self.tty:
                status_cm = self._rich().status(self._phase_label(rec), spinner="dots")
                handle._status = status_cm.__enter__()
            else:
                self._line(f"==> {name}" + (f" ({detail})" if detail else ""))
        try:
            yield handle
        except BaseException as exc:
            rec.seconds = time.monotonic() - rec.started
            rec.status = "failed"
            rec.error = exc.message if isinstance(exc, HmigrateError) else type(exc).__name__
            self._close_phase(status_cm, rec)
            raise
        rec.seconds = time.monotonic() - rec.started
        if rec.status == "running":
            rec.status = "ok"
        self._close_phase(status_cm, rec)

    def _close_phase(self, status_cm: Any, rec: PhaseRecord) -> None:
        if self.json_mode or self.quiet:
            return
        if status_cm is not None:
            from rich.markup import escape

            status_cm.__exit__(None, None, None)
            mark = {"ok": "[green]✓[/green]", "failed": "[red]✗[/red]"}.get(rec.status, "-")
            note = rec.error if rec.status == "failed" and rec.error else rec.detail
            extra = f" [dim]({escape(note)})[/dim]" if note else ""
            name = escape(rec.name)
            self._rich().print(f"{mark} {name}{extra} [dim]{_fmt_secs(rec.seconds)}[/dim]")
        else:
            word = {"ok": "done", "failed": "FAILED", "skipped": "skipped"}.get(rec.status, "")
            self._line(f"    {word} in {_fmt_secs(rec.seconds)}")

    def _line(self, text: str) -> None:
        if self.tty:
            # Through rich, so a line printed while a spinner is live does not garble it.
            self._rich().print(text, markup=False, highlight=False)
            return
        self.err.write(text + "\n")
        self.err.flush()

    # ---- messages --------------------------------------------------------------------

    def _message(self, level: str, text: str) -> None:
        self.messages.append({"level": level, "message": text})
        if self.json_mode or (self.quiet and level == "info"):
            return
        prefix = "" if level == "info" else f"{level}: "
        self._line(prefix + text)

    def info(self, text: str) -> None:
        self._message("info", text)

    def warn(self, text: str) -> None:
        self._message("warning", text)

    def error(self, text: str) -> None:
        """A problem that stops the command (the final `error:` line follows)."""
        self._message("error", text)

    def debug(self, text: str) -> None:
        if self.debug_enabled:
            self._message("debug", text)

    # ---- results ---------------------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        """Record a result field (goes into the JSON document / summary)."""
        self.data[key] = value

    def summary(self, data: dict[str, Any], title: str = "Summary") -> None:
        """Show a key/value table for people (human mode only). Display strings never
        reach the JSON document: commands record machine values with set()."""
        if self.json_mode:
            return
        rows = [(str(k), _fmt_value(v)) for k, v in data.items()]
        if self.tty:
            from rich.table import Table

            table = Table(title=title, show_header=False, title_justify="left", box=None)
            table.add_column(style="bold")
            table.add_column()
            for k, v in rows:
                table.add_row(k, v)
            from rich.console import Console

            Console(file=self.out, force_terminal=_isatty(self.out)).print(table)
        else:
            width = max((len(k) for k, _ in rows), default=0)
            self.out.write(f"{title}:\n")
            for k, v in rows:
                self.out.write(f"  {k.ljust(width)}  {v}\n")
            self.out.flush()

    def document(self, ok: bool = True, error: HmigrateError | None = None) -> dict[str, Any]:
        """The one JSON document of a run (docs/json.md): the common keys, then what the
        command recorded with set()."""
        doc: dict[str, Any] = {"schema": SCHEMA, "command": self.command, "ok": ok}
        doc.update(self.data)
        doc["phases"] = [p.to_dict() for p in self.phases]
        doc.setdefault("total_seconds", round(sum(p.seconds for p in self.phases), 6))
        doc["messages"] = self.messages
        doc["error"] = error.to_dict() if error is not None else None
        return doc

    def finish(self, ok: bool = True, error: HmigrateError | None = None) -> None:
        """End of command: in JSON mode, print the document (once)."""
        if self._finished:
            return
        self._finished = True
        if self.json_mode:
            self.out.write(json.dumps(self.document(ok, error), indent=2, default=str) + "\n")
            self.out.flush()

    def fail(self, error: HmigrateError) -> None:
        """Report a failure: JSON document in JSON mode, plus error/hint on stderr."""
        self.finish(ok=False, error=error)
        render_error(error, self.err)


def render_error(error: HmigrateError, stream: IO[str] | None = None) -> None:
    """`error: <message>` and `hint: <what to do>` on stderr."""
    stream = stream if stream is not None else sys.stderr
    stream.write(f"error: {error.message}\n")
    if error.hint:
        stream.write(f"hint: {error.hint}\n")
    stream.flush()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _fmt_secs(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
