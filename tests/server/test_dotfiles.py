"""Dot-names (`.env`, `.git/`) are 404 and left out of listings unless `--hidden`;
`/.well-known/` is served either way. Listings link only what the server serves.

The tree, in a folder of its own:

    .env                       .git/config            .d/index.html
    .well-known/security.txt   .well-known/.secret    normal.txt
    sub/ok.txt                 sub/.hidden            sub/.well-known/x.txt
    ...                        (a name of three dots)
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpclient import get, one_connection
from tests.support.servers import start_child, start_server
from tests.support.site import LOOPS
from zcserve.errors import HttpError
from zcserve.server.filecache import OpenFileCache
from zcserve.server.files import Root
from zcserve.server.listing import ListingQuery


def listing_page(root: Root, url_path: bytes) -> bytes:
    """The HTML listing of `url_path` as the server's thread renders it."""
    return root.render_listing(root.resolve(url_path), ListingQuery())[0]


FILES = {
    ".env": b"SECRET_KEY=dotenv\n",
    ".git/config": b"[core]\n",
    ".d/index.html": b"<p>dot dir</p>\n",
    ".well-known/security.txt": b"Contact: mailto:x@example.com\n",
    ".well-known/.secret": b"hidden under well-known\n",
    "normal.txt": b"normal\n",
    "sub/ok.txt": b"ok\n",
    "sub/.hidden": b"hidden in sub\n",
    "sub/.well-known/x.txt": b"well-known is a top-level name only\n",
    "...": b"three dots\n",
}

HIDDEN_TARGETS = [
    "/.env",
    "/%2eenv",  # percent-encoded dot
    "/%2Eenv",
    "/.git/config",
    "/%2egit/config",
    "/.git%2fconfig",  # encoded slash
    "/.git/",
    "/.git",  # a folder: no slash redirect either
    "/.d/",
    "/.d/index.html",
    "/sub/.hidden",
    "/sub/%2ehidden",
    "/./sub/.hidden",
    "/.well-known/.secret",  # a dot-name under .well-known is still one
    "/sub/.well-known/x.txt",  # .well-known only at the top (RFC 8615)
    "/...",
]
"""Each reaches a dot-name: 404 by default."""

SERVED_TARGETS = {
    "/.well-known/security.txt": ".well-known/security.txt",
    "/%2ewell-known/security.txt": ".well-known/security.txt",
    "/normal.txt": "normal.txt",
    "/sub/ok.txt": "sub/ok.txt",
}
"""Served by default: the target and the file it names."""


