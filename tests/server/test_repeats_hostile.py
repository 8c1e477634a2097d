"""Hostile probes of the repeat fast path (`RequestParser.feed`'s byte-for-byte
lookup and `HttpConnection._answer_repeat`): a repeated request must get exactly
the answer, and the connection exactly the behaviour, that a fresh parse and plan
would give.

A repeat is looked up only while llhttp is "at rest". The first group checks the
case this probe found misjudged: a request's head has ended but its body is still
owed (the feed then ends in CRLFCRLF with a complete request before it), so bytes
that are not that request (bare CRLFs, a last chunk, a packet whose tail is a
body) got a replayed 200. The rest interleave repeats with other requests, split and
pipeline them, change the file under them (directory, symlink out of the root,
same-size rewrite, --cache-valid), squeeze the caches (--memory-cache,
--open-file-cache 1, --sendfile-chunk), add headers, abort mid-answer, trickle,
and shut down: over plain TCP and TLS, on uvloop and asyncio."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.support.httpclient import (
    Response,
    connect,
    read_response,
    recv_until_closed,
    status_codes,
)
from tests.support.servers import ServerThread, start_server
from tests.support.site import LOOPS
from tests.support.stress import open_fds, reset, server_side_connections
from tests.support.timing import DEADLINE, EARLY, latest_cut, wait_for
from tests.support.tls import Transport
from zcserve.errors import HttpError
from zcserve.server.connection import HttpConnection
from zcserve.server.http import Request, RequestParser
from zcserve.server.sockio import Buffer

A = b"GET /page.bin HTTP/1.1\r\nHost: t\r\n\r\n"
"""The request repeated throughout."""
OWES_4 = b"GET /page.bin HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n"
"""A head whose 4-byte body has not come yet."""
OWES_CHUNKS = b"GET /page.bin HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
"""A head whose chunked body has not come yet."""
PAGE = bytes(range(256)) * 16  # 4 KiB


def request(target: str = "/page.bin", *headers: str, method: str = "GET", v: str = "1.1") -> bytes:
    lines = "".join(f"{header}\r\n" for header in headers)
    host = "Host: t\r\n" if v == "1.1" else ""
    return f"{method} {target} HTTP/{v}\r\n{host}{lines}\r\n".encode()


class Client:
    """One connection with one reader, so pipelined answers are read in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader: BinaryIO = sock.makefile("rb")

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def read(self, *, head: bool = False) -> Response:
        response = read_response(self.reader, head=head)
        assert response is not None, "the connection closed"
        return response

    def ask(self, raw: bytes) -> Response:
        self.send(raw)
        return self.read(head=raw.startswith(b"HEAD"))


@contextmanager
def client(port: int, transport: Transport | None = None, *, rcvbuf: int = 0) -> Iterator[Client]:
    with connect(port, transport=transport, rcvbuf=rcvbuf) as sock:
        c = Client(sock)
        try:
            yield c
        finally:
            c.reader.close()


def fresh(port: int, raw: bytes, transport: Transport | None = None) -> Response:
    """The answer `raw` gets as the first request of a connection: never a repeat."""
    with client(port, transport) as c:
        return c.ask(raw)


def _comparable(response: Response) -> tuple[int, dict[str, str], bytes]:
    """Status, headers but Date, and body, a multipart boundary (random per answer)
    written as "B"."""
    headers = {k: v for k, v in response.headers.items() if k != "date"}
    body = response.body
    kind, _, boundary = headers.get("content-type", "").partition("; boundary=")
    if kind == "multipart/byteranges" and boundary:
        headers["content-type"] = f"{kind}; boundary=B"
        body = body.replace(boundary.encode(), b"B")
        headers["content-length"] = str(len(body))
    return response.status, headers, body


def same_answer(got: Response, want: Response) -> None:
    assert _comparable(got) == _comparable(want)


def site(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "page.bin").write_bytes(PAGE)
    (tmp_path / "secret.txt").write_bytes(b"SECRET-OUTSIDE-THE-ROOT\n" * 200)
    return root


def shutdown(server: ServerThread) -> None:
    server.begin_shutdown()


# The parser: a head whose body is owed is not "at rest" ---------------------------------


def _outcome(items: list[Request | HttpError]) -> list[object]:
    return [
        ("error", item.status) if isinstance(item, HttpError) else (item.method, item.target)
        for item in items
    ]


