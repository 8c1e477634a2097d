"""Listings: name, human size and date, folders first, sorted by the query,
readable on a phone, JSON on request, dot-names hidden unless --hidden."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpclient import get
from tests.support.servers import ServerThread, start_server
from tests.support.site import LOOPS
from zcserve.server.files import Resolved
from zcserve.server.listing import (
    Entry,
    ListingQuery,
    RenderedPage,
    human_size,
    parse_query,
    sort_entries,
    wants_json,
)

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
    """The listed names, in order: the table's links, not the breadcrumbs'."""
    return re.findall(r'<td><a href="[^"]*">([^<]*)</a>', body.decode())


def json_entries(port: int, path: str) -> list[dict[str, object]]:
    document = json.loads(get(port, path, {"Accept": "application/json"}).body)
    entries: list[dict[str, object]] = document["entries"]
    return entries


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
    assert "<style>" in body
    assert "src=" not in body and "<link" not in body  # no external assets
    assert "10 B" in body and "2.9 KiB" in body and "2.4 MiB" in body
    assert "2023-11-14 22:15 UTC" in body  # a.bin's mtime, with its time zone
    # the column heads sort; the current column leads to the other order
    assert re.search(
        r'<form><input type="hidden" name="order" value="desc">'
        r'<button class="sort" name="sort" value="name">Name</button>',
        body,
    )
    assert '<form><button class="sort" name="sort" value="size">Size</button>' in body
    assert "?sort=" not in body  # no link a crawler follows into six copies
    assert ".secret" not in body


def test_json_on_request(lister: ServerThread) -> None:
    response = get(lister.port, "/?sort=size&order=desc", {"Accept": "application/json"})
    assert response.status == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["vary"] == "Accept"
    document = json.loads(response.body)
    assert document["path"] == "/" and document["next"] is None
    assert (document["count"], document["folders"], document["files"]) == (5, 2, 3)
    assert document["total_size"] == sum(size for size, _ in FILES.values())
    assert document["entries"] == [
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
    assert json_entries(lister.port, "/alpha/") == []


@pytest.mark.parametrize("loop", LOOPS)
def test_hidden_lists_dot_names_in_html_and_json(folder: str, loop: str) -> None:
    server = start_server(root=folder, loop=loop, listing=True, hidden=True)
    try:
        page = get(server.port, "/")
        rows = json_entries(server.port, "/")
    finally:
        server.stop()
    assert ".secret" in names_in_page(page.body)
    assert ".secret" in {row["name"] for row in rows}


def test_dot_names_hidden_from_json_by_default(lister: ServerThread) -> None:
    rows = json_entries(lister.port, "/")
    assert ".secret" not in {row["name"] for row in rows}


def test_names_are_escaped_in_html_and_exact_in_json(tmp_path: Path) -> None:
    (tmp_path / 'a "q" <b>&.txt').write_text("x")
    server = start_server(root=str(tmp_path), listing=True)
    try:
        page = get(server.port, "/").body.decode()
        rows = json_entries(server.port, "/")
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
    assert parse_query(b"") == ListingQuery("name", False, 1, False)
    assert parse_query(b"sort=mtime&order=desc") == ListingQuery("mtime", True)
    assert parse_query(b"sort=%73ize") == ListingQuery("size")
    assert parse_query(b"sort=../etc&order=") == ListingQuery()
    assert parse_query(b"page=3&format=json") == ListingQuery(page=3, as_json=True)
    assert (
        parse_query(b"page=-1")
        == parse_query(b"page=x")
        == parse_query(b"page=0")
        == ListingQuery()
    )
    assert parse_query(b"page=99999999999999") == ListingQuery()  # too long to be a page
    assert parse_query(b"", "application/json") == ListingQuery(as_json=True)
    assert parse_query(b"format=html", "application/json") == ListingQuery()


def test_sort_keeps_folders_first() -> None:
    entries = [Entry("b", False, 1, 0), Entry("a", True, 0, 9), Entry("c", True, 0, 1)]
    assert [e.name for e in sort_entries(entries, "mtime", True)] == ["a", "c", "b"]


@pytest.fixture(scope="module")
def long_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("long")
    for i in range(7):
        (root / f"f{i}.txt").write_bytes(b"x" * (i + 1))
    (root / "d").mkdir()
    (root / "d" / "e f").mkdir()
    return str(root)


@pytest.fixture(scope="module")
def paged(long_folder: str) -> Iterator[ServerThread]:
    server = start_server(root=long_folder, listing=True, listing_max=3)
    yield server
    server.stop()


def test_a_long_listing_is_paged_with_a_visible_note_and_next_links(paged: ServerThread) -> None:
    seen, path, pages = [], "/", 0
    while path:
        body = get(paged.port, path).body.decode()
        pages += 1
        seen += names_in_page(body.encode())
        assert f"of 8 (page {pages} of 3)" in body  # the note says it is cut
        found = re.search(r'<a rel="next" href="([^"]+)">next page</a>', body)
        path = "/" + found.group(1).replace("&amp;", "&") if found else ""
    assert pages == 3
    assert seen == ["d/", *(f"f{i}.txt" for i in range(7))]  # each once, in order


def test_json_pages_carry_next(paged: ServerThread) -> None:
    names, path = [], "/?sort=size&order=desc&format=json"
    while path:
        response = get(paged.port, path)
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        document = json.loads(response.body)
        assert document["count"] == 8 and document["pages"] == 3
        names += [entry["name"] for entry in document["entries"]]
        path = "/" + document["next"] if document["next"] else ""
    assert names == ["d", *(f"f{i}.txt" for i in reversed(range(7)))]


def test_a_page_past_the_end_is_the_last_page(paged: ServerThread) -> None:
    assert names_in_page(get(paged.port, "/?page=999").body) == ["f5.txt", "f6.txt"]


def test_breadcrumbs_link_every_part_of_the_path(paged: ServerThread) -> None:
    body = get(paged.port, "/d/e%20f/").body.decode()
    heading = re.search(r"<h1>(.*)</h1>", body)
    assert heading is not None
    assert re.findall(r'<a href="([^"]+)">([^<]+)</a>', heading.group(1)) == [
        ("/", "/"), ("/d/", "d/"), ("/d/e%20f/", "e f/"),
    ]  # fmt: skip
    for href in ("/", "/d/", "/d/e%20f/"):
        assert get(paged.port, href).status == 200


def test_the_page_counts_entries_and_their_size_and_filters_without_the_server(
    lister: ServerThread,
) -> None:
    body = get(lister.port, "/").body.decode()
    total = human_size(sum(size for size, _ in FILES.values()))
    assert f"2 folders, 3 files, {total} in all" in body
    # The filter is the page's own script, over rows that carry their names.
    assert '<input id="filter" type="search"' in body and "addEventListener('input'" in body
    assert len(re.findall(r'<tr data-name="[^"]+">', body)) == 5


def test_a_new_name_is_listed_at_once(tmp_path: Path) -> None:
    """Rendered pages are kept for a folder's version: a name added changes it."""
    (tmp_path / "first.txt").write_text("1")
    server = start_server(root=str(tmp_path), listing=True)
    try:
        assert names_in_page(get(server.port, "/").body) == ["first.txt"]
        (tmp_path / "second.txt").write_text("2")
        assert names_in_page(get(server.port, "/").body) == ["first.txt", "second.txt"]
        os.remove(tmp_path / "first.txt")
        assert json_entries(server.port, "/")[0]["name"] == "second.txt"
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("wget") is None, reason="wget is not installed")
def test_wget_mirrors_each_folder_once(paged: ServerThread, tmp_path: Path) -> None:
    """Sort heads are forms, which crawlers do not submit: `wget -r` fetches every
    page and file once, not six sorted copies of each folder."""
    log = tmp_path / "wget.log"
    subprocess.run(
        ["wget", "-r", "-np", "-nv", "-e", "robots=off", "-o", str(log),
         "-P", str(tmp_path / "mirror"), f"http://127.0.0.1:{paged.port}/"],
        check=True, timeout=60,
    )  # fmt: skip
    fetched = re.findall(r"URL:\S+?127\.0\.0\.1:\d+(\S*) ", log.read_text())
    assert not [url for url in fetched if "sort=" in url]
    assert sorted(fetched) == sorted(
        ["/", "/?page=2", "/?page=3", "/d/", "/d/e%20f/", *(f"/f{i}.txt" for i in range(7))]
    )


def test_pages_past_the_last_share_the_last_page(tmp_path: Path) -> None:
    """Once a folder's page count is known, `?page=99` and `?page=98` are its last
    page from the cache, not a new reading of the folder each."""
    for index in range(5):
        (tmp_path / f"f{index}.txt").write_text("x")
    server = start_server(root=str(tmp_path), listing=True, listing_max=2)
    files = server.server.files
    render = files.render_listing
    asked: list[int] = []

    def counted(resolved: Resolved, query: ListingQuery) -> RenderedPage:
        asked.append(query.page)
        return render(resolved, query)

    files.render_listing = counted  # type: ignore[method-assign]
    try:
        last = get(server.port, "/?page=3")
        assert last.status == 200 and names_in_page(last.body) == ["f4.txt"]
        for page in (99, 98, 9999999):
            assert get(server.port, f"/?page={page}").body == last.body
        assert asked == [3]
        (tmp_path / "f5.txt").write_text("x")  # a new folder version: counted anew
        assert names_in_page(get(server.port, "/?page=99").body) == ["f4.txt", "f5.txt"]
        assert asked == [3, 99]
    finally:
        server.stop()
