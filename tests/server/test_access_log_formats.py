"""--access-log-format common|combined|json, and a line for every response, those a
client cut short included, with the body bytes that actually went out."""

from __future__ import annotations

import json
import random
import re
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.support.httpclient import get
from tests.support.servers import start_server
from tests.support.site import LOOPS, Site
from tests.support.timing import DEADLINE
from tests.support.tls import Certificate
from zcserve.server.strategies import STRATEGY_NAMES

BIG = 24 * 1024 * 1024
COMBINED = re.compile(
    r'^127\.0\.0\.1 - - \[[^]]+\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$'
)


def wait_for_lines(path: Path, count: int) -> list[str]:
    """The log's lines once there are `count` of them; the server writes them from
    its own thread, after the client has seen the response."""
    give_up = time.monotonic() + DEADLINE
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > give_up:
            return lines
        time.sleep(0.02)


@pytest.mark.parametrize("loop", LOOPS)
def test_combined_adds_referer_and_user_agent(site: Site, tmp_path: Path, loop: str) -> None:
    path = tmp_path / "access.log"
    server = start_server(
        root=site.root, loop=loop, access_log=str(path), access_log_format="combined"
    )
    try:
        agent = 'curl/8 "quoted" \\ back'
        get(server.port, "/hello.txt", {"Referer": "http://x.test/a", "User-Agent": agent})
        lines = wait_for_lines(path, 1)
        get(server.port, "/missing.txt")
        lines = wait_for_lines(path, 2)
    finally:
        server.stop()
    first, second = (COMBINED.match(line) for line in lines)
    assert first is not None and second is not None, lines
    assert (first["request"], first["status"], first["bytes"]) == (
        "GET /hello.txt HTTP/1.1",
        "200",
        "6",
    )
    assert first["referer"] == "http://x.test/a"
    # A quote the client sent cannot end the field: it is escaped as nginx does.
    assert first["agent"] == "curl/8 \\x22quoted\\x22 \\x5C back"
    assert (second["status"], second["referer"], second["agent"]) == ("404", "-", "-")


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize("loop", LOOPS)
def test_json_lines(site: Site, tmp_path: Path, loop: str, strategy: str) -> None:
    path = tmp_path / "access.log"
    server = start_server(
        root=site.root, loop=loop, strategy=strategy, access_log=str(path), access_log_format="json"
    )
    try:
        whole = get(server.port, "/64k1.bin", {"User-Agent": 'a "b"', "Referer": "r"})
        part = get(server.port, "/64k1.bin", {"Range": "bytes=0-99"})
        get(server.port, "/missing.txt")
        lines = wait_for_lines(path, 3)
    finally:
        server.stop()
    assert whole.sha256 == site.hashes["64k1.bin"] and len(part.body) == 100
    # Ordered by status: each connection's line is written when its own send ends.
    records = sorted((json.loads(line) for line in lines), key=lambda r: int(r["status"]))
    first, second, third = records
    assert first["remote"] == "127.0.0.1" and first["method"] == "GET"
    assert first["target"] == "/64k1.bin" and first["protocol"] == "HTTP/1.1"
    assert (first["status"], first["bytes"]) == (200, 64 * 1024 + 1)
    assert (first["user_agent"], first["referer"]) == ('a "b"', "r")
    assert (second["status"], second["bytes"]) == (206, 100)
    assert (third["status"], third["strategy"]) == (404, None)
    for record in records:
        assert isinstance(record["duration_us"], int) and record["duration_us"] >= 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["time"])
    # auto names the strategy it actually chose
    # (memory holds files up to 64 KiB only: this one goes as auto sends it)
    expected = STRATEGY_NAMES if strategy in ("auto", "memory") else (strategy,)
    assert first["strategy"] in expected and second["strategy"] == first["strategy"]


def abort_download(port: int, wrap: ssl.SSLContext | None = None) -> int:
    """GET the big file, read about 1 MiB of it, then reset the connection. Returns
    the bytes read, head included."""
    plain = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    sock: socket.socket = (
        plain if wrap is None else wrap.wrap_socket(plain, server_hostname="localhost")
    )
    try:
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        received = 0
        while received < 1024 * 1024:
            data = sock.recv(65536)
            assert data, "the server closed first"
            received += len(data)
        # Unread data at close makes the kernel send a reset: the server's next
        # send fails, as when a browser tab is closed mid-download.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    finally:
        sock.close()
    return received


@pytest.mark.parametrize("line_format", ["common", "json"])
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize("loop", LOOPS)
def test_aborted_download_is_logged_with_the_bytes_sent(
    site: Site, tmp_path: Path, loop: str, strategy: str, line_format: str
) -> None:
    path = tmp_path / "access.log"
    server = start_server(
        root=site.root,
        loop=loop,
        strategy=strategy,
        access_log=str(path),
        access_log_format=line_format,
        send_timeout=DEADLINE,
    )
    try:
        read = abort_download(server.port)
        lines = wait_for_lines(path, 1)
        after = get(server.port, "/hello.txt")  # the server goes on
        lines += wait_for_lines(path, 2)[1:]
    finally:
        server.stop()
    assert after.body == b"hello\n"
    assert len(lines) == 2, lines
    if line_format == "json":
        record = json.loads(lines[0])
        status, sent, target = record["status"], record["bytes"], record["target"]
        assert record["strategy"] is not None
    else:
        match = re.search(r'"GET (\S+) HTTP/1.1" (\d+) (\d+)$', lines[0])
        assert match, lines[0]
        target, status, sent = match[1], int(match[2]), int(match[3])
    assert (target, status) == ("/big.bin", 200)
    # At least what the client read (less its head), fewer than the whole file.
    assert read - 400 <= sent < BIG, (read, sent)