OWED_BODY_CASES = [
    pytest.param(
        [A + OWES_4, b"\r\n\r\n", b"\r\n\r\n", b"\r\n\r\n"],
        [[("GET", b"/page.bin")], [("GET", b"/page.bin")], [], []],
        id="crlfs-after-a-body-of-crlfcrlf",
    ),
    pytest.param(
        [A + OWES_CHUNKS, b"0\r\n\r\n", b"0\r\n\r\n"],
        [[("GET", b"/page.bin")], [("GET", b"/page.bin")], [("error", 400)]],
        id="a-bare-last-chunk",
    ),
    pytest.param(
        [A + OWES_CHUNKS + b"2\r\n\r\n\r\n", b"0\r\n\r\n", b"0\r\n\r\n"],
        [[("GET", b"/page.bin")], [("GET", b"/page.bin")], [("error", 400)]],
        id="a-chunk-of-crlf",
    ),
    pytest.param(
        [A + OWES_4, A + OWES_4],
        [[("GET", b"/page.bin")], [("GET", b"/page.bin"), ("error", 400)]],
        id="a-packet-ending-in-an-owing-head",
    ),
]


@pytest.mark.parametrize(("feeds", "want"), OWED_BODY_CASES)
def test_parser_is_not_at_rest_while_a_body_is_owed(
    feeds: list[bytes], want: list[list[object]]
) -> None:
    parser = RequestParser()
    assert [_outcome(parser.feed(feed)) for feed in feeds] == want


FRAGMENTS = (
    A,
    OWES_4,
    OWES_CHUNKS,
    b"\r\n\r\n",
    b"\r\n",
    b"abcd",
    b"0\r\n\r\n",
    b"2\r\n\r\n\r\n",
    b"0\r\nX: y\r\n\r\n",
    b"GET /p HTTP/1.0\r\n\r\n",
    b"GET /p HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"HEAD /p HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHo",
    b"st: t\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n\r\n\r\n",
)


def _run(feeds: list[bytes], *, lookup: bool) -> list[list[object]]:
    parser = RequestParser()
    results = []
    for feed in feeds:
        if not lookup:
            parser.repeat_bytes = b""  # every feed parsed by llhttp: the reference
        results.append(_outcome(parser.feed(feed)))
        if parser.failed:
            break
    return results


def _sequences(seed: int, count: int, fragments: tuple[bytes, ...]) -> Iterator[list[bytes]]:
    rng = random.Random(seed)
    for _ in range(count):
        feeds: list[bytes] = []
        for _ in range(rng.randint(2, 6)):
            if feeds and rng.random() < 0.5:  # a repeat, mostly of the last feed
                feeds.append(feeds[-1] if rng.random() < 0.7 else rng.choice(feeds))
            else:
                feeds.append(b"".join(rng.choices(fragments, k=rng.randint(1, 2))))
        yield feeds


def test_parser_lookup_agrees_with_llhttp_when_every_body_is_whole() -> None:
    """Differential: fragments whose bodies never stay owed across a feed parse the
    same with and without the lookup."""
    whole = {OWES_4: OWES_4 + b"abcd", OWES_CHUNKS: OWES_CHUNKS + b"0\r\n\r\n"}
    fragments = tuple(whole.get(fragment, fragment) for fragment in FRAGMENTS)
    for feeds in _sequences(7, 4000, fragments):
        assert _run(feeds, lookup=True) == _run(feeds, lookup=False), feeds


def test_parser_lookup_agrees_with_llhttp_on_any_fragments() -> None:
    """Differential over fragments that leave bodies owed between feeds."""
    for feeds in _sequences(1, 4000, FRAGMENTS):
        assert _run(feeds, lookup=True) == _run(feeds, lookup=False), feeds


# ... and through a server: answers to bytes that are no request -------------------------


def test_crlfs_after_a_body_that_ended_in_crlfcrlf_get_no_answer(
    tmp_path: Path, transport: Transport
) -> None:
    header_timeout = 0.5
    root = site(tmp_path)
    with start_server(root=str(root), header_timeout=header_timeout, **transport.options()) as srv:
        with connect(srv.port, transport=transport) as sock:
            sock.sendall(A + OWES_4)
            time.sleep(0.05)  # one feed each, as a client's separate writes arrive
            sock.sendall(b"\r\n\r\n")  # the owed body: the second request is whole
            for _ in range(4):
                time.sleep(0.05)
                sock.sendall(b"\r\n\r\n")  # CRLFs only: skipped between messages
            received, _ = recv_until_closed(sock, 0.3)
            assert status_codes(received) == [200, 200]
            rest, closed = recv_until_closed(sock, latest_cut(header_timeout))
    assert closed and rest == b"", "a CRLF-only client outlived the header deadline"


