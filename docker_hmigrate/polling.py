"""Waiting on state the engine or a container changes, with tenacity (one place for it).

`poll` waits for a value (a park announcement, a program reaching its state); `watch`
keeps checking for a whole period (a restored container that must keep running). Both
stop at the same deadline as a hand-written `while time.monotonic() < deadline` loop,
and let exceptions of the check itself through at once (a failed check is not retried).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

T = TypeVar("T")


def poll(check: Callable[[], T | None], timeout: float, interval: float) -> T | None:
    """Call `check` every `interval` seconds until it returns something other than None
    (returned), for at most `timeout` seconds (then None)."""
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda value: value is None),
        retry_error_callback=lambda _state: None,  # the deadline: None, the caller says why
    )
    return retrying(check)


def watch(check: Callable[[], None], seconds: float, interval: float) -> None:
    """Call `check` every `interval` seconds for `seconds` (at least once); it raises to
    end the watch with a failure."""
    poll(lambda: check(), seconds, interval)  # check returns None: poll runs to its end


def wait_limit(variable: str, default: float) -> float:
    """How long to wait (seconds): the environment's `variable` if set, else `default`."""
    from docker_hmigrate import errors

    value = os.environ.get(variable, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise errors.UsageError(f"{variable}={value!r} is not a number of seconds") from None
