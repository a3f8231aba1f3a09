"""`docker hmigrate build`: labels, image configs, the image archive, the manifest list,
references and the errors for bad input (no daemon: a fake engine API where one is needed)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
from pathlib import Path

import docker.errors
import pytest

from docker_hmigrate import build, errors, registry, toolchain_image
from docker_hmigrate.cli import app as cli

REPO = Path(__file__).resolve().parents[2]
SCHEMA = "hmigrate-toolchain/1"


def elf(machine: int, body: bytes = b"") -> bytes:
    head = bytearray(64)
    head[:4] = b"\x7fELF"
    head[18:20] = machine.to_bytes(2, "little")
    return bytes(head) + body


X86, A64 = elf(62, b"x86 code"), elf(183, b"a64 code")


def metadata(**extra) -> dict:
    return {"schema": SCHEMA, "binaries": {
        "x86-64": {"file": "counter_x86-64", "sha256": hashlib.sha256(X86).hexdigest()},
        "aarch64": {"file": "counter_aarch64", "sha256": hashlib.sha256(A64).hexdigest()}},
        **extra}


def program(root=None, meta=None) -> build.Program:
    return build.Program("/counter", {"x86-64": X86, "aarch64": A64},
                         {"x86-64": 0o100755, "aarch64": 0o100755},
                         json.dumps(meta or metadata()).encode(), root or [])


TOOLCHAIN_CONFIG = {
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH=/opt/hmigrate", "CC=hmigrate-cc"],
    "WorkingDir": "/src",
    "Labels": {"org.hmigrate.recipe": "abc", "org.hmigrate.rootfs": "builder-base-x.tar"},
}


def stage(**config) -> dict:
    out = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
           for k, v in TOOLCHAIN_CONFIG.items()}
    out.update(config)
    return out


# ---- labels and configs ---------------------------------------------------------------------


def test_labels_are_what_migrate_reads() -> None:
    labels = build.labels_for("/usr/bin/counter", metadata())
    assert labels == {
        "org.hmigrate.toolchain": SCHEMA,
        "org.hmigrate.program": "/usr/bin/counter",
        "org.hmigrate.variants": "/hmigrate/counter_x86-64 /hmigrate/counter_aarch64",
        "org.hmigrate.metadata": "/hmigrate/counter.hmigrate.json",
    }
    # recode.load_program finds each variant's ISA by its suffix
    assert [p.rsplit("_", 1)[1] for p in labels["org.hmigrate.variants"].split()] == \
        ["x86-64", "aarch64"]


def test_labels_refuse_other_metadata() -> None:
    with pytest.raises(errors.NotMigratableCrossISA) as exc:
        build.labels_for("/a", {"schema": "something/2"})
    assert exc.value.exit_code == 14 and "hmigrate-cc" in exc.value.hint


@pytest.mark.parametrize("config,given,expected", [
    ({"Cmd": ["/counter"]}, None, "/counter"),
    ({"Cmd": ["/counter", "--fast"]}, None, "/counter"),
    ({"Entrypoint": ["/srv/./app"], "Cmd": ["-v"]}, None, "/srv/app"),
    ({}, "/counter", "/counter"),
    ({"Cmd": ["/counter"]}, "/counter", "/counter"),
])
def test_program_path(config, given, expected) -> None:
    assert build.program_path(stage(**config), TOOLCHAIN_CONFIG, given) == expected


@pytest.mark.parametrize("config,given,cls,words", [
    ({}, None, errors.BuildFailed, "no ENTRYPOINT or CMD"),
    ({"Cmd": ["/bin/sh", "-c", "/counter"]}, None, errors.BuildFailed, "shell"),
    ({"Cmd": ["counter"]}, None, errors.BuildFailed, "absolute path"),
    ({}, "counter", errors.UsageError, "absolute path"),
    ({"Cmd": ["/other"]}, "/counter", errors.UsageError, "runs /other"),
])
def test_program_path_refusals(config, given, cls, words) -> None:
    with pytest.raises(cls) as exc:
        build.program_path(stage(**config), TOOLCHAIN_CONFIG, given)
    assert words in exc.value.message and exc.value.hint


def test_program_path_ignores_what_the_toolchain_image_declares() -> None:
    tool = dict(TOOLCHAIN_CONFIG, Cmd=["/bin/bash"])
    with pytest.raises(errors.BuildFailed):
        build.program_path(stage(Cmd=["/bin/bash"]), tool, None)


def test_final_config_keeps_only_what_the_user_declared() -> None:
    labels = build.labels_for("/counter", metadata())
    config = build.final_config(
        stage(Cmd=["/counter"], Env=TOOLCHAIN_CONFIG["Env"] + ["GREETING=hi"],
              ExposedPorts={"80/tcp": {}}, StopSignal="SIGINT",
              Labels={**TOOLCHAIN_CONFIG["Labels"], "maintainer": "me"}),
        TOOLCHAIN_CONFIG, "/counter", labels)
    assert config == {"Cmd": ["/counter"], "Env": ["GREETING=hi"],
                      "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGINT",
                      "Labels": {"maintainer": "me", **labels}}


def test_final_config_runs_the_program_when_nothing_is_declared() -> None:
    config = build.final_config(stage(WorkingDir="/data"), TOOLCHAIN_CONFIG, "/counter", {})
    assert config["Cmd"] == ["/counter"] and config["WorkingDir"] == "/data"
    assert "Env" not in config  # PATH etc. were the toolchain's


def test_image_config_per_platform() -> None:
    amd = build.image_config("amd64", {"Cmd": ["/a"]}, ["sha256:1", "sha256:2"], "T", ["x", "y"])
    arm = build.image_config("arm64", {"Cmd": ["/a"]}, ["sha256:1", "sha256:3"], "T", ["x", "y"])
    assert (amd["architecture"], amd["os"], "variant" in amd) == ("amd64", "linux", False)
    assert (arm["architecture"], arm["variant"]) == ("arm64", "v8")
    assert arm["rootfs"] == {"type": "layers", "diff_ids": ["sha256:1", "sha256:3"]}
    assert len(arm["history"]) == len(arm["rootfs"]["diff_ids"])


def test_manifest_list() -> None:
    body = build.manifest_list([("amd64", "sha256:aa", 700), ("arm64", "sha256:bb", 701)])
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert body["manifests"] == [
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 700,
         "digest": "sha256:aa", "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 701,
         "digest": "sha256:bb",
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
    ]


# ---- the image archive ----------------------------------------------------------------------


def root_entries() -> list:
    d = tarfile.TarInfo("etc")
    d.type, d.mode = tarfile.DIRTYPE, 0o755
    f = tarfile.TarInfo("etc/app.conf")
    f.size, f.mode, f.uid = 5, 0o600, 101
    link = tarfile.TarInfo("etc/app.link")
    link.type, link.linkname = tarfile.SYMTYPE, "app.conf"
    return [(d, None), (f, b"conf\n"), (link, None)]


def read_archive(data: bytes) -> tuple[list, dict]:
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            files[info.name] = tar.extractfile(info).read()
    return json.loads(files["manifest.json"]), files


def layer_members(raw: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for info in tar:
            out[info.name] = (info, tar.extractfile(info).read() if info.isfile() else None)
    return out


def test_image_archive_holds_both_platforms() -> None:
    ref = registry.parse_ref("localhost:5000/me/counter:1")
    labels = build.labels_for("/counter", metadata())
    buf = io.BytesIO()
    ids = build.image_archive(buf, ref, program(root_entries()), {"Cmd": ["/counter"],
                              "Labels": labels}, "2026-01-01T00:00:00Z", 1767225600)
    manifest, files = read_archive(buf.getvalue())
    assert [m["RepoTags"] for m in manifest] == [["localhost:5000/me/counter:1-amd64"],
                                                 ["localhost:5000/me/counter:1-arm64"]]
    shared = manifest[0]["Layers"][0]
    assert manifest[1]["Layers"][0] == shared  # stored and pushed once
    for m, arch, variant in ((manifest[0], "amd64", X86), (manifest[1], "arm64", A64)):
        raw = files[m["Config"]]
        assert ids[arch] == "sha256:" + hashlib.sha256(raw).hexdigest()  # the image ID
        config = json.loads(raw)
        assert config["architecture"] == arch and config["config"]["Labels"] == labels
        layers = [files[name] for name in m["Layers"]]
        assert config["rootfs"]["diff_ids"] == [
            "sha256:" + hashlib.sha256(raw).hexdigest() for raw in layers]
        own = layer_members(layers[1])
        assert own["counter"][1] == variant and own["counter"][0].mode == 0o755
        assert set(own) == {"counter"}
    common = layer_members(files[shared])
    assert common["hmigrate/counter_x86-64"][1] == X86
    assert common["hmigrate/counter_aarch64"][1] == A64
    assert json.loads(common["hmigrate/counter.hmigrate.json"][1])["schema"] == SCHEMA
    assert common["tmp"][0].mode == 0o1777 and common["run/hmigrate"][0].isdir()
    assert common["etc/app.conf"][1] == b"conf\n"
    assert (common["etc/app.conf"][0].mode, common["etc/app.conf"][0].uid) == (0o600, 101)
    assert common["etc/app.link"][0].issym() and common["etc/app.link"][0].linkname == "app.conf"
    assert {i.mtime for i, _ in common.values()} == {1767225600}
    names = list(common)
    assert names.index("hmigrate") < names.index("hmigrate/counter_x86-64")  # parents first


def test_image_archive_is_reproducible() -> None:
    ref = registry.parse_ref("localhost:5000/me/counter")
    outs = []
    for _ in range(2):
        buf = io.BytesIO()
        outs.append(build.image_archive(buf, ref, program(), {"Cmd": ["/counter"]}, "T", 5))
    assert outs[0] == outs[1] and outs[0]["amd64"] != outs[0]["arm64"]


def test_check_program_refuses_wrong_or_changed_binaries() -> None:
    assert build.check_program(program())["schema"] == SCHEMA
    swapped = program()
    swapped.variants = {"x86-64": A64, "aarch64": X86}
    with pytest.raises(errors.NotMigratableCrossISA, match="not an x86-64 executable"):
        build.check_program(swapped)
    changed = program()
    changed.variants["aarch64"] = elf(183, b"stripped")
    with pytest.raises(errors.NotMigratableCrossISA, match="not the binary its metadata"):
        build.check_program(changed)
    broken = program()
    broken.metadata_raw = b"{"
    with pytest.raises(errors.NotMigratableCrossISA, match="not valid JSON"):
        build.check_program(broken)


# ---- reading the program from the stage image (a fake engine API) ---------------------------


class FakeApi:
    """create_container / get_archive / remove_container over a dict of files."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.removed = files, []

    def create_container(self, image, **kw):
        return {"Id": "c1"}

    def remove_container(self, cid, force=False):
        self.removed.append(cid)

    def get_archive(self, cid, path):
        path = path.removesuffix("/.")
        if path not in self.files:
            raise docker.errors.NotFound("no such file")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(path.rsplit("/", 1)[1])
            info.size, info.mode = len(self.files[path]), 0o755
            tar.addfile(info, io.BytesIO(self.files[path]))
        return [buf.getvalue()], {}


