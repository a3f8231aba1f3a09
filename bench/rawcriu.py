"""The floor for bench.migration: the same program dumped and restored by runc and CRIU
alone, no Docker, no containerd, on the same host.

A runc container is made from the workload's image (exported by host a's daemon into a
bundle on disk), run in the host's network namespace so that the benchmark can fill
Redis on a port of its own, dumped with `runc checkpoint --image-path` into a 0700 tmpfs
folder and restored with `runc restore` from there. CRIU's stats-dump / stats-restore
(in the work folder) give its own figures. Run as root with the lab up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from docker_hmigrate.criu import stats as criu_stats

RUNC = "runc"
ROOT = "/run/hmigrate-bench-runc"  # runc state of the bench's own containers


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()[-500:]}")
    return proc


class _Drain:
    """A pipe for a detached container's stdio (as containerd's shim gives one: CRIU
    dumps and restores pipes, not files of the host), read until it closes."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        self.tail = b""
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while chunk := os.read(self.read_fd, 65536):
            self.tail = (self.tail + chunk)[-4096:]
        os.close(self.read_fd)


def _detached(*args: str) -> _Drain:
    """runc run/restore -d with a drained pipe as the container's stdio."""
    drain = _Drain()
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=drain.write_fd,
                          stderr=drain.write_fd, timeout=600)
    os.close(drain.write_fd)
    if proc.returncode:
        time.sleep(0.1)
        raise RuntimeError(f"{' '.join(args)}: {drain.tail.decode(errors='replace')[-500:]}")
    return drain


class RawContainer:
    """A runc container of `image` (from the docker CLI `docker_cmd`) running `args`."""

    def __init__(self, docker_cmd: list[str], image: str, args: list[str]):
        self.id = f"hmigrate-bench-{uuid.uuid4().hex[:8]}"
        self.dir = Path(tempfile.mkdtemp(prefix="hmigrate-bench-"))  # 0700
        self.shm = Path(tempfile.mkdtemp(prefix="hmigrate-bench-", dir="/dev/shm"))
        rootfs = self.dir / "rootfs"
        rootfs.mkdir()
        cid = _run(*docker_cmd, "create", image, *args).stdout.strip()
        try:
            export = subprocess.Popen([*docker_cmd, "export", cid], stdout=subprocess.PIPE)
            _run("tar", "-x", "-C", str(rootfs), stdin=export.stdout)
            export.wait()
        finally:
            subprocess.run([*docker_cmd, "rm", "-f", cid], capture_output=True)
        _run(RUNC, "spec", "--bundle", str(self.dir))
        spec = json.loads((self.dir / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = list(args)
        spec["root"]["readonly"] = False
        # the host's network: the benchmark reaches Redis on 127.0.0.1
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "network"]
        (self.dir / "config.json").write_text(json.dumps(spec))
        self.state = "created"

    def start(self) -> None:
        _detached(RUNC, "--root", ROOT, "run", "-d", "--bundle", str(self.dir), self.id)
        self.state = "running"

    def checkpoint_restore(self) -> dict[str, Any]:
        """Dump to tmpfs, then restore from it: wall times and CRIU's own figures."""
        images, work = self.shm / "images", self.shm / "work"
        t0 = time.monotonic()
        _run(RUNC, "--root", ROOT, "checkpoint", "--image-path", str(images),
             "--work-path", str(work), self.id)
        t1 = time.monotonic()
        self.state = "dumped"
        _detached(RUNC, "--root", ROOT, "restore", "-d", "--image-path", str(images),
                  "--work-path", str(work), "--bundle", str(self.dir), self.id)
        t2 = time.monotonic()
        self.state = "running"
        dump = criu_stats.read(work, "dump") or {}
        restore = criu_stats.read(work, "restore") or {}
        frozen = dump.get("frozen_seconds", 0.0) + dump.get("freezing_seconds", 0.0)
        return {"downtime": t2 - t0, "total": t2 - t0, "dump wall": t1 - t0,
                "frozen to running": frozen + (t2 - t1),
                "restore wall": t2 - t1, "criu frozen": dump.get("frozen_seconds", 0.0),
                "criu restore": restore.get("restore_seconds", 0.0),
                "MB written": dump.get("pages_written", 0) * criu_stats.PAGE_SIZE / 1e6}

    def close(self) -> None:
        subprocess.run([RUNC, "--root", ROOT, "delete", "-f", self.id], capture_output=True)
        shutil.rmtree(self.shm, ignore_errors=True)  # process memory
        shutil.rmtree(self.dir, ignore_errors=True)