def test_a_bare_last_chunk_is_a_bad_request_not_a_replay(
    tmp_path: Path, transport: Transport
) -> None:
    root = site(tmp_path)
    with start_server(root=str(root), loop="asyncio", **transport.options()) as srv:
        with connect(srv.port, transport=transport) as sock:
            sock.sendall(A + OWES_CHUNKS)
            time.sleep(0.05)
            sock.sendall(b"0\r\n\r\n")  # ends the chunked body: its request is whole
            time.sleep(0.05)
            sock.sendall(b"0\r\n\r\n")  # no request: "0" is no method
            received, closed = recv_until_closed(sock, 1.0)  # a 400 closes at once
        # The server goes on serving everyone else.
        assert fresh(srv.port, A, transport).body == PAGE
    assert status_codes(received) == [200, 200, 400]
    assert closed


def test_a_packet_whose_tail_is_an_owing_head_is_not_replayed(
    tmp_path: Path, transport: Transport
) -> None:
    root = site(tmp_path)
    with start_server(root=str(root), **transport.options()) as srv:
        with connect(srv.port, transport=transport) as sock:
            sock.sendall(A + OWES_4)
            time.sleep(0.05)
            sock.sendall(A + OWES_4)  # "GET " is the owed body; "/page.bin ..." is bad
            received, closed = recv_until_closed(sock, 1.0)  # a 400 closes at once
    assert status_codes(received) == [200, 200, 400]
    assert closed


# Repeats among other requests --------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_repeats_among_head_range_conditional_options_match_fresh_answers(
    tmp_path: Path, transport: Transport, loop: str
) -> None:
    """Each answer on one keep-alive connection, repeats between every other kind of
    request, equals the answer the same bytes get on a new connection; a bad request
    then gets its 400 and the connection ends, while others are served."""
    root = site(tmp_path)
    with start_server(root=str(root), loop=loop, cors=True, **transport.options()) as srv:
        etag = fresh(srv.port, A, transport).headers["etag"]
        others = [
            request(method="HEAD"),
            request("/page.bin", "Range: bytes=10-19"),
            request("/page.bin", f"If-None-Match: {etag}"),
            request("/page.bin", 'If-None-Match: "other"'),
            request("/page.bin", "Range: bytes=0-0,5-9"),
            request(
                "/page.bin",
                "Origin: http://x",
                "Access-Control-Request-Method: GET",
                method="OPTIONS",
            ),  # fmt: skip
            request("/page.bin", method="OPTIONS"),
            request("/missing"),
            request("/page.bin?q=1"),
        ]
        want = {raw: fresh(srv.port, raw, transport) for raw in [A, *others]}
        with client(srv.port, transport) as c:
            for raw in others:
                for sent in (A, A, raw, raw, A):
                    same_answer(c.ask(sent), want[sent])
            c.send(b"GET /page.bin HTTP/1.1\r\nHost: t t\r\n\r\n" + A)
            assert c.read().status == 400
            assert read_response(c.reader) is None, "answered past a bad request"
        assert fresh(srv.port, A, transport).body == PAGE


def test_repeats_split_across_reads_and_pipelined_in_one_write(
    tmp_path: Path, transport: Transport
) -> None:
    root = site(tmp_path)
    with start_server(root=str(root), **transport.options()) as srv:
        want = fresh(srv.port, A, transport)
        with client(srv.port, transport) as c:
            same_answer(c.ask(A), want)
            same_answer(c.ask(A), want)
            same_answer(c.ask(A), want)
            for cut in (1, 10, len(A) - 4, len(A) - 1):
                c.send(A[:cut])
                time.sleep(0.03)  # two reads
                same_answer(c.ask(A[cut:]), want)
                same_answer(c.ask(A), want)
            c.send(A * 8)
            for _ in range(8):
                same_answer(c.read(), want)
            # A repeat and the start of the next request in one write.
            c.send(A + A[:7])
            same_answer(c.read(), want)
            time.sleep(0.03)
            same_answer(c.ask(A[7:]), want)
            same_answer(c.ask(A), want)
            # A request whose whole body came with it, a body that ends in CRLFCRLF.
            with_body = A[:-2] + b"Content-Length: 4\r\n\r\n\r\n\r\n"
            for _ in range(3):
                same_answer(c.ask(with_body), want)
            # Extra CRLFs around a repeat are skipped, as llhttp skips them.
            same_answer(c.ask(b"\r\n" + A), want)
            same_answer(c.ask(A + b"\r\n"), want)
            same_answer(c.ask(A + b"\r\n"), want)
            same_answer(c.ask(A), want)


