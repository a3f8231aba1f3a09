"""The corpus runner: real Debian programs built unchanged with hmigrate-cc, moved
x86-64 <-> aarch64 mid-work, their output compared line by line with a reference run.

    sudo HMLAB_ARM64=1 lab/up && sudo python -m bench.corpus [lua5.4 ...] [--small]

Per program (corpus/<program>/corpus.json describes its image, workload and move
points): build its multi-ISA image (corpus/build, cached by recipe), a reference run on
the source host without moves, then the same workload in a container on the source
host moved to the target host and back at the given progress points (each move waits
until the program printed that step on the host it runs on). The output of a moved run
is the logs of each host's container up to its move plus the last one's: it must equal
the reference exactly (same lines, same order, none missing, none doubled). A move the
plugin refuses leaves the program running where it was (checked: it keeps printing);
whether the refusal came before the freeze is read off the plugin's JSON phases.

Prints: program | builds | moves x86-64->aarch64 | moves aarch64->x86-64 | output
identical | refusals (reason).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.lab import remove_staging_copies

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
DOCKER_CLI = "/usr/local/bin/docker" if Path("/usr/local/bin/docker").exists() else "docker"
ISA = {"hm-a": "x86-64", "hm-b": "x86-64", "hm-arm": "aarch64"}
FREEZE_PHASES = ("checkpoint",)  # the source is frozen from this phase on


@dataclass
class Move:
    source: str
    target: str
    at_step: int
    ok: bool
    seconds: float
    reason: str = ""
    before_freeze: bool = True

    @property
    def direction(self) -> str:
        return f"{ISA.get(self.source, self.source)}->{ISA.get(self.target, self.target)}"


@dataclass
class Result:
    program: str
    builds: bool = False
    build_error: str = ""
    moves: list[Move] = field(default_factory=list)
    identical: bool | None = None
    diff: str = ""
    reference_lines: int = 0


def image_name(image: str) -> str:
    """The recipe's image, in $HMIGRATE_CORPUS_REPO's registry folder when that is set
    (corpus/build pushes there: a toolchain change tried in the shared lab)."""
    folder = os.environ.get("HMIGRATE_CORPUS_REPO", "").strip("/")
    default = "/hmigrate/corpus/"
    return image.replace(default, f"/{folder}/", 1) if folder and default in image else image


def load_recipe(program: str, small: bool = False) -> dict:
    path = CORPUS / program / "corpus.json"
    if not path.exists():
        raise SystemExit(f"error: {path} is missing: every corpus program needs one "
                         f"(see corpus/README.md)")
    spec = json.loads(path.read_text())
    spec["image"] = image_name(spec["image"])
    if small:
        spec = {**spec, **spec.get("small", {})}
    return spec


def docker(context: str, *args: str, timeout: float = 900, check: bool = True
           ) -> subprocess.CompletedProcess:
    proc = subprocess.run([DOCKER_CLI, "--context", context, *args], capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode:
        raise RuntimeError(f"docker --context {context} {' '.join(args[:3])}: "
                           f"{proc.stderr.strip()[-400:]}")
    return proc


def logs(context: str, name: str) -> list[str]:
    """stdout and stderr as the program wrote them (compressors report on stderr)."""
    proc = subprocess.run([DOCKER_CLI, "--context", context, "logs", name], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    if proc.returncode:
        raise RuntimeError(f"docker --context {context} logs {name}: {proc.stdout[-400:]}")
    return proc.stdout.splitlines()


def last_step(lines: list[str], progress: str) -> int:
    rx = re.compile(progress)
    for line in reversed(lines):
        m = rx.search(line)
        if m:
            return int(m.group(1))
    return 0


class Driver:
    """A server's workload (the recipe's "driver"): its client, run inside the container
    once per step (`docker exec NAME CMD STEP LAST`) on whichever host holds it now; the
    client prints the step's line into the container's own log, so reference and moved
    runs compare as for a batch program. Programs that work on their own have no
    driver: advancing is waiting a second."""

    def __init__(self, spec: dict):
        d = spec.get("driver") or {}
        self.cmd: list[str] = list(d.get("cmd", []))
        self.steps = int(d.get("steps", 0))
        self.progress = spec["progress"]
        self.next = 1

    @property
    def pending(self) -> bool:
        return bool(self.cmd) and self.next <= self.steps

    def advance(self, context: str, name: str, log=print) -> None:
        """Run the next step (and wait for its line in the log), or wait a second."""
        if not self.pending:
            time.sleep(1)
            return
        n, self.next = self.next, self.next + 1
        proc = docker(context, "exec", name, *self.cmd, str(n), str(self.steps),
                      check=False, timeout=600)
        if proc.returncode and n < self.steps:  # the last step's server exits under it
            log(f"  step {n}: {' '.join(self.cmd)} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-200:]}")
        deadline = time.monotonic() + 30
        while last_step(logs(context, name), self.progress) < n \
                and time.monotonic() < deadline:
            time.sleep(0.2)

    def finish(self, context: str, name: str, log=print) -> None:
        """The remaining steps, while the container runs."""
        while self.pending and docker(context, "inspect", "-f", "{{.State.Status}}", name,
                                      check=False).stdout.strip() == "running":
            self.advance(context, name, log)


def run_args(name: str, spec: dict) -> list[str]:
    env = [a for k, v in spec.get("env", {}).items() for a in ("-e", f"{k}={v}")]
    cpus = ["--cpus", str(spec["cpus"])] if spec.get("cpus") else []
    return ["run", "-d", "--name", name, "--security-opt", "seccomp=unconfined", *env, *cpus,
            spec["image"], *spec.get("cmd", [])]


def wait_exit(context: str, name: str, timeout: float) -> int:
    proc = docker(context, "wait", name, timeout=timeout)
    return int(proc.stdout.strip() or "-1")


def compare(reference: list[str], moved: list[str]) -> tuple[bool, str]:
    """Identical, or where the first difference is (missing, doubled, changed)."""
    if reference == moved:
        return True, ""
    for i, (a, b) in enumerate(zip(reference, moved, strict=False)):
        if a != b:
            return False, f"line {i + 1}: expected {a!r}, got {b!r}"
    if len(moved) < len(reference):
        return False, f"{len(reference) - len(moved)} lines missing from {reference[len(moved)]!r}"
    return False, f"{len(moved) - len(reference)} extra lines from {moved[len(reference)]!r}"


def classify(doc: dict, stderr: str) -> tuple[str, bool]:
    """(reason, before the freeze?) of a refused move, from the plugin's JSON."""
    err = doc.get("error") or {}
    reason = err.get("message") or stderr.strip().splitlines()[-1:] or ["?"]
    if isinstance(reason, list):
        reason = reason[0]
    frozen = any(p.get("name") in FREEZE_PHASES and p.get("status") in ("ok", "failed")
                 for p in doc.get("phases", []))
    return reason, not frozen


