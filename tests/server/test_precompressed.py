"""--precompressed: sidecars (x.css.br, .gz, .zst) served by the copy strategy when
Accept-Encoding takes them, with their own ETag and length, ranges on the encoded
bytes, and Vary: Accept-Encoding on every answer."""

from __future__ import annotations

import gzip
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpclient import get
from tests.support.servers import ServerThread, start_child, start_server, zcserve_command
from tests.support.site import LOOPS
from zcserve.server.precompressed import accepted
from zcserve.server.strategies import STRATEGY_NAMES

ALL = ("br", "gzip", "zstd")
CSS = b"body { color: #123456; margin: 0 auto; }\n" * 2000  # 84 KB: several sends
BR = b"BROTLI-SIDECAR:" + bytes(range(256)) * 100  # content is not checked: bytes are
ZST = b"ZSTD-SIDECAR:" + bytes(range(256)) * 50


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("precompressed")
    (root / "style.css").write_bytes(CSS)
    (root / "style.css.gz").write_bytes(gzip.compress(CSS, mtime=0))
    (root / "style.css.br").write_bytes(BR)
    (root / "style.css.zst").write_bytes(ZST)
    (root / "plain.txt").write_text("no sidecar\n")
    (root / "old.js").write_text("console.log('new');\n")
    (root / "old.js.gz").write_bytes(gzip.compress(b"console.log('old');\n"))
    os.utime(root / "old.js.gz", (1_600_000_000, 1_600_000_000))  # older than old.js
    (root / "folder.css").write_text("x\n")
    (root / "folder.css.br").mkdir()  # a folder is no sidecar
    return str(root)


@pytest.fixture(scope="module", params=LOOPS)
def server(request: pytest.FixtureRequest, folder: str) -> Iterator[ServerThread]:
    thread = start_server(root=folder, loop=request.param, precompressed=ALL)
    yield thread
    thread.stop()


def ae(value: str) -> dict[str, str]:
    return {"Accept-Encoding": value}


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize("loop", LOOPS)
def test_sidecar_moved_by_every_strategy(folder: str, loop: str, strategy: str) -> None:
    thread = start_server(root=folder, loop=loop, strategy=strategy, precompressed=ALL)
    try:
        encoded = get(thread.port, "/style.css", ae("gzip, deflate, br, zstd"))
        gzipped = get(thread.port, "/style.css", ae("gzip"))
        identity = get(thread.port, "/style.css")
    finally:
        thread.stop()
    assert encoded.status == 200 and encoded.body == BR  # the flag's order: br first
    assert encoded.headers["content-encoding"] == "br"
    assert encoded.headers["content-type"] == "text/css; charset=utf-8"
    assert encoded.headers["content-length"] == str(len(BR))
    assert encoded.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(gzipped.body) == CSS and gzipped.headers["content-encoding"] == "gzip"
    assert identity.body == CSS and "content-encoding" not in identity.headers
    assert identity.headers["vary"] == "Accept-Encoding"  # the identity answer varies too
    etags = {encoded.headers["etag"], gzipped.headers["etag"], identity.headers["etag"]}
    assert len(etags) == 3


@pytest.mark.parametrize(
    ("accept", "encoding"),
    [
        ("br;q=0, gzip", "gzip"),  # q=0 refuses
        ("gzip;q=1, br;q=0.5", "gzip"),  # a higher q wins over the flag's order
        ("zstd", "zstd"),
        ("*", "br"),
        ("*;q=0", None),
        ("*, br;q=0, gzip;q=0", "zstd"),
        ("identity", None),
        ("deflate", None),
        ("x-gzip", "gzip"),
        ("GZIP", "gzip"),
        ("br;q=bogus, gzip", "gzip"),
    ],
)
def test_accept_encoding_q_values(server: ServerThread, accept: str, encoding: str | None) -> None:
    response = get(server.port, "/style.css", ae(accept))
    assert response.status == 200
    assert response.headers.get("content-encoding") == encoding
    assert response.headers["vary"] == "Accept-Encoding"
    expected = {"br": BR, "zstd": ZST, None: CSS}.get(encoding)
    if encoding == "gzip":
        assert gzip.decompress(response.body) == CSS
    else:
        assert response.body == expected


def test_flag_order_decides_between_equals(folder: str) -> None:
    thread = start_server(root=folder, precompressed=("zstd", "gzip"))
    try:
        response = get(thread.port, "/style.css", ae("br, gzip, zstd"))
    finally:
        thread.stop()
    assert response.headers["content-encoding"] == "zstd" and response.body == ZST


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/old.js", b"console.log('new');\n"),  # the sidecar is older: not served
        ("/plain.txt", b"no sidecar\n"),
        ("/folder.css", b"x\n"),  # a folder named like a sidecar
    ],
)
def test_identity_when_no_sidecar_fits(server: ServerThread, path: str, body: bytes) -> None:
    response = get(server.port, path, ae("br, gzip, zstd"))
    assert response.status == 200 and response.body == body
    assert "content-encoding" not in response.headers
    assert response.headers["vary"] == "Accept-Encoding"