def test_http10_keep_alive_repeats_say_keep_alive_and_a_plain_10_closes(
    tmp_path: Path, transport: Transport
) -> None:
    root = site(tmp_path)
    keep = request("/page.bin", "Connection: keep-alive", v="1.0")
    with start_server(root=str(root), **transport.options()) as srv:
        want = fresh(srv.port, keep, transport)
        assert want.headers["connection"] == "keep-alive"
        with client(srv.port, transport) as c:
            for _ in range(4):
                same_answer(c.ask(keep), want)
            same_answer(c.ask(A), fresh(srv.port, A, transport))
            same_answer(c.ask(keep), want)
            closing = c.ask(request("/page.bin", v="1.0"))
            assert (closing.headers["connection"], closing.body) == ("close", PAGE)
            assert read_response(c.reader) is None


@pytest.mark.parametrize("strategy", ["auto", "memory"])
def test_added_headers_are_on_every_repeat(
    tmp_path: Path, transport: Transport, strategy: str
) -> None:
    root = site(tmp_path)
    options = {"headers": ("X-Probe: one", "Cache-Control: no-store"), "cors": True}
    with start_server(root=str(root), strategy=strategy, **options, **transport.options()) as srv:
        want = fresh(srv.port, A, transport)
        assert want.headers["x-probe"] == "one"
        assert want.headers["access-control-allow-origin"] == "*"
        with client(srv.port, transport) as c:
            for _ in range(5):
                same_answer(c.ask(A), want)


# Repeats of a file that changes -----------------------------------------------------------


def test_a_repeat_sees_the_file_become_a_directory_or_a_symlink(
    tmp_path: Path, transport: Transport
) -> None:
    root = site(tmp_path)
    page = root / "page.bin"
    (root / "other.bin").write_bytes(b"O" * 4096)
    with start_server(root=str(root), **transport.options()) as srv:
        with client(srv.port, transport) as c:
            for _ in range(3):
                assert c.ask(A).body == PAGE
            page.unlink()
            page.mkdir()
            moved = c.ask(A)
            assert (moved.status, moved.headers["location"]) == (301, "/page.bin/")
            assert c.ask(A).status == 301
            page.rmdir()
            page.symlink_to(tmp_path / "secret.txt")  # out of the root
            for _ in range(3):
                refused = c.ask(A)
                assert refused.status == 404 and b"SECRET" not in refused.body
            page.unlink()
            page.symlink_to(root / "other.bin")  # in the root
            for _ in range(3):
                assert c.ask(A).body == b"O" * 4096
            # Swapped back and forth atomically, same size each time.
            for target in ("secret.txt", "other.bin", "secret.txt"):
                (root / "swap").symlink_to(
                    tmp_path / target if target == "secret.txt" else root / target
                )
                os.replace(root / "swap", page)
                answer = c.ask(A)
                if target == "secret.txt":
                    assert answer.status == 404 and b"SECRET" not in answer.body
                else:
                    assert answer.body == b"O" * 4096


@pytest.mark.parametrize("strategy", ["auto", "memory", "fallback"])
def test_a_same_size_rewrite_is_seen_by_the_next_repeat(
    tmp_path: Path, transport: Transport, strategy: str
) -> None:
    """Truncated and written again with other bytes of the same length, the
    modification time put back: ctime moves, so the next repeat answers anew."""
    if transport.certificate is not None and strategy not in transport.strategies:
        pytest.skip(f"{strategy} cannot carry {transport.name}")
    root = site(tmp_path)
    page = root / "page.bin"
    with start_server(root=str(root), strategy=strategy, **transport.options()) as srv:
        with client(srv.port, transport) as c:
            body = PAGE
            for turn in range(4):
                for _ in range(3):
                    assert c.ask(A).body == body
                before = page.stat()
                body = bytes([turn]) * len(PAGE)
                with open(page, "r+b") as rewrite:
                    rewrite.truncate(0)
                    rewrite.write(body)
                os.utime(page, ns=(before.st_atime_ns, before.st_mtime_ns))
            grown = PAGE + b"tail"
            page.write_bytes(grown)
            assert c.ask(A).body == grown
            assert c.ask(A).body == grown


