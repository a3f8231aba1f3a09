"""Moving state between two Docker hosts as tar streams, through the engine API only.

A folder on one host is read with GET /containers/{helper}/archive on a helper container
that bind-mounts it, and written with PUT /containers/{helper}/archive on a helper on the
other host: the stream passes through this process in chunks, never to disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import docker.errors
import requests

from docker_hmigrate.engine import Host, api_error_text
from docker_hmigrate.errors import TransferInterrupted

CHUNK = 1 << 20
SRC_MOUNT = "/hmigrate-src"
DST_MOUNT = "/hmigrate-dst"

Progress = Callable[[int], None]


@dataclass
class Transferred:
    what: str
    bytes: int
    seconds: float


def _counted(stream: Iterator[bytes], tally: list[int], progress: Progress | None):
    for chunk in stream:
        tally[0] += len(chunk)
        if progress:
            progress(len(chunk))
        yield chunk


def copy_folder(
    what: str,
    src: Host, src_image: str, src_bind: str,
    dst: Host, dst_image: str, dst_bind: str,
    progress: Progress | None = None,
) -> Transferred:
    """Copy the contents of src_bind (a host path or a volume name) into dst_bind.

    The images only have to exist on each host: helper containers are never started.
    """
    started = time.monotonic()
    tally = [0]
    try:
        with src.helper(src_image, [f"{src_bind}:{SRC_MOUNT}:ro"]) as src_helper, \
                dst.helper(dst_image, [f"{dst_bind}:{DST_MOUNT}"]) as dst_helper:
            # "/." archives the folder's contents, not the folder itself.
            stream, _stat = src.api.get_archive(src_helper, f"{SRC_MOUNT}/.", chunk_size=CHUNK)
            ok = dst.api.put_archive(dst_helper, DST_MOUNT, _counted(stream, tally, progress))
            if not ok:
                raise TransferInterrupted(f"{dst.name} refused the {what} archive")
    except (docker.errors.APIError, requests.RequestException, OSError) as exc:
        raise TransferInterrupted(
            f"moving the {what} from {src.name} to {dst.name} failed after "
            f"{tally[0]} bytes: {api_error_text(exc)}",
            hint="check that both daemons are reachable and have free disk, then retry",
        ) from exc
    return Transferred(what, tally[0], time.monotonic() - started)


def copy_image(src: Host, dst: Host, ref: str, progress: Progress | None = None) -> Transferred:
    """Stream an image from one daemon to the other (docker save | docker load)."""
    started = time.monotonic()
    tally = [0]
    try:
        stream = src.api.get_image(ref, chunk_size=CHUNK)
        for _ in dst.api.load_image(_counted(stream, tally, progress), quiet=True):
            pass
    except (docker.errors.APIError, requests.RequestException, OSError) as exc:
        raise TransferInterrupted(
            f"copying image {ref} from {src.name} to {dst.name} failed: {api_error_text(exc)}",
            hint="push the image to a registry both hosts can pull from, then retry",
        ) from exc
    return Transferred(f"image {ref}", tally[0], time.monotonic() - started)
