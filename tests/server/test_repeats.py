"""A keep-alive client repeating its request byte for byte is answered from the last
answer's cache entry (`HttpConnection._answer_repeat`). Over plain TCP and TLS,
under every strategy, the answers are the bytes a fresh request gets, a changed
file is seen at once, and an answer the socket takes only in part is finished
whole."""

from __future__ import annotations

import email.utils
import json
import os
import socket
import time
from pathlib import Path

import pytest

from tests.support.httpclient import Response, connect, read_response
from tests.support.metrics import FALLBACKS, OK, moved_by, sent_by_strategy, settled
from tests.support.servers import start_child, start_server
from tests.support.timing import DEADLINE, wait_for
from tests.support.tls import Transport, skip_unless_carried

REPEATS = "zcserve_repeat_answers_total"
STRATEGIES = ("auto", "sendfile", "fallback", "readwrite", "mmap", "splice", "memory")


def ask(sock: socket.socket, request: bytes) -> Response:
    sock.sendall(request)
    with sock.makefile("rb") as reader:
        response = read_response(reader, head=request.startswith(b"HEAD"))
    assert response is not None, "the connection closed"
    return response


def get_on(sock: socket.socket, target: str, *headers: str) -> Response:
    lines = "".join(f"{header}\r\n" for header in headers)
    return ask(sock, f"GET {target} HTTP/1.1\r\nHost: t\r\n{lines}\r\n".encode())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_repeats_are_exact_and_see_a_changed_file_at_once(
    tmp_path: Path, transport: Transport, strategy: str
) -> None:
    skip_unless_carried(transport, strategy)
    path = tmp_path / "page.bin"
    path.write_bytes(b"A" * 4096)
    server = start_server(root=str(tmp_path), strategy=strategy, **transport.options())
    try:
        with connect(server.port, transport=transport) as sock:
            for _ in range(3):
                assert get_on(sock, "/page.bin").body == b"A" * 4096
            # Rewritten in place, same size, mtime set back: the ctime still moves.
            before = path.stat()
            with open(path, "r+b") as rewrite:
                rewrite.write(b"B" * 4096)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert get_on(sock, "/page.bin").body == b"B" * 4096
            assert get_on(sock, "/page.bin").body == b"B" * 4096
            # Replaced by another file (a new inode), shorter.
            (tmp_path / "new.bin").write_bytes(b"C" * 1000)
            os.replace(tmp_path / "new.bin", path)
            response = get_on(sock, "/page.bin")
            assert response.body == b"C" * 1000
            assert response.headers["content-length"] == "1000"
            path.unlink()
            assert get_on(sock, "/page.bin").status == 404
            path.write_bytes(b"D" * 2000)
            assert get_on(sock, "/page.bin").body == b"D" * 2000
            assert get_on(sock, "/page.bin").body == b"D" * 2000
    finally:
        server.stop()


