"""Not one byte from outside ROOT, whatever the request target looks like.

The whole corpus runs against the default server on each loop; every copy
strategy x loop gets a smoke set and the symlink tests, which open and send files."""

from __future__ import annotations

import os
import re

import pytest

from tests.support.httpclient import raw_get
from tests.support.site import SECRET, Live, Site

# Each target tries to reach ../outside/secret.txt (or /etc/passwd) from ROOT.
TRAVERSALS: list[bytes] = [
    b"/../outside/secret.txt",  # plain dot-dot
    b"/../../../../etc/passwd",  # deep dot-dot
    b"/./../outside/secret.txt",  # dot then dot-dot
    b"/hello.txt/../../outside/secret.txt",  # dot-dot after a file
    b"/plain/../../outside/secret.txt",  # dot-dot after a folder
    b"/%2e%2e/outside/secret.txt",  # percent-encoded dots
    b"/%2E%2E/outside/secret.txt",  # upper-case percent-encoding
    b"/.%2e/outside/secret.txt",  # half encoded
    b"/%2e./outside/secret.txt",  # other half encoded
    b"/..%2foutside%2fsecret.txt",  # encoded slashes
    b"/..%2Foutside%2Fsecret.txt",  # encoded slashes, upper case
    b"/%2e%2e%2foutside%2fsecret.txt",  # everything encoded
    b"/%252e%252e/outside/secret.txt",  # double encoding (must stay literal)
    b"/%252e%252e%252foutside%252fsecret.txt",  # double-encoded slashes
    b"/..%5coutside%5csecret.txt",  # encoded backslashes
    b"/..%5Coutside%5Csecret.txt",  # encoded backslashes, upper case
    b"/..\\outside\\secret.txt",  # raw backslashes
    b"/\\..\\outside\\secret.txt",  # leading raw backslash
    b"/%c0%ae%c0%ae/outside/secret.txt",  # overlong UTF-8 dots
    b"/%c0%af..%c0%afoutside%c0%afsecret.txt",  # overlong UTF-8 slashes
    b"/%e0%80%ae%e0%80%ae/outside/secret.txt",  # 3-byte overlong dots
    b"/%c1%9c..%c1%9coutside",  # overlong backslash
    b"/..%00/outside/secret.txt",  # NUL after dots
    b"/hello.txt%00/../../outside/secret.txt",  # NUL truncation trick
    b"/%00../outside/secret.txt",  # leading NUL
    b"//../outside/secret.txt",  # double slash
    b"///..//..//outside//secret.txt",  # many slashes
    b"/.//..//outside/secret.txt",  # dot, slashes, dot-dot
    b"/etc/passwd",  # absolute path as URL path (inside root: missing)
    b"//etc/passwd",  # protocol-relative-looking path
    b"http://evil/../outside/secret.txt",  # absolute-form with dot-dot
    b"http://t/%2e%2e/outside/secret.txt",  # absolute-form, encoded
    b"/link-out.txt",  # symlink to a file outside
    b"/rel-out.txt",  # relative symlink to a file outside
    b"/dir-out/secret.txt",  # symlinked folder outside
    b"/dir-out/",  # index.html of a symlinked folder outside
    b"/dir-out/index.html",  # explicit index outside
    b"/dir-out",  # redirect must not reveal anything either
    b"/%64ir-out/secret.txt",  # encoded letter in a symlinked folder
    b"/dir-out/../dir-out/secret.txt",  # dot-dot inside a symlinked folder
    b"/plain/sub/../../../outside/secret.txt",  # deep dot-dot from a subfolder
    b"/..;/outside/secret.txt",  # Tomcat-style path parameter
    b"/..%3b/outside/secret.txt",  # encoded semicolon
    b"/.../outside/secret.txt",  # three dots (a name, not a parent)
    b"/..%20/outside/secret.txt",  # trailing space after dots
    b"/%20../outside/secret.txt",  # leading space before dots
    b"/..?/outside/secret.txt",  # query after dots
    b"/..#/../outside/secret.txt",  # fragment after dots
    b"/%2e%2e%5c%2e%2e%5coutside%5csecret.txt",  # mixed encoded backslash walk
    b"/..%252f..%252foutside%252fsecret.txt",  # double-encoded slash walk
    b"/\xc0\xae\xc0\xae/outside/secret.txt",  # raw overlong bytes
    b"/..\x00/outside/secret.txt",  # raw NUL in the target
    b"*",  # asterisk-form with GET
]


# Path resolution happens before any copy strategy runs, so the whole corpus
# runs against the default server; each strategy x loop gets this smoke set:
# dot-dot plain and encoded, a raw NUL (rejected by the parser), symlinks out.
SMOKE: list[bytes] = [
    b"/../outside/secret.txt",
    b"/%2e%2e%2foutside%2fsecret.txt",
    b"/..\x00/outside/secret.txt",
    b"/link-out.txt",
    b"/dir-out/secret.txt",
    b"/dir-out/",
]
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def test_corpus_is_big_enough() -> None:
    assert len(set(TRAVERSALS)) >= 50
    assert set(SMOKE) <= set(TRAVERSALS)


def assert_refused(port: int, target: bytes) -> None:
    """`target` gets a real HTTP answer that refuses it (a server that closes
    without a status line fails), and not one byte from outside ROOT."""
    received = raw_get(port, target)
    assert SECRET not in received, f"{target!r} leaked the secret"
    assert b"root:" not in received, f"{target!r} leaked /etc/passwd"
    answer = STATUS_LINE.match(received)
    assert answer is not None, f"{target!r} got no status line: {received[:80]!r}"
    status = int(answer[1])
    assert status in (301, 400, 403, 404), f"{target!r} gave {status}"


@pytest.mark.parametrize("target", TRAVERSALS, ids=range(len(TRAVERSALS)))
def test_no_byte_from_outside_root(default_live: Live, target: bytes) -> None:
    assert_refused(default_live.port, target)


@pytest.mark.parametrize("target", SMOKE, ids=[str(TRAVERSALS.index(t)) for t in SMOKE])
def test_no_byte_from_outside_root_smoke(live: Live, target: bytes) -> None:
    assert_refused(live.port, target)


def test_symlink_inside_root_is_served(live: Live) -> None:
    received = raw_get(live.port, b"/link-in.txt")
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"\r\n\r\nhello\n")


def test_symlink_swapped_in_after_start(live: Live, site: Site) -> None:
    name = f"swap-{live.strategy}-{live.loop}.txt"
    path = site.path(name)
    with open(path, "w") as f:
        f.write("inside\n")
    try:
        assert raw_get(live.port, f"/{name}".encode()).endswith(b"inside\n")
        os.unlink(path)
        os.symlink(os.path.join(site.outside, "secret.txt"), path)
        received = raw_get(live.port, f"/{name}".encode())
        assert SECRET not in received
        assert b" 404 " in received.split(b"\r\n", 1)[0]
    finally:
        os.unlink(path)