def migrate(source: str, target: str, name: str) -> tuple[bool, float, dict, str]:
    t0 = time.monotonic()
    proc = docker(source, "hmigrate", "migrate", name, "--to", target, "--keep-source",
                  "--json", check=False, timeout=1800)
    try:
        doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        doc = {}
    return proc.returncode == 0, time.monotonic() - t0, doc, proc.stderr


def build(program: str) -> tuple[bool, str]:
    proc = subprocess.run(["bash", str(CORPUS / "build"), program], capture_output=True,
                          text=True, timeout=7200)
    return proc.returncode == 0, proc.stderr.strip()[-300:]


def reference_run(spec: dict, context: str, timeout: float) -> list[str]:
    name = f"corpus-ref-{uuid.uuid4().hex[:8]}"
    docker(context, "pull", "-q", spec["image"])
    docker(context, *run_args(name, spec))
    try:
        Driver(spec).finish(context, name)
        code = wait_exit(context, name, timeout)
        out = logs(context, name)
        if code != 0:
            raise RuntimeError(f"reference run exited {code}: {out[-3:]}")
        return out
    finally:
        docker(context, "rm", "-f", name, check=False)


def moved_run(spec: dict, source: str, target: str, timeout: float,
              log=print) -> tuple[list[str], list[Move]]:
    """The workload on `source`, moved to `target` and back at spec["moves_at"] steps."""
    name = f"corpus-mv-{uuid.uuid4().hex[:8]}"
    docker(source, "pull", "-q", spec["image"])
    docker(source, *run_args(name, spec))
    driver = Driver(spec)
    here, there = source, target
    output: list[str] = []
    moves: list[Move] = []
    created = {source}
    deadline = time.monotonic() + timeout
    try:
        for at in spec["moves_at"]:
            while last_step(logs(here, name), spec["progress"]) < at:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no step {at} within {timeout:g}s on {here}")
                state = docker(here, "inspect", "-f", "{{.State.Status}}", name).stdout.strip()
                if state != "running":
                    break
                driver.advance(here, name, log)
            else:
                step = last_step(logs(here, name), spec["progress"])
                created.add(there)
                ok, secs, doc, err = migrate(here, there, name)
                if ok:
                    output += logs(here, name)  # the source, stopped and kept: its part
                    docker(here, "rm", "-f", name)
                    moves.append(Move(here, there, step, True, secs))
                    log(f"  moved {here} -> {there} at step {step} in {secs:.1f}s")
                    here, there = there, here
                else:
                    reason, before = classify(doc, err)
                    moves.append(Move(here, there, step, False, secs, reason, before))
                    log(f"  refused {here} -> {there} at step {step}: {reason[:200]}")
                    docker(there, "rm", "-f", name, check=False)
                continue
            break  # the program finished before this point
        driver.finish(here, name, log)
        code = wait_exit(here, name, max(60.0, deadline - time.monotonic()))
        output += logs(here, name)
        if code != 0:
            output.append(f"[exit status {code}]")
        return output, moves
    finally:
        for ctx in created:
            docker(ctx, "rm", "-f", name, check=False)


