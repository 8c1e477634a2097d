"""The open-file cache: shared descriptors, revalidation by stat, idle closing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zcserve.errors import HttpError
from zcserve.server.filecache import OpenFileCache
from zcserve.server.files import Kind, OpenedFile, Root


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def lend(cache: OpenFileCache, path: bytes) -> OpenedFile:
    resolved = cache.resolve(path)
    assert resolved.kind is Kind.FILE and resolved.file is not None
    return resolved.file


@pytest.fixture
def root(tmp_path: Path) -> Root:
    (tmp_path / "a.txt").write_bytes(b"first")
    (tmp_path / "b.txt").write_bytes(b"bee")
    return Root(str(tmp_path))


def test_hits_share_one_descriptor_until_the_file_changes(root: Root, tmp_path: Path) -> None:
    cache = OpenFileCache(root, 8)
    first, second = lend(cache, b"/a.txt"), lend(cache, b"/a.txt")
    assert first.fd == second.fd and len(cache) == 1
    shared = first.fd
    old_inode = os.fstat(shared).st_ino
    first.close()
    assert is_open(shared), "another response still uses it"
    second.close()
    assert is_open(shared), "the cache keeps it for the next request"
    replacement = tmp_path / "new.txt"
    replacement.write_bytes(b"second!")
    os.replace(replacement, tmp_path / "a.txt")
    fresh = lend(cache, b"/a.txt")
    assert fresh.size == 7 and len(cache) == 1
    assert os.fstat(fresh.fd).st_ino != old_inode, "the replaced file was reopened"
    assert os.pread(fresh.fd, 10, 0) == b"second!"
    fresh.close()


def test_chmod_forces_a_fresh_resolve(root: Root, tmp_path: Path) -> None:
    """Permissions, owners and renames change ctime: the entry is dropped and the
    path resolved again, root check and permission check included."""
    cache = OpenFileCache(root, 8)
    lend(cache, b"/a.txt").close()
    entry = cache._entries[b"/a.txt"]
    os.chmod(tmp_path / "a.txt", 0o600)
    lend(cache, b"/a.txt").close()
    assert cache._entries[b"/a.txt"] is not entry


def test_eviction_waits_for_the_last_user(root: Root, tmp_path: Path) -> None:
    cache = OpenFileCache(root, 8)
    lent = lend(cache, b"/a.txt")
    (tmp_path / "a.txt").unlink()
    with pytest.raises(HttpError) as caught:
        cache.resolve(b"/a.txt")
    assert caught.value.status == 404 and len(cache) == 0
    assert is_open(lent.fd) and os.pread(lent.fd, 10, 0) == b"first"
    fd = lent.fd
    lent.close()
    assert not is_open(fd)


def test_capacity_and_idle_sweep(root: Root) -> None:
    cache = OpenFileCache(root, 1, inactive=0.0)
    a = lend(cache, b"/a.txt")
    a_fd = a.fd
    a.close()
    b = lend(cache, b"/b.txt")
    assert len(cache) == 1 and not is_open(a_fd), "the oldest entry made room"
    b_fd = b.fd
    b.close()
    cache.sweep()
    assert len(cache) == 0 and not is_open(b_fd)


def test_disabled_cache_opens_every_time(root: Root) -> None:
    cache = OpenFileCache(root, 0)
    a = lend(cache, b"/a.txt")
    fd = a.fd
    a.close()
    assert len(cache) == 0 and not is_open(fd)