@pytest.fixture(scope="module")
def dotted(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("dotted")
    for name, body in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return str(root)


@pytest.fixture(scope="module", params=LOOPS)
def dotted_port(request: pytest.FixtureRequest, dotted: str) -> Iterator[int]:
    server = start_server(root=dotted, loop=request.param, listing=True)
    yield server.port
    server.stop()


def status_of(root: Root | OpenFileCache, path: str) -> int:
    try:
        resolved = root.resolve(path.encode())
    except HttpError as error:
        return error.status
    if resolved.file is not None:
        resolved.file.close()
    return 200


@pytest.mark.parametrize("target", HIDDEN_TARGETS)
def test_dot_names_are_404_by_default(dotted: str, target: str) -> None:
    assert status_of(Root(dotted, listing=True), target) == 404
    assert status_of(Root(dotted, listing=True, hidden=True), target) in (200, 301)


@pytest.mark.parametrize("target", list(SERVED_TARGETS))
def test_well_known_and_plain_names_are_served(dotted: str, target: str) -> None:
    assert status_of(Root(dotted), target) == 200


def test_dot_names_are_404_over_sockets(dotted_port: int) -> None:
    """Every hidden target, each asked twice (the second time the open-file cache
    has seen it), then every served one, on one connection."""
    requests: list[tuple[str, str, dict[str, str]]] = [
        ("GET", target, {}) for target in HIDDEN_TARGETS for _ in range(2)
    ]
    requests += [("GET", target, {}) for target in SERVED_TARGETS]
    responses = one_connection(dotted_port, requests)
    hidden, served = responses[: 2 * len(HIDDEN_TARGETS)], responses[2 * len(HIDDEN_TARGETS) :]
    for target, response in zip([t for t in HIDDEN_TARGETS for _ in range(2)], hidden, strict=True):
        assert response.status == 404, target
        assert b"SECRET" not in response.body and b"hidden" not in response.body, target
    for (target, name), response in zip(SERVED_TARGETS.items(), served, strict=True):
        assert response.status == 200 and response.body == FILES[name], target


def test_the_open_file_cache_keeps_no_dot_name(dotted: str) -> None:
    cache = OpenFileCache(Root(dotted), 8)
    for target in HIDDEN_TARGETS:
        assert status_of(cache, target) == 404, target
    assert len(cache) == 0


def listed_names(page: bytes) -> set[str]:
    return set(re.findall(r'<td><a href="[^"]*">([^<]*)</a>', page.decode()))


def test_listings_leave_dot_names_out(dotted_port: int) -> None:
    top = get(dotted_port, "/")
    assert top.status == 200
    assert listed_names(top.body) == {".well-known/", "normal.txt", "sub/"}
    sub = get(dotted_port, "/sub/")
    assert listed_names(sub.body) == {"../", "ok.txt"}
    well_known = get(dotted_port, "/.well-known/")
    assert listed_names(well_known.body) == {"../", "security.txt"}


def test_hidden_root_lists_dot_names(dotted: str) -> None:
    page = listing_page(Root(dotted, listing=True, hidden=True), b"/")
    assert listed_names(page) == {
        ".d/",
        ".git/",
        ".well-known/",
        "sub/",
        ".env",
        "...",
        "normal.txt",
    }
    sub = listing_page(Root(dotted, listing=True, hidden=True), b"/sub/")
    assert listed_names(sub) == {"../", ".well-known/", ".hidden", "ok.txt"}


@pytest.mark.parametrize("loop", LOOPS)
def test_hidden_serves_and_lists_dot_names(dotted: str, loop: str) -> None:
    server = start_server(root=dotted, loop=loop, listing=True, hidden=True)
    try:
        for target in ("/.env", "/%2eenv", "/.git/config", "/sub/.hidden"):
            response = get(server.port, target)
            assert response.status == 200, target
        assert ".env" in listed_names(get(server.port, "/").body)
    finally:
        server.stop()


def test_cli_starts_with_hidden(dotted: str) -> None:
    with start_child(dotted, "--hidden") as child:
        assert get(child.port, "/normal.txt").body == FILES["normal.txt"]
        assert get(child.port, "/.well-known/security.txt").status == 200
    assert child.proc.returncode == 0 and "Traceback" not in child.log()


# Listings link only what the server serves -------------------------------------------


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder of names the server refuses, beside names it serves."""
    root = tmp_path_factory.mktemp("odd")
    raw = os.fsencode(root)
    for name in (b"\xff\xfe latin-1.txt", b"back\\slash.txt", b".dot.txt", b"fine.txt"):
        with open(os.path.join(raw, name), "wb") as f:
            f.write(b"x\n")
    os.mkdir(os.path.join(raw, b"\xe9t\xe9"))  # a latin-1 folder name
    (Path(root) / "caf\u00e9 & <b>.txt").write_text("utf-8 name\n")
    (Path(root) / "folder").mkdir()
    (Path(root) / "folder" / "inner.txt").write_text("inner\n")
    os.mkfifo(root / "fifo")
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(root / "sock"))
    os.symlink("no-such-target", root / "dangling")
    os.symlink("folder", root / "folder-link")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("not served\n")
    os.symlink(outside, root / "out-folder")  # the server answers 404: not listed
    os.symlink(outside / "secret.txt", root / "out-file.txt")
    return str(root)


@pytest.mark.parametrize("loop", LOOPS)
def test_every_listed_link_is_served(odd_names: str, loop: str) -> None:
    """Names that are not UTF-8, hold a backslash, start with a dot, are not a file
    or folder (FIFO, socket, dangling symlink), or are symlinks out of the root are
    left out of the listing; every link that remains answers 200 (or a slash
    redirect to a 200), and each one left out is refused."""
    server = start_server(root=odd_names, loop=loop, listing=True)
    try:
        page = get(server.port, "/")
        assert page.status == 200
        shown = listed_names(page.body)
        assert shown == {"caf\u00e9 &amp; &lt;b&gt;.txt", "fine.txt", "folder/", "folder-link/"}
        hrefs = re.findall(r'<td><a href="([^"]*)">', page.body.decode())
        assert len(hrefs) == len(shown)
        for href in hrefs:
            response = get(server.port, "/" + href)
            assert response.status == 200, href
        for refused in ("/out-folder/", "/out-file.txt", "/dangling"):
            assert get(server.port, refused).status in (403, 404), refused
    finally:
        server.stop()
