"""`zcserve load` over https: handshakes counted and timed apart from requests, trust
flags, TLS errors. The server is the scripted one with a self-signed certificate
made at test time by the openssl command."""

from __future__ import annotations

import itertools
import json
import shutil
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.scripted import Behaviour, ScriptedServer
from tests.support.servers import start_child
from tests.support.tls import Certificate, make_certificate
from zcserve import cli
from zcserve.errors import ConfigError
from zcserve.load.http import parse_target
from zcserve.load.plan import plan_workers
from zcserve.load.probe import prepare_routes
from zcserve.load.procs import WorkerPool
from zcserve.load.run import LoadOptions, run_load
from zcserve.load.stats import LoadResult, new_histogram
from zcserve.runtime import LOOP_NAMES

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command makes the test certificate"
)

BODY = bytes(range(256)) * 16  # 4 KiB
HANDSHAKE_DELAY = 0.05
"""Seconds the slow server spends in each handshake."""
UNTRUSTED = (
    "TLS certificate verify failed: self-signed certificate; "
    "trust it with --cacert FILE, or skip the check with --insecure"
)


def tls_load(url: str, **options: Any) -> LoadResult:
    """One in-process run that trusts the self-signed certificate unless told otherwise."""
    options.setdefault("processes", 1)
    options.setdefault("connections", 4)
    if "cacert" not in options:
        options.setdefault("insecure", True)
    return run_load(LoadOptions(urls=(url,), **options))


# URLs -----------------------------------------------------------------------------------


