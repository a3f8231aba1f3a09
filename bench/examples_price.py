"""The price of migratability: each example built by hmigrate-cc against the same source
built normally (musl-gcc -O2, static, same libc and malloc), measured in the same run.

    sudo python -m bench.examples_price [--requests 100000] [--seconds 10]

- redis-server: `redis-benchmark` SET/GET requests per second (pipelining 1, 50 clients),
  and the time of a CPU-bound Lua loop (EVAL): the interpreter's own code
- nginx: `wrk` requests per second on a static page (1 worker process, 50 connections)
- helloworld: latency from exec to its first line (it sleeps between ticks)

The toolchain's binaries are taken from the lab's images (lab/examples); the baselines
are built once in the lab's builder image from the same Debian source packages and
cached in /var/cache/hmigrate-lab/bench. Servers run natively on loopback.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.lab import DOCKER_CLI, REGISTRY

CACHE = Path("/var/cache/hmigrate-lab/bench")
BUILDER = "hmlab/builder:bookworm"
BASELINE_SCRIPT = r"""
set -e
apt-get update -q >/dev/null
cd /tmp
apt-get source -q --download-only redis nginx >/dev/null
tar xzf redis_*.orig.tar.gz && tar xzf nginx_*.orig.tar.gz
make -C redis-*/src -j2 CC='musl-gcc -static' OPTIMIZATION=-O2 MALLOC=libc BUILD_TLS=no \
  USE_SYSTEMD=no redis-server >/dev/null
cp redis-*/src/redis-server /out/redis-server
mkdir -p /shim && echo '#include <unistd.h>' >/shim/crypt.h
cd nginx-*/
./configure --with-cc='musl-gcc' --with-cc-opt='-O2 -I/shim -DNGX_CRYPT=0' \
  --with-ld-opt=-static --without-http_auth_basic_module --without-http_rewrite_module \
  --without-http_gzip_module --without-pcre --without-http-cache >/dev/null
make -j2 >/dev/null
cp objs/nginx /out/nginx
"""


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def baselines() -> dict[str, Path]:
    """redis-server and nginx from the same sources, built the ordinary way (cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    want = {"redis-server": CACHE / "redis-server", "nginx": CACHE / "nginx"}
    if not all(p.exists() for p in want.values()):
        print("building the -O2 baselines in the builder image (a few minutes, once)...")
        sh(DOCKER_CLI, "--context", "hm-a", "run", "--rm", "-v", f"{CACHE}:/out", BUILDER,
           "sh", "-c", BASELINE_SCRIPT, timeout=1800)
    hello = CACHE / "hello"
    if not hello.exists():
        sh("musl-gcc", "-static", "-O2", "-o", str(hello),
           str(Path(__file__).resolve().parent.parent / "helloworld" / "hello.c"))
    want["hello"] = hello
    return want


def toolchain_builds(work: Path) -> dict[str, Path]:
    """The x86-64 variants out of the lab's multi-ISA images."""
    out = {}
    for example, binary in (("redis", "redis-server"), ("nginx-bin", "nginx"),
                            ("helloworld", "hello")):
        image = f"{REGISTRY}/hmigrate/{example}:latest-amd64"
        cid = sh(DOCKER_CLI, "--context", "hm-a", "create", image).stdout.strip()
        try:
            sh(DOCKER_CLI, "--context", "hm-a", "cp", f"{cid}:/hmigrate/{binary}_x86-64",
               str(work / binary))
        finally:
            sh(DOCKER_CLI, "--context", "hm-a", "rm", cid)
        out[binary] = work / binary
    return out


def wait_port(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def bench_redis(binary: Path, requests: int) -> float:
    port = 16500
    proc = subprocess.Popen([str(binary), "--port", str(port), "--save", "", "--appendonly",
                             "no", "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        out = sh("redis-benchmark", "-p", str(port), "-n", str(requests), "-c", "50",
                 "-t", "set,get", "-q", timeout=600).stdout
        rates = [float(x) for x in re.findall(r"([\d.]+) requests per second", out)]
        return sum(rates) / len(rates)
    finally:
        proc.terminate()
        proc.wait()


def bench_redis_cpu(binary: Path) -> float:
    """Seconds for a CPU-bound Lua loop inside redis (the interpreter's compiled code)."""
    port = 16501
    proc = subprocess.Popen([str(binary), "--port", str(port), "--save", "", "--appendonly",
                             "no", "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        t0 = time.perf_counter()
        sh("redis-cli", "-p", str(port), "EVAL",
           "local s = 0 for i = 1, 30000000 do s = s + i % 7 end return s", "0", timeout=600)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()


def bench_nginx(binary: Path, seconds: int, work: Path) -> float:
    port = 18500
    root = work / f"nginx-{binary.stat().st_ino}"
    (root / "logs").mkdir(parents=True)
    (root / "www").mkdir()
    (root / "www" / "index.html").write_text("<h1>bench</h1>\n")
    (root / "nginx.conf").write_text(
        f"daemon off; master_process on; worker_processes 1; error_log stderr;\n"
        f"pid {root}/nginx.pid; events {{ worker_connections 256; }}\n"
        f"http {{ access_log off; client_body_temp_path {root}; server {{ listen 127.0.0.1:{port};"
        f" root {root}/www; }} }}\n")
    proc = subprocess.Popen([str(binary), "-p", str(root), "-c", str(root / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        out = sh("wrk", "-t", "2", "-c", "50", "-d", f"{seconds}s",
                 f"http://127.0.0.1:{port}/", timeout=seconds + 60).stdout
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait()


def bench_hello(binary: Path, runs: int = 30) -> float:
    """Latency from exec to the first counter line, in ms (median): helloworld sleeps
    between ticks, so its start-up and first tick are what a build can change."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(binary)], stdout=subprocess.PIPE)
        proc.stdout.readline()
        samples.append((time.perf_counter() - t0) * 1000)
        proc.kill()
        proc.wait()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100000)
    parser.add_argument("--seconds", type=int, default=10)
    ns = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hm-price-"))
    try:
        base, ours = baselines(), toolchain_builds(work)
        rows = []
        for label, fn in (
            ("redis-server SET+GET req/s", lambda b: bench_redis(b, ns.requests)),
            ("nginx static page req/s", lambda b: bench_nginx(b, ns.seconds, work)),
        ):
            key = "redis-server" if label.startswith("redis") else "nginx"
            rows.append((label, fn(base[key]), fn(ours[key]), True))
        rows.append(("redis Lua loop seconds", bench_redis_cpu(base["redis-server"]),
                     bench_redis_cpu(ours["redis-server"]), False))
        rows.append(("helloworld first tick ms", bench_hello(base["hello"]),
                     bench_hello(ours["hello"]), False))
        print(f"{'measure':<28} {'-O2 build':>12} {'hmigrate-cc':>12} {'ratio':>7}")
        for label, b, o, higher_better in rows:
            ratio = (o / b) if b else float("nan")
            print(f"{label:<28} {b:>12.6g} {o:>12.6g} {ratio:>7.2f}"
                  + ("  (hmigrate-cc / -O2; >1 is faster)" if higher_better
                     else "  (hmigrate-cc / -O2; >1 is slower)"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