def test_cache_valid_repeats_end_visibly_when_the_file_shrinks_and_see_it_afterwards(
    tmp_path: Path, transport: Transport
) -> None:
    """Within --cache-valid a repeat may answer with what the entry knew, but never
    silently short: a file truncated in place ends the connection; once the window
    has passed the next repeat sees the file as it is."""
    valid = 1.0
    root = site(tmp_path)
    page = root / "page.bin"
    with start_server(root=str(root), cache_valid=valid, **transport.options()) as srv:
        with connect(srv.port, transport=transport) as sock:
            c = Client(sock)
            assert c.ask(A).body == PAGE
            assert c.ask(A).body == PAGE
            assert c.ask(A).body == PAGE
            with open(page, "r+b") as shrink:
                shrink.truncate(1000)
            sock.sendall(A)
            received, closed = recv_until_closed(sock, DEADLINE)
            c.reader.close()
        head, _, body = received.partition(b"\r\n\r\n")
        if b"Content-Length: 4096" in head:  # the entry's answer: cut short, visibly
            assert closed and len(body) < 4096
        else:
            assert b"Content-Length: 1000" in head
        time.sleep(valid + 0.1)
        with client(srv.port, transport) as c:
            for _ in range(3):
                assert c.ask(A).body == PAGE[:1000]
            page.write_bytes(b"N" * 1000)  # rewritten in place, same size
            time.sleep(valid + 0.1)
            for _ in range(3):
                assert c.ask(A).body == b"N" * 1000


# Squeezed caches ---------------------------------------------------------------------------


def test_memory_cache_evicting_between_repeats(tmp_path: Path, transport: Transport) -> None:
    """A memory cache that holds about one file at a time: another connection's
    requests evict the repeated file between its repeats."""
    root = site(tmp_path)
    bodies = {f"/f{i}.bin": bytes([i]) * (3000 + i) for i in range(6)}
    for target, body in bodies.items():
        (root / target[1:]).write_bytes(body)
    options = {"strategy": "memory", "memory_cache": 4 * 3100}
    with start_server(root=str(root), **options, **transport.options()) as srv:
        with client(srv.port, transport) as mine, client(srv.port, transport) as theirs:
            for turn in range(4):
                for target, body in bodies.items():
                    raw = request(target)
                    assert mine.ask(raw).body == body
                    assert mine.ask(raw).body == body
                    for other, other_body in bodies.items():
                        if other != target:
                            assert theirs.ask(request(other)).body == other_body
                    assert mine.ask(raw).body == body, (turn, target)
        memory = srv.server.files.memory
        assert memory is not None and memory.evictions > 0


@pytest.mark.parametrize("loop", LOOPS)
def test_open_file_cache_of_one_with_two_files_alternating(
    tmp_path: Path, transport: Transport, loop: str
) -> None:
    """Two connections each repeat their own file through a one-entry open-file
    cache: each repeat finds its entry gone (or a newer one) and answers afresh;
    no descriptor stays behind."""
    root = site(tmp_path)
    (root / "two.bin").write_bytes(b"2" * 5000)
    two = request("/two.bin")
    options = {"open_file_cache": 1, "loop": loop}
    with start_server(root=str(root), **options, **transport.options()) as srv:
        srv.server.files.inactive = 0.1

        def settled() -> int:
            wait_for(lambda: server_side_connections(srv.port) == 0, DEADLINE, "all closed")
            wait_for(lambda: len(srv.server.files) == 0, DEADLINE, "cache swept")
            return open_fds()

        assert fresh(srv.port, A, transport).body == PAGE  # the loop's own first needs
        before = settled()
        with client(srv.port, transport) as first, client(srv.port, transport) as second:
            for _ in range(20):
                assert first.ask(A).body == PAGE
                assert second.ask(two).body == b"2" * 5000
                assert second.ask(two).body == b"2" * 5000
                assert second.ask(two).body == b"2" * 5000
                assert first.ask(A).body == PAGE
        assert settled() <= before


@pytest.mark.parametrize("size", [1000, 4096, 3 * 4096 + 5])
@pytest.mark.parametrize("strategy", ["sendfile", "auto"])
def test_small_sendfile_chunk_repeats(tmp_path: Path, size: int, strategy: str) -> None:
    """--sendfile-chunk below, at and above the body size (plain TCP: sendfile)."""
    root = site(tmp_path)
    body = os.urandom(size)
    (root / "page.bin").write_bytes(body)
    with start_server(root=str(root), strategy=strategy, sendfile_chunk=4096) as srv:
        with client(srv.port, rcvbuf=4096) as c:
            for _ in range(5):
                assert c.ask(A).body == body
            c.send(A * 6)
            for _ in range(6):
                assert c.read().body == body


# Aborts, deadlines, shutdown --------------------------------------------------------------


