"""`zcserve load -H/--header`, `-m/--method` and `--expect-status` against a live zcserve.

A benchmark of a file server sends Range, If-None-Match and Accept-Encoding under
load; HEAD responses carry a Content-Length but no body; which statuses count as
success is the user's to say. Bad input is one line and exit code 2. The last test
is the issue's acceptance check, run as a child process.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import start_server
from zcserve import cli
from zcserve.errors import ConfigError
from zcserve.load import http as loadhttp
from zcserve.load.http import (
    ResponseReader,
    parse_header,
    parse_statuses,
    parse_target,
    unexpected_statuses,
)
from zcserve.load.run import LoadOptions, run_load
from zcserve.load.stats import LoadResult

BODY = bytes(range(256)) * 16  # 4 KiB
REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 60.0
"""Seconds the acceptance check's child may take before the test fails (and kills it)."""


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A zcserve on 127.0.0.1 port 0 (in this process, on its own thread) serving 4k.bin."""
    root = tmp_path_factory.mktemp("headers-root")
    (root / "4k.bin").write_bytes(BODY)
    thread = start_server(root=str(root))
    yield f"http://127.0.0.1:{thread.port}"
    thread.stop()


def load(url: str, **options: Any) -> LoadResult:
    options.setdefault("processes", 1)
    options.setdefault("connections", 2)
    return run_load(LoadOptions(urls=(url,), **options))


def etag_of(url: str) -> str:
    target = parse_target(url)
    conn = http.client.HTTPConnection(target.host, target.port, timeout=10)
    try:
        conn.request("HEAD", target.target)
        response = conn.getresponse()
        response.read()
        etag = response.getheader("ETag")
    finally:
        conn.close()
    assert etag, "zcserve sends an ETag"
    return etag


# headers under load -----------------------------------------------------------------------


def test_a_range_header_gets_206_and_its_100_bytes(base_url: str) -> None:
    result = load(f"{base_url}/4k.bin", requests=40, headers=("Range: bytes=0-99",))
    assert result.requests == 40 and result.error_total == 0, result.errors
    assert result.status == {206: 40}
    assert result.body_bytes == 40 * 100


def test_a_range_header_with_verify_compares_the_ranges(base_url: str) -> None:
    # The reference body is fetched with the same headers: the 100 bytes, not the file.
    result = load(f"{base_url}/4k.bin", requests=20, headers=("Range: bytes=100-199",), verify=True)
    assert result.status == {206: 20} and result.error_total == 0, result.errors


def test_a_304_is_a_success_unless_only_2xx_is_expected(base_url: str) -> None:
    url = f"{base_url}/4k.bin"
    headers = (f"If-None-Match: {etag_of(url)}",)
    plain = load(url, requests=30, headers=headers)
    assert plain.status == {304: 30} and plain.body_bytes == 0
    assert plain.error_total == 0, f"the default expects 2xx and 3xx: {plain.errors}"
    strict = load(url, requests=30, headers=headers, expect_status=tuple(range(200, 300)))
    assert strict.status == {304: 30} and strict.errors == {"status_304": 30}


def test_an_expected_status_list_makes_200_an_error(base_url: str) -> None:
    result = load(f"{base_url}/4k.bin", requests=10, expect_status=(206,))
    assert result.status == {200: 10} and result.errors == {"status_200": 10}


def test_accept_encoding_is_sent_and_the_file_still_counts(base_url: str) -> None:
    result = load(f"{base_url}/4k.bin", requests=20, headers=("Accept-Encoding: gzip, br",))
    assert result.status == {200: 20} and result.body_bytes == 20 * len(BODY)


def test_given_headers_replace_the_defaults_and_keep_their_order() -> None:
    target = parse_target("http://127.0.0.1:8080/a")
    fields = (
        parse_header("Accept-Encoding: gzip"),
        parse_header("user-agent:  bench/1\t"),
        parse_header("X-Empty:"),
    )
    assert target.request("HEAD", fields) == (
        b"HEAD /a HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip\r\nuser-agent: bench/1\r\nX-Empty: \r\n\r\n"
    )
    assert target.request() == parse_target("http://127.0.0.1:8080/a").request("GET", ())


# HEAD -------------------------------------------------------------------------------------


def test_head_responses_end_with_their_head_on_keep_alive_connections(base_url: str) -> None:
    # If the reader waited for the 4096 bytes the Content-Length announces, every
    # request would time out (timeout 2 s) instead of taking a fraction of a millisecond.
    result = load(f"{base_url}/4k.bin", requests=60, method="HEAD", timeout=2.0)
    assert result.requests == 60 and result.error_total == 0, result.errors
    assert result.status == {200: 60} and result.body_bytes == 0
    assert result.header_bytes > 0
    assert result.latency_ms()["max"] < 1000, result.latency_ms()


def test_head_responses_back_to_back_on_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadhttp, "_KNOWN_HEADS", {})
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n"
    reader = ResponseReader(no_body=True)
    wire = head + head
    stop = reader.receive(wire, len(wire))
    assert reader.done and stop == len(head) and reader.body_bytes == 0
    assert reader.head_bytes == len(head) and reader.keep_alive
    reader.reset()
    assert reader.receive(wire, len(wire), stop) == len(wire) and reader.done
    # The same head, remembered from the HEAD reader, still frames a GET's body.
    get = ResponseReader()
    assert not get.feed(head) and get.feed(BODY) and get.body_bytes == len(BODY)


# bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-H", "Range bytes=0-99"], "no colon"),
        (["-H", "X-A: b\r\nX-Smuggled: c"], "'\\r' in the value"),  # CR LF: a second header
        (["-H", "X-A: b\nc"], "'\\n' in the value"),  # a bare LF
        (["-H", "X-A: b\x00"], "'\\x00' in the value"),
        (["-H", "Bad Name: x"], "is not a header name"),  # a space in the name
        (["-H", ": x"], "is not a header name"),  # no name at all
        (["-H", "Content-Length: 5"], "sends no request body"),
        (["-H", "Transfer-Encoding: chunked"], "sends no request body"),
        (["-m", "POST"], "invalid choice: 'POST'"),
        (["--expect-status", "abc"], "bad status 'abc'"),
        (["--expect-status", "99"], "bad status '99'"),
        (["--expect-status", "600"], "bad status '600'"),
        (["--expect-status", "200,,206"], "bad status ''"),
        (["--expect-status", ""], "bad status ''"),
        (["--expect-status", "6xx"], "bad status '6xx'"),
    ],
)
def test_bad_headers_methods_and_statuses_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 1: nothing listens there, and nothing is tried before the flags are checked.
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(cli.main(["load", "http://127.0.0.1:1/", "-n", "1", *argv]))
    printed = capsys.readouterr()
    assert exited.value.code == 2
    assert message in printed.err and printed.err.count("\n") == 1, printed.err
    assert "Traceback" not in printed.err and "cannot connect" not in printed.err


@pytest.mark.parametrize(
    "flag", [["-H", "Range: bytes=0-1"], ["-m", "HEAD"], ["--expect-status", "200"]]
)
def test_raw_refuses_the_http_flags(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["load", "--raw", "127.0.0.1:1", *flag]) == 2
    printed = capsys.readouterr()
    assert printed.err.count("\n") == 1 and "--raw sends no HTTP request" in printed.err


def test_the_api_refuses_what_the_command_does() -> None:
    url = ("http://127.0.0.1:1/",)
    with pytest.raises(ConfigError, match="unknown method 'PUT'"):
        LoadOptions(urls=url, method="PUT")
    with pytest.raises(ConfigError, match="not one string"):
        LoadOptions(urls=url, headers="Range: bytes=0-1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bad expected status 99"):
        LoadOptions(urls=url, expect_status=(99, 200))
    with pytest.raises(ConfigError, match="empty"):
        LoadOptions(urls=url, expect_status=())


def test_status_lists_and_classes() -> None:
    assert parse_statuses("304, 200,206,200") == (200, 206, 304)
    assert parse_statuses("2xx,304") == (*range(200, 300), 304)
    table = unexpected_statuses((200, 304))
    assert (table[200], table[304], table[206], table[404]) == (0, 0, 1, 1)
    default = unexpected_statuses(None)
    successes = [status for status in range(1000) if not default[status]]
    assert successes == list(range(200, 400)), "2xx and 3xx"


# the acceptance check of issue 14 ---------------------------------------------------------


def test_acceptance_range_40_json_to_stdout_exits_0(base_url: str) -> None:
    # As a user types it: the default processes (one per CPU), JSON alone on stdout.
    argv = ["-m", "zcserve", "load", "-H", "Range: bytes=0-99", "-n", "40", "--json", "-"]
    done = subprocess.run(
        [sys.executable, *argv, f"{base_url}/4k.bin"],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["requests"] == 40 and data["status"] == {"206": 40}, data["status"]
    assert data["body_bytes"] == 40 * 100 and data["errors"] == {}
    assert "status      206: 40" in done.stderr, "the human report goes to stderr"
