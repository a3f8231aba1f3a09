"""`docker hmigrate build`: a user's Dockerfile in, a migratable multi-ISA image out.

1. The toolchain image (toolchain_image.py) is made sure of on the daemon.
2. The user's Dockerfile is built once, on the daemon's own platform: its program is
   compiled by hmigrate-cc for both ISAs at once, so nothing runs under emulation.
3. From that *stage* image the program's two variants and metadata (and whatever the
   Dockerfile put under /hmigrate/root) are read through the engine API.
4. Two images, linux/amd64 and linux/arm64, are assembled here as an image archive and
   `docker load`ed: a layer both share (/hmigrate with both variants and the metadata,
   /run/hmigrate, /tmp, the /hmigrate/root files), a layer with the platform's own
   variant at the program's path, and an image config written here (architecture,
   the user's ENTRYPOINT/CMD/ENV/..., the org.hmigrate.* labels from the metadata).
   Why not a builder: dockerd 20.10 refuses multi-platform builds, a per-platform build
   FROM scratch needs platform support of the daemon's builder, and an import cannot
   set the architecture on every engine; a loaded archive is the same on every engine,
   byte for byte reproducible, and its shared layer is stored and pushed once.
5. With --push: both images are pushed by the engine, then a manifest list joining them
   is PUT on the registry through its HTTP API (registry.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors

from docker_hmigrate import errors, registry, toolchain_image
from docker_hmigrate import isa as isas
from docker_hmigrate.recode import (
    LABEL_METADATA,
    LABEL_PROGRAM,
    LABEL_TOOLCHAIN,
    LABEL_VARIANTS,
    TOOLCHAIN_SCHEMA,
)
from docker_hmigrate.toolchain import contract

log = logging.getLogger("docker_hmigrate.build")

# Docker platform -> the toolchain's ISA name, and what a platform entry says about it.
PLATFORMS: dict[str, dict[str, str]] = {
    i.docker_arch: {"isa": i.name, "architecture": i.docker_arch, "os": "linux",
                    **({"variant": i.docker_variant} if i.docker_variant else {})}
    for i in isas.ISAS}
IMAGE_DIR = "/hmigrate"  # both variants and the metadata, in every platform's image
ROOT_DIR = "/hmigrate/root"  # the Dockerfile's extra files for the final images' /
# Image settings the final images take from the user's stage (the rest is the toolchain's).
CONFIG_KEYS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
               "Labels", "StopSignal", "Healthcheck")


@dataclass
class BuildOptions:
    ref: str
    context: Path
    dockerfile: Path | None = None
    program: str | None = None
    push: bool = False
    insecure: bool = False
    quiet: bool = False
    labels: dict[str, str] = field(default_factory=dict)  # --label, on both images


@dataclass
class PlatformImage:
    platform: str  # "linux/amd64"
    tag: str  # the per-platform name, e.g. REPO:latest-amd64
    image_id: str
    digest: str | None = None  # of its manifest in the registry, once pushed
    size: int | None = None


@dataclass
class BuildResult:
    ref: str
    program: str
    labels: dict[str, str]
    images: list[PlatformImage] = field(default_factory=list)
    local_tag: str | None = None  # REF, on this daemon, for its own platform
    manifest_list_digest: str | None = None


@dataclass
class Program:
    """What the stage image holds for the final images."""

    path: str  # absolute, e.g. /counter
    variants: dict[str, bytes]  # ISA -> ELF
    modes: dict[str, int]  # ISA -> file mode
    metadata_raw: bytes
    root: list[tuple[tarfile.TarInfo, bytes | None]]  # /hmigrate/root entries, relative


# ---- pure logic (unit-tested) --------------------------------------------------------------


def variant_paths(program: str) -> dict[str, str]:
    """Where hmigrate-cc -o PROGRAM wrote its outputs, in the stage image."""
    return {**{i: f"{program}_{i}" for i in isas.NAMES}, "metadata": f"{program}.hmigrate.json"}


def labels_for(program: str, metadata: dict[str, Any]) -> dict[str, str]:
    """The org.hmigrate.* labels that migrate and validate read (recode.load_program)."""
    if metadata.get("schema") != TOOLCHAIN_SCHEMA:
        raise errors.NotMigratableCrossISA(
            f"{program}.hmigrate.json is not hmigrate-cc metadata (schema "
            f"{metadata.get('schema')!r}, expected {TOOLCHAIN_SCHEMA})",
            hint="link the program with hmigrate-cc (CC=hmigrate-cc) of this plugin's version")
    base = posixpath.basename(program)
    return {
        LABEL_TOOLCHAIN: metadata["schema"],
        LABEL_PROGRAM: program,
        LABEL_VARIANTS: " ".join(f"{IMAGE_DIR}/{base}_{i}" for i in isas.NAMES),
        LABEL_METADATA: f"{IMAGE_DIR}/{base}.hmigrate.json",
    }


def program_path(stage: dict[str, Any], toolchain: dict[str, Any], given: str | None) -> str:
    """The program the images run: --program, else the first word of the ENTRYPOINT (or,
    without one, the CMD) the Dockerfile declared, in exec form with an absolute path."""
    entry, cmd = _declared(stage, toolchain, "Entrypoint"), _declared(stage, toolchain, "Cmd")
    declared = (entry or cmd or [None])[0]
    if given:
        if not given.startswith("/"):
            raise errors.UsageError(f"--program {given}: give the program's absolute path in "
                                    "the image built by the Dockerfile, e.g. --program /app")
        if declared and declared != given:
            raise errors.UsageError(
                f"the Dockerfile runs {declared} but --program is {given}: the images hold "
                f"only {given}", hint=f'declare ENTRYPOINT ["{given}", ...] or CMD ["{given}"]')
        return posixpath.normpath(given)
    if not declared:
        raise errors.BuildFailed(
            "the Dockerfile declares no program to run (no ENTRYPOINT or CMD)",
            hint='add CMD ["/app"] (exec form) to the Dockerfile, or pass --program /app')
    if declared in ("/bin/sh", "sh", "/bin/bash") and "-c" in (entry or cmd)[1:2]:
        raise errors.BuildFailed(
            f"the Dockerfile runs a shell ({' '.join(entry or cmd)}): the images run the "
            "program itself, without a shell",
            hint='use the exec form, CMD ["/app", "arg"], or pass --program /app')
    if not declared.startswith("/"):
        raise errors.BuildFailed(
            f"the Dockerfile runs {declared!r}: the program needs an absolute path",
            hint=f'write CMD ["/path/to/{declared}"], or pass --program /path/to/{declared}')
    return posixpath.normpath(declared)


def _declared(stage: dict[str, Any], toolchain: dict[str, Any], key: str) -> list[str] | None:
    value = stage.get(key) or None
    return None if value == (toolchain.get(key) or None) else value


def final_config(stage: dict[str, Any], toolchain: dict[str, Any], program: str,
                 labels: dict[str, str]) -> dict[str, Any]:
    """The container config of the final images: what the user's Dockerfile declared on
    top of the toolchain image, and the labels. PATH and the toolchain's variables go
    (the final images have no toolchain); the WORKDIR only if the user set one."""
    out: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        value = stage.get(key)
        if key == "Env":
            inherited = set(toolchain.get("Env") or [])
            value = [e for e in value or [] if e not in inherited] or None
        elif key == "Labels":
            inherited = toolchain.get("Labels") or {}
            value = {k: v for k, v in (value or {}).items() if inherited.get(k) != v}
            value.update(labels)
        elif key in ("WorkingDir", "User") and value == toolchain.get(key):
            value = None
        elif key in ("Entrypoint", "Cmd"):
            value = _declared(stage, toolchain, key)
        if value:
            out[key] = value
    if not out.get("Entrypoint") and not out.get("Cmd"):
        out["Cmd"] = [program]
    return out


def image_config(arch: str, config: dict[str, Any], diff_ids: list[str], created: str,
                 history: list[str]) -> dict[str, Any]:
    """An image configuration (the JSON an image ID is the digest of)."""
    plat = PLATFORMS[arch]
    doc: dict[str, Any] = {"architecture": plat["architecture"], "os": plat["os"]}
    if "variant" in plat:
        doc["variant"] = plat["variant"]
    doc.update({
        "config": config,
        "created": created,
        "history": [{"created": created, "created_by": h} for h in history],
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    return doc


def manifest_list(entries: Iterable[tuple[str, str, int]]) -> dict[str, Any]:
    """A Docker manifest list (schema 2) of (arch, manifest digest, manifest size)."""
    manifests = []
    for arch, digest, size in entries:
        platform = {k: v for k, v in PLATFORMS[arch].items() if k != "isa"}
        manifests.append({"mediaType": registry.MANIFEST_V2, "size": size, "digest": digest,
                          "platform": platform})
    return {"schemaVersion": 2, "mediaType": registry.MANIFEST_LIST_V2, "manifests": manifests}


def platform_tag(ref: registry.Ref, arch: str) -> str:
    return ref.with_tag(f"{ref.tag}-{arch}")


def check_program(program: Program) -> dict[str, Any]:
    """The metadata, once the variants are what it says they are."""
    try:
        metadata = json.loads(program.metadata_raw)
    except ValueError as exc:
        raise errors.NotMigratableCrossISA(
            f"{program.path}.hmigrate.json is not valid JSON ({exc})",
            hint="relink the program with hmigrate-cc") from exc
    labels_for(program.path, metadata)  # the schema
    for name, data in program.variants.items():
        machine = int.from_bytes(data[18:20], "little") if data[:4] == b"\x7fELF" else None
        if machine != isas.get(name).elf_machine:
            raise errors.NotMigratableCrossISA(
                f"{program.path}_{name} is not an {name} executable",
                hint="relink the program with hmigrate-cc")
        want = contract.load(metadata).binary(name).sha256
        if want and hashlib.sha256(data).hexdigest() != want:
            raise errors.NotMigratableCrossISA(
                f"{program.path}_{name} is not the binary its metadata describes (changed after "
                "the link: stripped or patched?)",
                hint="install the outputs of hmigrate-cc unchanged (no strip)")
    return metadata


# ---- layers and the image archive -----------------------------------------------------------


class Layer:
    """An uncompressed layer tar built in memory, entries in a fixed order and time."""

    def __init__(self, mtime: int):
        self.mtime = mtime
        self.entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        if not path:
            return
        self._parents(path)
        if path not in self.entries or self.entries[path][0].isdir():
            self.entries[path] = (self._info(path, tarfile.DIRTYPE, mode), None)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        self._parents(path)
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.entries[path] = (info, data)

    def add(self, info: tarfile.TarInfo, data: bytes | None) -> None:
        """An entry read from a tar (owner, mode, links kept), its time normalised."""
        info = _copy_info(info)
        info.name = info.name.strip("/")
        if not info.name or info.name == ".":
            return
        info.mtime = self.mtime
        self._parents(info.name)
        self.entries[info.name] = (info, data)

    def _parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if parent and parent not in self.entries:
            self.dir(parent)

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = kind, mode, self.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.entries, key=lambda n: n.split("/")):
                info, data = self.entries[name]
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def _copy_info(info: tarfile.TarInfo) -> tarfile.TarInfo:
    new = tarfile.TarInfo(info.name)
    for attr in ("size", "mode", "type", "linkname", "uid", "gid", "uname", "gname",
                 "devmajor", "devminor"):
        setattr(new, attr, getattr(info, attr))
    return new


def shared_layer(program: Program, mtime: int) -> Layer:
    """/hmigrate (both variants, the metadata), /run/hmigrate (the park file), /tmp, and the
    Dockerfile's /hmigrate/root files: the same bytes in both platforms' images."""
    layer = Layer(mtime)
    layer.dir("tmp", 0o1777)
    layer.dir("run/hmigrate")
    for info, data in program.root:
        layer.add(info, data)
    base = posixpath.basename(program.path)
    for isa, data in sorted(program.variants.items()):
        layer.file(f"{IMAGE_DIR}/{base}_{isa}", data, program.modes[isa] & 0o7777)
    layer.file(f"{IMAGE_DIR}/{base}.hmigrate.json", program.metadata_raw, 0o644)
    return layer


def program_layer(program: Program, isa: str, mtime: int) -> Layer:
    layer = Layer(mtime)
    layer.file(program.path, program.variants[isa], program.modes[isa] & 0o7777)
    return layer


def image_archive(out, ref: registry.Ref, program: Program, config: dict[str, Any],
                  created: str, mtime: int) -> dict[str, str]:
    """Write a `docker load` archive of both platforms' images to the file out; returns
    arch -> image ID (the digest of its config)."""
    shared = shared_layer(program, mtime).tar()
    shared_id = "sha256:" + hashlib.sha256(shared).hexdigest()
    ids: dict[str, str] = {}
    manifest = []
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add(tar, f"{shared_id[7:]}/layer.tar", shared)
        for arch, plat in PLATFORMS.items():
            own = program_layer(program, plat["isa"], mtime).tar()
            own_id = "sha256:" + hashlib.sha256(own).hexdigest()
            _add(tar, f"{own_id[7:]}/layer.tar", own)
            history = [f"hmigrate build: {IMAGE_DIR} (both variants and the metadata), "
                       f"{ROOT_DIR} files",
                       f"hmigrate build: {program.path} ({plat['isa']} variant)"]
            doc = image_config(arch, config, [shared_id, own_id], created, history)
            raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            digest = hashlib.sha256(raw).hexdigest()
            _add(tar, f"{digest}.json", raw)
            ids[arch] = f"sha256:{digest}"
            manifest.append({"Config": f"{digest}.json", "RepoTags": [platform_tag(ref, arch)],
                             "Layers": [f"{shared_id[7:]}/layer.tar", f"{own_id[7:]}/layer.tar"]})
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return ids


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


# ---- against the daemon ---------------------------------------------------------------------


Say = Callable[[str], None]


def run(client: docker.DockerClient, opts: BuildOptions, say: Say,
        build_output: Callable[[str], None]) -> BuildResult:
    context, dockerfile = check_inputs(opts)
    ref = registry.parse_ref(opts.ref)
    reg = None
    if opts.push:
        if ref.registry == registry.DEFAULT_REGISTRY:
            raise errors.UsageError(
                f"--push: {opts.ref} names no registry; the manifest list is pushed to the "
                "registry written in -t", hint="e.g. -t localhost:5000/me/app:1")
        reg = registry.Registry(ref.registry, insecure=opts.insecure)
        reg.base()  # unreachable: say so before a long build
    own = (client.version().get("Arch") or "").lower()
    # hmigrate-cc runs on x86-64 (docs/toolchain.md): no emulated builds
    if own != isas.X86_64.docker_arch:
        raise errors.BuildFailed(
            f"the daemon is {own or 'of an unknown architecture'}: the toolchain image runs "
            "on x86-64 (amd64) daemons", hint="build with an x86-64 host's context "
            "(docker --context NAME hmigrate build ...); the images run on both")
    tool = toolchain_image.ensure(client, say)
    say(f"building {dockerfile} on the toolchain image {tool.image}")
    stage_id = _build_stage(client, context, dockerfile, build_output)
    stage = client.api.inspect_image(stage_id)
    stage_config = stage.get("Config") or {}
    path = program_path(stage_config, tool.config, opts.program)
    program = read_program(client, stage_id, path)
    metadata = check_program(program)
    labels = labels_for(path, metadata)
    config = final_config(stage_config, tool.config, path, {**opts.labels, **labels})
    created = stage.get("Created") or "1970-01-01T00:00:00Z"
    mtime = _epoch(created)
    result = BuildResult(str(ref), path, labels)
    say(f"assembling linux/amd64 and linux/arm64 images of {path}")
    with tempfile.TemporaryFile(prefix="hmigrate-build-") as archive:
        ids = image_archive(archive, ref, program, config, created, mtime)
        archive.seek(0)
        _load(client, archive)
    for arch, image_id in ids.items():
        if client.api.inspect_image(image_id)["Id"] != image_id:
            raise errors.BuildFailed(f"the daemon loaded another image than {image_id}")
        result.images.append(PlatformImage(f"linux/{arch}", platform_tag(ref, arch), image_id))
    if own in ids:
        client.api.tag(ids[own], ref.name, ref.tag)
        result.local_tag = str(ref)
    if reg is not None:
        _push(client, reg, ref, result, say)
    return result


def check_inputs(opts: BuildOptions) -> tuple[Path, Path]:
    """The context folder and the Dockerfile, checked before any daemon is asked."""
    registry.parse_ref(opts.ref)
    for key in opts.labels:
        if key in (LABEL_TOOLCHAIN, LABEL_PROGRAM, LABEL_VARIANTS, LABEL_METADATA) or not key:
            raise errors.UsageError(f"--label {key!r}: give KEY=VALUE; the program's "
                                    "org.hmigrate.* labels come from its metadata")
    context = opts.context
    if not context.is_dir():
        raise errors.UsageError(f"build context {context} is not a directory",
                                hint="give the folder with your sources, e.g. `.`")
    dockerfile = opts.dockerfile if opts.dockerfile is not None else context / "Dockerfile"
    if not dockerfile.is_file():
        raise errors.UsageError(
            f"no Dockerfile at {dockerfile}",
            hint="write one starting FROM hmigrate/toolchain (docs/build.md), or point at it "
                 "with -f")
    return context.resolve(), dockerfile.resolve()


def _build_stage(client: docker.DockerClient, context: Path, dockerfile: Path,
                 output: Callable[[str], None]) -> str:
    image_id = None
    try:
        stream = client.api.build(path=str(context), dockerfile=str(dockerfile), rm=True,
                                  forcerm=True, decode=True)
        for chunk in stream:
            if "error" in chunk:
                raise errors.BuildFailed(
                    f"the Dockerfile's build failed: {chunk['error'].strip()}",
                    hint="fix the step above; hmigrate-cc's own messages say what it refused")
            if chunk.get("stream"):
                output(chunk["stream"])
            aux = chunk.get("aux") or {}
            if aux.get("ID"):
                image_id = aux["ID"]
    except docker.errors.APIError as exc:
        raise errors.BuildFailed(f"the daemon refused the build: {exc.explanation or exc}") \
            from exc
    if not image_id:
        raise errors.BuildFailed("the daemon's build ended without an image")
    return image_id


def read_program(client: docker.DockerClient, image_id: str, path: str) -> Program:
    """The program's outputs and /hmigrate/root from the stage image, through a created
    (never started) container."""
    paths = variant_paths(path)
    container = client.api.create_container(image_id, entrypoint=["/nonexistent"], command=[],
                                            labels={"org.hmigrate.helper": "build"})
    cid = container["Id"]
    try:
        main = _read_file(client, cid, path)
        if main is None:
            raise errors.BuildFailed(
                f"program {path} not found in the image the Dockerfile built",
                hint=f"make the Dockerfile write it (RUN hmigrate-cc -o {path} ...), or name "
                     "the right one with --program")
        variants, modes = {}, {}
        for name in isas.NAMES:
            got = _read_file(client, cid, paths[name])
            if got is None:
                raise errors.NotMigratableCrossISA(
                    f"{path} was not built with hmigrate-cc: no {paths[name]} beside it",
                    hint=f"link it with hmigrate-cc (RUN hmigrate-cc -o {path} ... or make "
                         "CC=hmigrate-cc), which writes both variants and the metadata")
            variants[name], modes[name] = got
        meta = _read_file(client, cid, paths["metadata"])
        if meta is None:
            raise errors.NotMigratableCrossISA(
                f"{path} was not built with hmigrate-cc: no {paths['metadata']} beside it",
                hint="link it with hmigrate-cc, which writes the metadata the migration needs")
        root = _read_tree(client, cid, ROOT_DIR)
    finally:
        client.api.remove_container(cid, force=True)
    return Program(path, variants, modes, meta[0], root)


def _read_file(client: docker.DockerClient, cid: str, path: str) -> tuple[bytes, int] | None:
    try:
        stream, _stat = client.api.get_archive(cid, path)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        for info in tar:
            if info.isfile():
                f = tar.extractfile(info)
                return (f.read() if f else b""), info.mode
    return None  # a directory or a link, not a program


def _read_tree(client: docker.DockerClient, cid: str, path: str
               ) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    try:
        stream, _stat = client.api.get_archive(cid, path + "/.")
    except docker.errors.NotFound:
        return []
    out = []
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        for info in tar:
            info.name = _inside(info.name, path)
            if not info.name:
                continue
            if info.islnk():  # hard links name their target the same way
                info.linkname = _inside(info.linkname, path)
            data = tar.extractfile(info).read() if info.isfile() else None
            out.append((info, data))
    return out


def _inside(name: str, folder: str) -> str:
    """A name from GET /archive?path=FOLDER/. relative to FOLDER: the engine names the
    entries "./x" (or "NAME/x" after the folder's own name on some engines)."""
    if name.startswith("./"):
        return name[2:].strip("/")
    if name == ".":
        return ""
    head, _, rest = name.partition("/")
    return rest.strip("/") if head == posixpath.basename(folder) else name.strip("/")


def _load(client: docker.DockerClient, archive) -> None:
    try:
        result = client.api.load_image(archive)
    except docker.errors.APIError as exc:
        raise errors.BuildFailed(f"the daemon refused the assembled images: "
                                 f"{exc.explanation or exc}") from exc
    for chunk in result if not isinstance(result, dict) else [result]:
        if isinstance(chunk, dict) and chunk.get("error"):
            raise errors.BuildFailed(f"the daemon refused the assembled images: "
                                     f"{chunk['error']}")


def _push(client: docker.DockerClient, reg: registry.Registry, ref: registry.Ref,
          result: BuildResult, say: Say) -> None:
    for img in result.images:
        say(f"pushing {img.tag}")
        name, tag = img.tag.rsplit(":", 1)
        try:
            for chunk in client.api.push(name, tag=tag, stream=True, decode=True):
                if chunk.get("error"):
                    raise _push_error(img.tag, chunk["error"])
        except docker.errors.APIError as exc:
            raise _push_error(img.tag, str(exc.explanation or exc)) from exc
        raw, media_type = reg.manifest(ref.repository, tag)
        manifest = json.loads(raw)
        if (manifest.get("config") or {}).get("digest") != img.image_id:
            raise errors.BuildFailed(
                f"{img.tag} in the registry is not the image pushed ({img.image_id})",
                hint="another build pushed the same name at the same time? retry")
        img.digest, img.size = "sha256:" + hashlib.sha256(raw).hexdigest(), len(raw)
        if media_type != registry.MANIFEST_V2:
            raise errors.BuildFailed(f"the registry stored {img.tag} as {media_type}, "
                                     f"not {registry.MANIFEST_V2}")
    say(f"pushing the manifest list {ref}")
    body = manifest_list((i.platform.split("/")[1], i.digest, i.size) for i in result.images)
    result.manifest_list_digest = reg.put_manifest_list(ref.repository, ref.tag, body) or (
        "sha256:" + hashlib.sha256(json.dumps(body, indent=3).encode()).hexdigest())


def _push_error(tag: str, message: str) -> errors.HmigrateError:
    text = message.strip()
    if any(m in text for m in ("connection refused", "no such host", "i/o timeout",
                               "server gave HTTP response to HTTPS client")):
        return errors.HostUnreachable(
            f"the daemon cannot push {tag}: {text}",
            hint="the registry must be reachable from the Docker daemon too (a plain-HTTP "
                 "registry outside loopback must be in the daemon's insecure-registries)")
    return errors.BuildFailed(f"pushing {tag} failed: {text}")


def _epoch(created: str) -> int:
    try:
        stamp = created.rstrip("Z").split(".")[0]
        return int(datetime.fromisoformat(stamp + "+00:00").timestamp())
    except ValueError:
        return 0