@pytest.mark.parametrize(("size", "loop"), [(16 * 1024, "uvloop"), (1024 * 1024, "asyncio")])
def test_client_aborts_mid_repeat_leak_no_descriptor(
    tmp_path: Path, transport: Transport, size: int, loop: str
) -> None:
    """Clients that repeat without reading, then reset: repeats go out in part, the
    rest as an ordinary response, then the peer is gone. Every descriptor (the
    connection's, the file's lease) comes back."""
    root = site(tmp_path)
    (root / "page.bin").write_bytes(os.urandom(size))
    with start_server(root=str(root), loop=loop, **transport.options()) as srv:
        srv.server.files.inactive = 0.1
        with client(srv.port, transport) as c:  # the entry, and a baseline after it
            c.ask(A)
        wait_for(lambda: server_side_connections(srv.port) == 0, DEADLINE, "warm-up closed")
        before = open_fds()
        for _ in range(3):
            sock = connect(srv.port, transport=transport, rcvbuf=4096)
            reader = sock.makefile("rb")
            try:
                sock.sendall(A)
                assert read_response(reader) is not None
                for _ in range(max(4, 4 * 1024 * 1024 // size)):
                    sock.sendall(A)
                    time.sleep(0.001)
            except OSError:
                pass  # the server may have given up on a reader this slow
            finally:
                reader.close()
                reset(sock)
        wait_for(lambda: server_side_connections(srv.port) == 0, DEADLINE, "aborted closed")
        wait_for(lambda: open_fds() <= before, DEADLINE, "descriptors back to the start")
        assert fresh(srv.port, A, transport).status == 200


def test_keep_alive_timeout_after_repeats(tmp_path: Path, transport: Transport) -> None:
    keepalive_timeout = 0.5
    root = site(tmp_path)
    options = {"keepalive_timeout": keepalive_timeout}
    with start_server(root=str(root), **options, **transport.options()) as srv:
        with connect(srv.port, transport=transport) as sock:
            c = Client(sock)
            for _ in range(3):
                assert c.ask(A).body == PAGE
            answered = time.monotonic()
            rest, closed = recv_until_closed(sock, latest_cut(keepalive_timeout) + 1)
            ended = time.monotonic()
            c.reader.close()
    assert closed and rest == b""
    assert keepalive_timeout - EARLY <= ended - answered <= latest_cut(keepalive_timeout)


def test_repeats_carry_the_date_of_their_second(tmp_path: Path, transport: Transport) -> None:
    """A repeat's head is the entry's for this Date second: across seconds, each
    answer's Date is the second it was sent in."""
    root = site(tmp_path)
    with start_server(root=str(root), **transport.options()) as srv:
        with client(srv.port, transport) as c:
            began = time.time()
            dates: set[float] = set()
            while len(dates) < 2:
                assert time.time() - began < DEADLINE
                before = int(time.time())
                answer = c.ask(A)
                after = int(time.time())
                stamp = parsedate_to_datetime(answer.headers["date"]).timestamp()
                assert before <= stamp <= after and answer.body == PAGE
                dates.add(stamp)
            assert len(dates) >= 2


def test_header_deadline_after_repeats_for_tricklers_and_crlf_clients(
    tmp_path: Path, transport: Transport
) -> None:
    header_timeout = 1.0
    root = site(tmp_path)
    with start_server(root=str(root), header_timeout=header_timeout, **transport.options()) as srv:
        for drip in (A[:-1], b"\r\n" * 40):
            with connect(srv.port, transport=transport) as sock:
                c = Client(sock)
                for _ in range(3):
                    assert c.ask(A).body == PAGE
                began = time.monotonic()
                try:
                    for index in range(len(drip)):
                        sock.sendall(drip[index : index + 1])
                        time.sleep(0.05)
                        if time.monotonic() - began > latest_cut(header_timeout) + 1:
                            break
                except OSError:
                    pass
                rest, closed = recv_until_closed(sock, latest_cut(header_timeout) + 1)
                ended = time.monotonic()
                c.reader.close()
            assert closed and status_codes(rest) in ([], [408]), rest[:200]
            assert header_timeout - EARLY <= ended - began <= latest_cut(header_timeout) + 1


def test_repeats_during_shutdown_are_closed_or_say_close(
    tmp_path: Path, transport: Transport
) -> None:
    """A download in flight with repeats pipelined behind it when shutdown begins:
    the download arrives whole; a repeat is then answered with Connection: close,
    or the connection ends."""
    root = site(tmp_path)
    big = os.urandom(8 * 1024 * 1024)
    (root / "big.bin").write_bytes(big)
    with start_server(root=str(root), **transport.options()) as srv:
        with connect(srv.port, transport=transport, rcvbuf=64 * 1024) as sock:
            c = Client(sock)
            for _ in range(3):
                assert c.ask(A).body == PAGE
            sock.sendall(request("/big.bin") + A + A)
            first = sock.recv(16 * 1024)
            shutdown(srv)
            rest, closed = recv_until_closed(sock, DEADLINE * 2)
            c.reader.close()
        head, _, body = (first + rest).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body[: len(big)] == big
        after = body[len(big) :]
        if after:
            assert status_codes(after) == [200] and b"Connection: close" in after
        assert closed


def test_idle_repeating_connections_close_at_shutdown(tmp_path: Path, transport: Transport) -> None:
    root = site(tmp_path)
    srv = start_server(root=str(root), **transport.options())
    try:
        with connect(srv.port, transport=transport) as sock:
            c = Client(sock)
            for _ in range(3):
                assert c.ask(A).body == PAGE
            shutdown(srv)
            rest, closed = recv_until_closed(sock, DEADLINE)
            c.reader.close()
        assert closed and rest == b""
    finally:
        srv.stop()


def test_many_repeating_clients_at_once_get_whole_answers(
    tmp_path: Path, transport: Transport
) -> None:
    """Threads repeating on their own connections, one of them against a file that
    is rewritten under them: every answer is one of the file's versions, whole."""
    root = site(tmp_path)
    versions = {bytes([v]) * 6000 for v in range(3)}
    (root / "moving.bin").write_bytes(bytes([0]) * 6000)
    errors: list[str] = []

    def repeat(port: int, raw: bytes, allowed: set[bytes]) -> None:
        try:
            with client(port, transport) as c:
                for _ in range(60):
                    answer = c.ask(raw)
                    if answer.status != 200 or answer.body not in allowed:
                        errors.append(f"{answer.status} {answer.body[:20]!r}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    with start_server(root=str(root), **transport.options()) as srv:
        threads = [
            threading.Thread(target=repeat, args=(srv.port, A, {PAGE})),
            threading.Thread(target=repeat, args=(srv.port, A, {PAGE})),
            threading.Thread(target=repeat, args=(srv.port, request("/moving.bin"), versions)),
        ]
        for thread in threads:
            thread.start()
        for turn in range(20):
            (root / "new.bin").write_bytes(bytes([turn % 3]) * 6000)
            os.replace(root / "new.bin", root / "moving.bin")
            time.sleep(0.005)
        for thread in threads:
            thread.join(DEADLINE * 2)
    assert errors == []


@pytest.mark.parametrize(
    ("strategy", "size"),
    [("memory", 16 * 1024), ("memory", 700), ("sendfile", 900), ("auto", 5000)],
)
def test_repeats_into_a_filling_socket_arrive_whole_and_in_order(
    tmp_path: Path, transport: Transport, strategy: str, size: int
) -> None:
    """Small answers repeated one by one to a client that reads nothing: sooner or
    later the socket has room for part of a head, or part of a memory answer; the
    rest must follow, in order, before the next answer."""
    if strategy not in transport.strategies:
        pytest.skip(f"{strategy} cannot carry {transport.name}")
    root = site(tmp_path)
    body = os.urandom(size)
    (root / "page.bin").write_bytes(body)
    count = 6 * 1024 * 1024 // (size + 200)
    with start_server(root=str(root), strategy=strategy, **transport.options()) as srv:
        with client(srv.port, transport, rcvbuf=4096) as c:
            assert c.ask(A).body == body
            for _ in range(count):
                c.send(A)
                time.sleep(0.0002)
            for index in range(count):
                answer = c.read()
                assert (answer.status, answer.body == body) == (200, True), index


class _Stingy:
    """A connection's send call that, from its `start`th call on, takes `take` bytes
    once (0: raises BlockingIOError, as a full socket does), then passes through."""

    def __init__(self, send: Callable[[Buffer, int], int], start: int, take: int) -> None:
        self.send = send
        self.calls = 0
        self.start = start
        self.take = take
        self.stung = False

    def __call__(self, data: Buffer, flags: int) -> int:
        self.calls += 1
        if self.calls >= self.start and not self.stung:
            self.stung = True
            if self.take == 0:
                raise BlockingIOError
            return self.send(memoryview(data)[: self.take], flags)
        return self.send(data, flags)


@pytest.mark.parametrize("take", [0, 1, 37])
@pytest.mark.parametrize("strategy", ["auto", "memory", "fallback"])
def test_a_repeat_head_taken_in_part_is_finished_whole(
    tmp_path: Path, transport: Transport, strategy: str, take: int
) -> None:
    """The socket takes none, one or a few bytes of a repeat's head (or memory
    answer): the rest of the head, then the body, follow in order; the access log
    and the metrics count it once, as any answer."""
    root = site(tmp_path)
    log = tmp_path / "access.log"
    options = {
        "strategy": strategy,
        "metrics": "127.0.0.1:0",
        "access_log": str(log),
        "access_log_format": "json",
    }
    with start_server(root=str(root), **options, **transport.options()) as srv:
        with client(srv.port, transport) as c:
            want = c.ask(A)
            assert c.ask(A).body == PAGE  # the next is a repeat
            (connection,) = [
                conn for conn in srv.server._connections if isinstance(conn, HttpConnection)
            ]
            stingy = _Stingy(connection._send_call, 1, take)
            connection._send_call = stingy
            same_answer(c.ask(A), want)
            assert stingy.stung
            for _ in range(3):
                same_answer(c.ask(A), want)
        wait_for(lambda: server_side_connections(srv.port) == 0, DEADLINE, "connection closed")
        metrics = srv.server.metrics
        sender = "memory" if strategy == "memory" else strategy
        if strategy != "memory" and strategy != "fallback":
            sender = "fallback" if transport.certificate is not None else "sendfile"
        fell_back = strategy == "auto" and transport.certificate is not None
        assert (metrics.requests, metrics.bytes_sent, metrics.fallbacks, metrics.errors) == (
            {"200": 6},
            {sender: 6 * len(PAGE)},
            6 if fell_back else 0,
            {},
        )
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["status"], r["bytes"], r["strategy"]) for r in records] == [
        (200, len(PAGE), sender)
    ] * 6


class _Gone:
    """A send call whose peer has gone: every call from the `start`th raises."""

    def __init__(self, send: Callable[[Buffer, int], int], start: int) -> None:
        self.send = send
        self.calls = 0
        self.start = start

    def __call__(self, data: Buffer, flags: int) -> int:
        self.calls += 1
        if self.calls >= self.start:
            raise ConnectionResetError("gone")
        return self.send(data, flags)


@pytest.mark.parametrize("strategy", ["auto", "memory"])
def test_a_peer_gone_at_a_repeat_ends_it_logged_and_lends_nothing(
    tmp_path: Path, transport: Transport, strategy: str
) -> None:
    root = site(tmp_path)
    log = tmp_path / "access.log"
    options = {"strategy": strategy, "access_log": str(log), "access_log_format": "json"}
    with start_server(root=str(root), **options, **transport.options()) as srv:
        with client(srv.port, transport) as c:
            for _ in range(3):  # the third is kept as the repeat
                assert c.ask(A).body == PAGE
            (connection,) = [
                conn for conn in srv.server._connections if isinstance(conn, HttpConnection)
            ]
            connection._send_call = _Gone(connection._send_call, 1)
            c.send(A)
            assert read_response(c.reader) is None
        wait_for(lambda: server_side_connections(srv.port) == 0, DEADLINE, "connection closed")
        assert srv.server.metrics.errors == {"reset": 1}
        (entry,) = srv.server.files._entries.values()
        assert entry.users == 0 and not entry.evicted
        assert fresh(srv.port, A, transport).body == PAGE
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["status"], r["bytes"]) for r in records] == [(200, 4096)] * 3 + [(200, 0)] + [
        (200, 4096)
    ]


