#!/usr/bin/env python3
"""Wall time of daemon start-up (process start -> GET /api/status answers) and
of `autodeploy policy parse-compose` on a 3-line file, with the compiled-policy
cache cold and warm. Run through bench/startup.sh, which builds the release
binary first. Prints a Markdown table of medians (min-max) over RUNS runs."""

import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BIN = sys.argv[1]
BUNDLED = sys.argv[2]  # the bundled policy component, to make a variant of
RUNS = int(os.environ.get("RUNS", "10"))
ADMIN = "bench-admin-token-0123456789"
COMPOSE = "services:\n  web:\n    image: nginx:1.27\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def variant(path):
    """The bundled policy plus a custom section: same behaviour, another
    sha256, so it is compiled (or read from the cache), not the embedded
    build-time code."""
    payload = bytes([5]) + b"bench" + b"variant"
    with open(BUNDLED, "rb") as f:
        body = f.read()
    with open(path, "wb") as f:
        f.write(body + bytes([0, len(payload)]) + payload)


def env(**extra):
    e = {k: v for k, v in os.environ.items() if not k.startswith("AUTODEPLOY_")}
    e.pop("DATABASE_URL", None)
    e.update(extra)
    return e


def daemon_start(data_dir, args=()):
    """Seconds from spawning `autodeploy serve` to the first 200 from
    /api/status."""
    port = free_port()
    e = env(
        AUTODEPLOY_LISTEN=f"127.0.0.1:{port}",
        AUTODEPLOY_DATA_DIR=data_dir,
        AUTODEPLOY_ADMIN_TOKEN=ADMIN,
        RUST_LOG="warn",
    )
    log = open(os.path.join(os.path.dirname(data_dir), "daemon.log"), "ab")
    started = time.perf_counter()
    child = subprocess.Popen([BIN, "serve", *args], env=e, stdout=subprocess.DEVNULL, stderr=log)
    try:
        while True:
            if child.poll() is not None:
                raise SystemExit(f"daemon exited with {child.returncode}; see {log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/api/status", headers={"Authorization": f"Bearer {ADMIN}"})
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return time.perf_counter() - started
                raise SystemExit(f"/api/status answered {status}")
            except (ConnectionRefusedError, ConnectionResetError):
                time.sleep(0.0005)
    finally:
        child.terminate()
        child.wait()
        log.close()


def parse_compose(compose, cache_home, args=()):
    started = time.perf_counter()
    out = subprocess.run(
        [BIN, "policy", "parse-compose", compose, *args],
        env=env(XDG_CACHE_HOME=cache_home),
        capture_output=True,
    )
    took = time.perf_counter() - started
    if out.returncode != 0 or b"nginx:1.27" not in out.stdout:
        raise SystemExit(f"parse-compose failed: {out.stderr.decode()}")
    return took


def measure(name, prepare, run):
    times = []
    for _ in range(RUNS):
        prepare()
        times.append(run())
    ms = sorted(t * 1000 for t in times)
    print(f"| {name} | {statistics.median(ms):.0f} ms | {ms[0]:.0f}-{ms[-1]:.0f} ms |", flush=True)


def main():
    work = tempfile.mkdtemp(prefix="autodeploy-startup-")
    try:
        compose = os.path.join(work, "compose.yml")
        with open(compose, "w") as f:
            f.write(COMPOSE)
        policy = os.path.join(work, "variant.wasm")
        variant(policy)
        data = os.path.join(work, "data")
        cache_home = os.path.join(work, "cache")
        compiled = os.path.join(data, "policies", "compiled")

        def fresh_data():
            shutil.rmtree(data, ignore_errors=True)

        def cold_user_cache():
            shutil.rmtree(cache_home, ignore_errors=True)

        def cold_daemon_cache():
            shutil.rmtree(compiled, ignore_errors=True)

        def nothing():
            pass

        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        print(f"{RUNS} runs each; {os.cpu_count()} CPUs; load average at start {load}\n")
        print("| what | median | min-max |")
        print("|---|---|---|")
        measure("daemon, bundled policy, new data dir", fresh_data, lambda: daemon_start(data))
        measure("daemon, bundled policy, existing data dir", nothing, lambda: daemon_start(data))
        measure(
            "daemon, `--policy FILE`, compiled cache cold",
            cold_daemon_cache,
            lambda: daemon_start(data, ["--policy", policy]),
        )
        measure(
            "daemon, `--policy FILE`, compiled cache warm",
            nothing,
            lambda: daemon_start(data, ["--policy", policy]),
        )
        measure(
            "parse-compose, bundled policy, user cache cold",
            cold_user_cache,
            lambda: parse_compose(compose, cache_home),
        )
        measure(
            "parse-compose, bundled policy, user cache warm",
            nothing,
            lambda: parse_compose(compose, cache_home),
        )
        measure(
            "parse-compose, `--policy FILE`, user cache cold",
            cold_user_cache,
            lambda: parse_compose(compose, cache_home, ["--policy", policy]),
        )
        measure(
            "parse-compose, `--policy FILE`, user cache warm",
            nothing,
            lambda: parse_compose(compose, cache_home, ["--policy", policy]),
        )
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        print(f"\nload average at the end {load}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


main()
