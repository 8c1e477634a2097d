"""The `memory` strategy: small files answered from memory with one send of head and
body, over plain TCP and TLS, with exact bytes, ranges and conditionals; a file
rewritten in place is served new at once; memory stays within --memory-cache."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpclient import connect, get
from tests.support.metrics import scrape
from tests.support.servers import ServerThread, start_child, start_server
from tests.support.tls import Transport

SMALL = bytes(range(256)) * 16  # 4 KiB
LARGER = os.urandom(100_000)  # past --memory-file-max's default (16 KiB)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("memory")
    (root / "small.bin").write_bytes(SMALL)
    (root / "larger.bin").write_bytes(LARGER)
    (root / "empty.txt").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def server(folder: Path, transport: Transport) -> Iterator[ServerThread]:
    running = start_server(root=str(folder), strategy="memory", **transport.options())
    yield running
    running.stop()


def test_exact_bytes_from_memory_and_past_its_file_limit(
    server: ServerThread, transport: Transport
) -> None:
    for _ in range(3):  # the first answer reads the file; the next ones are held
        small = get(server.port, "/small.bin", transport=transport)
        assert small.status == 200 and small.body == SMALL
        assert small.headers["content-length"] == str(len(SMALL))
    larger = get(server.port, "/larger.bin", transport=transport)
    assert larger.status == 200 and larger.body == LARGER
    assert get(server.port, "/empty.txt", transport=transport).body == b""
    head = get(server.port, "/small.bin", method="HEAD", transport=transport)
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == "4096"


def test_ranges_and_conditionals_of_a_held_file(server: ServerThread, transport: Transport) -> None:
    whole = get(server.port, "/small.bin", transport=transport)
    part = get(server.port, "/small.bin", {"Range": "bytes=100-199"}, transport=transport)
    assert part.status == 206 and part.body == SMALL[100:200]
    parts = get(server.port, "/small.bin", {"Range": "bytes=0-1,10-11"}, transport=transport)
    assert parts.status == 206 and SMALL[10:12] in parts.body
    same = get(
        server.port, "/small.bin", {"If-None-Match": whole.headers["etag"]}, transport=transport
    )
    assert same.status == 304 and same.body == b""
    refused = get(server.port, "/small.bin", {"If-Match": '"other"'}, transport=transport)
    assert refused.status == 412


def test_pipelined_answers_from_memory_stay_in_order(
    server: ServerThread, transport: Transport
) -> None:
    request = b"GET /small.bin HTTP/1.1\r\nHost: t\r\n\r\n"
    with connect(server.port, transport=transport) as sock:
        sock.sendall(
            request * 20 + b"GET /larger.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(SMALL) == 20 and received.endswith(LARGER)


def test_a_file_rewritten_in_place_is_served_new_at_once(tmp_path: Path) -> None:
    """Same size, same mtime (set back by utime): the stat's ctime still moves, so
    the held bytes are let go and the next answer is the new bytes."""
    path = tmp_path / "page.bin"
    path.write_bytes(b"A" * 4096)
    server = start_server(root=str(tmp_path), strategy="memory")
    try:
        assert get(server.port, "/page.bin").body == b"A" * 4096
        assert get(server.port, "/page.bin").body == b"A" * 4096  # held now
        before = path.stat()
        with open(path, "r+b") as rewrite:
            rewrite.write(b"B" * 4096)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_size == before.st_size
        assert path.stat().st_mtime_ns == before.st_mtime_ns
        assert get(server.port, "/page.bin").body == b"B" * 4096
    finally:
        server.stop()


def test_cache_valid_serves_a_change_late_as_documented(tmp_path: Path) -> None:
    """--cache-valid skips the stat: a rewrite is seen only when the time is up."""
    path = tmp_path / "page.bin"
    path.write_bytes(b"A" * 100)
    server = start_server(root=str(tmp_path), strategy="memory", cache_valid=3600.0)
    try:
        assert get(server.port, "/page.bin").body == b"A" * 100
        path.write_bytes(b"B" * 100)
        assert get(server.port, "/page.bin").body == b"A" * 100  # stale, as documented
    finally:
        server.stop()


def test_memory_stays_within_its_budget_and_every_file_is_still_served(tmp_path: Path) -> None:
    """Twenty 8 KiB files through a cache with room for about three: the least
    recently used go, the bytes held never pass the budget, and every answer is
    exact."""
    files = {f"f{i:02d}.bin": os.urandom(8192) for i in range(20)}
    for name, body in files.items():
        (tmp_path / name).write_bytes(body)
    budget = 3 * (8192 * 3 + 512) + 100  # a body and two whole answers each, and a head
    args = ["--strategy", "memory", "--memory-cache", str(budget), "--metrics", "127.0.0.1:0"]
    with start_child(str(tmp_path), *args, "--quiet") as child:
        assert child.metrics_url is not None
        held = []
        for _ in range(2):
            for name, body in files.items():
                with urllib.request.urlopen(f"{child.url}/{name}", timeout=10) as response:
                    assert response.read() == body
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the gauge is copied at the server's sweep
            samples = scrape(child.metrics_url)
            held.append(samples["zcserve_memory_cache_bytes"])
            if samples["zcserve_memory_cache_evictions_total"] >= 37:
                break
            time.sleep(0.1)
    assert 0 < held[-1] <= budget
    assert samples["zcserve_memory_cache_evictions_total"] >= 37  # 40 admissions, 3 fit
    assert samples['zcserve_sent_bytes_total{strategy="memory"}'] == 2 * 20 * 8192


def test_the_access_log_names_the_memory_strategy(tmp_path: Path, folder: Path) -> None:
    log = tmp_path / "access.log"
    args = ["--strategy", "memory", "--access-log", str(log), "--access-log-format", "json"]
    with start_child(str(folder), *args) as child:
        for path in ("/small.bin", "/small.bin", "/larger.bin"):
            urllib.request.urlopen(f"{child.url}{path}", timeout=10).read()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["strategy"] for line in lines] == ["memory", "memory", "sendfile"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_held_file_costs_a_stat_and_one_send(folder: Path, tmp_path: Path) -> None:
    """Per keep-alive request: recvfrom, newfstatat, one sendto (nginx with sendfile
    off makes six); with --cache-valid, no stat."""
    for extra, expected in (
        ([], {"recvfrom", "newfstatat", "sendto"}),
        (["--cache-valid", "60"], {"recvfrom", "sendto"}),
    ):
        with start_child(str(folder), "--strategy", "memory", *extra) as child:
            port = int(child.url.rsplit(":", 1)[1].strip("/"))
            with socket.create_connection(("127.0.0.1", port)) as sock:
                request = b"GET /small.bin HTTP/1.1\r\nHost: t\r\n\r\n"
                sock.sendall(request)
                receive_small(sock)  # the first: the file is read and held
                trace = tmp_path / f"trace{len(extra)}"
                tracer = subprocess.Popen(
                    ["strace", "-f", "-qq", "-o", str(trace), "-p", str(child.pid)],
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(0.5)  # strace attaches
                for _ in range(50):
                    sock.sendall(request)
                    receive_small(sock)
                tracer.terminate()
                tracer.wait(timeout=10)
        calls = [
            match.group(1)
            for line in trace.read_text().splitlines()
            if (match := re.match(r"\d+\s+(\w+)\(", line))
        ]
        counted = {name: calls.count(name) for name in set(calls) - {"epoll_wait", "epoll_pwait"}}
        assert set(counted) >= expected and all(counted[name] >= 50 for name in expected)
        per_request = {name for name, count in counted.items() if count >= 50}
        assert per_request == expected, counted


def receive_small(sock: socket.socket) -> None:
    """Read until the end of an answer of SMALL."""
    received = b""
    while not received.endswith(SMALL):
        chunk = sock.recv(65536)
        assert chunk
        received += chunk


@pytest.mark.parametrize(
    ("args", "expected"),
    [([], "sendfile"), (["--memory-cache", "1M"], "memory"), (["--strategy", "memory"], "memory")],
)
def test_auto_holds_files_in_memory_only_when_asked(
    folder: Path, tmp_path: Path, args: list[str], expected: str
) -> None:
    log = tmp_path / "access.log"
    logged = ["--access-log", str(log), "--access-log-format", "json"]
    with start_child(str(folder), *args, *logged) as child:
        for _ in range(2):
            assert urllib.request.urlopen(f"{child.url}/small.bin", timeout=10).read() == SMALL
    assert [json.loads(line)["strategy"] for line in log.read_text().splitlines()] == [expected] * 2


def test_the_memory_cache_needs_the_open_file_cache(folder: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zcserve", "serve", str(folder), "--strategy", "memory",
         "--open-file-cache", "0", "--port", "0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "open-file cache" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
