"""The corpus on the lab (CI-affordable subset): Debian's lua5.4, built unchanged with
hmigrate-cc, moved x86-64 -> aarch64 -> x86-64 in the middle of its workload (each step
runs pcall/error, i.e. setjmp/longjmp, so the jmp_bufs on its stack and lua's heap
pointer to them must be right after each move); its output must equal a reference run
line for line. The full corpus with more moves: `python -m bench.corpus`."""

from __future__ import annotations

import os

import docker
import pytest

from bench import corpus
from tests.lab import lab_unavailable

pytestmark = [pytest.mark.lab, pytest.mark.arm64, pytest.mark.toolchain]

ARM_URL = f"tcp://127.0.0.1:{os.environ.get('HM_ARM_PORT', '2391')}"


@pytest.fixture(scope="module")
def lua_image() -> dict:
    try:
        docker.DockerClient(base_url=ARM_URL, version="auto", timeout=300).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means the VM is not up
        lab_unavailable(f"aarch64 lab host does not answer on {ARM_URL} ({exc}); "
                        "run: sudo HMLAB_ARM64=1 lab/up")
    ok, err = corpus.build("lua5.4")  # cached by recipe hash after the first time
    assert ok, err
    return corpus.load_recipe("lua5.4", small=True)


def test_lua_round_trip_mid_script_output_equals_reference(host_a, lua_image) -> None:
    spec = {**lua_image, "moves_at": lua_image["moves_at"][:2]}
    reference = corpus.reference_run(spec, "hm-a", timeout=900)
    assert reference[-1].startswith("done steps=40 ")
    moved, moves = corpus.moved_run(spec, "hm-a", "hm-arm", timeout=1800, log=lambda _: None)
    assert [(m.direction, m.ok) for m in moves] == [("x86-64->aarch64", True),
                                                    ("aarch64->x86-64", True)], \
        [m.reason for m in moves]
    assert 0 < moves[0].at_step < moves[1].at_step < 40
    same, diff = corpus.compare(reference, moved)
    assert same, diff

