"""`zcserve load`: every figure checked against a server that counts what it sent."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.results import load_result
from tests.support.scripted import Behaviour, ScriptedServer, refused_port
from tests.support.servers import start_child
from zcserve import cli
from zcserve.errors import ConfigError
from zcserve.load import plan as loadplan
from zcserve.load.http import ResponseError, ResponseReader, parse_target
from zcserve.load.plan import split_evenly
from zcserve.load.raw import RawOptions, run_raw
from zcserve.load.run import LoadOptions, run_load, run_load_async
from zcserve.load.stats import LoadResult, merge_histograms, new_histogram
from zcserve.server.strategies import STRATEGY_NAMES

BODY = bytes(range(256)) * 16  # 4 KiB


def load(url: str, **options: Any) -> LoadResult:
    """One in-process run unless the test says otherwise."""
    options.setdefault("processes", 1)
    options.setdefault("connections", 2)
    return run_load(LoadOptions(urls=(url,), **options))


# the response reader, on bytes ---------------------------------------------------------


def test_reader_counts_a_content_length_body_fed_in_pieces() -> None:
    reader = ResponseReader(hash_bodies=True)
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + BODY
    assert not reader.feed(wire[:10])
    assert not reader.feed(wire[10:100])
    assert reader.feed(wire[100:])
    assert (reader.status, reader.body_bytes, reader.keep_alive) == (200, 4096, True)
    assert reader.digest() == hashlib.sha256(BODY).digest()


def test_reader_counts_a_chunked_body() -> None:
    reader = ResponseReader()
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert reader.feed(wire)
    assert reader.body_bytes == 5


def test_reader_reads_responses_one_after_another() -> None:
    reader = ResponseReader()
    for status in (200, 404, 200):
        assert reader.feed(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode())
        assert reader.status == status
        reader.reset()


def test_bytes_after_the_body_are_a_long_body() -> None:
    reader = ResponseReader()
    with pytest.raises(ResponseError) as caught:
        reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    assert caught.value.kind == "long_body"
    assert reader.done, "the response itself completed"


@pytest.mark.parametrize(
    ("wire", "kind"),
    [
        (b"", "reset"),  # closed before any byte of the response
        (b"HTTP/1.1 200 OK\r\nContent-Le", "reset"),  # closed inside the head
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", "short_body"),  # inside the body
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc", "short_body"),
        (b"HTTP/1.1 200 OK\r\n\r\nabc", None),  # no length: the close ends the body
    ],
)
def test_end_of_stream_mid_response(wire: bytes, kind: str | None) -> None:
    reader = ResponseReader()
    reader.feed(wire)
    assert reader.eof_error() == kind


def test_garbage_is_a_bad_response() -> None:
    with pytest.raises(ResponseError) as caught:
        ResponseReader().feed(b"SSH-2.0-OpenSSH\r\n")
    assert caught.value.kind == "bad_response"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gopher://127.0.0.1/", "or https://host"),
        ("ftp://127.0.0.1/", "bad URL"),
        ("127.0.0.1:8000/x", "bad URL"),  # no scheme
        ("http:///path", "bad URL"),  # no host
        ("http://127.0.0.1:99999/", "bad URL"),  # port out of range
        ("http://127.0.0.1:0/", "port 0"),
        ("http://user:pw@127.0.0.1/", "credentials"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_target(url)


def test_a_url_becomes_one_request() -> None:
    target = parse_target("http://example.test:8080/a/b?c=1")
    assert target.request().startswith(b"GET /a/b?c=1 HTTP/1.1\r\nHost: example.test:8080\r\n")
    assert parse_target("http://[::1]/").host_header == "[::1]"


# latency and counts ---------------------------------------------------------------------


@pytest.mark.serial
def test_latency_of_a_server_that_takes_20ms() -> None:
    # Every latency is at least the server's 20 ms (less a millisecond: uvloop timers
    # round); the upper bound only has to tell "about 20 ms" from a wrong clock or unit.
    with ScriptedServer(body=BODY, delay=0.020) as server:
        result = load(server.url, connections=4, requests=200)
    latency = result.latency_ms()
    assert latency["min"] >= 19.0, latency
    assert 19.0 <= latency["p50"] < 100.0, latency
    assert result.requests == server.counts.requests == 200 and result.error_total == 0
    # 200 requests of at least 20 ms each, 4 at a time, take at least 1 s
    assert result.duration >= 200 / 4 * 0.019, result.duration


def test_counts_match_the_server_with_a_request_count() -> None:
    with ScriptedServer(body=BODY) as server:
        result = load(server.url, connections=4, requests=1000)
    assert result.requests == server.counts.requests == 1000
    assert result.body_bytes == server.counts.body_bytes == 1000 * len(BODY)
    assert result.histogram and result.decode_histogram().get_total_count() == 1000
    assert result.failed == 0 and result.error_total == 0


@pytest.mark.serial
def test_counts_match_the_server_with_a_duration() -> None:
    progress: list[tuple[int, int]] = []
    with ScriptedServer(body=BODY) as server:
        options = LoadOptions(urls=(server.url,), connections=4, duration=1.0, processes=1)
        result = run_load(options, on_progress=lambda *figures: progress.append(figures))
    # Progress comes at the start and every quarter second after; the run lasts 1 s.
    assert len(progress) >= 2 and progress[-1][0] > 0, progress
    done = [requests for requests, _ in progress]
    assert done == sorted(done), "the counts only grow"
    assert result.requests == server.counts.requests > 0
    assert result.body_bytes == server.counts.body_bytes
    # From the start to the last response, which comes after the 1 s deadline; the
    # upper bound only has to tell "stopped at the deadline" from "ran on".
    assert 1.0 <= result.duration < 5.0, result.duration


def test_chunked_bodies_are_counted() -> None:
    with ScriptedServer(Behaviour.CHUNKED, body=BODY) as server:
        result = load(server.url, requests=50)
    assert result.requests == 50 and result.error_total == 0
    assert result.body_bytes == server.counts.body_bytes == 50 * len(BODY)


def test_urls_are_spread_round_robin() -> None:
    with ScriptedServer(body=BODY) as one, ScriptedServer(body=BODY[:100]) as two:
        options = LoadOptions(urls=(one.url, two.url), connections=2, requests=100, processes=1)
        result = run_load(options)
    assert one.counts.requests + two.counts.requests == result.requests == 100
    assert one.counts.requests > 0 and two.counts.requests > 0


@pytest.mark.serial
def test_warmup_is_not_counted() -> None:
    with ScriptedServer(body=BODY) as server:
        result = load(server.url, requests=100, warmup=0.3)
    assert result.requests == 100
    assert server.counts.requests > 100, "the warm-up sent requests too"


async def test_the_async_entry_point_runs_in_the_callers_loop() -> None:
    with ScriptedServer(body=BODY) as server:
        options = LoadOptions(urls=(server.url,), connections=2, requests=20, processes=1)
        result = await run_load_async(options)
    assert result.requests == 20


@pytest.mark.parametrize("processes", [1, 2])
async def test_ctrl_c_ends_the_run_early_and_still_reports(processes: int) -> None:
    started = asyncio.Event()

    def on_progress(requests: int, errors: int) -> None:
        if requests > 0:
            started.set()

    with ScriptedServer(body=BODY) as server:
        options = LoadOptions(urls=(server.url,), connections=2, duration=30.0, processes=processes)
        run = asyncio.create_task(run_load_async(options, on_progress=on_progress))
        await asyncio.wait_for(started.wait(), 10)
        os.kill(os.getpid(), signal.SIGINT)
        result = await asyncio.wait_for(run, 10)
    assert 0 < result.duration < 10 and result.requests > 0
    assert result.requests == server.counts.requests and result.error_total == 0


# errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "kinds"),
    [
        (Behaviour.CLOSE_MID_BODY, {"short_body", "reset"}),
        (Behaviour.HANG_UP, {"reset"}),
    ],
)
def test_requests_without_a_full_response_fail(behaviour: Behaviour, kinds: set[str]) -> None:
    with ScriptedServer(behaviour, body=BODY) as server:
        result = load(server.url, requests=20)
    assert result.failed == 20 and result.requests == 0
    assert set(result.errors) <= kinds and result.error_total == 20, result.errors
    assert server.counts.connections >= 20, "each error reconnects"


def test_status_500_is_a_request_and_an_error() -> None:
    with ScriptedServer(Behaviour.STATUS_500, body=BODY) as server:
        result = load(server.url, requests=30)
    assert result.requests == 30 and result.failed == 0
    assert result.errors == {"status_500": 30}


def test_bytes_past_content_length_are_long_body() -> None:
    with ScriptedServer(Behaviour.LONG_BODY, body=BODY) as server:
        result = load(server.url, requests=10, connections=1)
    assert result.errors == {"long_body": 10}
    assert result.requests == 10


def test_a_silent_server_times_out() -> None:
    with ScriptedServer(Behaviour.SILENT) as server:
        result = load(server.url, requests=4, timeout=0.2)
    assert result.errors == {"timeout": 4} and result.failed == 4


def test_a_refused_port_fails_before_the_run() -> None:
    with refused_port() as port, pytest.raises(ConfigError) as caught:
        load(f"http://127.0.0.1:{port}/", requests=1)
    assert str(caught.value) == f"cannot connect to 127.0.0.1:{port}: Connection refused"


# open model ----------------------------------------------------------------------------


@pytest.mark.serial
def test_the_asked_rate_is_achieved() -> None:
    # 500/s on 8 connections: one slot every 2 ms, at 0, 2, ..., 1998 ms, so the
    # 1.999 s window holds exactly 1000 slots (no slot near its edge), however late
    # they are sent. No slot is sent before its time (less a millisecond: uvloop
    # timers round), so the last goes at 1.997 s or later.
    with ScriptedServer(body=BODY) as server:
        result = load(server.url, connections=8, duration=1.999, rate=500.0)
    assert result.model == "open" and result.target_rate == 500.0
    assert result.requests == server.counts.requests == 1000 and result.error_total == 0
    assert result.duration >= 1.997, result.duration
    assert result.achieved_rate <= 1000 / 1.997, result.achieved_rate
    # lower bound generous: a loaded machine answers late, never early
    assert result.achieved_rate > 250.0, result.achieved_rate


@pytest.mark.serial
def test_the_open_model_measures_exactly_the_slots_after_the_warmup() -> None:
    # Slots every 5 ms in all; the window [0.3125 s, 1.3125 s) holds exactly 200.
    with ScriptedServer(body=BODY) as server:
        result = load(server.url, connections=4, duration=1.0, rate=200.0, warmup=0.3125)
    assert result.requests == 200 and result.error_total == 0
    assert server.counts.requests > 200, "the warm-up's requests reached the server too"


@pytest.mark.serial
def test_latency_counts_from_the_intended_send_time() -> None:
    # One connection, a request due every 25 ms, each answered in 50 ms: requests
    # queue up. About 25 go out by the window's end + LATE_GRACE, the k-th answered
    # 50 + 25k ms after its slot, although the server took 50 ms; the slots left are
    # unsent, charged from their due time to the end.
    with ScriptedServer(body=BODY, delay=0.050) as server:
        result = load(server.url, connections=1, duration=1.0, rate=40.0)
    latency = result.latency_ms()
    assert result.requests + result.unsent == 40 and result.requests < 40, result
    assert result.decode_histogram().get_total_count() == 40
    assert latency["p50"] > 300.0 and latency["max"] > 500.0, latency


# several processes ----------------------------------------------------------------------


def test_merged_histograms_equal_one_histogram_of_every_value() -> None:
    rng = random.Random(7)
    parts = [new_histogram() for _ in range(3)]
    whole = new_histogram()
    for index in range(30_000):
        value = int(rng.lognormvariate(7, 1.5)) + 1
        parts[index % 3].record_value(value)
        whole.record_value(value)
    merged = merge_histograms([part.encode().decode("ascii") for part in parts])
    assert merged.get_total_count() == whole.get_total_count() == 30_000
    assert merged.get_min_value() == whole.get_min_value()
    assert merged.get_max_value() == whole.get_max_value()
    for percentile in (0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100):
        assert merged.get_value_at_percentile(percentile) == whole.get_value_at_percentile(
            percentile
        ), percentile


def test_results_merge_and_survive_json() -> None:
    one = load_result([100, 200, 300], errors={"reset": 1}, failed=1, duration=2.0)
    two = load_result([400, 500], errors={"reset": 2, "status_500": 1}, duration=2.5)
    merged = LoadResult.merge([one, two])
    assert (merged.requests, merged.failed, merged.processes, merged.connections) == (5, 1, 2, 4)
    assert merged.errors == {"reset": 3, "status_500": 1}
    assert merged.duration == 2.5 and merged.cpu_seconds == 1.0
    assert merged.decode_histogram().get_total_count() == 5
    data = json.loads(json.dumps(merged.to_json()))
    assert LoadResult.from_json(data) == merged
    assert data["latency_ms"]["max"] == pytest.approx(0.5, rel=0.01)
    assert data["requests_per_second"] == 2.0


@pytest.mark.parametrize(("total", "parts"), [(10, 3), (1, 2), (1000, 7), (5, 5)])
def test_split_evenly_sums_to_the_total(total: int, parts: int) -> None:
    shares = split_evenly(total, parts)
    assert sum(shares) == total and max(shares) - min(shares) <= 1 and len(shares) == parts


def test_two_processes_send_exactly_the_requests_asked() -> None:
    with ScriptedServer(body=BODY) as server:
        result = load(server.url, connections=4, requests=1001, processes=2)
    assert result.processes == 2 and result.connections == 4
    assert result.requests == server.counts.requests == 1001
    assert result.decode_histogram().get_total_count() == 1001
    assert result.cpu_seconds > 0


def test_many_connections_spread_over_loopback_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadplan, "SOURCE_SPREAD_ABOVE", 3)
    monkeypatch.setattr(loadplan, "CONNECTIONS_PER_SOURCE", 2)
    with ScriptedServer(body=BODY) as server:
        result = load(server.url, connections=4, requests=40)
    assert result.requests == 40 and result.error_total == 0
    assert server.counts.peers == {"127.0.0.2", "127.0.0.3"}


def test_connections_beyond_the_open_file_limit_are_refused() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    too_many = 1 << 21 if hard == resource.RLIM_INFINITY else hard + 1
    options = LoadOptions(urls=("http://127.0.0.1/",), connections=too_many, processes=1)
    with pytest.raises(ConfigError, match="open-file limit"):
        loadplan.plan_workers(options, routes=())


def test_never_more_processes_than_connections() -> None:
    options = LoadOptions(urls=("http://127.0.0.1/",), connections=3, processes=8)
    assert options.worker_count == 3
    assert LoadOptions(urls=("http://127.0.0.1/",), requests=2, processes=8).worker_count == 2


# verification ----------------------------------------------------------------------------


def test_verify_catches_a_body_that_changes() -> None:
    with ScriptedServer(Behaviour.CHANGING_BODY, body=BODY) as server:
        result = load(server.url, requests=20, verify=True)
    assert result.errors == {"verify": 20} and result.requests == 20


def test_verify_passes_a_stable_body() -> None:
    with ScriptedServer(body=BODY) as server:
        result = load(server.url, requests=20, verify=True)
    assert result.error_total == 0 and result.verified


def test_expect_compares_with_a_local_file(tmp_path: Path) -> None:
    same, other = tmp_path / "same.bin", tmp_path / "other.bin"
    same.write_bytes(BODY)
    other.write_bytes(BODY[::-1])
    with ScriptedServer(body=BODY) as server:
        assert load(server.url, requests=10, expect=str(same)).error_total == 0
        assert load(server.url, requests=10, expect=str(other)).errors == {"verify": 10}


BIG = 24 * 1024 * 1024
"""Large enough that a hash of only the first part (64 KiB, 1 MiB) misses its end."""


@pytest.fixture(scope="module")
def big_body() -> bytes:
    return random.Random(24).randbytes(BIG)


def last_byte_flipped(body: bytes) -> bytes:
    return body[:-1] + bytes([body[-1] ^ 0xFF])


def test_verify_catches_a_change_in_the_last_byte_of_24_mib(big_body: bytes) -> None:
    # The reference fetch gets the right body; every load request gets the last byte wrong.
    with ScriptedServer(Behaviour.LAST_BYTE_CHANGES, body=big_body) as server:
        result = load(server.url, connections=1, requests=3, verify=True)
    assert server.counts.requests == 4, "one reference fetch, then the load"
    assert result.requests == 3 and result.body_bytes == 3 * BIG
    assert result.errors == {"verify": 3}


def test_verify_passes_the_same_24_mib(big_body: bytes) -> None:
    with ScriptedServer(body=big_body) as server:
        result = load(server.url, connections=1, requests=3, verify=True)
    assert result.requests == 3 and result.error_total == 0 and result.verified


def test_cli_verify_exits_1_on_a_change_in_the_last_byte(
    big_body: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    with ScriptedServer(Behaviour.LAST_BYTE_CHANGES, body=big_body) as server:
        argv = ["load", server.url, "-c", "1", "-n", "2", "--processes", "1", "--verify"]
        code = cli.main(argv)
    printed = capsys.readouterr()
    assert code == 1, printed
    assert "ERRORS: 2 (verify: 2)" in printed.out, printed.out


def test_expect_compares_every_byte_of_24_mib(big_body: bytes, tmp_path: Path) -> None:
    same, other = tmp_path / "same.bin", tmp_path / "other.bin"
    same.write_bytes(big_body)
    other.write_bytes(last_byte_flipped(big_body))
    with ScriptedServer(body=big_body) as server:
        assert load(server.url, connections=1, requests=2, expect=str(same)).error_total == 0
        assert load(server.url, connections=1, requests=2, expect=str(other)).errors == {
            "verify": 2
        }


def test_cli_expect_exits_1_on_a_file_that_differs_in_its_last_byte(
    big_body: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(last_byte_flipped(big_body))
    with ScriptedServer(body=big_body) as server:
        argv = ["load", server.url, "-c", "1", "-n", "2", "--processes", "1"]
        code = cli.main([*argv, "--expect", str(other)])
    printed = capsys.readouterr()
    assert code == 1, printed
    assert "ERRORS: 2 (verify: 2)" in printed.out, printed.out


# the command -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zcserve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("load-root")
    (root / "4k.bin").write_bytes(BODY)
    with start_child(str(root)) as child:
        yield child.url


def test_cli_against_zcserve_writes_every_figure(
    zcserve_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.json"
    argv = ["load", f"{zcserve_url}/4k.bin", "-c", "4", "-n", "400", "--json", str(out)]
    code = cli.main([*argv, "--processes", "2"])
    printed = capsys.readouterr()
    assert code == 0, printed
    assert "requests    400 in" in printed.out and "errors      none" in printed.out
    assert "latency ms  min " in printed.out and " p50 " in printed.out
    data = json.loads(out.read_text())
    assert data["requests"] == 400 and data["processes"] == 2 and data["model"] == "closed"
    assert data["body_bytes"] == 400 * len(BODY)
    assert set(data["latency_ms"]) >= {"p50", "p90", "p99", "p99.9", "max"}
    assert LoadResult.from_json(data).decode_histogram().get_total_count() == 400
    assert data["cpu_seconds"] > 0 and data["errors"] == {}


def test_cli_says_so_and_exits_1_on_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with ScriptedServer(Behaviour.STATUS_500, body=BODY) as server:
        code = cli.main(["load", server.url, "-c", "2", "-n", "12", "--processes", "1"])
    printed = capsys.readouterr()
    assert code == 1
    assert "ERRORS: 12 (status 500: 12)" in printed.out


@pytest.mark.serial
def test_cli_open_model_with_warmup(zcserve_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["load", f"{zcserve_url}/4k.bin", "-c", "2", "-d", "500ms", "--rate", "100"]
    code = cli.main([*argv, "--warmup", "200ms", "--processes", "1", "--loop", "asyncio"])
    printed = capsys.readouterr()
    assert code == 0, printed
    assert "open model, 100/s" in printed.out and "target 100.0/s" in printed.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["http://127.0.0.1:8000/", "-c", "0"], "must be at least 1"),
        (["http://127.0.0.1:8000/", "-d", "soon"], "is not a duration"),
        (["http://127.0.0.1:8000/", "-d", "1s", "-n", "5"], "not allowed with"),
        (["https://127.0.0.1:8000/", "--insecure", "--cacert", "x"], "not allowed with"),
        (["http://127.0.0.1:8000/", "--insecure"], "applies to https:// URLs"),
        (["127.0.0.1:8000"], "bad URL"),
        ([], "no URL given"),
        (["http://127.0.0.1:8000/", "--rate", "-5"], "must be more than 0"),
        (["http://a:1/", "http://b:2/", "-c", "1"], "2 hosts need at least 2 connections"),
        (["http://127.0.0.1:8000/", "--expect", "/nonexistent/file"], "is not a regular file"),
        (["--raw", "nowhere"], "expected HOST:PORT"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        exit_code = cli.main(["load", *argv])
        raise SystemExit(exit_code)
    printed = capsys.readouterr()
    assert exited.value.code == 2
    assert message in printed.err and printed.err.count("\n") == 1, printed.err
    assert "Traceback" not in printed.err


def test_cli_refused_port_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with refused_port() as port:
        code = cli.main(["load", f"http://127.0.0.1:{port}/", "-n", "1"])
    printed = capsys.readouterr()
    assert code == 2
    assert printed.err == (
        f"zcserve load: error: cannot connect to 127.0.0.1:{port}: Connection refused\n"
    )


# the raw seed experiment ----------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("raw") / "seed.bin"
    path.write_bytes(random.Random(3).randbytes(3 * 1024 * 1024 + 17))
    return path


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_raw_downloads_are_byte_exact(
    strategy: str, raw_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "raw.json"
    with start_child("--raw", str(raw_file), "--strategy", strategy) as child:
        address = child.url.removeprefix("http://")
        code = cli.main(["load", "--raw", address, "-n", "5", "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed
    assert "5 downloads in" in printed.out and "(all equal)" in printed.out
    data = json.loads(out.read_text())
    assert data["sizes"] == [raw_file.stat().st_size] * 5
    assert data["total_seconds"] > 0 and data["megabytes_per_second"] > 0


def test_raw_api_and_a_refused_port(raw_file: Path) -> None:
    with start_child("--raw", str(raw_file)) as child:
        result = run_raw(RawOptions(child.url.removeprefix("http://"), downloads=2))
    assert result.sizes == (raw_file.stat().st_size,) * 2 and not result.errors
    with refused_port() as port, pytest.raises(ConfigError, match="Connection refused"):
        run_raw(RawOptions(f"127.0.0.1:{port}", downloads=1))
