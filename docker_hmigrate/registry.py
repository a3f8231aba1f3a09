"""Image references, and the few calls of a registry's HTTP API v2 the engine API lacks:
reading a pushed image's manifest and pushing a manifest list (the engine can push images
but not lists; `docker manifest` would need the CLI's experimental configuration)."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

import docker.auth
import docker.utils
import requests

from docker_hmigrate import errors

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST_V2 = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DEFAULT_REGISTRY = "docker.io"


@dataclass(frozen=True)
class Ref:
    """An image reference split as the registry API needs it."""

    registry: str  # host[:port]; docker.io when none is written
    repository: str  # path on that registry
    tag: str
    name: str  # what the engine calls the repository (the reference without its tag)

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"

    def with_tag(self, tag: str) -> str:
        return f"{self.name}:{tag}"


def parse_ref(ref: str) -> Ref:
    """REF as given to `build -t`: [REGISTRY/]PATH[:TAG], no digest."""
    if not ref or ref != ref.strip() or "@" in ref:
        raise errors.UsageError(f"invalid image reference {ref!r} for -t",
                                hint="use NAME[:TAG], e.g. localhost:5000/me/app:1")
    name, tag = docker.utils.parse_repository_tag(ref)
    if name != name.lower() or not name:
        raise errors.UsageError(f"invalid image reference {ref!r}: repository names are "
                                "lower case", hint="e.g. localhost:5000/me/app:1")
    registry, repository = docker.auth.resolve_repository_name(name)
    if registry in ("index.docker.io", DEFAULT_REGISTRY) and "/" not in repository:
        repository = f"library/{repository}"
    return Ref(registry, repository, tag or "latest", name)


def is_loopback(registry: str) -> bool:
    if registry.startswith("["):  # [v6]:port
        host = registry[1:].split("]", 1)[0]
    else:
        host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Registry:
    """One registry, over HTTPS, or plain HTTP when insecure (the docker daemon treats
    loopback registries as insecure by default, and so does this)."""

    def __init__(self, host: str, insecure: bool = False, timeout: float = 30):
        self.host = host
        self.insecure = insecure or is_loopback(host)
        self.timeout = timeout
        self.session = requests.Session()
        self._base: str | None = None

    def base(self) -> str:
        """The URL that answers /v2/ (checked once): the registry is reachable."""
        if self._base is not None:
            return self._base
        schemes = ["https", "http"] if self.insecure else ["https"]
        problems = []
        for scheme in schemes:
            url = f"{scheme}://{self.host}"
            try:
                resp = self.session.get(f"{url}/v2/", timeout=self.timeout)
            except requests.RequestException as exc:
                problems.append(f"{scheme}: {_reason(exc)}")
                continue
            if resp.status_code in (200, 401):
                if resp.status_code == 401:
                    raise errors.HostUnreachable(
                        f"registry {self.host} asks for authentication, which `build --push` "
                        "does not do yet",
                        hint="push to a registry without authentication (e.g. your own on "
                             "localhost:5000), or build without --push")
                self._base = url
                return url
            problems.append(f"{scheme}: HTTP {resp.status_code} on /v2/")
        raise errors.HostUnreachable(
            f"registry {self.host} is not reachable from this machine ({'; '.join(problems)})",
            hint="start the registry or fix the name in -t; a plain-HTTP registry other than "
                 "a loopback one needs --insecure")

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """The raw manifest (bytes exactly as stored: they define its digest) and its type."""
        resp = self._request("GET", f"/v2/{repository}/manifests/{reference}",
                             headers={"Accept": f"{MANIFEST_V2}, {OCI_MANIFEST}"})
        return resp.content, resp.headers.get("Content-Type", MANIFEST_V2).split(";")[0]

    def put_manifest_list(self, repository: str, tag: str, body: dict[str, Any]) -> str:
        """PUT a manifest list under tag; returns its digest."""
        data = json.dumps(body, indent=3).encode()
        resp = self._request("PUT", f"/v2/{repository}/manifests/{tag}", data=data,
                             headers={"Content-Type": body.get("mediaType", MANIFEST_LIST_V2)})
        return resp.headers.get("Docker-Content-Digest", "")

    def _request(self, method: str, path: str, **kw: Any) -> requests.Response:
        url = self.base() + path
        try:
            resp = self.session.request(method, url, timeout=self.timeout, **kw)
        except requests.RequestException as exc:
            raise errors.HostUnreachable(
                f"registry {self.host} did not answer {method} {path}: {_reason(exc)}") from exc
        if resp.status_code >= 400:
            detail = resp.text.strip().replace("\n", " ")[:300]
            raise errors.BuildFailed(
                f"registry {self.host} refused {method} {path}: HTTP {resp.status_code} "
                f"{detail}", hint="check the registry's log; it must accept manifest lists "
                                  "(Docker Distribution 2.3 or later)")
        return resp


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "WRONG_VERSION_NUMBER", "CERTIFICATE_VERIFY_FAILED"):
        if marker in text:
            return marker
    return text.splitlines()[0][:200] if text else type(exc).__name__
