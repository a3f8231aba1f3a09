"""The corpus on the lab (CI-affordable subset): Debian's lua5.4, built unchanged with
hmigrate-cc, moved x86-64 -> aarch64 -> x86-64 in the middle of its workload (each step
runs pcall/error, i.e. setjmp/longjmp, so the jmp_bufs on its stack and lua's heap
pointer to them must be right after each move); its output must equal a reference run
line for line. The full corpus with more moves: `python -m bench.corpus`.

Also, on host a alone: the parked lua's checkpoint recoded to aarch64 and back, then
restored on host a (the aarch64 images must satisfy every check of the way back: each
jmp_buf's saved pc an aarch64 setjmp call site of a frame on the rebuilt stack)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import docker
import pytest

from bench import corpus
from docker_hmigrate import recode
from docker_hmigrate.criu.imageset import ImageSet
from docker_hmigrate.isa import get as get_isa
from docker_hmigrate.recode import frames, jmpbuf, rebuild
from docker_hmigrate.recode.livecheck import Nowhere
from tests.support.lab import unique, wait_until
from tests.support.recode_lab import program_of_image

pytestmark = [pytest.mark.lab, pytest.mark.toolchain]

LUA = corpus.image_name("localhost:5000/hmigrate/corpus/lua5.4")


@pytest.fixture(scope="module")
def lua_built() -> None:
    ok, err = corpus.build("lua5.4")  # cached by recipe hash after the first time
    assert ok, err


@pytest.fixture(scope="module")
def lua_image(lua_built, arm) -> dict:
    return corpus.load_recipe("lua5.4", small=True)


# Long enough (~8 min alone on x86-64) that the program is surely still mid-script after
# a move whose validations and template on the emulated host take a minute or more under
# load; the reference runs beside it, and only as far as the comparison needs.
LONG_STEPS = "20000"


@pytest.mark.arm64
def test_lua_round_trip_mid_script_output_equals_reference(host_a, lua_image) -> None:
    """Moved mid-script to aarch64 (jmp_bufs live on its stack), then back to x86-64
    mid-script. Every line printed on each host must be the reference's line at the same
    place, and lua must go on printing the right lines back on x86-64. The way back needs
    what lua allocated on aarch64 to lie below x86-64's 47-bit user space (the runtime's
    mmap wrapper, runtime/hmigrate_mmap.c): the aarch64 kernel would put it near 2^48."""
    spec = {**lua_image, "env": {**lua_image["env"], "STEPS": LONG_STEPS}}
    steps = int(LONG_STEPS)
    name, ref = unique("corpus-lua"), unique("corpus-lua-ref")
    corpus.docker("hm-a", "pull", "-q", spec["image"])
    corpus.docker("hm-a", *corpus.run_args(ref, spec))
    corpus.docker("hm-a", *corpus.run_args(name, spec))

    def reference(lines: int) -> list[str]:
        """The reference's first `lines` lines (all of them if it ends sooner)."""
        def enough() -> bool:
            return len(corpus.logs("hm-a", ref)) >= lines or corpus.docker(
                "hm-a", "inspect", "-f", "{{.State.Running}}", ref).stdout.strip() != "true"
        wait_until(enough, timeout=900, what=f"{lines} reference lines")
        return corpus.logs("hm-a", ref)[:lines]

    try:
        wait_until(lambda: corpus.last_step(corpus.logs("hm-a", name), spec["progress"]) >= 4,
                   timeout=300, what="lua's first steps on x86-64")
        ok, _, doc, err = corpus.migrate("hm-a", "hm-arm", name)
        assert ok, corpus.classify(doc, err)
        output = corpus.logs("hm-a", name)  # the source, stopped and kept: its part
        corpus.docker("hm-a", "rm", "-f", name)
        at = corpus.last_step(output, spec["progress"])
        assert 0 < at < steps, at  # moved mid-script
        wait_until(lambda: corpus.last_step(corpus.logs("hm-arm", name), spec["progress"])
                   >= at + 5, timeout=600, what="lua progressing on aarch64")
        ok, _, doc, err = corpus.migrate("hm-arm", "hm-a", name)
        assert ok, corpus.classify(doc, err)
        output += corpus.logs("hm-arm", name)
        corpus.docker("hm-arm", "rm", "-f", name)
        back = corpus.last_step(output, spec["progress"])
        assert at + 5 <= back < steps, (at, back)  # moved back mid-script
        wait_until(lambda: corpus.last_step(corpus.logs("hm-a", name), spec["progress"])
                   >= back + 20, timeout=600, what="lua progressing back on x86-64")
        output += corpus.logs("hm-a", name)
        expected = reference(len(output))
        assert output == expected, corpus.compare(expected, output)[1]
    finally:
        for ctx, n in (("hm-a", name), ("hm-arm", name), ("hm-a", ref)):
            corpus.docker(ctx, "rm", "-f", n, check=False)


