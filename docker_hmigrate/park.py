"""Bringing a toolchain-built program to its equivalence points, through the engine API.

The runtime linked into every binary built by hmigrate-cc parks each thread at its next
function entry when the process gets the park signal, and announces it with a file in
the container (docs/toolchain.md, "Runtime"); the resume signal withdraws the request.
"""

from __future__ import annotations

import io
import tarfile
import time
from dataclasses import dataclass

import docker.errors

from docker_hmigrate import errors
from docker_hmigrate.engine import Host, api_error_text


@dataclass
class ParkProtocol:
    park_signal: int = 40
    resume_signal: int = 41
    park_file: str = "/run/hmigrate/parked"
    fallback_file: str = "/tmp/.hmigrate-parked"

    @classmethod
    def from_metadata(cls, metadata: dict) -> ParkProtocol:
        rt = metadata.get("runtime", {})
        sig = rt.get("signals", {})
        return cls(sig.get("park", 40), sig.get("resume", 41),
                   rt.get("park_file", cls.park_file),
                   rt.get("park_file_fallback", cls.fallback_file))


def read_container_file(host: Host, container: str, path: str) -> bytes | None:
    """A file's contents from a container (running or not), or None if it is absent."""
    try:
        stream, _ = host.api.get_archive(container, path)
        data = b"".join(stream)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = next((m for m in tar.getmembers() if m.isfile()), None)
        if member is None:
            return None
        f = tar.extractfile(member)
        return f.read() if f else None


def parse_park_file(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def park(host: Host, container: str, proto: ParkProtocol, timeout: float = 15) -> dict:
    """Ask every thread to park; wait for the announcement. Withdraws on failure."""
    try:
        host.api.kill(container, signal=proto.park_signal)
    except docker.errors.APIError as exc:
        raise errors.NotMigratableCrossISA(
            f"cannot send the park signal to {container}: {api_error_text(exc)}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (proto.park_file, proto.fallback_file):
            data = read_container_file(host, container, path)
            if data:
                return parse_park_file(data.decode(errors="replace"))
        time.sleep(0.05)
    resume(host, container, proto)
    raise errors.NotMigratableCrossISA(
        f"{container} did not reach its equivalence points within {timeout:g}s "
        "(a thread that never calls a function, or blocks every signal, cannot park)",
        hint="the request was withdrawn and the container runs on; retry, or migrate to "
             "a host of the same ISA")


def resume(host: Host, container: str, proto: ParkProtocol) -> None:
    """Withdraw the park request: parked threads go on."""
    try:
        host.api.kill(container, signal=proto.resume_signal)
    except docker.errors.APIError as exc:
        raise errors.HmigrateError(
            f"cannot send the resume signal to {container}: {api_error_text(exc)}",
            hint=f"send it by hand: docker kill -s {proto.resume_signal} {container}") from exc
