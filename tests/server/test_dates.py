"""Dates at the edges: a file from past year 9999 (tmpfs allows it) and absurd
request dates get a normal answer, never a 500."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpclient import get
from tests.support.servers import start_server
from tests.support.site import LOOPS, Live
from zcserve.server.files import OpenedFile, Precondition, if_range_matches, preconditions
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


OVERFLOWING_DATES = [
    "Mon, 01 Jan 99999999999999999999999 00:00:00 GMT",  # a year past a C long
    "Mon, 01 Jan 2020 00:00:00 +99999999999999999999",  # an offset past a C int
    "Mon, 99999999999999999999 Jan 2020 00:00:00 GMT",  # a day past a C long
    "Mon, 01 Jan 2020 99999999999999999999:00:00 GMT",  # an hour past a C long
    "01 Jan 9999999999 00:00:00 GMT",  # a year past a C int
]
"""Dates whose numbers overflow inside the standard library's date parser."""
ABSURD_DATES = [
    "Mon, 01 Jan 99999 00:00:00 GMT",
    "Mon, 01 Jan 2020 00:00:00 -9999",
    "Fri, 31 Dec 9999 23:59:59 -2359",
    "x" * 4000,
    *OVERFLOWING_DATES,
]


@pytest.mark.parametrize("value", ABSURD_DATES)
def test_absurd_dates_in_conditionals_give_an_outcome(value: str) -> None:
    """Parsed or ignored, never an exception (which the server would turn into 500)."""
    file = OpenedFile(-1, "x.txt", 10, 1_700_000_000.5, 1_700_000_000_500_000_000)
    for name in ("if-modified-since", "if-unmodified-since"):
        assert isinstance(preconditions({name: value}, file), Precondition)
    assert isinstance(if_range_matches(value, file), bool)


@pytest.mark.parametrize("header", ["If-Modified-Since", "If-Unmodified-Since", "If-Range"])
def test_absurd_request_dates_never_give_500(default_live: Live, header: str) -> None:
    """Each absurd date in each date header: a normal answer, and the server serves on."""
    for value in ABSURD_DATES:
        response = get(default_live.port, "/hello.txt", {header: value, "Range": "bytes=0-1"})
        assert response.status in (200, 206, 304, 412), (
            f"{header}: {value[:60]} gave {response.status}"
        )
        if response.status in (200, 206):
            assert response.body == b"hello\n"[: 2 if response.status == 206 else None]


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
        for header in ("If-Modified-Since", "If-Range", "If-Unmodified-Since"):
            asked = get(server.port, "/future.txt", {header: "Mon, 01 Jan 99999 00:00:00 GMT"})
            assert asked.status == 200 and asked.body == b"later\n"
        # A real date before the file's: its If-Unmodified-Since is false.
        stale = get(server.port, "/future.txt", {"If-Unmodified-Since": http_date(0)})
        assert stale.status == 412
    finally:
        server.stop()
