"""zcserve beside nginx, aiohttp and http.server, driven by wrk and `zcserve load`.

Run by `make compare`, which installs nginx and wrk (apt-get) and aiohttp (pip).
Every selected server is started once, on its own port, pinned to CPU 0 (zcserve
with `w=auto` runs a worker per CPU, as deployed); the load tools run on CPU 1.
Measurements are interleaved: each of `--repeat` rounds measures every cell
(size x connections x tool) once on every server, the server order rotating from
round to round, so a noisy spell on this shared machine lands on all servers
alike. Medians across rounds are reported, with the server's CPU time per
request (µs) and per GiB of body beside every throughput, then each server's
req/s as a ratio to the best nginx config and to aiohttp (uvloop) in that cell.

`--before DIR` adds an older zcserve checkout (a folder holding a `zcserve/`
package, e.g. from `git worktree add /tmp/before COMMIT`) to the same rounds.

`--tls` adds HTTPS servers, all with one self-signed ECDSA P-256 certificate made by
the openssl command: nginx with ssl (1 worker, `ssl_session_cache shared:SSL:10m`,
TLS 1.2 and 1.3), zcserve with `--tls-cert/--tls-key` (strategy auto, which is the
fallback path under TLS; not quick: readwrite and w=auto too), aiohttp (uvloop) with
an ssl context, and the --before checkout's zcserve when its `serve` has
`--tls-cert`. Without --servers, only they and their HTTP twins (the same server
without TLS; for nginx, every HTTP config) are measured, and a further table gives
each HTTPS server's req/s and CPU per request as a ratio to its twin's. wrk and
`zcserve load` (without certificate checks) speak https themselves. `make
compare-https` runs `--tls --sizes 4KiB,64KiB,1MiB --concurrency 64 --tools wrk
--no-single`.

Usage: python benchmarks/compare.py [--quick] [--tls] [--servers A,B] [--before DIR]
       [--tools wrk,zcserve-load] [--sizes ...] [--concurrency ...] [--duration S]
       [--repeat ROUNDS] [--no-single] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial

import psutil

from zcserve.bench.child import start_serve, stop_child
from zcserve.demo import write_file
from zcserve.errors import ZcserveError
from zcserve.load.run import LoadOptions, run_load
from zcserve.units import parse_size

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 1024**3
SIZES = ("4KiB", "64KiB", "1MiB", "64MiB")
CONCURRENCY = (1, 64, 256)
TOOLS = ("wrk", "wrk-varied", "zcserve-load")
VARIED_SCRIPT = os.path.join(HERE, "varied_requests.lua")
"""wrk-varied: each request gets a new query string, so none repeats the one before
it and zcserve's repeat shortcuts never apply (the ordinary path)."""
BIG = "1GiB"
SERVER_CPU, CLIENT_CPU = 0, 1
START_TIMEOUT = 20.0
NGINX_PREFIX = "nginx"
AIOHTTP_REFERENCE = "aiohttp static uvloop"
HTTPS_SUFFIX = " https"
BEST_NGINX = "best nginx"
"""The HTTP twin of nginx https: whichever nginx HTTP config had the most req/s."""
TLS_CERT, TLS_KEY = "tls-cert.pem", "tls-key.pem"
"""In the scratch folder: one self-signed certificate for every HTTPS server."""
TLS_STRATEGIES = ("auto", "fallback", "readwrite")
"""zcserve strategies that can carry TLS (the others hand file pages to the kernel)."""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx-{name}.pid;
error_log {tmp}/error.log error;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile {sendfile};
    tcp_nopush {nopush};
    tcp_nodelay on;
    keepalive_requests 10000000;
    client_body_temp_path {tmp};
    proxy_temp_path {tmp};
    fastcgi_temp_path {tmp};
    server {{
        listen 127.0.0.1:{port}{ssl} backlog=4096;
        root {root};{tls}{cache}
    }}
}}
"""
NGINX_FILE_CACHE = """
        open_file_cache max=1000 inactive=20s;
        open_file_cache_valid 1s;"""
"""nginx's open-file cache, trusted for a second: what zcserve's open-file cache
with `--cache-valid 1` does (descriptors and stat kept, no stat within the second)."""
FILE_CACHE_SUFFIX = " open_file_cache"
NGINX_TLS = """
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache shared:SSL:10m;
        ssl_protocols TLSv1.2 TLSv1.3;"""
"""1.22's default ssl_protocols stops at TLSv1.2 (TLSv1.3 joined it in 1.23.4): listed
so that nginx speaks the TLS 1.3 that Python's servers do."""


