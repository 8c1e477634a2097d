"""`zcserve load` against servers that try to hang, bloat or fool it.

Each test starts its own small hostile server on loopback and checks three things:
the run ends within its bound (duration + timeout + 1 s, measured around the run;
from the signal for Ctrl-C), memory stays small where memory is the point, and
the counts agree with what the server itself counted.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import selectors
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.results import load_result
from tests.support.scripted import (
    Behaviour,
    ScriptedServer,
    StallingTLSServer,
    TrickleServer,
    stuck_listener,
)
from tests.support.tls import Certificate, make_certificate
from zcserve import cli
from zcserve.load.client import STOP_GRACE
from zcserve.load.http import HEAD_LIMIT, ResponseError, ResponseReader, parse_target
from zcserve.load.plan import plan_workers
from zcserve.load.probe import prepare_routes
from zcserve.load.procs import WorkerPool
from zcserve.load.report import summary_lines
from zcserve.load.run import LoadOptions, run_load, run_load_async
from zcserve.load.stats import LoadResult

pytestmark = pytest.mark.serial  # runs bounded within a second of their due end

BODY = bytes(range(256)) * 16  # 4 KiB
SLACK = 1.0
"""Seconds a run may take beyond its duration + timeout (probe, opening, closing)."""
EXIT_WAIT = 30.0
"""Seconds a test waits for a child before it fails (and kills the child by PID)."""
PEAK_RSS_MB = 100
REPO = Path(__file__).resolve().parents[2]

needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command makes the test certificate"
)


def load(url: str, **options: Any) -> LoadResult:
    """One in-process run unless the test says otherwise."""
    options.setdefault("processes", 1)
    options.setdefault("connections", 2)
    return run_load(LoadOptions(urls=(url,), **options))


def timed_load(url: str, **options: Any) -> tuple[LoadResult, float]:
    began = time.monotonic()
    result = load(url, **options)
    return result, time.monotonic() - began


# the load command as a child process -----------------------------------------------------


@contextmanager
def load_child(*args: str) -> Iterator[subprocess.Popen[str]]:
    """`python -m zcserve load ARGS` with its output piped; killed (by its PID) if
    the test leaves it running."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zcserve", "load", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=EXIT_WAIT)


def read_line(stream: IO[str] | None, timeout: float) -> str:
    """One line from a child's pipe, or "" if none comes within `timeout` seconds."""
    assert stream is not None
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return stream.readline()


