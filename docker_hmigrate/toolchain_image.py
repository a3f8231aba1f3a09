"""The toolchain image `hmigrate/toolchain:<version>` that users' Dockerfiles start FROM.

It holds Debian's compilers and musl for both ISAs, the Python libraries hmigrate-cc
uses, and this package's own toolchain and runtime sources (so user Dockerfiles never
copy them in). It is made on the daemon when missing, and cached there:

1. the base: an image of a Debian root filesystem with the packages below, found on the
   daemon by its label (the lab's `hmlab/builder-base` carries the same one), or made with
   mmdebstrap from this machine's own APT sources and imported;
2. the toolchain: a build on that base from a generated context (wheels downloaded with
   this machine's pip configuration, the package's toolchain sources), labelled with a
   hash of its recipe, so it is rebuilt only when the recipe changes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from docker_hmigrate import __version__, errors

log = logging.getLogger("docker_hmigrate.toolchain_image")

REPOSITORY = "hmigrate/toolchain"
IMAGE = f"{REPOSITORY}:{__version__}"
SUITE = "bookworm"
# Keep equal to PACKAGES in lab/builder/build (a unit test checks it): the lab's builder
# base then serves as this image's base and no second root filesystem is made.
PACKAGES = ("gcc,make,libc6-dev,binutils,gcc-aarch64-linux-gnu,binutils-aarch64-linux-gnu,"
            "libc6-dev-arm64-cross,musl-dev,musl-dev:arm64,musl-tools,python3,python3-pip,"
            "dpkg-dev,xz-utils,patch,pkg-config,file")
# What hmigrate-cc imports (a unit test checks it against the toolchain's imports and
# lab/builder/build's WHEELS).
WHEELS = ("pyelftools>=0.31", "capstone>=5.0,<6", "tenacity>=8.2")
WHEEL_MODULES = {"elftools": "pyelftools", "capstone": "capstone", "tenacity": "tenacity"}
LABEL_ROOTFS = "org.hmigrate.rootfs"
LABEL_RECIPE = "org.hmigrate.recipe"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIRROR_ENV = "HMIGRATE_DEBIAN_MIRROR"

DOCKERFILE = f"""\
# hmigrate/toolchain: hmigrate-cc (x86-64 + aarch64 at once) on Debian {SUITE}.
FROM {{base}}
COPY wheels/ /tmp/wheels/
RUN python3 -m pip install -q --no-index --break-system-packages /tmp/wheels/*.whl \\
 && rm -rf /tmp/wheels
COPY docker_hmigrate /opt/hmigrate/docker_hmigrate
RUN printf '#!/bin/sh\\nexec python3 -m docker_hmigrate.toolchain cc "$@"\\n' \\
      >/usr/local/bin/hmigrate-cc \\
 && printf '#!/bin/sh\\nexec ar "$@"\\n' >/usr/local/bin/hmigrate-ar \\
 && chmod 755 /usr/local/bin/hmigrate-cc /usr/local/bin/hmigrate-ar \\
 && sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >/etc/apt/sources.list.d/src.list
ENV PYTHONPATH=/opt/hmigrate PYTHONDONTWRITEBYTECODE=1 CC=hmigrate-cc AR=hmigrate-ar
WORKDIR /src
"""


def rootfs_label() -> str:
    """The base's label value: the same scheme as lab/builder's cached root filesystem."""
    return f"builder-base-{hashlib.sha256((PACKAGES + chr(10)).encode()).hexdigest()[:16]}.tar"


def package_sources() -> list[tuple[str, Path]]:
    """(path in the image under docker_hmigrate/, file) for what hmigrate-cc runs: the
    package's own toolchain and runtime and the ISA facts they use (isa/), from wherever
    this plugin is installed."""
    root = Path(__file__).resolve().parent
    files = [("docker_hmigrate/__init__.py", root / "__init__.py")]
    for sub in ("isa", "toolchain", "runtime"):
        for f in sorted((root / sub).iterdir()):
            if f.is_file() and f.suffix in (".py", ".c", ".h", ".S"):
                files.append((f"docker_hmigrate/{sub}/{f.name}", f))
    return files


def recipe_hash(base_label: str, sources: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256()
    h.update(DOCKERFILE.encode())
    h.update(f"{base_label} {' '.join(WHEELS)}\n".encode())
    for name, path in sources:
        h.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


@dataclass
class Toolchain:
    image: str
    image_id: str
    config: dict  # the image's Config: what the user's stage inherits from it


def ensure(client: docker.DockerClient, say: Callable[[str], None]) -> Toolchain:
    """The toolchain image on this daemon, made if missing or out of date."""
    sources = package_sources()
    recipe = recipe_hash(rootfs_label(), sources)
    found = _image(client, IMAGE)
    if found is not None and (found.labels or {}).get(LABEL_RECIPE) == recipe:
        _tag_latest(client, found)
        return Toolchain(IMAGE, found.id, found.attrs.get("Config") or {})
    base = _base(client, say)
    say(f"building the toolchain image {IMAGE} (once: it is kept on the daemon)")
    with tempfile.TemporaryDirectory(prefix="hmigrate-toolchain-") as tmp:
        wheels = Path(tmp) / "wheels"
        _download_wheels(wheels)
        context = _context(base, wheels, sources)
        _build(client, context, IMAGE, {LABEL_RECIPE: recipe, LABEL_ROOTFS: rootfs_label()})
    found = _image(client, IMAGE)
    if found is None:
        raise errors.BuildFailed(f"the toolchain image {IMAGE} was built but is not there")
    _tag_latest(client, found)
    return Toolchain(IMAGE, found.id, found.attrs.get("Config") or {})


def _image(client: docker.DockerClient, ref: str):
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def _tag_latest(client: docker.DockerClient, image) -> None:
    # `FROM hmigrate/toolchain` in a user's Dockerfile means :latest
    if f"{REPOSITORY}:latest" not in (image.tags or []):
        image.tag(REPOSITORY, "latest")


def _base(client: docker.DockerClient, say: Callable[[str], None]) -> str:
    """Id of an image of the Debian root filesystem with PACKAGES, made when none exists."""
    label = rootfs_label()
    have = client.images.list(filters={"label": f"{LABEL_ROOTFS}={label}"})
    plain = [i for i in have if LABEL_RECIPE not in (i.labels or {})]
    if plain:
        return plain[0].id
    mmdebstrap = shutil.which("mmdebstrap")
    if not mmdebstrap:
        raise errors.BuildFailed(
            f"{IMAGE} is not on the daemon and this machine cannot make its Debian root "
            "filesystem: mmdebstrap is not installed",
            hint="install it (`apt-get install mmdebstrap arch-test`) and retry, or "
                 f"`docker load` an {IMAGE} saved on another machine")
    mirror = debian_mirror()
    say(f"making the toolchain's Debian {SUITE} root filesystem with mmdebstrap "
        "(a few minutes, once)")
    with tempfile.TemporaryDirectory(prefix="hmigrate-rootfs-") as tmp:
        out = Path(tmp) / "rootfs.tar"
        cmd = [mmdebstrap, "--quiet", "--format=tar", "--variant=minbase",
               "--architectures=amd64,arm64", f"--include={PACKAGES}", SUITE, str(out), mirror]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])
            raise errors.BuildFailed(
                f"mmdebstrap could not make the toolchain's root filesystem: {tail}",
                hint="foreign architectures need `apt-get install arch-test`; set "
                     f"{MIRROR_ENV} to a Debian archive URL if the mirror is wrong")
        say("importing the root filesystem")
        repo = f"{REPOSITORY}-base"
        with out.open("rb") as f:
            resp = client.api.import_image_from_stream(
                f, repository=repo, tag=label[:-4],
                changes=[f"LABEL {LABEL_ROOTFS}={label}", f"ENV {PATH_ENV}"])
    log.debug("import: %s", resp)
    return client.images.get(f"{repo}:{label[:-4]}").id


def debian_mirror() -> str:
    """The Debian archive of this machine's own APT configuration (as lab/mirror.sh)."""
    if os.environ.get(MIRROR_ENV):
        return os.environ[MIRROR_ENV].rstrip("/")
    try:
        out = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI)",
                              "Created-By: Packages"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    for uri in out.splitlines():
        if uri.strip() and "-security" not in uri:
            return uri.strip().rstrip("/")
    raise errors.BuildFailed(
        "no Debian archive in this machine's APT configuration to make the toolchain from",
        hint=f"set {MIRROR_ENV} to a Debian archive URL")


def _download_wheels(dest: Path) -> None:
    """The toolchain's Python libraries for the image's Python (3.11, x86-64), fetched with
    this machine's pip configuration: the image build itself has no index."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
           "--only-binary=:all:", "--python-version", "3.11", "--platform",
           "manylinux2014_x86_64", "--implementation", "cp", "--abi", "cp311", "-d",
           str(dest), *WHEELS]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])
        raise errors.BuildFailed(
            f"cannot download the toolchain's Python libraries ({', '.join(WHEELS)}): {tail}",
            hint="check this machine's pip configuration (index, proxy)")


def _context(base: str, wheels: Path, sources: list[tuple[str, Path]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", DOCKERFILE.format(base=base).encode())
        for whl in sorted(wheels.iterdir()):
            tar.add(str(whl), arcname=f"wheels/{whl.name}")
        for name, path in sources:
            tar.add(str(path), arcname=name)
    buf.seek(0)
    return buf


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _build(client: docker.DockerClient, context: io.BytesIO, tag: str,
           labels: dict[str, str]) -> None:
    for chunk in client.api.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                  forcerm=True, labels=labels, decode=True):
        if "error" in chunk:
            raise errors.BuildFailed(f"building {tag} failed: {chunk['error'].strip()}")
        if chunk.get("stream"):
            log.debug("%s", chunk["stream"].rstrip())