def offline_run(spec: dict, context: str, timeout: float,
                log=print) -> tuple[list[str], list[Move]]:
    """Without an aarch64 host: at each move point the program is parked and
    checkpointed on `context`, its images recoded x86-64 -> aarch64 -> x86-64 (every
    check of both directions applies) and restored in the same container. The aarch64
    code never runs: this checks the translations, not the aarch64 host."""
    import shutil
    from pathlib import Path

    import docker as sdk

    from docker_hmigrate import recode, safepoint
    from docker_hmigrate.engine import Host
    from tests.support.lab import HOSTS
    from tests.support.recode_lab import program_of_image

    client = sdk.DockerClient(base_url=HOSTS[context.removeprefix("hm-")]["url"],
                              version="auto", timeout=600)
    host = Host(context, client)
    image = spec["image"]
    client.images.pull(image, platform="linux/amd64")
    program = program_of_image(client, image)
    name = f"corpus-off-{uuid.uuid4().hex[:8]}"
    c = client.containers.run(image, spec.get("cmd") or None, name=name, detach=True,
                              environment=spec.get("env", {}),
                              security_opt=["seccomp=unconfined"])
    root = Path(client.info()["DockerRootDir"])
    driver = Driver(spec)
    moves: list[Move] = []
    deadline = time.monotonic() + timeout
    try:
        for k, at in enumerate(spec["moves_at"]):
            while last_step(c.logs().decode().splitlines(), spec["progress"]) < at:
                c.reload()
                if c.status != "running" or time.monotonic() > deadline:
                    break
                if driver.pending:
                    driver.advance(context, name, log)
                else:
                    time.sleep(0.5)
            else:
                step = last_step(c.logs().decode().splitlines(), spec["progress"])
                c.reload()
                if c.status != "running":
                    break  # finished before this point: nothing left to move
                t0 = time.monotonic()
                work = Path(tempfile.mkdtemp(prefix="hm-corpus-"))
                checkpointed = False
                try:
                    # the plugin's own park: at a point its stack checks pass (or
                    # refused before the freeze)
                    safepoint.park_where_translatable(host, c.id, program, "aarch64",
                                                     report=lambda msg: log(f"  {msg}"))
                    api = client.api
                    checkpointed = True
                    api._raise_for_status(api._post_json(
                        api._url("/containers/{0}/checkpoints", c.id),
                        data={"CheckpointID": "ck", "Exit": True, "CheckpointDir": str(work)}))
                    recode.recode(work / "ck", work / "arm", program, "x86-64", "aarch64",
                                  None)
                    try:
                        recode.recode(work / "arm", work / "back", program, "aarch64",
                                      "x86-64", recode.template_facts(work / "ck"))
                    except Exception as exc:  # noqa: BLE001 - sorted out below
                        where = _not_a_park_point(str(exc), program, "aarch64")
                        if where is None:
                            raise
                        # The aarch64 runtime would not have parked here (its table has
                        # this return address): on a real host the move back waits for a
                        # later point. The move there stands; the run goes on from the
                        # x86-64 checkpoint, as the rollback below does.
                        secs = time.monotonic() - t0
                        moves.append(Move(context, "hm-arm", step, True, secs))
                        log(f"  recoded to aarch64 at step {step}; no move back from this "
                            f"point (the aarch64 runtime does not park at {where})")
                        raise _BackLater from None
                    _unique(work / "back")
                    shutil.copytree(work / "back", root / "containers" / c.id / "checkpoints"
                                    / f"rt{k}")
                    api._raise_for_status(api.post(api._url("/containers/{0}/start", c.id),
                                                   params={"checkpoint": f"rt{k}"}))
                    time.sleep(0.3)
                    c.kill(signal=41)
                    secs = time.monotonic() - t0
                    moves += [Move(context, "hm-arm", step, True, secs),
                              Move("hm-arm", context, step, True, 0.0)]
                    log(f"  recoded round trip at step {step} in {secs:.1f}s")
                except Exception as exc:  # noqa: BLE001 - reported in the table
                    if not isinstance(exc, _BackLater):
                        moves.append(Move(context, "hm-arm", step, False, 0.0,
                                          str(exc).splitlines()[-1][:200], not checkpointed))
                        log(f"  refused at step {step}: {exc}")
                    if checkpointed:
                        # Frozen and stopped: roll back as the plugin does, from the
                        # untouched x86-64 checkpoint (its run goes on and is compared).
                        try:
                            _unique(work / "ck")
                            shutil.copytree(work / "ck", root / "containers" / c.id
                                            / "checkpoints" / f"rb{k}")
                            api._raise_for_status(api.post(
                                api._url("/containers/{0}/start", c.id),
                                params={"checkpoint": f"rb{k}"}))
                        except Exception as rb:  # noqa: BLE001 - the run is lost: say so
                            log(f"  rollback failed: {rb}")
                            return (c.logs().decode().splitlines()
                                    + [f"[rollback failed: {str(rb)[:120]}]"], moves)
                        time.sleep(0.3)
                    with contextlib.suppress(sdk.errors.APIError):
                        c.kill(signal=41)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                continue
            break
        driver.finish(context, name, log)
        code = c.wait(timeout=max(60.0, deadline - time.monotonic()))["StatusCode"]
        out = c.logs().decode().splitlines()
        return out + ([f"[exit status {code}]"] if code else []), moves
    finally:
        c.remove(force=True)
        remove_staging_copies(c.id)


