"""Listings: name, human size and date, folders first, sorted by the query,
readable on a phone, JSON on request, dot-names hidden unless --hidden."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LOOPS
from tests.httpclient import get
from tests.serverthread import ServerThread, start_server
from zcserve.server.listing import Entry, human_size, parse_query, sort_entries, wants_json

# name: (size, mtime); sizes and dates chosen so each sort gives a different order
FILES = {
    "b.txt": (3000, 1_700_000_300),
    "a.bin": (10, 1_700_000_100),
    "C.log": (2_500_000, 1_700_000_200),
}
FOLDERS = {"zeta": 1_700_000_050, "alpha": 1_700_000_400}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("listing")
    for name, (size, mtime) in FILES.items():
        (root / name).write_bytes(b"x" * size)
        os.utime(root / name, (mtime, mtime))
    for name, mtime in FOLDERS.items():
        (root / name).mkdir()
        os.utime(root / name, (mtime, mtime))
    (root / ".secret").write_text("hidden\n")
    return str(root)


@pytest.fixture(scope="module", params=LOOPS)
def lister(request: pytest.FixtureRequest, folder: str) -> Iterator[ServerThread]:
    server = start_server(root=folder, loop=request.param, listing=True)
    yield server
    server.stop()


def names_in_page(body: bytes) -> list[str]:
    return re.findall(r'<a href="[^"]*">([^<]*)</a>', body.decode())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["alpha/", "zeta/", "a.bin", "b.txt", "C.log"]),  # folders first, case-blind
        ("?sort=name", ["alpha/", "zeta/", "a.bin", "b.txt", "C.log"]),
        ("?sort=name&order=desc", ["zeta/", "alpha/", "C.log", "b.txt", "a.bin"]),
        ("?sort=size", ["alpha/", "zeta/", "a.bin", "b.txt", "C.log"]),
        ("?sort=size&order=desc", ["zeta/", "alpha/", "C.log", "b.txt", "a.bin"]),
        ("?sort=mtime", ["zeta/", "alpha/", "a.bin", "C.log", "b.txt"]),
        ("?sort=mtime&order=desc", ["alpha/", "zeta/", "b.txt", "C.log", "a.bin"]),
        ("?sort=bogus&order=sideways", ["alpha/", "zeta/", "a.bin", "b.txt", "C.log"]),
    ],
)
def test_html_sorted_by_the_query(lister: ServerThread, query: str, expected: list[str]) -> None:
    page = get(lister.port, "/" + query, {"Accept": BROWSER_ACCEPT})
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert names_in_page(page.body) == expected
    assert page.headers["vary"] == "Accept"


def test_html_shows_sizes_dates_and_reads_on_a_phone(lister: ServerThread) -> None:
    body = get(lister.port, "/").body.decode()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in body
    assert "<style>" in body and "<script" not in body
    assert "10 B" in body and "2.9 KiB" in body and "2.4 MiB" in body
    assert "2023-11-14 22:15" in body  # a.bin's mtime, UTC
    # the column heads sort; the current column links to the other order
    assert '<a class="sort" href="?sort=name&amp;order=desc">Name</a>' in body
    assert '<a class="sort" href="?sort=size">Size</a>' in body
    assert ".secret" not in body


def test_json_on_request(lister: ServerThread) -> None:
    response = get(lister.port, "/?sort=size&order=desc", {"Accept": "application/json"})
    assert response.status == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["vary"] == "Accept"
    rows = json.loads(response.body)
    assert rows == [
        {"name": "zeta", "size": None, "mtime": FOLDERS["zeta"], "is_dir": True},
        {"name": "alpha", "size": None, "mtime": FOLDERS["alpha"], "is_dir": True},
        *(
            {"name": name, "size": FILES[name][0], "mtime": FILES[name][1], "is_dir": False}
            for name in ("C.log", "b.txt", "a.bin")
        ),
    ]


@pytest.mark.parametrize(
    ("accept", "is_json"),
    [
        ("application/json", True),
        ("application/json, text/plain, */*", True),  # what fetch libraries send
        ("text/html;q=0.5, application/json", True),
        (BROWSER_ACCEPT, False),
        ("application/json;q=0", False),  # refused outright
        ("text/html, application/json;q=0.9", False),
        ("*/*", False),
        (None, False),
    ],
)
def test_wants_json(accept: str | None, is_json: bool) -> None:
    assert wants_json(accept) is is_json


def test_head_of_a_listing_has_no_body(lister: ServerThread) -> None:
    response = get(lister.port, "/", method="HEAD")
    assert response.status == 200 and response.body == b""
    assert int(response.headers["content-length"]) > 0


def test_subfolder_links_up(lister: ServerThread) -> None:
    assert names_in_page(get(lister.port, "/alpha/").body) == ["../"]
    assert json.loads(get(lister.port, "/alpha/", {"Accept": "application/json"}).body) == []


@pytest.mark.parametrize("loop", LOOPS)
def test_hidden_lists_dot_names_in_html_and_json(folder: str, loop: str) -> None:
    server = start_server(root=folder, loop=loop, listing=True, hidden=True)
    try:
        page = get(server.port, "/")
        rows = json.loads(get(server.port, "/", {"Accept": "application/json"}).body)
    finally:
        server.stop()
    assert ".secret" in names_in_page(page.body)
    assert ".secret" in {row["name"] for row in rows}


def test_dot_names_hidden_from_json_by_default(lister: ServerThread) -> None:
    rows = json.loads(get(lister.port, "/", {"Accept": "application/json"}).body)
    assert ".secret" not in {row["name"] for row in rows}


def test_names_are_escaped_in_html_and_exact_in_json(tmp_path: Path) -> None:
    (tmp_path / 'a "q" <b>&.txt').write_text("x")
    server = start_server(root=str(tmp_path), listing=True)
    try:
        page = get(server.port, "/").body.decode()
        rows = json.loads(get(server.port, "/", {"Accept": "application/json"}).body)
    finally:
        server.stop()
    assert "&lt;b&gt;&amp;" in page and "<b>" not in page
    assert rows[0]["name"] == 'a "q" <b>&.txt'


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
     (5 * 1024**3, "5.0 GiB"), (3 * 1024**6, "3072.0 PiB")],
)  # fmt: skip
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_parse_query() -> None:
    assert parse_query(b"") == ("name", False)
    assert parse_query(b"sort=mtime&order=desc") == ("mtime", True)
    assert parse_query(b"sort=%73ize") == ("size", False)
    assert parse_query(b"sort=../etc&order=") == ("name", False)


def test_sort_keeps_folders_first() -> None:
    entries = [Entry("b", False, 1, 0), Entry("a", True, 0, 9), Entry("c", True, 0, 1)]
    assert [e.name for e in sort_entries(entries, "mtime", True)] == ["a", "c", "b"]