def test_repeated_conditional_range_and_head_requests_keep_their_own_answers(
    tmp_path: Path, transport: Transport
) -> None:
    body = os.urandom(4096)
    (tmp_path / "page.bin").write_bytes(body)
    server = start_server(root=str(tmp_path), **transport.options())
    try:
        with connect(server.port, transport=transport) as sock:
            etag = get_on(sock, "/page.bin").headers["etag"]
            for _ in range(3):
                assert get_on(sock, "/page.bin", f"If-None-Match: {etag}").status == 304
            for _ in range(3):
                ranged = get_on(sock, "/page.bin", "Range: bytes=10-19")
                assert (ranged.status, ranged.body) == (206, body[10:20])
            for _ in range(3):
                head = ask(sock, b"HEAD /page.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                assert (head.status, head.body) == (200, b"")
                assert head.headers["content-length"] == "4096"
            for _ in range(3):
                assert get_on(sock, "/page.bin").body == body
    finally:
        server.stop()


@pytest.mark.parametrize("size", [16 * 1024, 2 * 1024 * 1024])
def test_repeats_the_socket_takes_in_part_are_finished_whole(
    tmp_path: Path, transport: Transport, size: int
) -> None:
    """Repeats sent one by one while the client reads nothing: the answers soon fill
    the socket, so a repeat's head or body goes out in part and the rest takes
    the common path. Every answer arrives whole and in order."""
    body = os.urandom(size)
    (tmp_path / "page.bin").write_bytes(body)
    server = start_server(root=str(tmp_path), **transport.options())
    request = b"GET /page.bin HTTP/1.1\r\nHost: t\r\n\r\n"
    count = max(4, 6 * 1024 * 1024 // size)  # past the 4 MiB a socket may buffer
    try:
        with connect(server.port, transport=transport, rcvbuf=4096) as sock:
            assert get_on(sock, "/page.bin").body == body
            reader = sock.makefile("rb")
            for _ in range(count):
                sock.sendall(request)
                time.sleep(0.002)  # one request per read: a repeat, not a pipeline
            for index in range(count):
                response = read_response(reader)
                assert response is not None, f"closed after {index} of {count}"
                assert (response.status, response.body == body) == (200, True), index
            reader.close()
    finally:
        server.stop()


@pytest.mark.parametrize("strategy", ["auto", "memory"])
def test_repeats_are_logged_and_counted_like_any_answer(
    tmp_path: Path, transport: Transport, strategy: str
) -> None:
    """With the access log and metrics on, each repeat has its line, with its bytes
    and the strategy that sent them, and its place in the counters."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "page.bin").write_bytes(os.urandom(4096))
    log = tmp_path / "access.log"
    args = ("--strategy", strategy, "--metrics", "127.0.0.1:0", "--access-log", str(log))
    repeats = 20
    with start_child(str(root), *args, "--access-log-format", "json", *transport.flags()) as child:
        assert child.metrics_url is not None
        with connect(child.port, transport=transport) as sock:
            for _ in range(repeats):
                assert get_on(sock, "/page.bin").status == 200
        samples = settled(child.metrics_url, OK, repeats)
        wait_for(lambda: len(log.read_text().splitlines()) >= repeats, DEADLINE, "log lines")
    sender = moved_by(strategy, size=4096, tls=transport.certificate is not None)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["status"], r["bytes"], r["strategy"]) for r in records] == [
        (200, 4096, sender)
    ] * repeats
    assert samples[OK] == repeats
    assert sent_by_strategy(samples) == {sender: repeats * 4096.0}
    # The first three were parsed and planned; the request is a repeat from then on.
    assert samples[REPEATS] == repeats - 3
    # auto under TLS falls back on every file answer; memory's whole answers are no fallback.
    fell_back = transport.certificate is not None and strategy == "auto"
    assert samples[FALLBACKS] == (repeats if fell_back else 0)


@pytest.mark.parametrize("strategy", ["auto", "memory"])
def test_trusted_repeats_read_their_own_file_after_its_entry_is_squeezed_out(
    tmp_path: Path, transport: Transport, strategy: str
) -> None:
    """With --cache-valid a repeat trusts its entry without a stat, but not once the
    cache has let the entry go: its descriptor is closed then, and the number may
    already name another file. Three files of one size through a one-entry cache:
    the third is opened on the first one's old descriptor number."""
    bodies = {name: bytes([65 + index]) * 4096 for index, name in enumerate("abc")}
    for name, body in bodies.items():
        (tmp_path / f"{name}.bin").write_bytes(body)
    server = start_server(
        root=str(tmp_path),
        strategy=strategy,
        open_file_cache=1,
        cache_valid=60.0,
        memory_cache=8192 if strategy == "memory" else None,
        **transport.options(),
    )
    try:
        with connect(server.port, transport=transport) as sock:
            for _ in range(4):  # a repeat from the fourth on
                assert get_on(sock, "/a.bin").body == bodies["a"]
            with connect(server.port, transport=transport) as other:
                assert get_on(other, "/b.bin").body == bodies["b"]
                assert get_on(other, "/c.bin").body == bodies["c"]
            for _ in range(3):
                assert get_on(sock, "/a.bin").body == bodies["a"]
    finally:
        server.stop()


def test_trusted_repeats_keep_the_date_header_current(tmp_path: Path, transport: Transport) -> None:
    """A repeat trusted for a minute (--cache-valid 60) still gets this second's Date:
    the kept answer is trusted only to the end of the second it was made in."""
    (tmp_path / "page.bin").write_bytes(b"x" * 4096)
    server = start_server(
        root=str(tmp_path), strategy="memory", cache_valid=60.0, **transport.options()
    )
    try:
        with connect(server.port, transport=transport) as sock:
            ends = time.monotonic() + 2.5
            seconds: set[int] = set()
            while time.monotonic() < ends:
                before = int(time.time())
                date = get_on(sock, "/page.bin").headers["date"]
                after = int(time.time())
                second = int(email.utils.parsedate_to_datetime(date).timestamp())
                assert before <= second <= after, (date, before, after)
                seconds.add(second)
                time.sleep(0.01)
            assert len(seconds) >= 2
    finally:
        server.stop()


def test_a_repeat_after_a_partial_head_is_read_as_what_it_continues(
    tmp_path: Path, transport: Transport
) -> None:
    """Once the parser holds part of a head, the repeat's bytes continue that head:
    here they become a header of a request for another file."""
    (tmp_path / "page.bin").write_bytes(b"P" * 4096)
    (tmp_path / "other.bin").write_bytes(b"O" * 1000)
    server = start_server(root=str(tmp_path), **transport.options())
    request = b"GET /page.bin HTTP/1.1\r\nHost: t\r\n\r\n"
    try:
        with connect(server.port, transport=transport) as sock:
            for _ in range(4):
                assert ask(sock, request).body == b"P" * 4096
            sock.sendall(b"GET /other.bin HTTP/1.1\r\nX-Before: ")
            time.sleep(0.05)  # a read of its own
            assert ask(sock, request).body == b"O" * 1000
            assert ask(sock, request).body == b"P" * 4096
    finally:
        server.stop()


def test_repeats_keep_a_connection_alive_until_it_idles(
    tmp_path: Path, transport: Transport
) -> None:
    """Each repeat restarts the keep-alive clock as any request does: repeats spread
    over four times the timeout are all answered, and the connection closes once
    idle. The timeout is under a second: a new Date second sends one repeat the
    common way, which restarts the clock by itself."""
    (tmp_path / "page.bin").write_bytes(b"k" * 4096)
    keepalive = 0.6
    # A header timeout past the test's patience: a connection that kept only the
    # deadline of its accept would outlive the wait below.
    server = start_server(
        root=str(tmp_path),
        keepalive_timeout=keepalive,
        header_timeout=4 * DEADLINE,
        **transport.options(),
    )
    try:
        with connect(server.port, transport=transport) as sock:
            ends = time.monotonic() + 4 * keepalive
            while time.monotonic() < ends:
                assert get_on(sock, "/page.bin").body == b"k" * 4096
                time.sleep(0.1)
            sock.settimeout(keepalive + DEADLINE)
            assert sock.recv(1) == b"", "an idle connection was never closed"
    finally:
        server.stop()