def _unique(images: Path) -> None:
    """A file of its own in a checkpoint folder before it is restored: docker 20.10
    uploads the folder to containerd's content store, which refused a second upload of
    identical content ("commit failed: content sha256:...: already exists") and lost a
    run at its rollback. CRIU reads its images by name and ignores the file."""
    (images / f"hm-corpus-{uuid.uuid4().hex}").write_text("restore\n")


class _BackLater(Exception):
    """Recoded to aarch64, but the aarch64 runtime would not park at this point."""


def _not_a_park_point(message: str, program, isa: str) -> str | None:
    """The return address a recode error names, if the runtime of `isa` never parks with
    it on a stack (the metadata's table of untranslatable return addresses)."""
    ranges = program.md.unclean_ranges.get(isa) or []
    for word in re.findall(r"0x[0-9a-f]+", message):
        ra = int(word, 16)
        if any(lo <= ra - 1 < hi for lo, hi in ranges):
            return word
    return None


def run_program(program: str, ns: argparse.Namespace, log=print) -> Result:
    res = Result(program)
    spec = load_recipe(program, ns.small)
    if ns.cpus:  # a CPU limit (carried by the moves): fast builds still move mid-run
        spec["cpus"] = ns.cpus
    if ns.build:
        res.builds, res.build_error = build(program)
        if not res.builds:
            return res
    else:
        res.builds = docker(ns.source, "pull", "-q", spec["image"], check=False).returncode == 0
        if not res.builds:
            res.build_error = "image not in the registry (run corpus/build)"
            return res
    reference = reference_run(spec, ns.source, ns.timeout)
    res.reference_lines = len(reference)
    log(f"{program}: reference run, {len(reference)} lines")
    if ns.offline:
        moved, res.moves = offline_run(spec, ns.source, ns.timeout, log)
    else:
        moved, res.moves = moved_run(spec, ns.source, ns.target, ns.timeout, log)
    res.identical, res.diff = compare(reference, moved)
    if not res.identical:
        log(f"  OUTPUT DIFFERS: {res.diff}")
    return res