def test_precompressed_repeats_see_a_sidecar_appear_and_go(
    tmp_path: Path, transport: Transport
) -> None:
    """With --precompressed the answer depends on other files: a sidecar written
    between two identical requests is served by the second, and its removal seen."""
    root = site(tmp_path)
    gzip_request = request("/page.bin", "Accept-Encoding: gzip")
    sidecar = b"GZIP-SIDECAR" * 100
    with start_server(root=str(root), precompressed=("gzip",), **transport.options()) as srv:
        with client(srv.port, transport) as c:
            for _ in range(3):
                plain = c.ask(gzip_request)
                assert plain.body == PAGE and "content-encoding" not in plain.headers
            (root / "page.bin.gz").write_bytes(sidecar)
            for _ in range(3):
                encoded = c.ask(gzip_request)
                assert (encoded.headers["content-encoding"], encoded.body) == ("gzip", sidecar)
            (root / "page.bin.gz").unlink()
            for _ in range(3):
                assert c.ask(gzip_request).body == PAGE


def test_memory_answers_larger_than_a_tls_flush_are_repeated_whole(
    tmp_path: Path, transport: Transport
) -> None:
    """--memory-file-max past the 64 KiB TLS encrypts per send: a repeat's memory
    answer never goes out in one send there, and its rest follows."""
    root = site(tmp_path)
    body = os.urandom(150 * 1024)
    (root / "page.bin").write_bytes(body)
    options = {"strategy": "memory", "memory_file_max": 256 * 1024}
    with start_server(root=str(root), **options, **transport.options()) as srv:
        want = fresh(srv.port, A, transport)
        assert want.body == body
        with client(srv.port, transport) as c:
            for _ in range(6):
                same_answer(c.ask(A), want)
            c.send(A * 3)
            for _ in range(3):
                same_answer(c.read(), want)