def worker_processes(pid: int) -> list[int]:
    """The load worker processes `pid` spawned (not multiprocessing's resource tracker)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    workers = []
    for child in map(int, text.split()):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            workers.append(child)
    return workers


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a killed child whose new parent has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


# 1. --rate runs end at duration + timeout --------------------------------------------------


def test_a_rate_the_server_cannot_keep_up_with_ends_in_time_and_counts_unsent() -> None:
    # 10 connections to a 20 ms server manage 500/s of the 2000/s asked: slots pile up.
    # Before: each connection worked through its schedule slot by slot, long past -d.
    duration, timeout, rate = 1.0, 1.0, 2000.0
    with ScriptedServer(body=BODY, delay=0.020) as server:
        result, elapsed = timed_load(
            server.url, connections=10, duration=duration, rate=rate, timeout=timeout
        )
    assert elapsed < duration + timeout + SLACK, elapsed
    slots = int(duration * rate)
    assert result.requests + result.failed + result.unsent == slots, result
    assert result.unsent > 0 and result.failed <= 10, result
    assert set(result.errors) <= {"timeout"}, result.errors
    # The server answered every request counted, and perhaps some cut at the end.
    assert result.requests <= server.counts.requests <= result.requests + result.failed
    assert result.body_bytes == result.requests * len(BODY)
    # Unsent slots are in the latency, from their due time to the end of the run.
    assert result.decode_histogram().get_total_count() == result.requests + result.unsent
    assert result.latency_ms()["max"] >= 900, result.latency_ms()
    # Rates divide by the window asked for, not by the time to the last response.
    assert result.duration == pytest.approx(duration)
    assert result.achieved_rate == pytest.approx((result.requests + result.failed) / duration)


def test_a_silent_server_at_a_rate_ends_in_time() -> None:
    duration, timeout, rate = 1.0, 1.0, 100.0
    with ScriptedServer(Behaviour.SILENT) as server:
        result, elapsed = timed_load(
            server.url, connections=4, duration=duration, rate=rate, timeout=timeout
        )
    assert elapsed < duration + timeout + SLACK, elapsed
    assert result.requests == 0 and result.failed > 0
    assert result.failed + result.unsent == int(duration * rate)
    assert result.errors == {"timeout": result.failed}
    assert server.counts.received <= result.failed


@needs_openssl
def test_a_tls_server_that_stalls_after_the_probe_ends_in_time(certificate: Certificate) -> None:
    # Before: still running at 40 s.
    duration, timeout, rate = 1.0, 1.0, 100.0
    with StallingTLSServer(certificate.server_context()) as server:
        result, elapsed = timed_load(
            server.url, connections=4, duration=duration, rate=rate, timeout=timeout, insecure=True
        )
    assert elapsed < duration + timeout + SLACK, elapsed
    assert result.requests == 0 and result.tls_handshakes == 0
    assert result.failed > 0 and result.errors == {"timeout": result.failed}, result.errors
    assert result.failed + result.unsent == int(duration * rate)
    # Four opened and stalled, then one connect per failed request.
    assert server.stalled == 4 + result.failed


def test_a_rate_finer_than_the_clock_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(cli.main(["load", "http://127.0.0.1:1/", "--rate", "1e300"]))
    printed = capsys.readouterr()
    assert exited.value.code == 2
    assert "is beyond the clock" in printed.err and printed.err.count("\n") == 1, printed.err


# 2. a head without an end -------------------------------------------------------------------


def test_a_head_is_capped_on_bytes() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: "
    fits = head + b"a" * (HEAD_LIMIT - len(head) - 4) + b"\r\n\r\nok"
    assert len(fits) == HEAD_LIMIT + 2
    assert ResponseReader().feed(fits), "a head of exactly the limit is fine"
    reader = ResponseReader()
    reader.feed(head)
    fed = len(head)
    with pytest.raises(ResponseError) as caught:
        while fed <= HEAD_LIMIT + 1000:
            reader.feed(b"a" * 1000)
            fed += 1000
    assert caught.value.kind == "bad_response"
    assert fed > HEAD_LIMIT - 1000, "not before the limit"


def test_a_never_ending_head_is_a_bad_response() -> None:
    with ScriptedServer(Behaviour.ENDLESS_HEAD) as server:
        result = load(server.url, connections=2, requests=20, timeout=5.0)
    assert result.errors == {"bad_response": 20} and result.failed == 20
    assert server.counts.requests == 20


PEAK_RSS_SCRIPT = """
import sys
from zcserve import cli
code = cli.main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak = next(line for line in status if line.startswith("VmHWM:"))
sys.stderr.write(f"peak {peak.split()[1]} kB\\n")
raise SystemExit(code)
"""
"""Runs `zcserve load` and prints its peak RSS: VmHWM, the high-water mark of the
process's own memory since exec (ru_maxrss would also count the test process it
was forked from)."""


def test_never_ending_heads_on_32_connections_keep_memory_small(tmp_path: Path) -> None:
    # Before: httptools concatenated the header value; -c 32 reached 1.2 GB.
    duration, timeout = 1.0, 2.0
    out = tmp_path / "endless.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with ScriptedServer(Behaviour.ENDLESS_HEAD) as server:
        argv = ["load", server.url, "-c", "32", "-d", f"{duration}s", "--timeout", f"{timeout}s"]
        argv += ["--processes", "1", "--json", str(out)]
        done = subprocess.run(
            [sys.executable, "-c", PEAK_RSS_SCRIPT, *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=EXIT_WAIT,
        )
    assert done.returncode == 1, done
    peak_mb = int(done.stderr.rpartition("peak ")[2].split()[0]) / 1024
    assert peak_mb < PEAK_RSS_MB, peak_mb
    data = json.loads(out.read_text())
    assert data["errors"] == {"bad_response": server.counts.requests}, data["errors"]
    assert data["requests"] == 0 and data["failed"] == server.counts.requests > 0
    assert data["duration"] < duration + timeout + SLACK


# 3. interim responses -----------------------------------------------------------------------


def test_interim_responses_are_skipped_and_the_final_one_is_measured() -> None:
    # 100 Continue and 103 Early Hints at once, the 200 after 30 ms: the latency is
    # that of the 200, and nothing is "status 100" or a long body.
    with ScriptedServer(Behaviour.INTERIM, body=BODY, delay=0.030) as server:
        result = load(server.url, connections=2, requests=40)
    assert result.requests == server.counts.requests == 40
    assert result.errors == {} and result.failed == 0
    assert result.body_bytes == server.counts.body_bytes == 40 * len(BODY)
    assert result.latency_ms()["min"] >= 29.0, result.latency_ms()


def test_interim_responses_split_anywhere_are_skipped_on_bytes() -> None:
    wire = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    )
    for cut in range(1, len(wire)):
        reader = ResponseReader(hash_bodies=True)
        assert not reader.feed(wire[:cut]) or cut == len(wire)
        assert reader.feed(wire[cut:]), cut
        assert (reader.status, reader.body_bytes, reader.interim) == (200, 5, 2), cut


def test_101_is_final_and_ends_the_connection() -> None:
    with ScriptedServer(Behaviour.SWITCHING) as server:
        result = load(server.url, connections=1, requests=5)
    assert result.requests == 5 and result.errors == {"status_101": 5}
    # The probe, the first connection, then one new connection per later request.
    assert server.counts.connections == 1 + 1 + 4


# 4. Ctrl-C and SIGTERM ----------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_cuts_a_waiting_run_at_once_and_saves_it(signum: int, tmp_path: Path) -> None:
    # Before: 3 SIGINTs against a silent server still waited 7.5 s; SIGTERM exited 143
    # and saved nothing.
    out = tmp_path / "cut.json"
    with ScriptedServer(Behaviour.SILENT) as server:
        args = [server.url, "-c", "4", "-d", "60s", "--timeout", "30s", "--processes", "1"]
        with load_child(*args, "--json", str(out)) as proc:
            assert server.wait_for(lambda counts: counts.received >= 4), "no request came"
            signalled = time.monotonic()
            proc.send_signal(signum)
            stdout, stderr = proc.communicate(timeout=EXIT_WAIT)
            after = time.monotonic() - signalled
    assert after < STOP_GRACE + SLACK, after
    assert proc.returncode == 1, (stdout, stderr)
    assert "ERRORS: 4 (interrupted: 4)" in stdout, stdout
    assert "Traceback" not in stderr, stderr
    data = json.loads(out.read_text())
    assert data["failed"] == 4 and data["requests"] == 0 and data["errors"] == {"interrupted": 4}
    assert server.counts.received == 4


def test_a_second_ctrl_c_exits_at_once_and_ends_the_workers() -> None:
    with ScriptedServer(Behaviour.SILENT) as server:
        args = [server.url, "-c", "4", "-d", "60s", "--timeout", "30s", "--processes", "2"]
        with load_child(*args) as proc:
            assert server.wait_for(lambda counts: counts.received >= 4), "no request came"
            workers = worker_processes(proc.pid)
            proc.send_signal(signal.SIGINT)
            # Two signals sent at once may arrive as one: wait until the first is taken.
            first = read_line(proc.stderr, EXIT_WAIT)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=EXIT_WAIT)
            after = time.monotonic() - signalled
    assert "SIGINT: stopping" in first, first
    assert after < STOP_GRACE, after
    assert proc.returncode == 128 + signal.SIGINT, (stdout, stderr)
    assert "requests" not in stdout and "SIGINT again" in stderr, (stdout, stderr)
    assert len(workers) >= 2, workers
    assert not [pid for pid in workers if is_running(pid)]


@needs_openssl
@pytest.mark.parametrize("processes", [1, 2])
async def test_ctrl_c_while_connections_open_stops_at_once_with_their_errors(
    processes: int, certificate: Certificate
) -> None:
    # Half the connections go to a TLS server that refuses every handshake after the
    # probe (they fail at once), half to a port whose backlog is full (their connects
    # hang for the 30 s timeout). Before: SIGINT waited for the hanging connects, then
    # said "errors none" and exited 0.
    half = 4
    context = certificate.server_context()
    handshakes = itertools.count()

    def refuse_after_the_probe(*_: object) -> int | None:
        return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE if next(handshakes) > 0 else None

    context.sni_callback = refuse_after_the_probe
    failures = asyncio.Event()

    def on_progress(requests: int, errors: int) -> None:
        if errors >= half:
            failures.set()

    with ScriptedServer(body=BODY, ssl=context) as refusing, stuck_listener() as port:
        options = LoadOptions(
            urls=(refusing.url, f"http://127.0.0.1:{port}/"),
            connections=2 * half,
            duration=30.0,
            timeout=30.0,
            processes=processes,
            insecure=True,
        )
        run = asyncio.create_task(run_load_async(options, on_progress=on_progress))
        await asyncio.wait_for(failures.wait(), EXIT_WAIT)
        signalled = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)
        result = await asyncio.wait_for(run, EXIT_WAIT)
        after = time.monotonic() - signalled
    assert after < SLACK, after
    assert result.errors == {"tls": half}, result.errors
    assert result.requests == 0 and result.failed == 0
    assert next(handshakes) == 1 + half, "the probe, then one per refused connection"


# 5. opening is bounded too ------------------------------------------------------------------


def test_a_slow_acceptor_bounds_the_run_and_every_latency() -> None:
    # One accept every 100 ms from a backlog of one: most connects hang. Before: -c 3000
    # --timeout 1 -d 1s took 22.5 s, and a request waited 10.3 s for a connect slot.
    duration, timeout = 1.0, 1.0
    with ScriptedServer(body=BODY, accept_interval=0.1, backlog=1) as server:
        result, elapsed = timed_load(
            server.url,
            connections=50,
            duration=duration,
            timeout=timeout,
            connect_concurrency=4,
        )
    assert elapsed < duration + timeout + SLACK, elapsed
    assert result.requests > 0 and set(result.errors) <= {"timeout", "connect"}, result.errors
    # Connect waits count against the timeout: no request outlasts it (a sweep a
    # quarter of it later at most).
    assert result.latency_ms()["max"] <= timeout * 1000 * 1.25 + 50, result.latency_ms()
    assert result.requests <= server.counts.requests <= result.requests + result.failed


# 6. the split across processes ---------------------------------------------------------------


def test_the_budget_follows_the_connections_as_the_rate_does() -> None:
    # 3 connections on 2 processes take 2/3 and 1/3 of the rate: the budget too.
    # Before: 1500 each, so one process ran twice as long and 2000/s went out.
    options = LoadOptions(
        urls=("http://127.0.0.1:1/",), connections=3, requests=3000, rate=3000.0, processes=2
    )
    plans = plan_workers(options, routes=())
    assert [plan.connections for plan in plans] == [2, 1]
    assert [plan.requests for plan in plans] == [2000, 1000]
    assert {plan.total_requests for plan in plans} == {3000}


def test_requests_at_a_rate_on_two_processes_divide_by_the_window() -> None:
    with ScriptedServer(body=BODY) as server:
        result = load(server.url, connections=3, requests=600, rate=600.0, processes=2)
    assert result.requests == server.counts.requests == 600 and result.error_total == 0
    assert result.unsent == 0
    assert result.duration == pytest.approx(1.0), "the schedule's window: 600 / 600/s"
    assert result.requests_per_second == pytest.approx(600.0)


# 7. a keep-alive close before the response ------------------------------------------------


def test_a_quiet_keep_alive_close_is_retried_not_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: 1,424 "reset" errors, and the -n budget used up by them.
    out = tmp_path / "quiet.json"
    with ScriptedServer(Behaviour.CLOSE_QUIETLY, body=BODY) as server:
        argv = ["load", server.url, "-c", "2", "-n", "200", "--processes", "1"]
        code = cli.main([*argv, "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed
    data = json.loads(out.read_text())
    assert data["requests"] == server.counts.requests == 200
    assert data["failed"] == 0 and data["errors"] == {}
    assert data["reconnects"] >= 1
    assert f"reconnects  {data['reconnects']:,}" in printed.out


def test_a_close_on_a_fresh_connection_is_a_failure_not_a_retry() -> None:
    # Only a reused connection is retried (and only once: the retry is on a fresh one).
    with ScriptedServer(Behaviour.HANG_UP, body=BODY) as server:
        result = load(server.url, connections=1, requests=10)
    assert result.failed == 10 and result.errors == {"reset": 10} and result.reconnects == 0
    assert server.counts.received == 10


# 8. the small ones ---------------------------------------------------------------------------


def test_a_non_latin_1_path_is_percent_encoded(capsys: pytest.CaptureFixture[str]) -> None:
    target = parse_target("http://127.0.0.1:8000/файл/é?q=ж")
    assert target.target == "/%D1%84%D0%B0%D0%B9%D0%BB/%C3%A9?q=%D0%B6"
    assert target.request().startswith(b"GET /%D1%84%D0%B0%D0%B9%D0%BB/%C3%A9?q=%D0%B6 HTTP/1.1")
    assert parse_target("http://127.0.0.1/a%20b").target == "/a%20b", "kept as given"
    assert parse_target("http://bücher.example/").host_header == "xn--bcher-kva.example"
    with ScriptedServer(body=BODY) as server:
        url = f"http://127.0.0.1:{server.port}/данные.bin"
        code = cli.main(["load", url, "-c", "1", "-n", "3", "--processes", "1"])
    printed = capsys.readouterr()
    assert code == 0, printed
    assert server.counts.targets == [b"/%D0%B4%D0%B0%D0%BD%D0%BD%D1%8B%D0%B5.bin"] * 3


def test_a_control_character_in_the_path_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(cli.main(["load", "http://127.0.0.1:1/a\tb", "-n", "1"]))
    printed = capsys.readouterr()
    assert exited.value.code == 2
    assert "control characters" in printed.err and printed.err.count("\n") == 1, printed.err


def test_raw_timeout_bounds_the_whole_download(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A byte every 50 ms: each read is quick, the download never ends in time. Before:
    # --timeout applied to each read, so the run lasted as long as the server liked.
    timeout = 0.5
    out = tmp_path / "raw.json"
    with TrickleServer(interval=0.05, limit=200) as server:
        began = time.monotonic()
        argv = ["load", "--raw", server.address, "-n", "1", "--timeout", f"{timeout}s"]
        code = cli.main([*argv, "--json", str(out)])
        elapsed = time.monotonic() - began
    printed = capsys.readouterr()
    assert elapsed < timeout + SLACK, elapsed
    assert code == 1, printed
    data = json.loads(out.read_text())
    assert data["errors"] == {"timeout": 1} and data["sizes"] == []
    assert 0 < server.sent < 200


@needs_openssl
def test_an_untrusted_certificate_with_cacert_does_not_suggest_cacert(
    certificate: Certificate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_certificate(tmp_path, "other")
    with ScriptedServer(body=BODY, ssl=certificate.server_context()) as server:
        argv = ["load", server.url, "-n", "1", "--processes", "1", "--cacert", str(other.cert)]
        code = cli.main(argv)
    printed = capsys.readouterr()
    assert code == 2
    assert printed.err.count("\n") == 1, printed.err
    assert "TLS certificate verify failed" in printed.err
    assert f"no CA in --cacert {other.cert} signed it" in printed.err
    assert "trust it with --cacert" not in printed.err


async def test_a_dying_worker_costs_only_its_share() -> None:
    # Before: one worker's death dropped the other workers' results too.
    with ScriptedServer(body=BODY) as server:
        options = LoadOptions(urls=(server.url,), connections=4, duration=1.5, processes=2)
        pool = WorkerPool(plan_workers(options, await prepare_routes(options)))
        killed: list[int] = []

        def on_progress(requests: int, errors: int) -> None:
            if requests > 0 and not killed:
                process = pool.processes[0]
                assert process.pid is not None
                killed.append(process.pid)
                process.kill()  # our own child, by its PID

        parts = await pool.run(on_progress)
    assert killed, "the run never made progress"
    merged = LoadResult.merge(parts)
    assert parts[0].errors == {"worker_died": 1} and parts[0].requests == 0
    assert parts[1].requests > 0 and parts[1].error_total == 0
    assert merged.errors == {"worker_died": 1}
    assert merged.processes == 2 and merged.connections == 4
    assert parts[1].requests <= server.counts.requests


def _two_processes(cpu_seconds: float) -> LoadResult:
    return load_result(
        processes=2, requests=10, histogram="", cpu_seconds=cpu_seconds, wall_seconds=4.0
    )


def test_a_saturated_client_is_warned_about() -> None:
    busy, idle = _two_processes(3.7), _two_processes(1.0)
    assert busy.client_saturated and not idle.client_saturated
    assert any("client saturated: CPU busy 92%" in line for line in summary_lines(busy))
    assert not any("saturated" in line for line in summary_lines(idle))
    assert busy.to_json()["client_saturated"] is True
    assert LoadResult.from_json(busy.to_json()) == busy


def test_a_server_that_closes_after_every_response_counts_as_reconnects() -> None:
    # Before: 0 reconnects against python -m http.server, which closes every time.
    with ScriptedServer(Behaviour.CLOSE_AFTER, body=BODY) as server:
        result = load(server.url, connections=1, requests=20)
    assert result.requests == 20 and result.error_total == 0, result.errors
    assert result.reconnects == server.counts.connections - 1 == 20, (
        result.reconnects,
        server.counts.connections,
    )
