"""Path resolution, ranges and conditionals, without sockets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.site import Site
from zcserve.errors import HttpError
from zcserve.server.files import (
    FULL,
    UNSATISFIABLE,
    ByteRange,
    Kind,
    OpenedFile,
    RangeKind,
    Root,
    content_type,
    if_range_matches,
    not_modified,
    parse_range,
    split_url_path,
    url_segments,
)
from zcserve.server.listing import ListingQuery


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        (b"/", []),
        (b"/a/b", ["a", "b"]),
        (b"//a/./b/", ["a", "b"]),
        (b"/a%20b", ["a b"]),
        (b"/%E2%82%AC", ["\u20ac"]),
        (b"/.../a..", ["...", "a.."]),  # dots that are names, not the parent
        (b"/..a/%2e%2e%2e", ["..a", "..."]),
        (b"/%252e%252e/x", ["%2e%2e", "x"]),  # decoded once: a literal name
    ],
)
def test_url_segments(path: bytes, segments: list[str]) -> None:
    assert url_segments(path) == segments


@pytest.mark.parametrize(
    ("path", "as_folder"),
    [
        (b"/", True),
        (b"/a", False),
        (b"/a/", True),
        (b"/a/.", True),
        (b"/a/./", True),
        (b"/a%2f", True),
        (b"/a/%2e", True),
        (b"/a/.b", False),
        (b"/a/...", False),
    ],
)
def test_split_url_path_says_when_a_path_names_a_folder(path: bytes, as_folder: bool) -> None:
    assert split_url_path(path) == (url_segments(path), as_folder)


DOT_DOT_SPELLINGS = [
    b"/..",
    b"/../",
    b"/a/..",
    b"/a/../b",
    b"/./..",
    b"//..//",
    b"/a/b/../../..",
    b"/%2e%2e",
    b"/%2E%2E",
    b"/%2e%2E",
    b"/%2E%2e",
    b"/.%2e",
    b"/.%2E",
    b"/%2e.",
    b"/%2E./",
    b"/a/%2e%2e/b",
    b"/a/.%2e/b",
    b"/a%2f..",
    b"/a%2F..%2Fb",
    b"/a%2f%2e%2e%2fb",
    b"/%2e%2e%2f",
    b"/%2f..",
    b"/.%2f..%2f",
    b"/a%2f.%2e/b",
    b"/%2e%2e/%2e%2e/etc/passwd",
    b"/sub/%2e%2e/%2e%2e/etc/passwd",
]
"""`..` as a segment, raw or percent-encoded (any case, half or whole), next to real
or encoded slashes."""


@pytest.mark.parametrize("path", DOT_DOT_SPELLINGS)
def test_url_segments_refuses_every_spelling_of_dot_dot(path: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        url_segments(path)
    assert caught.value.status == 404


def test_dot_dot_is_refused_before_anything_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`root/a/../b.txt` exists inside the root, so the descriptor check would pass
    it: the `..` rule alone refuses it, with 404, and nothing is opened first."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b.txt").write_text("inside\n")
    root = Root(str(tmp_path))
    resolved = root.resolve(b"/b.txt")
    assert resolved.file is not None  # the control: b.txt itself is served
    resolved.file.close()
    opened: list[str] = []
    real_open = os.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    for path in (b"/a/../b.txt", b"/a/%2e%2e/b.txt", b"/a%2f.%2e%2fb.txt", b"/a/%2E./"):
        with pytest.raises(HttpError) as caught:
            root.resolve(path)
        assert caught.value.status == 404, path
    assert opened == []


@pytest.mark.parametrize(
    "path", [b"/..", b"/a/../..", b"/%2e%2e/x", b"/a%00", b"/a\\b", b"/%c0%ae%c0%ae", b"/%5c"]
)
def test_url_segments_rejects(path: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        url_segments(path)
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, FULL),
        ("bytes=0-4", 10, ByteRange(RangeKind.PARTIAL, 0, 4)),
        ("bytes=5-", 10, ByteRange(RangeKind.PARTIAL, 5, 9)),
        ("bytes=-3", 10, ByteRange(RangeKind.PARTIAL, 7, 9)),
        ("bytes=-30", 10, ByteRange(RangeKind.PARTIAL, 0, 9)),
        ("bytes=8-100", 10, ByteRange(RangeKind.PARTIAL, 8, 9)),
        ("bytes = 1-2", 10, ByteRange(RangeKind.PARTIAL, 1, 2)),  # whitespace tolerated
        ("bytes=10-", 10, UNSATISFIABLE),
        ("bytes=-0", 10, UNSATISFIABLE),
        ("bytes=0-0", 0, UNSATISFIABLE),  # nothing to give from an empty file
        ("bytes=-5", 0, FULL),  # a suffix of an empty file is all of it: 200 (14.1.3)
        ("bytes=-0", 0, UNSATISFIABLE),
        ("bytes=0-1,3-4", 10, FULL),  # several ranges: whole file
        ("bytes=4-1", 10, FULL),  # invalid: ignored
        ("bytes=a-b", 10, FULL),
        ("lines=1-2", 10, FULL),
        ("bytes=-", 10, FULL),
        ("bytes=\u00b2-", 10, FULL),  # "²".isdigit() is True, int("²") fails
        ("bytes=1\u0661-", 10, FULL),  # an Arabic-Indic digit
        ("bytes=" + "1" * 5000 + "-", 10, UNSATISFIABLE),  # past int()'s 4,300-digit limit
        ("bytes=0-" + "9" * 5000, 10, ByteRange(RangeKind.PARTIAL, 0, 9)),
        ("bytes=-" + "9" * 30, 10, ByteRange(RangeKind.PARTIAL, 0, 9)),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange) -> None:
    assert parse_range(header, size) == expected


def test_validators_and_conditionals() -> None:
    file = OpenedFile(-1, "x.txt", 10, 1_700_000_000.5, 1_700_000_000_500_000_000)
    assert file.etag == f'"a-{1_700_000_000_500_000_000:x}"'
    date = "Tue, 14 Nov 2023 22:13:20 GMT"
    assert not_modified(file.etag, None, file)
    assert not_modified(None, date, file)
    assert not not_modified(None, "Tue, 14 Nov 2023 22:13:19 GMT", file)
    assert not not_modified(None, "garbage", file)
    assert if_range_matches(file.etag, file) and if_range_matches(date, file)
    assert not if_range_matches("W/" + file.etag, file)
    assert not if_range_matches("Tue, 14 Nov 2023 22:13:21 GMT", file)


def test_content_type() -> None:
    assert content_type("a.html") == "text/html; charset=utf-8"
    assert content_type("a.PNG") == "image/png"
    assert content_type("noext") == "application/octet-stream"


def test_root_resolve(site: Site) -> None:
    root = Root(site.root)
    resolved = root.resolve(b"/hello.txt")
    assert resolved.kind is Kind.FILE and resolved.file is not None
    assert resolved.file.size == 6
    resolved.file.close()
    for outside in (b"/link-out.txt", b"/dir-out/secret.txt", b"/rel-out.txt"):
        with pytest.raises(HttpError):
            root.resolve(outside)
    with pytest.raises(HttpError) as caught:
        root.resolve(b"/fifo")
    assert caught.value.status == 403


def listing_page(root: Root, url_path: bytes) -> bytes:
    """The HTML listing of `url_path` as the server's thread renders it."""
    return root.render_listing(root.resolve(url_path), ListingQuery())[0]


def test_listing_leaves_out_names_that_are_not_utf8(tmp_path: Path) -> None:
    """The server refuses such a name with 404, so the listing does not link it."""
    os.makedirs(tmp_path / "up")
    with open(os.path.join(os.fsencode(tmp_path / "up"), b"\xff<b>.txt"), "w") as f:
        f.write("x")
    (tmp_path / "up" / "ok.txt").write_text("x")
    page = listing_page(Root(str(tmp_path), listing=True), b"/up/").decode()
    assert "%FF" not in page and "\ufffd" not in page and "&lt;b&gt;" not in page
    assert 'href="ok.txt"' in page


def test_listing_escapes_names(site: Site) -> None:
    root = Root(site.root, listing=True)
    assert root.resolve(b"/plain/").kind is Kind.LISTING
    page = listing_page(root, b"/plain/").decode()
    assert "a&amp;b&lt;c&gt;.txt" in page and 'href="a%26b%3Cc%3E.txt"' in page
    assert 'href="sub/"' in page and "<c>" not in page
