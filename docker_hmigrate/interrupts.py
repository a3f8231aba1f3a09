"""Ctrl-C and SIGTERM, as the migration needs them.

- One Ctrl-C in a terminal reaches the plugin twice (the terminal signals the whole
  foreground process group and the docker CLI forwards it too; the CLI's socket closing
  adds a SIGTERM): signals closer than DUPLICATE_WINDOW to the previous one are the same
  interrupt.
- The first interrupt raises KeyboardInterrupt, unless the main thread is inside
  `shielded()` (a rollback, removing a helper, recording what was just created): then it
  is kept pending and raised when the outermost shield ends, so that nothing is left
  half-done. A second distinct interrupt only warns; the third forces an exit, as the
  docker CLI would (it SIGKILLs a plugin after three signals).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

DUPLICATE_WINDOW = 1.0  # seconds


class _State:
    depth = 0  # nesting of shielded()
    pending = False  # an interrupt arrived while shielded
    count = 0  # distinct interrupts so far
    last = float("-inf")  # monotonic time of the last signal (duplicates included)


_state = _State()


def reset() -> None:
    """Forget every interrupt (tests; a new command in the same process)."""
    global _state
    _state = _State()


def on_signal(signum: int, frame: object) -> None:
    now = time.monotonic()
    duplicate = now - _state.last < DUPLICATE_WINDOW
    _state.last = now
    if duplicate:
        return
    _state.count += 1
    if _state.count >= 3:
        sys.stderr.write("\nforced exit\n")
        os._exit(130)
    if _state.count == 2:
        sys.stderr.write("\nstill cleaning up; interrupt once more to force exit\n")
        return
    if _state.depth > 0:
        _state.pending = True
        return
    raise KeyboardInterrupt


def install() -> None:
    import signal

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def interrupted() -> bool:
    """Whether an interrupt has arrived (pending or already raised)."""
    return _state.count > 0


@contextlib.contextmanager
def shielded(consume: bool = False) -> Iterator[None]:
    """Defer interrupts of the main thread until the block is done.

    On leaving the outermost shield a pending interrupt is raised as KeyboardInterrupt,
    unless another exception is already on its way (it wins: the caller rolls back
    anyway) or `consume` is set (a rollback: the interrupt is what it is handling).
    Outside the main thread it does nothing (signals only reach the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.depth += 1
    failed = True
    try:
        yield
        failed = False
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _state.pending:
            _state.pending = False
            if not failed and not consume:
                raise KeyboardInterrupt
