"""The load client's receive path: a BufferedProtocol reading into one reused buffer,
bodies framed and counted in place, hashed from a memoryview only when verifying.

Byte-exact against zcserve (an in-process server on each loop, see conftest's
`default_live`), with the client on each loop too: bodies of 0 B, 1 B, 64 KiB + 1
and 24 MiB, one request at a time on keep-alive connections and pipelined, so that
several responses share one read. On bytes: random split points over every framing.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httptools
import pytest

from tests.support.scripted import Behaviour, ScriptedServer
from tests.support.servers import start_child
from tests.support.site import LOOPS, SIZES, Live, Site
from tests.support.tls import Certificate
from zcserve.load import client as loadclient
from zcserve.load import http as loadhttp
from zcserve.load.http import ResponseError, ResponseReader
from zcserve.load.run import LoadOptions, run_load
from zcserve.runtime import loop_factory

NAMES = tuple(SIZES)
"""empty.bin (0 B), one.bin (1 B), 64k1.bin (64 KiB + 1), big.bin (24 MiB)."""
REQUESTS = {"empty.bin": 40, "one.bin": 40, "64k1.bin": 20, "big.bin": 3}


def _sha256(site: Site, name: str) -> bytes:
    return bytes.fromhex(site.hashes[name])


# keep-alive, through the whole load client -------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("client_loop", LOOPS)
def test_keep_alive_bodies_are_byte_exact(
    default_live: Live, site: Site, name: str, client_loop: str
) -> None:
    requests = REQUESTS[name]
    options = LoadOptions(
        urls=(f"http://127.0.0.1:{default_live.port}/{name}",),
        connections=2,
        requests=requests,
        processes=1,
        loop=client_loop,
        expect=site.path(name),
    )
    result = run_load(options)
    assert result.requests == requests and result.error_total == 0, result.errors
    assert result.body_bytes == requests * SIZES[name]
    assert result.verified and result.reconnects == 0


@pytest.mark.parametrize("client_loop", LOOPS)
def test_a_body_that_differs_in_its_last_byte_fails_verification(
    default_live: Live, site: Site, client_loop: str, tmp_path: Path
) -> None:
    other = tmp_path / "other.bin"
    body = bytearray(site.read("64k1.bin"))
    body[-1] ^= 0xFF
    other.write_bytes(body)
    options = LoadOptions(
        urls=(f"http://127.0.0.1:{default_live.port}/64k1.bin",),
        connections=1,
        requests=3,
        processes=1,
        loop=client_loop,
        expect=str(other),
    )
    result = run_load(options)
    assert result.errors == {"verify": 3} and result.body_bytes == 3 * SIZES["64k1.bin"]


@pytest.fixture(scope="module")
def tls_site(site: Site, certificate: Certificate) -> Iterator[tuple[str, str]]:
    """zcserve over https on the same files, and the CA file to trust it."""
    with start_child(site.root, *certificate.flags()) as child:
        yield child.url, certificate.cert


@pytest.mark.parametrize("name", ["one.bin", "64k1.bin", "big.bin"])
@pytest.mark.parametrize("client_loop", LOOPS)
def test_tls_bodies_are_byte_exact(
    tls_site: tuple[str, str], site: Site, name: str, client_loop: str
) -> None:
    url, cacert = tls_site
    requests = min(REQUESTS[name], 10)
    options = LoadOptions(
        urls=(f"{url}/{name}",),
        connections=2,
        requests=requests,
        processes=1,
        loop=client_loop,
        expect=site.path(name),
        cacert=cacert,
    )
    result = run_load(options)
    assert result.requests == requests and result.error_total == 0, result.errors
    assert result.body_bytes == requests * SIZES[name] and result.tls_handshakes == 2


# pipelined: several responses in one read -------------------------------------------------------


class _PipelinedOwner:
    """Stands in for a `Connection` behind the client's real `_Wire`: frames every
    response that arrives, however many share a read, with the client's reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expected: int) -> None:
        buffer = bytearray(loadclient.RECEIVE_BUFFER)
        self.dialer = SimpleNamespace(
            loop=loop, buffer=buffer, view=memoryview(buffer), wires=set()
        )
        self.reader = ResponseReader(hash_bodies=True)
        self.responses: list[tuple[int, int, bytes | None]] = []
        self.reads = 0
        self.shared_reads = 0
        """Reads that held the end of one response and the start of the next."""
        self.expected = expected
        self.finished: asyncio.Future[None] = loop.create_future()

    def on_bytes(self, wire: object, nbytes: int) -> None:
        self.reads += 1
        reader = self.reader
        offset = 0
        while offset < nbytes:
            offset = reader.receive(self.dialer.buffer, nbytes, offset)
            if not reader.done:
                break
            self.responses.append((reader.status, reader.body_bytes, reader.digest()))
            reader.reset()
            if 0 < offset < nbytes:
                self.shared_reads += 1
        if len(self.responses) >= self.expected and not self.finished.done():
            self.finished.set_result(None)

    def on_lost(self, wire: object) -> None:
        if not self.finished.done():
            self.finished.set_exception(ConnectionError("closed before every response"))