def test_https_urls_default_to_port_443_and_are_their_own_origin() -> None:
    target = parse_target("https://example.test/a?b=1")
    assert (target.tls, target.port, target.host_header) == (True, 443, "example.test")
    assert target.request().startswith(b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\n")
    assert parse_target("HTTPS://example.test:8443/").host_header == "example.test:8443"
    assert parse_target("https://example.test:80/").host_header == "example.test:80"
    assert parse_target("http://h:1/").origin != parse_target("https://h:1/").origin


# counts and handshakes -------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOP_NAMES)
def test_counts_match_and_keep_alive_needs_one_handshake_per_connection(
    certificate: Certificate, loop: str
) -> None:
    context = certificate.server_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with ScriptedServer(body=BODY, ssl=context) as server:
        result = tls_load(server.url, requests=1000, loop=loop)
    assert result.requests == server.counts.requests == 1000
    assert result.body_bytes == server.counts.body_bytes == 1000 * len(BODY)
    assert result.failed == 0 and result.error_total == 0, result.errors
    assert result.decode_histogram().get_total_count() == 1000
    assert result.tls_handshakes == 4, "keep-alive: one handshake per connection"
    assert server.counts.connections == 4 + 1, "the four connections and the first probe"
    assert result.decode_handshake_histogram().get_total_count() == 4
    handshake = result.handshake_ms()
    assert 0 < handshake["p50"] <= handshake["p99"] <= handshake["max"]
    assert server.counts.alpn == {"http/1.1"}, "the client offers http/1.1 only"


@pytest.mark.serial
def test_every_reconnect_is_one_handshake_and_not_request_latency(
    certificate: Certificate,
) -> None:
    context = certificate.server_context()

    def slow_handshake(*_: object) -> None:
        time.sleep(HANDSHAKE_DELAY)  # blocks the server's loop: one connection only

    context.sni_callback = slow_handshake
    with ScriptedServer(Behaviour.CLOSE_AFTER, body=BODY, ssl=context) as server:
        result = tls_load(server.url, connections=1, requests=10)
    assert result.requests == 10 and result.error_total == 0, result.errors
    # The first request uses the connection opened before the start; each later one
    # reconnects because the server closed.
    assert result.tls_handshakes == 10 == server.counts.connections - 1
    assert result.handshake_ms()["min"] >= HANDSHAKE_DELAY * 1000
    latency = result.latency_ms()
    assert latency["max"] < HANDSHAKE_DELAY * 1000 * 0.8, latency


def test_sni_is_the_url_host(certificate: Certificate) -> None:
    names: list[str | None] = []
    context = certificate.server_context()

    def note(_: object, name: str | None, __: object) -> None:
        names.append(name)

    context.sni_callback = note
    with ScriptedServer(body=BODY, ssl=context) as server:
        url = f"https://localhost:{server.port}/file"
        result = tls_load(url, connections=2, requests=20, cacert=certificate.cert)
        assert result.requests == 20 and result.error_total == 0
        tls_load(server.url, connections=1, requests=1)
    assert names == ["localhost"] * 3 + [None] * 2, "no SNI for an IP literal (RFC 6066)"


def test_a_failed_handshake_is_a_tls_error(certificate: Certificate) -> None:
    context = certificate.server_context()
    handshakes = itertools.count()

    def refuse_after_the_probe(*_: object) -> int | None:
        return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE if next(handshakes) > 0 else None

    context.sni_callback = refuse_after_the_probe
    with ScriptedServer(body=BODY, ssl=context) as server:
        result = tls_load(server.url, connections=2, requests=10)
    assert result.errors == {"tls": 10} and result.failed == 10 and result.requests == 0
    assert result.tls_handshakes == 0 and server.counts.requests == 0


def test_https_to_a_plain_server_fails_fast(certificate: Certificate) -> None:
    with ScriptedServer(body=BODY) as server, pytest.raises(ConfigError) as caught:
        tls_load(server.url.replace("http:", "https:"), requests=1, timeout=0.3)
    assert str(caught.value) == f"cannot connect to {server.address}: TLS handshake timed out"


def test_against_zcserve_over_https(certificate: Certificate, tmp_path: Path) -> None:
    (tmp_path / "4k.bin").write_bytes(BODY)
    with start_child(str(tmp_path), *certificate.flags()) as child:
        assert child.url.startswith("https://")
        url = f"{child.url}/4k.bin"
        result = tls_load(url, requests=400, verify=True, cacert=certificate.cert)
    assert result.requests == 400 and result.error_total == 0, result.errors
    assert result.body_bytes == 400 * len(BODY) and result.verified
    assert result.tls_handshakes == 4


# trust -------------------------------------------------------------------------------------


def test_an_untrusted_certificate_is_one_line_and_exit_2(
    certificate: Certificate, capsys: pytest.CaptureFixture[str]
) -> None:
    with ScriptedServer(body=BODY, ssl=certificate.server_context()) as server:
        code = cli.main(["load", server.url, "-n", "10", "--processes", "1"])
    printed = capsys.readouterr()
    assert code == 2
    assert printed.err == f"zcserve load: error: cannot connect to {server.address}: {UNTRUSTED}\n"
    assert server.counts.requests == 0


def test_a_cacert_of_another_certificate_is_no_trust(
    certificate: Certificate, tmp_path: Path
) -> None:
    other = make_certificate(tmp_path, "other")
    with ScriptedServer(body=BODY, ssl=certificate.server_context()) as server:
        with pytest.raises(ConfigError, match="TLS certificate verify failed"):
            tls_load(server.url, requests=1, cacert=str(other.cert))


@pytest.mark.parametrize(
    "flags",
    [["--insecure"], ["--cacert", "CERT"]],
    ids=["insecure", "cacert"],
)
def test_cli_over_https_writes_the_handshake_figures(
    certificate: Certificate,
    flags: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "result.json"
    flags = [certificate.cert if flag == "CERT" else flag for flag in flags]
    with ScriptedServer(body=BODY, ssl=certificate.server_context()) as server:
        argv = ["load", server.url, "-c", "4", "-n", "400", "--processes", "1", *flags]
        code = cli.main([*argv, "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed
    assert "requests    400 in" in printed.out and "errors      none" in printed.out
    assert "  TLS         4 handshakes, ms p50 " in printed.out
    data = json.loads(out.read_text())
    assert data["requests"] == 400 == server.counts.requests
    assert data["tls_handshakes"] == 4
    assert set(data["handshake_ms"]) >= {"p50", "p99", "max"}
    assert 0 < data["handshake_ms"]["p50"] <= data["handshake_ms"]["max"]
    result = LoadResult.from_json(data)
    assert result.decode_handshake_histogram().get_total_count() == 4
    assert result.decode_histogram().get_total_count() == 400
    assert LoadResult.from_json(json.loads(json.dumps(result.to_json()))) == result


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["https://127.0.0.1:1/", "--insecure", "--cacert", "x"], "not allowed with"),
        (["http://127.0.0.1:1/", "--cacert", "x"], "--cacert applies to https:// URLs"),
        (["https://127.0.0.1:1/", "--cacert", "/nonexistent"], "is not a regular file"),
        (["https://127.0.0.1:1/", "--cacert", "NOT_PEM"], "cannot load --cacert"),
    ],
)
def test_bad_trust_flags_are_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_pem = tmp_path / "not.certificate"
    not_pem.write_text("not a certificate\n")
    argv = [str(not_pem) if arg == "NOT_PEM" else arg for arg in argv]
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(cli.main(["load", *argv, "-n", "1"]))
    printed = capsys.readouterr()
    assert exited.value.code == 2
    assert message in printed.err and printed.err.count("\n") == 1, printed.err


# several processes ---------------------------------------------------------------------------


async def test_handshake_histograms_of_processes_merge_exactly(certificate: Certificate) -> None:
    with ScriptedServer(body=BODY, ssl=certificate.server_context()) as server:
        options = LoadOptions(
            urls=(server.url,), connections=6, requests=600, processes=3, insecure=True
        )
        parts = await WorkerPool(plan_workers(options, await prepare_routes(options))).run(None)
    assert [part.tls_handshakes for part in parts] == [2, 2, 2]
    assert sum(part.requests for part in parts) == server.counts.requests == 600
    whole = new_histogram()
    for part in parts:
        for step in part.decode_handshake_histogram().get_recorded_iterator():
            whole.record_value(step.value_iterated_to, step.count_added_in_this_iter_step)
    merged = LoadResult.merge(parts)
    histogram = merged.decode_handshake_histogram()
    assert merged.tls_handshakes == histogram.get_total_count() == whole.get_total_count() == 6
    assert histogram.get_min_value() == whole.get_min_value()
    assert histogram.get_max_value() == whole.get_max_value()
    for percentile in (1, 25, 50, 75, 90, 99, 100):
        assert histogram.get_value_at_percentile(percentile) == whole.get_value_at_percentile(
            percentile
        ), percentile


def test_several_processes_count_every_handshake(certificate: Certificate) -> None:
    with ScriptedServer(body=BODY, ssl=certificate.server_context()) as server:
        result = tls_load(server.url, connections=6, requests=600, processes=3)
    assert result.processes == 3 and result.requests == server.counts.requests == 600
    assert result.tls_handshakes == 6 == server.counts.connections - 1
    assert result.decode_handshake_histogram().get_total_count() == 6