def free_port() -> int:
    # nginx cannot report a port-0 bind; a race with another binder is acceptable here.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpu: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {cpu})


@dataclass
class Running:
    """A started server: its process (tree) and port."""

    proc: subprocess.Popen[str]
    port: int

    def cpu_seconds(self) -> float:
        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            for process in [root, *root.children(recursive=True)]:
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
        return total


@dataclass(frozen=True)
class ServerSpec:
    name: str
    start: Callable[[str, str], Running]
    """(root, scratch folder) -> a running server."""
    scheme: str = "http"
    http_twin: str | None = None
    """https: the server whose HTTP req/s and CPU this one's are compared with."""


def tls_files(tmp: str) -> list[str]:
    """The certificate and key files in the scratch folder, as server flags take them."""
    return [os.path.join(tmp, TLS_CERT), os.path.join(tmp, TLS_KEY)]


def make_certificate(tmp: str) -> None:
    """A self-signed ECDSA P-256 certificate for localhost: cheap handshakes, so the
    64 that each run opens cost next to nothing per request."""
    cert, key = tls_files(tmp)
    done = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=localhost", "-days", "2", "-keyout", key, "-out", cert],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"openssl req failed: {done.stderr.strip()}")


def _read_port(proc: subprocess.Popen[str], pattern: str) -> int:
    """The port from the first stdout line matching `pattern`; the child is stopped
    if it exits or says nothing matching within START_TIMEOUT seconds."""
    assert proc.stdout is not None
    watchdog = threading.Timer(START_TIMEOUT, proc.kill)  # ends a readline that would hang
    watchdog.start()
    try:
        for line in proc.stdout:
            match = re.search(pattern, line)
            if match:
                return int(match.group(1))
    finally:
        watchdog.cancel()
    stop_child(proc, timeout=5.0)
    raise RuntimeError(f"{proc.args!r} did not announce a port")


def zcserve_spec(
    strategy: str, workers: str, tls: bool = False, extra: tuple[str, ...] = ()
) -> ServerSpec:
    def start(root: str, tmp: str) -> Running:
        args = [root, "--port", "0", "--strategy", strategy, "--workers", workers, *extra]
        if tls:
            cert, key = tls_files(tmp)
            args += ["--tls-cert", cert, "--tls-key", key]
        # One worker: pinned to the server CPU. `auto` workers: every CPU, as deployed.
        child = start_serve(args, cpus={SERVER_CPU} if workers == "1" else None)
        return Running(child.proc, child.port)

    name = " ".join(["zcserve", strategy, *extra, f"w={workers}"])
    if tls:
        return ServerSpec(name + HTTPS_SUFFIX, start, "https", name)
    return ServerSpec(name, start)


def before_spec(checkout: str, strategy: str, tls: bool = False) -> ServerSpec:
    """zcserve from an older checkout, one worker. Old code may lack `--ready-json`
    (and `--workers`), so the port comes from its human start-up line."""

    def start(root: str, tmp: str) -> Running:
        command = [sys.executable, "-m", "zcserve", "serve", root, "--port", "0"]
        command += ["--strategy", strategy]
        if tls:
            cert, key = tls_files(tmp)
            command += ["--tls-cert", cert, "--tls-key", key]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env=before_env(checkout), cwd=checkout,
            preexec_fn=pin(SERVER_CPU),
        )  # fmt: skip
        return Running(proc, _read_port(proc, r"^zcserve: .* on https?://[^ ]*:(\d+)"))

    name = f"zcserve-before {strategy} w=1"
    if tls:
        return ServerSpec(name + HTTPS_SUFFIX, start, "https", name)
    return ServerSpec(name, start)


def before_has_tls(checkout: str) -> bool:
    """Whether the checkout's `zcserve serve` takes --tls-cert: its serve options are
    in server/command.py, or in cli.py before that module existed."""
    for where in (("server", "command.py"), ("cli.py",)):
        try:
            with open(os.path.join(checkout, "zcserve", *where)) as source:
                if "--tls-cert" in source.read():
                    return True
        except OSError:
            continue
    return False


def before_env(checkout: str) -> dict[str, str]:
    paths = [checkout, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def check_before(checkout: str) -> str | None:
    """Why `checkout` cannot be measured, or None: it must hold a `zcserve/` package
    that `python -m zcserve` run there imports (not this tree's)."""
    if not os.path.isfile(os.path.join(checkout, "zcserve", "__init__.py")):
        return f"--before {checkout}: no zcserve/ package there"
    probe = "import os, zcserve; print(os.path.dirname(os.path.realpath(zcserve.__file__)))"
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=before_env(checkout),
        cwd=checkout, timeout=60,
    ).stdout.strip()  # fmt: skip
    if found != os.path.join(checkout, "zcserve"):
        return f"--before {checkout}: python imports zcserve from {found or '?'} instead"
    return None