def table(results: list[Result]) -> str:
    head = ("program", "builds", "moves x86-64->aarch64", "moves aarch64->x86-64",
            "output identical", "refusals (reason)")
    rows = [head]
    for r in results:
        def count(direction: str, r: Result = r) -> str:
            tried = [m for m in r.moves if m.direction == direction]
            return f"{sum(m.ok for m in tried)}/{len(tried)}"
        refused = [m for m in r.moves if not m.ok]
        reasons = "; ".join(sorted({f"{m.reason[:120]}"
                                    f"{'' if m.before_freeze else ' [AFTER FREEZE]'}"
                                    for m in refused}))
        ident = "-" if r.identical is None else ("yes" if r.identical else f"NO ({r.diff})")
        rows.append((r.program, "yes" if r.builds else f"no ({r.build_error[-80:]})",
                     count("x86-64->aarch64"), count("aarch64->x86-64"), ident,
                     f"{len(refused)}" + (f" ({reasons})" if reasons else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("programs", nargs="*", help="corpus programs (default: all)")
    parser.add_argument("--source", default="hm-a")
    parser.add_argument("--target", default="hm-arm")
    parser.add_argument("--small", action="store_true", help="the recipes' short workloads")
    parser.add_argument("--no-build", dest="build", action="store_false",
                        help="use the images already in the registry")
    parser.add_argument("--timeout", type=float, default=3600, help="per run, seconds")
    parser.add_argument("--cpus", type=float, help="run the workload with docker run --cpus "
                        "(an -Og build can end before a move starts)")
    parser.add_argument("--offline", action="store_true",
                        help="no aarch64 host: at each point recode the checkpoint to "
                             "aarch64 and back and restore it on --source")
    ns = parser.parse_args(argv)
    programs = ns.programs or sorted(p.parent.name for p in CORPUS.glob("*/corpus.json"))
    results = []
    for program in programs:
        try:
            results.append(run_program(program, ns))
        except Exception as exc:  # noqa: BLE001 - one program's failure is a table row
            print(f"{program}: {exc}", file=sys.stderr)
            results.append(Result(program, builds=True, identical=False, diff=str(exc)[:200]))
    print()
    print(f"$ python -m bench.corpus {' '.join(argv if argv is not None else sys.argv[1:])}")
    if ns.offline:
        print("(--offline: each x86-64->aarch64 / aarch64->x86-64 pair is a recode of the "
              f"checkpoint there and back, restored on {ns.source}; the aarch64 code did "
              "not run)")
    print(table(results))
    wrong = [r.program for r in results if r.identical is False and any(m.ok for m in r.moves)]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