class FakeClient:
    def __init__(self, files):
        self.api = FakeApi(files)


def test_read_program_finds_the_outputs_of_hmigrate_cc() -> None:
    client = FakeClient({"/counter": X86, "/counter_x86-64": X86, "/counter_aarch64": A64,
                         "/counter.hmigrate.json": b"{}"})
    got = build.read_program(client, "img", "/counter")
    assert got.variants == {"x86-64": X86, "aarch64": A64} and got.metadata_raw == b"{}"
    assert client.api.removed == ["c1"]


def test_read_program_errors() -> None:
    client = FakeClient({})
    with pytest.raises(errors.BuildFailed, match="program /counter not found") as exc:
        build.read_program(client, "img", "/counter")
    assert exc.value.exit_code == 17 and client.api.removed == ["c1"]
    client = FakeClient({"/counter": X86})  # a plain gcc build
    with pytest.raises(errors.NotMigratableCrossISA, match="not built with hmigrate-cc"):
        build.read_program(client, "img", "/counter")
    client = FakeClient({"/counter": X86, "/counter_x86-64": X86, "/counter_aarch64": A64})
    with pytest.raises(errors.NotMigratableCrossISA, match="counter.hmigrate.json"):
        build.read_program(client, "img", "/counter")


def test_read_tree_names_are_relative_to_the_folder() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind in ((".", tarfile.DIRTYPE), ("./root", tarfile.DIRTYPE),
                           ("./root/.profile", tarfile.REGTYPE), ("./etc", tarfile.DIRTYPE),
                           ("./etc/passwd", tarfile.REGTYPE), ("./etc/pw", tarfile.LNKTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.LNKTYPE:
                info.linkname = "./etc/passwd"
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)

    class Api(FakeApi):
        def get_archive(self, cid, path):
            assert path == "/hmigrate/root/."
            return [buf.getvalue()], {}

    client = FakeClient({})
    client.api = Api({})
    got = build._read_tree(client, "c1", "/hmigrate/root")
    assert [i.name for i, _ in got] == ["root", "root/.profile", "etc", "etc/passwd", "etc/pw"]
    assert got[-1][0].linkname == "etc/passwd"
    assert build._inside("root/etc/x", "/hmigrate/root") == "etc/x"  # engines naming the folder


# ---- references, registry, inputs -----------------------------------------------------------


def test_parse_ref() -> None:
    r = registry.parse_ref("localhost:5000/hmigrate/build-test/counter:v1")
    assert (r.registry, r.repository, r.tag) == ("localhost:5000", "hmigrate/build-test/counter",
                                                 "v1")
    assert r.name == "localhost:5000/hmigrate/build-test/counter"
    assert str(registry.parse_ref("localhost:5000/x")) == "localhost:5000/x:latest"
    assert registry.parse_ref("counter").repository == "library/counter"
    assert build.platform_tag(r, "arm64") == "localhost:5000/hmigrate/build-test/counter:v1-arm64"
    for bad in ("", "Upper/case", "x@sha256:00"):
        with pytest.raises(errors.UsageError):
            registry.parse_ref(bad)


def test_loopback_registries_are_insecure() -> None:
    assert registry.is_loopback("localhost:5000") and registry.is_loopback("127.0.0.1:5000")
    assert registry.is_loopback("[::1]:5000")
    assert not registry.is_loopback("registry.example:5000")
    assert registry.Registry("localhost:5000").insecure
    assert not registry.Registry("registry.example").insecure


def test_unreachable_registry_is_exit_4() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = registry.Registry(f"127.0.0.1:{port}", timeout=5)
    with pytest.raises(errors.HostUnreachable, match="not reachable") as exc:
        reg.base()
    assert exc.value.exit_code == 4 and "Connection refused" in exc.value.message


def test_missing_dockerfile_is_a_usage_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "hello.c").write_text("int main(void){return 0;}\n")
    code = cli.run(["build", "-t", "localhost:5000/me/x", str(tmp_path)],
                   {"host": ["unix:///nonexistent.sock"]})
    err = capsys.readouterr().err
    assert code == errors.UsageError.exit_code  # 125, as docker's own usage errors
    assert f"no Dockerfile at {tmp_path}/Dockerfile" in err and "hint:" in err
    code = cli.run(["build", "-t", "x", "-f", str(tmp_path / "nope"), str(tmp_path)])
    assert code == errors.UsageError.exit_code and "no Dockerfile at" in capsys.readouterr().err
    code = cli.run(["build", "-t", "x", str(tmp_path / "nothing")])
    assert code == errors.UsageError.exit_code and "is not a directory" in capsys.readouterr().err


