"""Paths held to what the file system says: a regular file named as a folder is
404, every file that is neither regular nor a folder is 403, a suffix range of an
empty file is the (empty) whole file, and the slash redirect keeps the query.

The tree, in a folder of its own:

    file.txt            a regular file
    link.txt         -> file.txt
    dir/index.html
    sock                a UNIX socket
    fifo                a FIFO
    null                a character device (1, 3), where mknod is allowed
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator

import pytest

from tests.support.httpclient import connect, get, one_connection, read_response
from tests.support.resolving import resolve_status
from tests.support.servers import start_server
from tests.support.site import LOOPS, SIZES, Live, Site
from zcserve.server.filecache import OpenFileCache
from zcserve.server.files import Root

FILE_BODY = b"a regular file\n"
INDEX_BODY = b"<p>dir</p>\n"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("strict")
    (root / "file.txt").write_bytes(FILE_BODY)
    os.symlink("file.txt", root / "link.txt")
    (root / "dir").mkdir()
    (root / "dir" / "index.html").write_bytes(INDEX_BODY)
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(root / "sock"))  # the socket file outlives the socket
    os.mkfifo(root / "fifo")
    try:
        os.mknod(root / "null", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:
        pass  # no CAP_MKNOD: the socket and the FIFO still cover special files
    return str(root)


@pytest.fixture(scope="module", params=LOOPS)
def tree_port(request: pytest.FixtureRequest, tree: str) -> Iterator[int]:
    server = start_server(root=tree, loop=request.param)
    yield server.port
    server.stop()


# A regular file named as a folder ----------------------------------------------------

FILE_AS_FOLDER = [
    b"/file.txt/",
    b"/file.txt/.",
    b"/file.txt/./",
    b"/file.txt//",
    b"/file.txt/./.",
    b"/file.txt%2f",  # an encoded slash, decoded once
    b"/file.txt%2F%2e",
    b"/file.txt/%2e",
    b"/file.txt/%2e/",
    b"/link.txt/",  # through a symlink
    b"/dir/index.html/",
]
"""Each names file.txt (or the index) with a trailing slash or "." segment: open()
would say ENOTDIR, and nginx answers 404."""

FOLDER_CONTROLS = [
    (b"/file.txt", 200),
    (b"/link.txt", 200),
    (b"/dir/", 200),  # the index
    (b"/dir/./", 200),
    (b"/dir", 301),
    (b"/dir/.", 301),
]
"""Folders keep their index and slash redirect; files without a slash are served."""


@pytest.mark.parametrize("path", FILE_AS_FOLDER)
def test_a_file_named_as_a_folder_is_404(tree: str, path: bytes) -> None:
    assert resolve_status(Root(tree), path) == 404


@pytest.mark.parametrize(("path", "status"), FOLDER_CONTROLS)
def test_folders_and_plain_file_names_are_unchanged(tree: str, path: bytes, status: int) -> None:
    assert resolve_status(Root(tree), path) == status


def test_the_open_file_cache_never_answers_for_the_slashed_name(tree: str) -> None:
    """The cached key "/file.txt" is not "/file.txt/": each slashed spelling goes
    through the full resolve, and nothing is kept for it."""
    cache = OpenFileCache(Root(tree), 8)
    assert resolve_status(cache, b"/file.txt") == 200
    assert len(cache) == 1
    for path in FILE_AS_FOLDER:
        assert resolve_status(cache, path) == 404, path
    assert resolve_status(cache, b"/file.txt") == 200
    assert len(cache) == 1, "an entry was kept for a slashed name"


def test_a_file_named_as_a_folder_is_404_over_sockets(tree_port: int) -> None:
    """After file.txt is in the server's open-file cache, every slashed spelling is
    404 on the same connection, which stays open, and file.txt is still served."""
    requests: list[tuple[str, str, dict[str, str]]] = [("GET", "/file.txt", {})]
    requests += [("GET", path.decode(), {}) for path in FILE_AS_FOLDER]
    requests += [("GET", "/file.txt", {}), ("GET", "/dir/", {})]
    responses = one_connection(tree_port, requests)
    assert [r.status for r in responses] == [200] + [404] * len(FILE_AS_FOLDER) + [200, 200]
    assert responses[0].body == responses[-2].body == FILE_BODY
    assert responses[-1].body == INDEX_BODY


# Special files ------------------------------------------------------------------------


def special_files(tree: str) -> list[str]:
    names = ["sock", "fifo", "null"]
    return [name for name in names if os.path.lexists(os.path.join(tree, name))]


def test_every_special_file_is_403(tree: str) -> None:
    names = special_files(tree)
    assert "sock" in names and "fifo" in names
    for name in names:
        assert resolve_status(Root(tree), f"/{name}".encode()) == 403, name


def test_every_special_file_is_403_over_sockets(tree_port: int, tree: str) -> None:
    """A UNIX socket used to be a 500 (open gives ENXIO)."""
    names = special_files(tree)
    requests: list[tuple[str, str, dict[str, str]]] = [("GET", f"/{name}", {}) for name in names]
    requests.append(("GET", "/file.txt", {}))
    responses = one_connection(tree_port, requests)
    assert [r.status for r in responses] == [403] * len(names) + [200]
    assert responses[-1].body == FILE_BODY


# A suffix range of an empty file -----------------------------------------------------


def test_a_suffix_range_of_an_empty_file_is_the_whole_empty_file(live: Live, site: Site) -> None:
    """RFC 9110 14.1.3: a suffix longer than the file means the whole file; no 206
    can say "zero bytes", so it is a 200, as nginx answers. First-byte ranges of an
    empty file are still 416. Each is followed by a body the strategy sends."""
    assert SIZES["empty.bin"] == 0
    requests = [
        ("GET", "/empty.bin", {"Range": "bytes=-5"}),
        ("GET", "/one.bin", {}),
        ("HEAD", "/empty.bin", {"Range": "bytes=-1"}),
        ("GET", "/empty.bin", {"Range": "bytes=0-"}),
        ("GET", "/empty.bin", {"Range": "bytes=-0"}),
        ("GET", "/one.bin", {}),
    ]
    responses = one_connection(live.port, requests)
    assert [r.status for r in responses] == [200, 200, 200, 416, 416, 200]
    for whole in (responses[0], responses[2]):
        assert whole.headers["content-length"] == "0" and whole.body == b""
        assert "content-range" not in whole.headers
    assert responses[1].body == responses[5].body == site.read("one.bin")


# The slash redirect keeps the query ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/dir", "/dir/"),
        ("/dir?", "/dir/"),  # an empty query
        ("/dir?a=1&b=%20c", "/dir/?a=1&b=%20c"),
        ("/dir?next=/x/y?z", "/dir/?next=/x/y?z"),
        ('/dir?q="<x>"', "/dir/?q=%22%3Cx%3E%22"),  # re-encoded, never echoed raw
        ("/d%69r?x", "/dir/?x"),
    ],
)
def test_the_slash_redirect_keeps_the_query(tree_port: int, target: str, location: str) -> None:
    with connect(tree_port) as sock, sock.makefile("rb") as reader:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        response = read_response(reader)
    assert response is not None and response.status == 301, target
    assert response.headers["location"] == location
    followed = get(tree_port, location)
    assert followed.status == 200 and followed.body == INDEX_BODY