def _jmp_bufs(images: Path, program, isa: str) -> list[int]:
    """The saved pcs of the jmp_bufs in luaD_rawrunprotected frames of a parked image
    set, checked against the frames they belong to (through the way-back translation)."""
    s = ImageSet.load(images)
    other = "x86-64" if isa == "aarch64" else "aarch64"
    idx = frames.Index(program.metadata, isa, other)
    read_regs = frames.arch(isa).read_regs
    pcs = []
    for pid in s.pids:
        mem = s.memory(pid)
        for tid in s.threads(pid):
            regs = read_regs(s.core(tid))
            st = frames.planned(mem, regs, idx)
            smap = frames.stack_map(st, idx)
            # rebuilt once, into nothing: a jmp_buf takes its callers' registers from it
            rebuild.write_target(mem, Nowhere(), st, idx, smap, idx.bottoms[st.bottom_return])
            for fr in st.frames:
                if fr.function.name != "luaD_rawrunprotected":
                    continue
                lj = next(v for v in fr.function.isa[isa].vars if v.name == "lj")
                b = next(f for f in lj.type.fields if f.kind == "jmp_buf")
                raw = mem.read(fr.src_cfa + lj.cfa_offset + b.offset, b.size)
                lay = get_isa(isa).jmpbuf
                pcs.append(int.from_bytes(raw[lay.pc:lay.pc + 8], "little"))
                jmpbuf.translate(raw, "lj", st, idx, smap, 0)  # raises if inconsistent
    return pcs


def test_lua_recoded_to_aarch64_and_back_restores_with_identical_output(host_a,
                                                                        lua_built) -> None:
    """No aarch64 host needed: park lua mid-script on host a, checkpoint, recode the images
    x86-64 -> aarch64 -> x86-64, restore them in the same container: the output equals a
    reference run. The aarch64 images' jmp_bufs hold aarch64 setjmp call sites."""
    client = host_a.client
    client.images.pull(LUA, platform="linux/amd64")
    image = f"{LUA}:latest"
    program = program_of_image(client, image)
    env = {"STEPS": "30", "WORK": "8000"}
    ref = client.containers.run(image, environment=env, detach=True,
                                security_opt=["seccomp=unconfined"], name=unique("hm-corpus-ref"))
    try:
        ref.wait(timeout=600)
        reference = ref.logs().decode().splitlines()
    finally:
        ref.remove(force=True)
    assert reference[-1].startswith("done steps=30 ")
    c = client.containers.run(image, environment=env, detach=True,
                              security_opt=["seccomp=unconfined"], name=unique("hm-corpus-rt"))
    work = Path(f"/var/tmp/{c.name}")
    try:
        wait_until(lambda: "step 7 " in c.logs().decode(), 300, what="step 7")
        c.kill(signal=40)
        wait_until(lambda: _exists(c, "/run/hmigrate/parked"), 60, what="parked")
        work.mkdir(mode=0o700)
        park = program.metadata["runtime"]["park_points"]["x86-64"]
        api = client.api
        res = api._post_json(api._url("/containers/{0}/checkpoints", c.id),
                             data={"CheckpointID": "ck", "Exit": True,
                                   "CheckpointDir": str(work)})
        api._raise_for_status(res)
        s = ImageSet.load(work / "ck")
        ips = {s.core(t).thread_info.gpregs.ip for p in s.pids for t in s.threads(p)}
        assert ips <= {park["blocked_pc"], park["syscall_pc"]}, ips
        x86_pcs = _jmp_bufs(work / "ck", program, "x86-64")
        recode.recode(work / "ck", work / "arm", program, "x86-64", "aarch64", None)
        arm_pcs = _jmp_bufs(work / "arm", program, "aarch64")
        assert x86_pcs and len(arm_pcs) == len(x86_pcs)
        idx = frames.Index(program.metadata, "x86-64", "aarch64")
        assert arm_pcs == [idx.return_twins[p] for p in x86_pcs]
        recode.recode(work / "arm", work / "back", program, "aarch64", "x86-64",
                      recode.template_facts(work / "ck"))
        dest = Path(client.info()["DockerRootDir"]) / "containers" / c.id / "checkpoints" / "rt"
        shutil.copytree(work / "back", dest)
        api._raise_for_status(api.post(api._url("/containers/{0}/start", c.id),
                                       params={"checkpoint": "rt"}))
        time.sleep(0.5)
        c.kill(signal=41)  # the restored process was parked: withdraw the request
        assert c.wait(timeout=600)["StatusCode"] == 0
        same, diff = corpus.compare(reference, c.logs().decode().splitlines())
        assert same, diff
    finally:
        c.remove(force=True)
        shutil.rmtree(work, ignore_errors=True)


def _exists(c, path: str) -> bool:
    try:
        bits, _ = c.get_archive(path)
        b"".join(bits)
        return True
    except docker.errors.NotFound:
        return False