def test_push_without_registry_in_the_name(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM hmigrate/toolchain\n")
    opts = build.BuildOptions("counter", tmp_path, push=True)
    with pytest.raises(errors.UsageError, match="names no registry"):
        build.run(None, opts, print, print)  # refused before any daemon is used


# ---- the toolchain image's recipe -----------------------------------------------------------


def test_toolchain_packages_match_the_lab_builder() -> None:
    """The lab's builder base then serves as the toolchain's base (same label)."""
    text = (REPO / "lab" / "builder" / "build").read_text()
    assert re.search(r"^PACKAGES=(\S+)$", text, re.M).group(1) == toolchain_image.PACKAGES


def test_toolchain_recipe_covers_the_toolchain_sources() -> None:
    sources = toolchain_image.package_sources()
    names = {n for n, _ in sources}
    assert {"docker_hmigrate/__init__.py", "docker_hmigrate/toolchain/driver.py",
            "docker_hmigrate/runtime/hmigrate_rt.c"} <= names
    base = toolchain_image.recipe_hash("x", sources)
    assert base == toolchain_image.recipe_hash("x", sources)
    assert base != toolchain_image.recipe_hash("y", sources)
    assert base != toolchain_image.recipe_hash("x", sources[:-1])


def test_label_option_cannot_override_the_program_labels(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM hmigrate/toolchain\n")
    ok = build.BuildOptions("x", tmp_path, labels={"org.hmigrate.recipe": "r", "team": "a"})
    assert build.check_inputs(ok)[1] == (tmp_path / "Dockerfile").resolve()
    for key in ("org.hmigrate.program", ""):
        with pytest.raises(errors.UsageError, match="KEY=VALUE"):
            build.check_inputs(build.BuildOptions("x", tmp_path, labels={key: "/x"}))


def test_toolchain_wheels_cover_what_hmigrate_cc_imports() -> None:
    import ast
    import sys

    third_party = set()
    for name, path in toolchain_image.package_sources():
        if name.endswith(".py"):
            for node in ast.walk(ast.parse(path.read_text())):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                        [node.module] if isinstance(node, ast.ImportFrom) and not node.level
                        else [])
                third_party |= {m.split(".")[0] for m in mods or [] if m}
    third_party -= set(sys.stdlib_module_names) | {"docker_hmigrate", "__future__"}
    wheels = {w.split(">")[0].split("<")[0].split("=")[0] for w in toolchain_image.WHEELS}
    assert {toolchain_image.WHEEL_MODULES.get(m, m) for m in third_party} <= wheels
    text = (REPO / "lab" / "builder" / "build").read_text()
    lab = re.findall(r'"([^"]+)"', re.search(r"^WHEELS=\((.*)\)", text, re.M).group(1))
    assert tuple(lab) == toolchain_image.WHEELS


def test_toolchain_imports_only_what_its_image_carries() -> None:
    """hmigrate-cc runs in hmigrate/toolchain, which holds docker_hmigrate/toolchain,
    runtime and isa only: an import of another part of the package (recode/ once) breaks every
    build there with ModuleNotFoundError."""
    import ast

    carried = {name.removesuffix(".py").replace("/", ".")
               for name, _ in toolchain_image.package_sources() if name.endswith(".py")}
    for name, path in toolchain_image.package_sources():
        if not name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module \
                    and node.module.startswith("docker_hmigrate"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                assert any(t in carried or f"{t}.__init__" in carried for t in targets), \
                    f"{name} imports {node.module}, which hmigrate/toolchain does not carry"