def describe_checkout(checkout: str) -> str:
    """`DIR @ short-commit`, or just DIR outside git."""
    done = subprocess.run(
        ["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return f"{checkout} @ {done.stdout.strip()}" if done.returncode == 0 else checkout


def nginx_spec(
    sendfile: str, nopush: str, tls: bool = False, file_cache: bool = False
) -> ServerSpec:
    """nginx, 1 worker; with `tls`, https (sendfile then has no effect: nginx encrypts
    in userspace, without kTLS); with `file_cache`, its open_file_cache, valid 1 s."""

    def start(root: str, tmp: str) -> Running:
        port = free_port()
        name = f"{sendfile}-{nopush}" + ("-tls" if tls else "") + ("-cache" if file_cache else "")
        conf = os.path.join(tmp, f"nginx-{name}.conf")
        cert, key = tls_files(tmp)
        with open(conf, "w") as out:
            out.write(
                NGINX_CONF.format(
                    tmp=tmp,
                    name=name,
                    port=port,
                    root=root,
                    sendfile=sendfile,
                    nopush=nopush,
                    ssl=" ssl" if tls else "",
                    tls=NGINX_TLS.format(cert=cert, key=key) if tls else "",
                    cache=NGINX_FILE_CACHE if file_cache else "",
                )  # fmt: skip
            )
        proc = subprocess.Popen(
            ["nginx", "-c", conf, "-p", tmp],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pin(SERVER_CPU),
        )
        _wait_port(port, proc)
        return Running(proc, port)

    if tls:
        return ServerSpec(NGINX_PREFIX + HTTPS_SUFFIX, start, "https", BEST_NGINX)
    label = f"nginx sendfile={sendfile}" + (f" nopush={nopush}" if sendfile == "on" else "")
    return ServerSpec(label + (FILE_CACHE_SUFFIX if file_cache else ""), start)


def aiohttp_spec(loop: str, tls: bool = False) -> ServerSpec:
    def start(root: str, tmp: str) -> Running:
        command = [sys.executable, os.path.join(HERE, "aiohttp_static.py"), root, loop]
        command += tls_files(tmp) if tls else []
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, preexec_fn=pin(SERVER_CPU)
        )
        return Running(proc, _read_port(proc, r"127\.0\.0\.1:(\d+)"))

    name = f"aiohttp static {loop}"
    if tls:
        return ServerSpec(name + HTTPS_SUFFIX, start, "https", name)
    return ServerSpec(name, start)


def http_server_spec() -> ServerSpec:
    def start(root: str, tmp: str) -> Running:
        port = free_port()
        command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        command += ["--directory", root]
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            preexec_fn=pin(SERVER_CPU),
        )  # fmt: skip
        _wait_port(port, proc)
        return Running(proc, port)

    return ServerSpec("python -m http.server", start)


