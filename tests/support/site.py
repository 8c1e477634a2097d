"""The generated site most server tests serve: files of telling sizes, a sparse file
past 4 GiB, links in and out of the root, a FIFO, and a secret outside the root;
and what a test knows of a server started on it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zcserve.demo import write_file

if TYPE_CHECKING:
    from tests.support.servers import ServerThread

LOOPS = ("uvloop", "asyncio")
DEFAULT_STRATEGY = "auto"
SECRET = b"TOP-SECRET-OUTSIDE-ROOT\n"
SPARSE_SIZE = 5 * 1024**3 + 12345  # past 4 GiB: offsets need 64 bits
SPARSE_TAIL = b"the end of a sparse file past 4 GiB\n"

SIZES = {"empty.bin": 0, "one.bin": 1, "64k1.bin": 64 * 1024 + 1, "big.bin": 24 * 1024 * 1024}


@dataclass(frozen=True)
class Site:
    """A served root, where its files are, and their hashes."""

    root: str
    outside: str
    hashes: dict[str, str]

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def read(self, name: str) -> bytes:
        with open(self.path(name), "rb") as f:
            return f.read()


def make_site(base: Path) -> Site:
    """Write the site under `base`: base/root is served, base/outside is not."""
    root = base / "root"
    outside = base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "index.html").write_bytes(SECRET)
    hashes = {}
    for seed, (name, size) in enumerate(SIZES.items()):
        write_file(str(root / name), size, seed=seed)
        hashes[name] = hashlib.sha256((root / name).read_bytes()).hexdigest()
    (root / "hello.txt").write_text("hello\n")
    (root / "page.html").write_text("<p>page</p>\n")
    (root / "with index").mkdir()
    (root / "with index" / "index.html").write_text("<p>index</p>\n")
    (root / "plain").mkdir()
    (root / "plain" / "a&b<c>.txt").write_text("escaped\n")
    (root / "plain" / "sub").mkdir()
    with open(root / "sparse.bin", "wb") as sparse:
        sparse.truncate(SPARSE_SIZE)
        sparse.seek(SPARSE_SIZE - len(SPARSE_TAIL))
        sparse.write(SPARSE_TAIL)
    os.symlink(outside / "secret.txt", root / "link-out.txt")
    os.symlink(outside, root / "dir-out")
    os.symlink(root / "hello.txt", root / "link-in.txt")
    os.symlink("../outside/secret.txt", root / "rel-out.txt")
    os.mkfifo(root / "fifo")
    return Site(str(root), str(outside), hashes)


@dataclass(frozen=True)
class Live:
    """A running server and what it was started with."""

    port: int
    strategy: str
    loop: str
    thread: ServerThread
