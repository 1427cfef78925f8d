"""`spear serve` over HTTP with wrk, against what a user would build instead and against the
floor of Python HTTP, in the same run:

- FastAPI + uvicorn (httptools, uvloop) + the Extism SDK calling an echo plugin (anchor 1;
  target: spear at least 5x its throughput);
- a bare ASGI echo on uvicorn with httptools and uvloop (anchor 2; target: at least 0.7x);
  both anchors run without uvicorn's proxy-headers layer and server header, as `spear serve`
  does, and without an access log;
- `spear serve` (WASM echo, access log off as in the anchors) with the same 64 B POST, once
  as configured by default (`dispatch = "auto"`: the memory channel learns per handler
  whether it may run on the event loop) and once with `dispatch = "inline"` (what the front
  door itself costs, with the guest called on the loop).

wrk (Debian's `wrk` package) drives each for a few seconds with 32 connections; they take
turns, round after round, and each row is the median. On a machine with two or more cores
the servers are pinned to one core and wrk to another (`taskset`), so each server has the
same whole core and wrk does not compete with it. Rows are skipped with a note when wrk is
not installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.table import Row

SECTION = "http"
CONNECTIONS = 32
PAYLOAD = b"x" * 64
ROOT = Path(__file__).resolve().parent.parent
PATH = "/functions/echo/invoke"


def _pinned(core: int) -> list[str]:
    """`taskset -c CORE` when there is a core to spare for wrk, else nothing."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core)]
    return []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start listening")