def _wait_port(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    stop_child(proc, timeout=5.0)
    raise RuntimeError(f"{proc.args!r} is not listening on {port}")


@contextmanager
def running(spec: ServerSpec, root: str, tmp: str) -> Iterator[Running]:
    server = spec.start(root, tmp)
    try:
        yield server
    finally:
        stop_child(server.proc)


@dataclass
class Cell:
    """One server's figures for a tool, a file size and a concurrency: the medians
    of its runs (one per round), with the ratios filled in by `add_ratios`."""

    server: str
    tool: str
    size: str
    connections: int
    scheme: str = "http"
    requests_per_second: float = 0.0
    megabytes_per_second: float = 0.0
    p99_ms: float = 0.0
    us_cpu_per_request: float = 0.0
    """Server CPU time (user + system, all its processes) per request completed, µs."""
    cpu_per_gib: float = 0.0
    errors: int = 0
    failed_rounds: int = 0
    """Rounds whose measurement failed outright (tool or server error): no run kept."""
    nginx_best: str | None = None
    """The nginx config with the most req/s in this cell."""
    vs_nginx_best: float | None = None
    """req/s over that nginx config's req/s."""
    vs_aiohttp: float | None = None
    """req/s over aiohttp static (uvloop)'s req/s, when it was measured."""
    http_twin: str | None = None
    """https: the server (or `best nginx`) compared without TLS; `add_ratios` names
    the nginx config."""
    https_vs_http: float | None = None
    """https: req/s over the HTTP twin's req/s in the same (tool, size, connections)."""
    cpu_vs_http: float | None = None
    """https: CPU µs per request over the HTTP twin's."""
    runs: list[dict[str, float]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.tool, self.size, self.connections)


MEDIANS = (
    "requests_per_second",
    "megabytes_per_second",
    "p99_ms",
    "us_cpu_per_request",
    "cpu_per_gib",
)


def run_wrk(
    url: str, connections: int, duration: float, script: str | None = None
) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    command[1:1] = ["-s", script] if script else []
    done = subprocess.run(
        command, capture_output=True, text=True, preexec_fn=pin(CLIENT_CPU), timeout=duration + 60
    )
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        said = " | ".join(line.strip() for line in (out + done.stderr).splitlines() if line)
        raise RuntimeError(f"wrk printed no Requests/sec: {said or 'nothing'}")
    requests = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    count = int(errors.group(1)) if errors else 0
    if socket_errors:
        count += sum(int(g) for g in socket_errors.groups())
    # wrk's Transfer/sec counts every byte read, heads included, finished or not.
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", out)
    units = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
    return {
        "megabytes_per_second": float(transfer.group(1)) * units[transfer.group(2)] / 1e6
        if transfer
        else 0.0,
        "requests_per_second": float(rps.group(1)),
        "requests": float(requests.group(1)) if requests else float(rps.group(1)) * duration,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
        "errors": count,
    }


def run_zcload(url: str, connections: int, duration: float) -> dict[str, float]:
    # In this process, which main() pinned to the client CPU: no start-up per run.
    options = LoadOptions(
        urls=(url,), connections=connections, duration=duration, processes=1,
        insecure=url.startswith("https:"),  # the self-signed certificate of --tls
    )  # fmt: skip
    data = run_load(options).to_json()
    return {
        # Bytes that arrived in the window, so unfinished 64 MiB responses count too.
        "megabytes_per_second": data["window_megabytes_per_second"],
        "requests_per_second": data["requests_per_second"],
        "requests": float(data["requests"]),
        "p99_ms": data["latency_ms"]["p99"],
        "errors": data["error_total"],
    }


def measure(
    server: Running, tool: str, url: str, connections: int, duration: float
) -> dict[str, float]:
    before = server.cpu_seconds()
    if tool == "wrk":
        figures = run_wrk(url, connections, duration)
    elif tool == "wrk-varied":
        figures = run_wrk(url, connections, duration, VARIED_SCRIPT)
    else:
        figures = run_zcload(url, connections, duration)
    cpu = server.cpu_seconds() - before
    body = figures["megabytes_per_second"] * 1e6 * duration
    figures["cpu_seconds"] = cpu
    figures["cpu_per_gib"] = cpu / (body / GIB) if body else 0.0
    requests = figures["requests"]
    figures["us_cpu_per_request"] = cpu * 1e6 / requests if requests else 0.0
    return figures


def single_download(server: Running, url: str, size: int) -> dict[str, float]:
    """One connection, one GET of the big file, timed by the client (curl; -k for the
    self-signed certificate of --tls)."""
    before = server.cpu_seconds()
    out = subprocess.run(
        ["curl", "-s", "-k", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url],
        capture_output=True, text=True, preexec_fn=pin(CLIENT_CPU), timeout=600,
    ).stdout.split()  # fmt: skip
    cpu = server.cpu_seconds() - before
    if len(out) != 2:
        raise RuntimeError(f"curl printed {' '.join(out)!r}")
    seconds, got = float(out[0]), int(out[1])
    return {
        "requests_per_second": 1 / seconds,
        "requests": 1.0,
        "megabytes_per_second": got / seconds / 1e6,
        "p99_ms": seconds * 1000,
        "cpu_seconds": cpu,
        "cpu_per_gib": cpu / (size / GIB),
        "us_cpu_per_request": cpu * 1e6,
        "errors": 0 if got == size else 1,
    }


def median_cell(cell: Cell) -> Cell:
    for key in MEDIANS:
        setattr(cell, key, statistics.median(run[key] for run in cell.runs) if cell.runs else 0.0)
    cell.errors = int(sum(run["errors"] for run in cell.runs))
    return cell


def add_ratios(cells: Sequence[Cell]) -> None:
    """Each cell's req/s over the best nginx config's and aiohttp (uvloop)'s of its own
    scheme in the same (tool, size, connections); an https cell's req/s and CPU per
    request over its HTTP twin's too."""
    groups: dict[tuple[str, str, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.key, []).append(cell)
    for group in groups.values():
        best_of: dict[str, Cell | None] = {}
        for scheme in {c.scheme for c in group}:
            nginx = [
                c for c in group
                if c.server.startswith(NGINX_PREFIX) and c.scheme == scheme and c.runs
            ]  # fmt: skip
            best_of[scheme] = max(nginx, key=lambda c: c.requests_per_second, default=None)
        by_name = {c.server: c for c in group if c.runs}
        for cell in group:
            best = best_of[cell.scheme]
            if best is not None and best.requests_per_second > 0:
                cell.nginx_best = best.server
                cell.vs_nginx_best = cell.requests_per_second / best.requests_per_second
            reference = AIOHTTP_REFERENCE + (HTTPS_SUFFIX if cell.scheme == "https" else "")
            aiohttp = by_name.get(reference)
            if aiohttp is not None and aiohttp.requests_per_second > 0:
                cell.vs_aiohttp = cell.requests_per_second / aiohttp.requests_per_second
            if cell.http_twin == BEST_NGINX:
                # nginx https runs without open_file_cache: its twin is the best HTTP
                # config that does too.
                twins = [
                    c for c in group
                    if c.server.startswith(NGINX_PREFIX) and c.scheme == "http" and c.runs
                    and not c.server.endswith(FILE_CACHE_SUFFIX)
                ]  # fmt: skip
                twin = max(twins, key=lambda c: c.requests_per_second, default=None)
                cell.http_twin = twin.server if twin is not None else None
            else:
                twin = by_name.get(cell.http_twin) if cell.http_twin else None
            if twin is not None and cell.requests_per_second > 0 and twin.requests_per_second > 0:
                cell.https_vs_http = cell.requests_per_second / twin.requests_per_second
                if twin.us_cpu_per_request > 0:
                    cell.cpu_vs_http = cell.us_cpu_per_request / twin.us_cpu_per_request


def all_servers(quick: bool) -> list[ServerSpec]:
    strategies = (
        ("sendfile", "mmap") if quick else ("sendfile", "readwrite", "fallback", "mmap", "splice")
    )
    # `auto` (the default: a strategy chosen per response) once, with one worker.
    specs = [zcserve_spec(s, "1") for s in (strategies if quick else ("auto", *strategies))]
    specs += [zcserve_spec(s, "auto") for s in (("sendfile",) if quick else strategies)]
    # Small files from memory, with a stat per request and with none for a second.
    specs += [
        zcserve_spec("memory", "1"),
        zcserve_spec("memory", "1", extra=("--cache-valid", "1")),
    ]
    specs += nginx_servers()
    specs += [nginx_spec("off", "off", file_cache=True)]  # the twin of --cache-valid 1
    specs += (
        [aiohttp_spec("uvloop")] if quick else [aiohttp_spec("uvloop"), aiohttp_spec("asyncio")]
    )
    specs += [] if quick else [http_server_spec()]
    return specs


def tls_pairs(quick: bool) -> list[tuple[ServerSpec, ServerSpec]]:
    """The HTTPS servers of --tls, each with its HTTP twin (nginx https, compared with
    the best nginx HTTP config, is not among them). Under TLS every zcserve strategy
    but readwrite comes down to the fallback path, which `auto` picks."""
    zcserve = [("auto", "1")] + ([] if quick else [("readwrite", "1"), ("auto", "auto")])
    pairs = [(zcserve_spec(s, w), zcserve_spec(s, w, tls=True)) for s, w in zcserve]
    return pairs + [(aiohttp_spec("uvloop"), aiohttp_spec("uvloop", tls=True))]


def nginx_servers() -> list[ServerSpec]:
    return [nginx_spec("on", "on"), nginx_spec("on", "off"), nginx_spec("off", "off")]


def tls_default_servers(quick: bool) -> list[ServerSpec]:
    """--tls without --servers: the HTTPS servers and their HTTP twins, with every nginx
    HTTP config (nginx https is compared with the best of them)."""
    pairs = tls_pairs(quick)
    http = [twin for twin, _ in pairs if not twin.name.startswith("aiohttp")]
    http += nginx_servers() + [twin for twin, _ in pairs if twin.name.startswith("aiohttp")]
    return http + [https for _, https in pairs] + [nginx_spec("off", "off", tls=True)]


def tls_candidates() -> list[ServerSpec]:
    """What --servers picks from with --tls: every server, the HTTPS ones and their
    twins too."""
    specs = all_servers(False)
    names = {spec.name for spec in specs}
    for twin, https in tls_pairs(False):
        specs += [] if twin.name in names else [twin]
        specs.append(https)
    return specs + [nginx_spec("off", "off", tls=True)]


def select_servers(specs: Sequence[ServerSpec], wanted: str) -> list[ServerSpec]:
    """The specs whose names start (case-insensitively) with one of the comma-separated
    `wanted` names, in `specs` order; ValueError names any that match nothing."""
    names = [name.strip().lower() for name in wanted.split(",") if name.strip()]
    unknown = [n for n in names if not any(s.name.lower().startswith(n) for s in specs)]
    if unknown or not names:
        known = ", ".join(s.name for s in specs)
        raise ValueError(f"unknown server {', '.join(map(repr, unknown))} (known: {known})")
    return [s for s in specs if any(s.name.lower().startswith(n) for n in names)]


def choose_servers(args: argparse.Namespace) -> list[ServerSpec]:
    """The servers to measure: --servers picks by name prefix among every server (the
    HTTPS ones too with --tls); without it, the default set of the mode."""
    if args.servers:
        return select_servers(tls_candidates() if args.tls else all_servers(False), args.servers)
    return tls_default_servers(args.quick) if args.tls else all_servers(args.quick)


def parse_tools(value: str) -> tuple[str, ...]:
    names = {name.strip() for name in value.split(",") if name.strip()}
    if names == {"both"}:
        names = {"wrk", "zcserve-load"}
    if not names or names - set(TOOLS):
        raise ValueError(f"--tools {value!r}: choose wrk, wrk-varied, zcserve-load or both")
    return tuple(t for t in TOOLS if t in names)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer servers and cells")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="add HTTPS servers (nginx ssl, zcserve --tls-cert, aiohttp); without --servers, "
        "only they and their HTTP twins",
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved rounds (medians across them)"
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated file sizes")
    parser.add_argument(
        "--no-single", action="store_true", help="skip the single-connection 1 GiB download"
    )
    parser.add_argument(
        "--concurrency", default=",".join(map(str, CONCURRENCY)), help="comma-separated"
    )
    parser.add_argument(
        "--servers",
        help="comma-separated server names or prefixes, case-insensitive "
        '(e.g. "zcserve sendfile w=1,nginx,aiohttp static uvloop"); default: all',
    )
    parser.add_argument(
        "--tools",
        default="both",
        help="wrk, wrk-varied (a new query string on every request: no repeats),"
        " zcserve-load, or both (wrk and zcserve-load); comma-separated",
    )
    parser.add_argument(
        "--before", metavar="DIR", help="an older checkout (holding zcserve/) to measure too"
    )
    parser.add_argument(
        "--before-strategies",
        default="sendfile",
        help="comma-separated strategies for the --before servers (one worker each)",
    )
    args = parser.parse_args()

    def fail(message: str) -> int:
        print(f"compare: {message}", file=sys.stderr)
        return 2

    if args.repeat < 1:
        return fail("--repeat must be at least 1")
    try:
        tools = parse_tools(args.tools)
        specs = choose_servers(args)
    except ValueError as exc:
        return fail(str(exc))
    before = ""
    if args.before:
        checkout = os.path.realpath(args.before)
        problem = check_before(checkout)
        if problem:
            return fail(problem)
        before = describe_checkout(checkout)
        strategies = [s.strip() for s in args.before_strategies.split(",") if s.strip()]
        if args.tls and before_has_tls(checkout):
            # Its https row needs its own HTTP twin: auto, the strategy it runs with.
            strategies += [] if "auto" in strategies else ["auto"]
            specs += [before_spec(checkout, s) for s in strategies]
            specs += [before_spec(checkout, "auto", tls=True)]
        else:
            if args.tls:
                print(f"compare: {before} has no --tls-cert: no https row for it", flush=True)
            specs += [before_spec(checkout, s) for s in strategies]
    if len(os.sched_getaffinity(0)) < 2:
        return fail("needs 2 CPUs to separate server and client")
    needed = ["wrk"] if "wrk" in tools or "wrk-varied" in tools else []
    needed += [] if args.no_single else ["curl"]
    needed += ["nginx"] if any(s.name.startswith(NGINX_PREFIX) for s in specs) else []
    needed += ["openssl"] if any(s.scheme == "https" for s in specs) else []
    for tool in needed:
        if shutil.which(tool) is None:
            return fail(f"{tool} not found (make compare installs it)")
    os.sched_setaffinity(0, {CLIENT_CPU})  # zcserve load runs in this process
    sizes = tuple(args.sizes.split(","))
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    if args.quick:
        sizes, concurrency = sizes[:1] + sizes[-1:], concurrency[:2]
    try:
        cells = run_rounds(specs, sizes, concurrency, tools, args)
    except (RuntimeError, ZcserveError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 1
    add_ratios(cells)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M")
    with open(os.path.join(args.out, f"compare-{stamp}.json"), "w") as out:
        json.dump([asdict(c) for c in cells], out, indent=1)
    report = markdown(cells, args.repeat, args.duration, before)
    with open(os.path.join(args.out, f"compare-{stamp}.md"), "w") as out:
        out.write(report)
    print(report)
    return 0


def run_rounds(
    specs: Sequence[ServerSpec],
    sizes: Sequence[str],
    concurrency: Sequence[int],
    tools: Sequence[str],
    args: argparse.Namespace,
) -> list[Cell]:
    """Start every server, run `args.repeat` interleaved rounds, stop them all; the
    cells (medians) in server, tool, size, connections order."""
    plan = [(size, c, tool) for size in sizes for c in concurrency for tool in tools]
    cells: dict[tuple[str, str, str, int], Cell] = {}
    for spec in specs:
        for size, connections, tool in plan:
            cells[(spec.name, tool, size, connections)] = Cell(
                spec.name, tool, size, connections, spec.scheme, http_twin=spec.http_twin
            )
        if not args.no_single:
            cells[(spec.name, "curl", BIG, 1)] = Cell(
                spec.name, "curl", BIG, 1, spec.scheme, http_twin=spec.http_twin
            )
    with tempfile.TemporaryDirectory(prefix="zcserve-compare-") as tmp, ExitStack() as stack:
        root = os.path.join(tmp, "root")
        os.makedirs(root)
        for size in (*sizes, *(() if args.no_single else (BIG,))):
            write_file(os.path.join(root, f"{size}.bin"), parse_size(size))
        if any(spec.scheme == "https" for spec in specs):
            make_certificate(tmp)
        servers: list[tuple[str, str, Running]] = []
        for spec in specs:
            server = stack.enter_context(running(spec, root, tmp))
            print(f"started {spec.name} on port {server.port} (pid {server.proc.pid})", flush=True)
            servers.append((spec.name, spec.scheme, server))
        for round_ in range(args.repeat):
            shift = round_ % len(servers)
            order = servers[shift:] + servers[:shift]
            print(f"round {round_ + 1}/{args.repeat}", flush=True)
            for size, connections, tool in plan:
                for name, scheme, server in order:
                    url = f"{scheme}://127.0.0.1:{server.port}/{size}.bin"
                    run = partial(measure, server, tool, url, connections, args.duration)
                    _run_one(cells[(name, tool, size, connections)], server, run)
            if args.no_single:
                continue
            for name, scheme, server in order:
                url = f"{scheme}://127.0.0.1:{server.port}/{BIG}.bin"
                run = partial(single_download, server, url, parse_size(BIG))
                _run_one(cells[(name, "curl", BIG, 1)], server, run)
    return [median_cell(cell) for cell in cells.values()]


def _run_one(cell: Cell, server: Running, run: Callable[[], dict[str, float]]) -> None:
    """Measure once into `cell`; a failure is counted and reported, not fatal, so one
    broken server does not cost the other servers' results."""
    if server.proc.poll() is not None:
        cell.failed_rounds += 1
        _print_failure(cell, f"server exited with code {server.proc.returncode}")
        return
    try:
        figures = run()
    except Exception as exc:  # any tool or server failure: reported, not raised
        cell.failed_rounds += 1
        _print_failure(cell, f"{type(exc).__name__}: {exc}")
        return
    cell.runs.append(figures)
    _print_run(cell, figures)


def _print_failure(cell: Cell, why: str) -> None:
    print(
        f"{cell.server:28} {cell.tool:12} {cell.size:>6} c={cell.connections:<4} FAILED: {why}",
        flush=True,
    )


def _print_run(cell: Cell, run: dict[str, float]) -> None:
    print(
        f"{cell.server:28} {cell.tool:12} {cell.size:>6} c={cell.connections:<4} "
        f"{run['requests_per_second']:10.0f} req/s {run['megabytes_per_second']:9.1f} MB/s "
        f"p99 {run['p99_ms']:8.2f} ms cpu {run['us_cpu_per_request']:8.1f} µs/req "
        f"{run['cpu_per_gib']:6.2f} s/GiB err {int(run['errors'])}",
        flush=True,
    )


def _rate(value: float) -> str:
    """req/s: whole numbers, but 1 GiB downloads (under 1/s) keep their digits."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def markdown(cells: Sequence[Cell], rounds: int, duration: float, before: str) -> str:
    spread = any(c.server.endswith("w=auto") for c in cells)
    lines = [
        f"{rounds} interleaved round(s) of {duration:g} s per measurement, medians; servers "
        f"pinned to CPU {SERVER_CPU}"
        + (" (zcserve w=auto on every CPU)" if spread else "")
        + f", load on CPU {CLIENT_CPU}.",
    ]
    if before:
        lines.append(f"zcserve-before: {before}.")
    if any(c.scheme == "https" for c in cells):
        lines.append(
            "https rows: TLS 1.3 (nginx: `ssl_protocols TLSv1.2 TLSv1.3`), one self-signed "
            "ECDSA P-256 certificate; each run's 64 or so handshakes count in its CPU."
        )
    lines += [
        "",
        "| server | tool | size | conns | server µs CPU/req | req/s | MB/s | p99 ms "
        "| server CPU-s/GiB | errors | rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c.server} | {c.tool} | {c.size} | {c.connections} | {c.us_cpu_per_request:,.1f} "
            f"| {_rate(c.requests_per_second)} | {c.megabytes_per_second:,.1f} | {c.p99_ms:.2f} "
            f"| {c.cpu_per_gib:.2f} | {c.errors} | {len(c.runs)}/{len(c.runs) + c.failed_rounds} |"
        )
    lines += ["", ratio_table(cells)]
    if any(c.scheme == "https" for c in cells):
        lines += [https_table(cells)]
    return "\n".join(lines)


def https_table(cells: Sequence[Cell]) -> str:
    """Each https cell beside its HTTP twin: CPU per request first, then the ratios."""
    lines = [
        "HTTPS against each server's own HTTP (the same server without TLS; nginx https "
        "against the best nginx HTTP config of the row group): req/s and server CPU µs per "
        "request as ratios, HTTPS over HTTP.",
        "",
        "| server µs CPU/req | server | tool | size | conns | req/s | HTTP twin "
        "| twin µs CPU/req | twin req/s | HTTPS/HTTP req/s | HTTPS/HTTP µs CPU/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(c.server, c.key): c for c in cells}
    for c in cells:
        if c.scheme != "https":
            continue
        twin = by_key.get((c.http_twin, c.key)) if c.http_twin else None
        lines.append(
            f"| {c.us_cpu_per_request:,.1f} | {c.server} | {c.tool} | {c.size} | {c.connections} "
            f"| {_rate(c.requests_per_second)} | {c.http_twin or '–'} "
            f"| {f'{twin.us_cpu_per_request:,.1f}' if twin and twin.runs else '–'} "
            f"| {_rate(twin.requests_per_second) if twin and twin.runs else '–'} "
            f"| {_ratio(c.https_vs_http)} | {_ratio(c.cpu_vs_http)} |"
        )
    return "\n".join(lines) + "\n"


def ratio_table(cells: Sequence[Cell]) -> str:
    """req/s over the best nginx config's (1.00× marks that config) and over aiohttp
    static (uvloop)'s of the same scheme, one block of rows per (tool, size,
    connections)."""
    with_aiohttp = any(c.vs_aiohttp is not None for c in cells)
    tls = any(c.scheme == "https" for c in cells)
    head = "| tool | size | conns | server | µs CPU/req | req/s | × best nginx |"
    rule = "|---|---|---|---|---|---|---|"
    if with_aiohttp:
        head, rule = head + " × aiohttp uvloop |", rule + "---|"
    lines = [
        "Ratios of req/s to the best nginx config (1 worker; best of its sendfile/nopush "
        "configs in each row group, marked 1.00×)"
        + (" and to aiohttp static (uvloop)" if with_aiohttp else "")
        + (", https rows to nginx https and aiohttp https" if tls else "")
        + ":",
        "",
        head + " p99 ms |",
        rule + "---|",
    ]
    keys = list(dict.fromkeys(c.key for c in cells))
    for key in keys:
        group = sorted(
            (c for c in cells if c.key == key), key=lambda c: (c.scheme, -c.requests_per_second)
        )
        for c in group:
            row = f"| {c.tool} | {c.size} | {c.connections} | {c.server} "
            row += f"| {c.us_cpu_per_request:,.1f} | {_rate(c.requests_per_second)} "
            row += f"| {_ratio(c.vs_nginx_best)} |"
            if with_aiohttp:
                row += f" {_ratio(c.vs_aiohttp)} |"
            lines.append(row + f" {c.p99_ms:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
