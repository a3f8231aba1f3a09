"""Fakes of the Docker engine for unit tests of pure logic (no daemon): an HTTP handler
answering the few API calls DockerClient(version="auto") makes, and a Host with the
APIClient calls validate makes."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

from docker_hmigrate.engine import Host
from docker_hmigrate.validate import Check


class FakeDaemon(BaseHTTPRequestHandler):
    """Answers just enough of the engine API for DockerClient(version="auto")."""

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path.endswith("/_ping"):
            body, ctype = b"OK", "text/plain"
        elif path.endswith("/containers/json"):
            body = json.dumps([{"Id": "c0ffee", "Names": ["/web"]}]).encode()
            ctype = "application/json"
        elif path.endswith("/containers/c0ffee/json"):
            body = json.dumps({"Id": "c0ffee", "Name": "/web", "State": {}}).encode()
            ctype = "application/json"
        elif path.endswith("/version"):
            body = json.dumps(
                {"Version": "99.0.0", "ApiVersion": "1.41", "Os": "linux", "Arch": "amd64"}
            ).encode()
            ctype = "application/json"
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


GOOD_PROBE = ("criu_version=4.2.1\ncriu_check=ok\nmem_available_kb=8000000\n"
              "disk_free_kb=90000000\ncpu_flags=fpu sse2\nrunc_version=1.1.5\n")


class FakeAPI:
    """engine.EngineAPIClient as validate uses it, with the real signatures: inspect_container
    takes no size (the size comes from inspect_container_size)."""

    timeout = 600

    def __init__(self, mem_usage: int = 50 << 20, size_rw: int = 4096, shm: int = 0):
        self.mem_usage, self.size_rw, self.shm = mem_usage, size_rw, shm

    def stats(self, cid, stream, one_shot):
        # cgroup v1 as Docker 20.10 reports it: shared memory is on the anon LRU lists
        rss = self.mem_usage - self.shm
        return {"memory_stats": {"usage": self.mem_usage + (200 << 20), "stats": {
            "total_rss": rss, "total_active_anon": rss // 2 + self.shm,
            "total_inactive_anon": rss - rss // 2, "total_cache": self.shm + (200 << 20),
            "total_inactive_file": 200 << 20}}}

    def inspect_container(self, cid):
        return {"Id": cid}

    def inspect_container_size(self, cid):  # engine.EngineAPIClient's GET .../json?size=1
        return {"Id": cid, "SizeRw": self.size_rw, "SizeRootFs": 1 << 30}

    # the migration's lock (a never-started container) and its removal
    def create_host_config(self, **kw):
        return kw

    def create_container(self, image, **kw):
        return {"Id": "lock-" + kw.get("name", "")}


class FakeHost:
    answer_within = Host.answer_within

    def __init__(self, name: str, probe: str = GOOD_PROBE, experimental: bool = True,
                 isa: str = "x86-64", mem_usage: int = 50 << 20, existing: list | None = None,
                 size_rw: int = 4096, shm: int = 0):
        self.name, self.isa, self.root_dir = name, isa, "/var/lib/docker"
        self.experimental = experimental
        self.info = {"ID": name, "CgroupDriver": "cgroupfs", "CgroupVersion": "1"}
        self.version = {"Version": "20.10.24",
                        "Components": [{"Name": "containerd", "Version": "1.6.20"}]}
        self.api = FakeAPI(mem_usage, size_rw, shm)
        self._probe = probe
        self.api.containers = lambda **kw: existing or []

    def run_probe(self, script, timeout=120):
        return 0, self._probe

    scratch_image = "hmigrate/scratch:1"
    labels: dict = {}

    def remove_quietly(self, cid):
        pass

    def remove_labelled(self, label, value):
        return []


INSPECT = {
    "Id": "c" * 64, "Name": "/web", "Image": "sha256:" + "1" * 64,
    "State": {"Running": True, "Paused": False, "Status": "running"},
    "Config": {"Image": "web", "Tty": False}, "HostConfig": {}, "Mounts": [],
    "NetworkSettings": {"Networks": {}},
}
IMAGE_OK = Check("image on target", True, "present")