async def _pipelined(port: int, names: list[str]) -> _PipelinedOwner:
    loop = asyncio.get_running_loop()
    owner = _PipelinedOwner(loop, len(names))
    wire_owner = cast(loadclient.Connection, owner)
    transport, wire = await loop.create_connection(
        lambda: loadclient._Wire(wire_owner), "127.0.0.1", port
    )
    assert isinstance(wire, asyncio.BufferedProtocol)
    requests = b"".join(
        f"GET /{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for name in names
    )
    transport.write(requests)
    try:
        await asyncio.wait_for(owner.finished, 60)
    finally:
        transport.close()
    return owner


@pytest.mark.parametrize("client_loop", LOOPS)
def test_pipelined_responses_are_split_exactly(
    default_live: Live, site: Site, client_loop: str
) -> None:
    names = ["empty.bin", "one.bin", "64k1.bin", "empty.bin", "big.bin", "one.bin"] * 2
    names += ["empty.bin", "one.bin"] * 10  # small ones back to back: many share a read
    with asyncio.Runner(loop_factory=loop_factory(client_loop)) as runner:
        owner = runner.run(_pipelined(default_live.port, names))
    assert [status for status, _, _ in owner.responses] == [200] * len(names)
    assert [size for _, size, _ in owner.responses] == [SIZES[name] for name in names]
    assert [digest for _, _, digest in owner.responses] == [_sha256(site, n) for n in names]
    assert owner.shared_reads > 0, "no read held two responses: nothing was pipelined"


# the reader on bytes ---------------------------------------------------------------------------


def _chunked(body: bytes, rng: random.Random) -> bytes:
    out = bytearray(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    index = 0
    while index < len(body):
        part = body[index : index + rng.randint(1, 9000)]
        index += len(part)
        out += f"{len(part):x};name=value\r\n".encode() + part + b"\r\n"
    return bytes(out + b"0\r\nX-Trailer: yes\r\n\r\n")


def _stream(rng: random.Random, count: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    """`count` responses back to back, of every framing, and (status, body) of each."""
    wire = bytearray()
    expected = []
    for _ in range(count):
        kind = rng.choice(["length", "chunked", "interim", "no_content"])
        body = b"" if kind == "no_content" else rng.randbytes(rng.choice([0, 1, 700, 70_000]))
        if kind == "chunked":
            wire += _chunked(body, rng)
        elif kind == "no_content":
            wire += b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
        else:
            if kind == "interim":
                wire += (
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: <x>\r\n\r\n"
                )
            wire += f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        expected.append((204 if kind == "no_content" else 200, body))
    return bytes(wire), expected


@pytest.mark.parametrize("seed", range(4))
def test_every_framing_split_anywhere_is_byte_exact(seed: int) -> None:
    rng = random.Random(seed)
    wire, expected = _stream(rng, 120)
    buffer = bytearray(loadclient.RECEIVE_BUFFER)
    reader = ResponseReader(hash_bodies=True)
    got = []
    position = 0
    while position < len(wire):
        size = min(rng.choice([1, 2, 7, 100, 4096, 65536, len(buffer)]), len(wire) - position)
        buffer[:size] = wire[position : position + size]
        position += size
        offset = 0
        while offset < size:
            offset = reader.receive(buffer, size, offset)
            if not reader.done:
                break
            got.append((reader.status, reader.body_bytes, reader.digest()))
            reader.reset()
    assert got == [(s, len(b), hashlib.sha256(b).digest()) for s, b in expected]


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not hex
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",  # no CRLF
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5000,  # endless size
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ],
    ids=[
        "chunk-size",
        "chunk-end",
        "chunk-line-cap",
        "two-lengths",
        "length-and-chunked",
        "status",
    ],
)
def test_broken_framing_is_a_bad_response(wire: bytes) -> None:
    with pytest.raises(ResponseError) as caught:
        ResponseReader().feed(wire)
    assert caught.value.kind == "bad_response"