@contextmanager
def _servers(workdir: Path) -> Iterator[dict[str, tuple[int, int]]]:
    echo = ROOT / "wasm_fixtures" / "build" / "echo.wasm"
    ports = {name: _free_port() for name in ("spear", "spear-inline", "fastapi", "bare")}
    for name, dispatch in (("spear", "auto"), ("spear-inline", "inline")):
        (workdir / f"{name}.toml").write_text(f"""
[server]
http = "127.0.0.1:{ports[name]}"
grpc = false

[[functions]]
name = "echo"
runtime = "wasm"
artifact = "{echo}"
dispatch = "{dispatch}"
""")
    uvicorn = [sys.executable, "-m", "uvicorn", "--http", "httptools", "--loop", "uvloop",
               "--no-access-log", "--no-proxy-headers", "--no-server-header",
               "--log-level", "warning", "--host", "127.0.0.1"]
    commands = {
        "spear": [sys.executable, "-m", "spear.cli.main", "serve", "--config",
                  str(workdir / "spear.toml")],
        "spear-inline": [sys.executable, "-m", "spear.cli.main", "serve", "--config",
                         str(workdir / "spear-inline.toml")],
        "fastapi": [*uvicorn, "--port", str(ports["fastapi"]), "--factory",
                    "bench.http_apps:fastapi_extism"],
        "bare": [*uvicorn, "--port", str(ports["bare"]), "bench.http_apps:bare_echo"],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in commands.items():
            procs[name] = subprocess.Popen([*_pinned(1), *command], cwd=ROOT,
                                           stdout=subprocess.DEVNULL)
        for name, proc in procs.items():
            _wait_listening(ports[name], proc, name)
        yield {name: (ports[name], procs[name].pid) for name in ports}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(port: int, seconds: float, script: Path, pid: int) -> tuple[float, float]:
    """Requests per second as wrk reports them, and the server's CPU microseconds per
    request (robust to other load on a shared machine: time the server did not get is not
    counted)."""
    cpu_before = _cpu_seconds(pid)
    done = subprocess.run(
        [*_pinned(0), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "-s", str(script),
         f"http://127.0.0.1:{port}{PATH}"],
        capture_output=True, text=True, timeout=seconds + 60, check=True)
    cpu = _cpu_seconds(pid) - cpu_before
    errors = [line for line in done.stdout.splitlines()
              if "Non-2xx" in line or "Socket errors" in line]
    if errors:
        raise RuntimeError(f"wrk saw errors on port {port}: {errors}")
    rps = requests = None
    for line in done.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
        elif " requests in " in line:
            requests = int(line.split()[0])
    if rps is None or not requests:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{done.stdout}")
    return rps, cpu / requests * 1e6


def run(args: argparse.Namespace) -> list[Row]:
    if shutil.which("wrk") is None:
        return [Row(SECTION, "skipped: wrk is not installed (apt-get install wrk)", 0.0)]
    seconds = 2.0 if args.quick else 4.0
    rounds = 2 if args.quick else 5
    names = ["spear", "spear-inline", "fastapi", "bare"]
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu_samples: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="spear-bench-http-") as tmp:
        workdir = Path(tmp)
        script = workdir / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f'wrk.body = "{PAYLOAD.decode()}"\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        with _servers(workdir) as servers:
            for port, pid in servers.values():  # warm up: caches, pools, learned dispatch
                _wrk(port, 1.0, script, pid)
            for round_no in range(rounds):
                for name in names if round_no % 2 == 0 else reversed(names):
                    rps_sample, cpu_sample = _wrk(*servers[name][:1], seconds, script,
                                                  servers[name][1])
                    samples[name].append(rps_sample)
                    cpu_samples[name].append(cpu_sample)
    rps = {name: statistics.median(values) for name, values in samples.items()}
    cpu = {name: statistics.median(values) for name, values in cpu_samples.items()}
    fastapi_name = "FastAPI + uvicorn + Extism SDK, 64 B POST (anchor)"
    bare_name = "bare ASGI echo on uvicorn httptools+uvloop, 64 B POST (anchor)"
    note = f"{CONNECTIONS} connections, wrk; ratio = throughput multiple"
    rows = [
        Row(SECTION, fastapi_name, 1e6 / rps["fastapi"],
            note=f"{rps['fastapi']:,.0f} req/s"),
        Row(SECTION, bare_name, 1e6 / rps["bare"], note=f"{rps['bare']:,.0f} req/s"),
    ]
    labels = (("spear", 'spear serve, WASM echo, dispatch "auto" (default)'),
              ("spear-inline", 'spear serve, WASM echo, dispatch "inline"'))
    for name, label in labels:
        vs_fastapi = rps[name] / rps["fastapi"]
        vs_bare = rps[name] / rps["bare"]
        rows.append(Row(SECTION, f"{label} ({rps[name]:,.0f} req/s; {note})", 1e6 / rps[name],
                        fastapi_name, vs_fastapi, ">= 5x throughput", vs_fastapi >= 5.0))
        rows.append(Row(SECTION, f"{label} vs the bare echo", 1e6 / rps[name], bare_name,
                        vs_bare, ">= 0.7x throughput", vs_bare >= 0.7))
    # The same comparison by server CPU per request: what each server costs, whatever
    # share of the core the rest of the machine left it.
    fastapi_cpu = "FastAPI + uvicorn + Extism SDK: server CPU per request (anchor)"
    bare_cpu = "bare ASGI echo: server CPU per request (anchor)"
    rows.append(Row(SECTION, fastapi_cpu, cpu["fastapi"]))
    rows.append(Row(SECTION, bare_cpu, cpu["bare"]))
    for name, label in labels:
        vs_fastapi = cpu["fastapi"] / cpu[name]
        vs_bare = cpu["bare"] / cpu[name]
        rows.append(Row(SECTION, f"{label}: server CPU per request", cpu[name], fastapi_cpu,
                        vs_fastapi, ">= 5x (CPU view)", vs_fastapi >= 5.0,
                        note="ratio = anchor CPU / spear CPU"))
        rows.append(Row(SECTION, f"{label}: server CPU per request vs the bare echo",
                        cpu[name], bare_cpu, vs_bare, ">= 0.7x (CPU view)", vs_bare >= 0.7))
    return rows