@pytest.mark.parametrize("loop", LOOPS)
def test_aborted_tls_download_is_logged(
    site: Site, tmp_path: Path, certificate: Certificate, loop: str
) -> None:
    path = tmp_path / "access.log"
    server = start_server(
        root=site.root,
        loop=loop,
        **certificate.options(),
        access_log=str(path),
        access_log_format="json",
    )
    try:
        read = abort_download(server.port, certificate.client_context())
        lines = wait_for_lines(path, 1)
    finally:
        server.stop()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert (record["target"], record["status"]) == ("/big.bin", 200)
    assert read - 400 <= record["bytes"] < BIG and record["strategy"] is not None


def test_unknown_format_is_refused(site: Site) -> None:
    from zcserve.errors import ConfigError
    from zcserve.server.config import ServerConfig

    with pytest.raises(ConfigError, match="unknown access log format 'apache'"):
        ServerConfig(root=site.root, access_log_format="apache")  # type: ignore[arg-type]


def test_no_log_no_timing(site: Site) -> None:
    # With the log off (and no metrics), requests are not even timed.
    server = start_server(root=site.root)
    try:
        assert server.server.timed is False and server.server.access_log.on is False
    finally:
        server.stop()
    server = start_server(root=site.root, access_log="-", access_log_format="json")
    try:
        assert server.server.timed is True
    finally:
        server.stop()


def test_durations_are_not_rounded_to_the_loop_clock(site: Site, tmp_path: Path) -> None:
    """uvloop's loop.time() moves in whole milliseconds; a request's duration must
    come from a finer clock, or every small request logs 0, 1000 or 2000 µs."""
    path = tmp_path / "access.log"
    server = start_server(
        root=site.root, loop="uvloop", access_log=str(path), access_log_format="json"
    )
    try:
        for _ in range(20):
            get(server.port, "/hello.txt")
        lines = wait_for_lines(path, 20)
    finally:
        server.stop()
    durations = [json.loads(line)["duration_us"] for line in lines]
    assert len(durations) == 20
    assert any(duration % 1000 for duration in durations), durations


CLF_LINE = re.compile(
    r'^127\.0\.0\.1 - - \[[^]]+\] "(?:[^"\\]|\\x[0-9A-F]{2})*" \d{3} (?:\d+|-) '
    r'"(?:[^"\\]|\\x[0-9A-F]{2})*" "(?:[^"\\]|\\x[0-9A-F]{2})*"$'
)


@pytest.mark.parametrize("log_format", ["combined", "json"])
def test_random_bytes_in_logged_fields_stay_printable(
    site: Site, tmp_path: Path, log_format: str
) -> None:
    """Random bytes in the target, the User-Agent and the Referer: every line parses,
    and none holds a control byte (below 0x20 but the newline, or 0x7F-0x9F)."""
    rng = random.Random(22)
    path = tmp_path / "access.log"
    server = start_server(root=site.root, access_log=str(path), access_log_format=log_format)
    sent = 0
    try:
        for _ in range(60):
            junk = bytes(rng.randrange(0x01, 0x100) for _ in range(rng.randrange(1, 24)))
            field = junk.replace(b"\r", b"").replace(b"\n", b"")
            # Junk in the target or in the headers, not both: a request refused for
            # one would never log the other.
            query = bytes(b for b in junk if b > 0x20 and b != 0x7F) if sent % 2 else b"x"
            agent = b"curl" if sent % 2 else field
            raw = (
                b"GET /hello.txt?" + query + b" HTTP/1.1\r\nHost: t\r\nUser-Agent: " + agent
                + b"\r\nReferer: " + agent[::-1] + b"\r\nConnection: close\r\n\r\n"
            )  # fmt: skip
            with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
                sock.sendall(raw)
                while sock.recv(65536):
                    pass
            sent += 1
        lines = wait_for_lines(path, sent)
    finally:
        server.stop()
    assert len(lines) == sent
    # llhttp refuses many (control bytes, bytes past ASCII in a target: 400, logged
    # with "-"); those it takes must be escaped.
    mark = "\\u00" if log_format == "json" else "\\x"
    escaped = [line for line in lines if "/hello.txt?" in line and mark in line]
    assert len(escaped) >= 3, f"too few junk fields reached the log: {lines[:5]}"
    data = path.read_bytes()
    bad = [b for b in data if (b < 0x20 and b != 0x0A) or 0x7F <= b <= 0x9F]
    assert not bad, f"control bytes in the log: {sorted(set(bad))}"
    data.decode("ascii")  # nothing past ASCII: every other byte was escaped
    for line in lines:
        if log_format == "json":
            json.loads(line)
        else:
            assert CLF_LINE.match(line), line
