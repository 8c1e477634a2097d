"""Defects of the event-driven connection core (issue: small files at nginx's pace)."""

from __future__ import annotations

from tests.mutants import Mutant

CONNECTION = "zcserve/server/connection.py"
STRATEGIES = "zcserve/server/strategies.py"
TLS_HOSTILE = "tests/server/test_tls_socket_hostile.py"

MUTANTS: list[Mutant] = [
    Mutant(
        name="close-without-linger-after-last-response",
        path=CONNECTION,
        old="        if inflight.linger or self._client_sent_more():\n            self._linger()\n",
        new="        if inflight.linger:\n            self._linger()\n",
        tests=("tests/server/test_graceful_close.py", "tests/server/test_one_core.py"),
    ),
    Mutant(
        name="linger-cut-by-bytes-before-the-response-is-acknowledged",
        path=CONNECTION,
        old="        if self._drained >= LINGER_BYTES and unacknowledged(self.sock) == 0:\n",
        new="        if self._drained >= 64 * 1024:\n",
        tests=(
            "tests/server/test_one_core.py::test_a_huge_body_with_many_requests_behind_is_whole",
        ),
    ),
    Mutant(
        name="requests-behind-a-closing-response-are-answered",
        path=CONNECTION,
        old="        while pending and self.phase is _READING:\n",
        new="        while pending and self.phase is not _CLOSED:\n",
        tests=("tests/server/test_one_core.py",),
    ),
    Mutant(
        name="max-pipelined-counted-per-read",
        path=CONNECTION,
        old="            if len(data) > self._feed_max:\n",
        new="            if False:\n",
        tests=(
            "tests/server/test_one_core.py::test_max_pipelined_counts_requests_per_connection_not_per_read",
        ),
    ),
    Mutant(
        name="tls-plaintext-left-in-the-record-layer-is-forgotten",
        path=CONNECTION,
        old="        if self._unparsed or self.stream.more_input:\n",
        new="        if self._unparsed:\n",
        tests=(
            "tests/server/test_one_core.py",
            f"{TLS_HOSTILE}::test_hundreds_of_requests_in_one_full_record",
        ),
    ),
    Mutant(
        name="small-file-goes-through-a-task",
        path=STRATEGIES,
        old="        return Transfer(stream, file, offset, count, step, None, None, self.max_chunk)"
        "\n",
        new="        return None  # type: ignore[return-value]\n",
        tests=("tests/server/test_event_core.py",),
    ),
    Mutant(
        name="crlf-does-not-start-the-header-clock",
        path=CONNECTION,
        old="            if parser.in_head or not requests:\n",
        new="            if parser.in_head:\n",
        tests=("tests/server/test_graceful_close.py",),
    ),
    Mutant(
        name="keepalive-deadline-never-set",
        path=CONNECTION,
        old=(
            "        else:\n"
            "            self.deadline = self.loop.time() + self._keepalive_timeout\n"
        ),
        new="        else:\n            self.deadline = math.inf\n",
        tests=(
            "tests/server/test_hardening.py::test_keepalive_idle_timeout_closes_an_idle_connection",
        ),
    ),
    Mutant(
        name="send-stall-deadline-never-set",
        path=CONNECTION,
        old="            self._writing = True\n"
        "        self.deadline = self.loop.time() + self.server.config.send_timeout\n",
        new="            self._writing = True\n        self.deadline = math.inf\n",
        tests=("tests/server/test_hardening.py",),
    ),
    Mutant(
        name="http-date-past-9999-not-clamped",
        path="zcserve/server/http.py",
        old="    return formatdate(min(max(second, 0), LAST_HTTP_SECOND), usegmt=True)\n",
        new="    return formatdate(second, usegmt=True)\n",
        tests=("tests/server/test_dates.py",),
    ),
    Mutant(
        name="tls-close-forgets-input-inside-openssl",
        path=CONNECTION,
        old="            or self.stream.more_input  # TLS: the rest of a record, inside OpenSSL\n",
        new="",
        tests=(
            f"{TLS_HOSTILE}::"
            "test_connection_close_lingers_when_the_rest_of_the_record_waits_inside_openssl",
        ),
    ),
    Mutant(
        name="tls-fin-without-close-notify-is-fatal",
        path="zcserve/server/tls.py",
        old="ssl.OP_NO_RENEGOTIATION | ssl.OP_IGNORE_UNEXPECTED_EOF\n",
        new="ssl.OP_NO_RENEGOTIATION\n",
        tests=(
            f"{TLS_HOSTILE}::test_a_half_close_right_after_the_request_still_gets_the_whole_answer",
        ),
    ),
    Mutant(
        name="tls-send-all-counts-only-whole-calls",
        path="zcserve/server/tls.py",
        old="            self.bytes_sent += written\n",
        new="            pass\n",
        tests=(
            f"{TLS_HOSTILE}::test_a_client_that_leaves_is_logged_with_at_least_what_it_received",
        ),
    ),
]
