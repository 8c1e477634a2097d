"""Dates at the edges: a file from past year 9999 (tmpfs allows it) and absurd
request dates get a normal answer, never a 500."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LOOPS
from tests.httpclient import get
from tests.serverthread import start_server
from zcserve.server.http import LAST_HTTP_SECOND, http_date, parse_http_date


def test_http_date_clamps_to_four_year_digits() -> None:
    assert http_date(253402300800.0 * 4) == "Fri, 31 Dec 9999 23:59:59 GMT"
    assert http_date(-5.0) == "Thu, 01 Jan 1970 00:00:00 GMT"


@pytest.mark.parametrize(
    "value",
    [
        "Mon, 01 Jan 99999 00:00:00 GMT",  # five-digit year
        "Mon, 01 Jan 2020 00:00:00 -9999",  # offset beyond a day
        "Sat, 01 Jan 10000 00:00:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 -2359",  # past 9999 once the offset applies
        "x" * 4000,
    ],
)
def test_absurd_dates_parse_or_are_ignored(value: str) -> None:
    parsed = parse_http_date(value)
    assert parsed is None or isinstance(parsed, float)


@pytest.fixture
def far_future_root() -> Iterator[Path]:
    """A folder holding a file modified after year 9999: tmpfs keeps such times (ext4
    clamps them to 2446), so the folder lives on /dev/shm where there is one."""
    parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=parent) as folder:
        path = Path(folder) / "future.txt"
        path.write_bytes(b"later\n")
        far = 253402300800 * 2
        try:
            os.utime(path, (far, far))
        except (OverflowError, OSError):
            pytest.skip("this file system refuses mtimes past year 9999")
        if os.stat(path).st_mtime <= LAST_HTTP_SECOND:
            pytest.skip("this file system clamps mtimes before year 9999")
        yield Path(folder)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_file_from_the_far_future_is_served(far_future_root: Path, loop: str) -> None:
    server = start_server(root=str(far_future_root), loop=loop)
    try:
        response = get(server.port, "/future.txt")
        assert response.status == 200 and response.body == b"later\n"
        assert response.headers["last-modified"] == "Fri, 31 Dec 9999 23:59:59 GMT"
        for header in ("If-Modified-Since", "If-Range"):
            asked = get(server.port, "/future.txt", {header: "Mon, 01 Jan 99999 00:00:00 GMT"})
            assert asked.status == 200 and asked.body == b"later\n"
    finally:
        server.stop()