def test_ranges_apply_to_the_encoded_bytes(server: ServerThread) -> None:
    one = get(server.port, "/style.css", {**ae("br"), "Range": "bytes=10-19"})
    assert one.status == 206 and one.body == BR[10:20]
    assert one.headers["content-range"] == f"bytes 10-19/{len(BR)}"
    assert one.headers["content-encoding"] == "br"
    many = get(server.port, "/style.css", {**ae("br"), "Range": "bytes=0-1,100-101"})
    assert many.status == 206 and BR[0:2] in many.body and BR[100:102] in many.body
    assert many.headers["content-type"].startswith("multipart/byteranges")
    assert many.headers["content-encoding"] == "br"


def test_an_unsatisfiable_range_is_not_labelled_encoded(server: ServerThread) -> None:
    """The 416's body is plain text: no Content-Encoding, no validators; Vary stays."""
    refused = get(server.port, "/style.css", {**ae("gzip"), "Range": f"bytes={len(CSS) * 2}-"})
    assert refused.status == 416 and refused.body == b"416 Range Not Satisfiable\n"
    assert "content-encoding" not in refused.headers, refused.headers
    assert "etag" not in refused.headers and "last-modified" not in refused.headers
    assert refused.headers["vary"] == "Accept-Encoding"


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/style.css", {"If-Match": '"no-such-etag"'}, 412),
        ("GET", "/style.css", {"If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, 412),
        ("GET", "/no-such.css", {}, 404),
        ("DELETE", "/style.css", {}, 405),
    ],
)
def test_no_error_answer_carries_representation_headers(
    server: ServerThread, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    """An error's body is its own short text: it is not the encoded file, and has no
    validators; Vary stays, since the answer could differ with Accept-Encoding."""
    refused = get(server.port, path, {**ae("gzip"), **headers}, method=method)
    assert refused.status == status
    for name in ("content-encoding", "etag", "last-modified"):
        assert name not in refused.headers, (name, refused.headers)
    assert refused.headers["vary"] == "Accept-Encoding"


def test_conditionals_use_the_sidecar_etag(server: ServerThread) -> None:
    encoded = get(server.port, "/style.css", ae("br"))
    again = get(server.port, "/style.css", {**ae("br"), "If-None-Match": encoded.headers["etag"]})
    assert again.status == 304
    assert again.headers["content-encoding"] == "br" and again.headers["vary"] == "Accept-Encoding"
    # the encoded ETag does not validate the identity representation
    other = get(server.port, "/style.css", {"If-None-Match": encoded.headers["etag"]})
    assert other.status == 200 and other.body == CSS


def test_head(server: ServerThread) -> None:
    response = get(server.port, "/style.css", ae("br"), method="HEAD")
    assert response.status == 200 and response.body == b""
    assert response.headers["content-length"] == str(len(BR))
    assert response.headers["content-encoding"] == "br"


def test_off_by_default(folder: str) -> None:
    thread = start_server(root=folder)
    try:
        response = get(thread.port, "/style.css", ae("br, gzip"))
    finally:
        thread.stop()
    assert response.body == CSS
    assert "content-encoding" not in response.headers and "vary" not in response.headers


def test_with_added_headers(folder: str) -> None:
    thread = start_server(
        root=folder, precompressed=("gzip",), headers=("Cache-Control: max-age=9",), cors=True
    )
    try:
        response = get(thread.port, "/style.css", ae("gzip"))
    finally:
        thread.stop()
    assert gzip.decompress(response.body) == CSS
    assert response.headers["cache-control"] == "max-age=9"
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["content-encoding"] == "gzip"


@pytest.mark.parametrize(
    ("value", "message"),
    [("br,deflate", "unknown encoding 'deflate'"), ("gzip,gzip", "listed twice")],
)
def test_bad_flag_is_one_line(folder: str, value: str, message: str) -> None:
    result = subprocess.run(
        zcserve_command("serve", folder, "--port", "0", "--precompressed", value),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_accepted_order() -> None:
    assert accepted("gzip, br", ALL) == ["br", "gzip"]
    assert accepted("gzip;q=0.9, br;q=0.8, zstd;q=0", ALL) == ["gzip", "br"]
    assert accepted("", ALL) == []


def test_sidecar_path_under_cli(folder: str, tmp_path: Path) -> None:
    env = {"ZCSERVE_PRECOMPRESSED": "gzip"}
    with start_child(folder, "-p", "0", port=None, env=env) as child:
        response = get(child.port, "/style.css", ae("gzip, br"))
    assert response.headers["content-encoding"] == "gzip"


def test_cached_descriptors_are_all_released(folder: str) -> None:
    """The sidecar's lease on the open-file cache moves to the reply and is returned."""
    thread = start_server(root=folder, precompressed=ALL)
    try:
        for accept in ("br", "gzip", "zstd", "identity", "br") * 4:
            assert get(thread.port, "/style.css", ae(accept)).status == 200
        get(thread.port, "/style.css", {**ae("br"), "Range": "bytes=0-1,5-6"})
        get(thread.port, "/old.js", ae("gzip"))
        entries = list(thread.server.files._entries.values())
    finally:
        thread.stop()
    assert len(entries) >= 4  # style.css and its three sidecars are cached
    assert all(entry.users == 0 for entry in entries), [(e.path, e.users) for e in entries]