@pytest.mark.parametrize(
    ("head", "body", "keep_alive"),
    [
        (b"content-length: 3", b"abc", True),
        (b"CONTENT-LENGTH: 3", b"abc", True),
        (b"transfer-encoding: chunked", b"3\r\nabc\r\n0\r\n\r\n", True),
        (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked", b"3\r\nabc\r\n0\r\n\r\n", True),
        (b"Transfer-Encoding: chunked, gzip", b"abc", False),  # not chunked last: the close ends it
    ],
)
def test_framing_headers_in_any_case(head: bytes, body: bytes, keep_alive: bool) -> None:
    reader = ResponseReader(hash_bodies=True)
    done = reader.feed(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n" + body)
    if not keep_alive:
        assert not done and reader.eof_error() is None
    assert reader.done and reader.body_bytes == 3 and reader.keep_alive is keep_alive
    assert reader.digest() == hashlib.sha256(b"abc").digest()


def test_a_head_seen_before_is_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[object] = []
    real = httptools.HttpResponseParser

    def counting(protocol: object) -> Any:
        parsed.append(protocol)
        return real(protocol)

    monkeypatch.setattr(httptools, "HttpResponseParser", counting)
    monkeypatch.setattr(loadhttp, "_KNOWN_HEADS", {})
    head = b"HTTP/1.1 200 OK\r\nX-Seen: %d\r\nContent-Length: 2\r\n\r\nok"
    reader = ResponseReader()
    for number in (1, 1, 1, 2, 1):
        assert reader.feed(head % number) and reader.body_bytes == 2
        reader.reset()
    assert len(parsed) == 2, "each distinct head once"
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    for _ in range(2):  # a refused head is never remembered as good
        with pytest.raises(ResponseError):
            ResponseReader().feed(bad)
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * loadhttp.KNOWN_HEAD_SIZE + b"\r\n\r\n"
    ResponseReader().feed(big)
    for number in range(loadhttp.KNOWN_HEADS + 10):
        ResponseReader().feed(head % (number + 10))
    assert big not in loadhttp._KNOWN_HEADS
    assert len(loadhttp._KNOWN_HEADS) <= loadhttp.KNOWN_HEADS


def test_endless_trailers_are_a_bad_response() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n")
    with pytest.raises(ResponseError) as caught:
        for _ in range(100):
            reader.feed(b"X-Trailer: " + b"a" * 1000 + b"\r\n")
    assert caught.value.kind == "bad_response"


def test_a_body_ended_by_the_close_is_counted_in_place() -> None:
    reader = ResponseReader(hash_bodies=True)
    assert not reader.feed(b"HTTP/1.0 200 OK\r\n\r\nabc")
    assert not reader.feed(b"def")
    assert reader.eof_error() is None and reader.done and not reader.keep_alive
    assert reader.body_bytes == 6 and reader.digest() == hashlib.sha256(b"abcdef").digest()


@pytest.mark.parametrize("hash_bodies", [False, True], ids=["counted", "hashed"])
def test_a_24_mib_body_is_received_without_a_copy(hash_bodies: bool) -> None:
    # Through one 64 KiB buffer: the reader allocates nothing of a piece's size (the
    # old path made a bytes object per piece, twice). Peak Python allocation during the
    # body stays under one piece.
    size = SIZES["big.bin"]
    buffer = bytearray(loadclient.RECEIVE_BUFFER)
    reader = ResponseReader(hash_bodies=hash_bodies)
    reader.feed(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
    tracemalloc.start()
    try:
        left = size
        while left:
            piece = min(left, len(buffer))
            assert reader.receive(buffer, piece) == piece
            left -= piece
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reader.done and reader.body_bytes == size
    assert peak < len(buffer) // 8, peak


# what the load client does with the bytes ------------------------------------------------


def test_the_connections_read_into_the_workers_one_buffer() -> None:
    # Every _Wire hands the loop the worker's buffer: one 64 KiB buffer per process,
    # not one per connection (50,000 connections would need 3 GiB).
    seen: set[int] = set()
    original = loadclient._Wire.get_buffer

    def spy(self: loadclient._Wire, sizehint: int) -> Any:
        view = original(self, sizehint)
        seen.add(id(view.obj))
        return view

    with ScriptedServer(Behaviour.OK, body=b"y" * 100_000) as server:
        loadclient._Wire.get_buffer = spy  # type: ignore[method-assign]
        try:
            options = LoadOptions(urls=(server.url,), connections=4, requests=40, processes=1)
            result = run_load(options)
        finally:
            loadclient._Wire.get_buffer = original  # type: ignore[method-assign]
    assert result.requests == 40 and result.body_bytes == server.counts.body_bytes
    assert len(seen) == 1, seen
