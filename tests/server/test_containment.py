"""Containment is a path check, not a string prefix: a sibling of the root whose name
starts with the root's (`root2` beside `root`) is outside it. And `..` segments are
refused with 404 after percent-decoding, even where they would land inside the root.

The tree, in a folder of its own:

    root/                served
        b.txt            inside
        a/inner.txt      inside
        sib-file.txt  -> ../root2/secret.txt
        sib-dir       -> ../root2
        up            -> ..
        self          -> .
    root2/               the sibling: secret.txt and index.html hold the secret
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.httpclient import raw_get
from tests.support.resolving import resolve_status
from tests.support.servers import start_server
from tests.support.site import LOOPS
from zcserve.server.files import Kind, Root

SECRET = b"SIBLING-SECRET-BESIDE-THE-ROOT\n"
INSIDE = b"inside the root\n"
INNER = b"a file in a folder\n"


@dataclass(frozen=True)
class Tree:
    root: str
    sibling: str


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    base = tmp_path_factory.mktemp("prefix")
    root, sibling = base / "root", base / "root2"
    (root / "a").mkdir(parents=True)
    sibling.mkdir()
    (sibling / "secret.txt").write_bytes(SECRET)
    (sibling / "index.html").write_bytes(SECRET)
    (root / "b.txt").write_bytes(INSIDE)
    (root / "a" / "inner.txt").write_bytes(INNER)
    os.symlink("../root2/secret.txt", root / "sib-file.txt")
    os.symlink("../root2", root / "sib-dir")
    os.symlink("..", root / "up")
    os.symlink(".", root / "self")
    return Tree(str(root), str(sibling))


# The inside-root check, without sockets: root itself, a child, the sibling that shares
# the root's name as a prefix, the parent. ------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (b"/", Kind.LISTING),  # the root itself
        (b"/self/", Kind.LISTING),  # the root itself, through a symlink
        (b"/b.txt", Kind.FILE),  # a child
        (b"/self/b.txt", Kind.FILE),
        (b"/a/inner.txt", Kind.FILE),  # a grandchild
    ],
)
def test_inside_the_root_resolves(tree: Tree, path: bytes, kind: Kind) -> None:
    resolved = Root(tree.root, listing=True).resolve(path)
    assert resolved.kind is kind
    if resolved.file is not None:
        resolved.file.close()


@pytest.mark.parametrize(
    "path",
    [
        b"/sib-file.txt",  # a file of the sibling
        b"/sib-dir/secret.txt",
        b"/sib-dir/",  # the sibling itself (with an index.html)
        b"/sib-dir/index.html",
        b"/up/",  # the parent
        b"/up/root2/secret.txt",  # the sibling, through the parent
        b"/up/root2/",
        b"/self/sib-dir/secret.txt",
    ],
)
def test_outside_the_root_is_refused(tree: Tree, path: bytes) -> None:
    assert resolve_status(Root(tree.root, listing=True), path) == 404


def test_the_root_given_with_a_trailing_slash_is_the_same_root(tree: Tree) -> None:
    root = Root(tree.root + os.sep, listing=True)
    assert resolve_status(root, b"/b.txt") == 200
    assert resolve_status(root, b"/sib-file.txt") == 404


# `..` after decoding: refused even where it would stay inside the root. --------------

DOT_DOT_INSIDE = [
    b"/a/../b.txt",
    b"/a/%2e%2e/b.txt",
    b"/a/%2E%2e/b.txt",
    b"/a/.%2e/b.txt",
    b"/a/%2e./b.txt",
    b"/a%2f..%2fb.txt",
    b"/a%2F%2e%2e%2Fb.txt",
    b"/a/%2e%2e",
    b"/a/%2e%2e/",
    b"/a/%2e%2e/a/inner.txt",
    b"/self/a/%2e%2e/b.txt",
]
"""Each names a file inside the root, or the root itself, through a `..` that stays
inside it: only the `..` rule refuses them (the descriptor check lets them through)."""


@pytest.mark.parametrize("path", DOT_DOT_INSIDE)
def test_dot_dot_is_refused_before_anything_is_opened(tree: Tree, path: bytes) -> None:
    assert resolve_status(Root(tree.root, listing=True), path) == 404


# Over a live server, on both loops. -----------------------------------------------


@dataclass(frozen=True)
class Served:
    port: int
    loop: str


@pytest.fixture(scope="module", params=LOOPS)
def served(request: pytest.FixtureRequest, tree: Tree) -> Iterator[Served]:
    thread = start_server(root=tree.root, loop=request.param, listing=True)
    yield Served(thread.port, request.param)
    thread.stop()


def status_and_body(port: int, target: bytes) -> tuple[int, bytes]:
    """The status and everything after the head, until the server closes."""
    received = raw_get(port, target)
    assert SECRET not in received, f"{target!r} leaked the sibling's secret"
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), f"{target!r} got no status line: {received[:80]!r}"
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize(
    ("target", "body"),
    [(b"/b.txt", INSIDE), (b"/self/b.txt", INSIDE), (b"/a/inner.txt", INNER)],
)
def test_live_inside_the_root_is_served(served: Served, target: bytes, body: bytes) -> None:
    assert status_and_body(served.port, target) == (200, body)


@pytest.mark.parametrize(
    "target",
    [
        b"/sib-file.txt",
        b"/sib-dir/secret.txt",
        b"/sib-dir/",
        b"/sib-dir/index.html",
        b"/up/root2/secret.txt",
        b"/up/root2/",
        b"/up/",
    ],
)
def test_live_sibling_with_the_same_prefix_is_refused(served: Served, target: bytes) -> None:
    status, _ = status_and_body(served.port, target)  # never the secret's bytes
    assert status in (403, 404), f"{target!r} gave {status}"


@pytest.mark.parametrize("target", DOT_DOT_INSIDE)
def test_live_dot_dot_inside_the_root_is_404(served: Served, target: bytes) -> None:
    status, body = status_and_body(served.port, target)
    assert status == 404, f"{target!r} gave {status}"
    assert INSIDE not in body
