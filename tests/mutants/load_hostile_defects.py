"""Defects in the load client's bounds against hostile servers and in its receive path
(zcserve/load/): each undoes one fix, at one spot."""

from __future__ import annotations

from tests.mutants import Mutant

HOSTILE = "tests/load/test_load_hostile.py"
RECEIVE = "tests/load/test_load_receive.py"
RATE_TESTS = (
    f"{HOSTILE}::test_a_rate_the_server_cannot_keep_up_with_ends_in_time_and_counts_unsent",
    f"{HOSTILE}::test_a_silent_server_at_a_rate_ends_in_time",
    f"{HOSTILE}::test_a_tls_server_that_stalls_after_the_probe_ends_in_time",
)

MUTANTS: list[Mutant] = [
    # 1. --rate runs bounded by -d
    Mutant(
        name="load-rate-run-without-a-hard-end",
        path="zcserve/load/schedule.py",
        old="            bound = open_start + plan.warmup + window + plan.timeout\n",
        new="            bound = math.inf\n",
        tests=RATE_TESTS,
    ),
    Mutant(
        name="load-unsent-slots-not-counted",
        path="zcserve/load/client.py",
        old="        self.schedule.charge_unsent(self.connections, self.measure_end)\n",
        new="",
        tests=RATE_TESTS[:1],
    ),
    Mutant(
        name="load-rate-beyond-the-clock-accepted",
        path="zcserve/load/options.py",
        old="        if self.rate * CLOCK_RESOLUTION > 1:\n",
        new="        if False:\n",
        tests=(f"{HOSTILE}::test_a_rate_finer_than_the_clock_is_refused",),
    ),
    # 2. a head without an end
    Mutant(
        name="load-head-not-capped",
        path="zcserve/load/http.py",
        old="            if len(partial) > HEAD_LIMIT:\n"
        '                raise ResponseError("bad_response")\n',
        new="            if False:\n                pass\n",
        tests=(
            f"{HOSTILE}::test_a_head_is_capped_on_bytes",
            f"{HOSTILE}::test_never_ending_heads_on_32_connections_keep_memory_small",
        ),
    ),
    # 3. interim responses
    Mutant(
        name="load-interim-1xx-taken-as-final",
        path="zcserve/load/http.py",
        old="        if 100 <= status < 200 and status != 101:\n",
        new="        if False:\n",
        tests=(
            f"{HOSTILE}::test_interim_responses_split_anywhere_are_skipped_on_bytes",
            f"{HOSTILE}::test_interim_responses_are_skipped_and_the_final_one_is_measured",
        ),
    ),
    # 4. Ctrl-C and SIGTERM
    Mutant(
        name="load-ctrl-c-waits-for-requests-in-flight",
        path="zcserve/load/client.py",
        old='            self.loop.call_later(STOP_GRACE, self._cut, "interrupted")\n',
        new="            pass\n",
        tests=(f"{HOSTILE}::test_a_signal_cuts_a_waiting_run_at_once_and_saves_it[SIGINT]",),
    ),
    Mutant(
        name="load-sigterm-not-handled",
        path="zcserve/load/run.py",
        old="CLI_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)\n",
        new="CLI_STOP_SIGNALS = (signal.SIGINT,)\n",
        tests=(f"{HOSTILE}::test_a_signal_cuts_a_waiting_run_at_once_and_saves_it[SIGTERM]",),
    ),
    Mutant(
        name="load-ctrl-c-waits-for-the-opening",
        path="zcserve/load/client.py",
        old="        if self.opening is not None:\n            self.opening.cancel()\n",
        new="",
        tests=(f"{HOSTILE}::test_ctrl_c_while_connections_open_stops_at_once_with_their_errors",),
    ),
    Mutant(
        name="load-failed-opening-connects-not-counted",
        path="zcserve/load/client.py",
        old="                stats.error(connection.open_error)\n",
        new="                pass\n",
        tests=(f"{HOSTILE}::test_ctrl_c_while_connections_open_stops_at_once_with_their_errors",),
    ),
    Mutant(
        name="load-second-ctrl-c-waits-like-the-first",
        path="zcserve/load/run.py",
        old="        if self.signalled:\n            self.exit_now(signum)\n",
        new="",
        tests=(f"{HOSTILE}::test_a_second_ctrl_c_exits_at_once_and_ends_the_workers",),
    ),
    # 5. opening bounded by the timeout
    Mutant(
        name="load-connect-slot-wait-outside-the-timeout",
        path="zcserve/load/client.py",
        old="async with asyncio.timeout(budget), self.connect_slots:",
        new="async with self.connect_slots, asyncio.timeout(budget):",
        tests=(f"{HOSTILE}::test_a_slow_acceptor_bounds_the_run_and_every_latency",),
    ),
    # 6. the split across processes, the window
    Mutant(
        name="load-budget-split-by-process-not-connection",
        path="zcserve/load/plan.py",
        old="list(budgets_by_connection(options.requests, connections))",
        new="list(split_evenly(options.requests, workers))",
        tests=(f"{HOSTILE}::test_the_budget_follows_the_connections_as_the_rate_does",),
    ),
    Mutant(
        name="load-open-model-divides-by-the-last-response",
        path="zcserve/load/schedule.py",
        old="        return max(self.stop_at - measure_start, 0.0)\n",
        new="        return max(measure_end - measure_start, 0.0)\n",
        tests=(f"{HOSTILE}::test_requests_at_a_rate_on_two_processes_divide_by_the_window",),
    ),
    # 7. a keep-alive close before the response
    Mutant(
        name="load-quiet-keep-alive-close-not-retried",
        path="zcserve/load/client.py",
        old="            not reader.started\n            and reader.completed\n",
        new="            reader.started\n            and reader.completed\n",
        tests=(f"{HOSTILE}::test_a_quiet_keep_alive_close_is_retried_not_failed",),
    ),
    # 8. the small ones
    Mutant(
        name="load-non-ascii-path-not-encoded",
        path="zcserve/load/http.py",
        old="        target = quote(target, safe=_SAFE_IN_TARGET)\n",
        new="        pass\n",
        tests=(f"{HOSTILE}::test_a_non_latin_1_path_is_percent_encoded",),
    ),
    Mutant(
        name="load-raw-timeout-per-read",
        path="zcserve/load/raw.py",
        old="            left = deadline - time.monotonic()\n",
        new="            left = timeout\n",
        tests=(f"{HOSTILE}::test_raw_timeout_bounds_the_whole_download",),
    ),
    Mutant(
        name="load-cacert-hint-suggests-cacert",
        path="zcserve/load/tls.py",
        old="        hint = UNTRUSTED_HINT if cacert is None else "
        "NOT_FROM_CACERT_HINT.format(cacert=cacert)\n",
        new="        hint = UNTRUSTED_HINT\n",
        tests=(f"{HOSTILE}::test_an_untrusted_certificate_with_cacert_does_not_suggest_cacert",),
    ),
    Mutant(
        name="load-dead-worker-drops-the-others",
        path="zcserve/load/procs.py",
        old='                self.failures[index] = f"load worker {index} exited (code {code}) '
        'without a result"\n',
        new='                raise ZcserveError(f"load worker {index} exited (code {code})")\n',
        tests=(f"{HOSTILE}::test_a_dying_worker_costs_only_its_share",),
    ),
    # the receive path and the saturation warning
    Mutant(
        name="load-reader-swallows-the-next-response",
        path="zcserve/load/http.py",
        old="                if not self.chunked:\n                    self._complete()\n"
        "                    return pos\n",
        new="                if not self.chunked:\n                    self._complete()\n"
        "                    return end\n",
        tests=(
            f"{RECEIVE}::test_every_framing_split_anywhere_is_byte_exact",
            f"{RECEIVE}::test_pipelined_responses_are_split_exactly",
        ),
    ),
    Mutant(
        name="load-a-receive-buffer-per-connection",
        path="zcserve/load/client.py",
        old="        self.buffer = owner.dialer.view\n",
        new="        self.buffer = memoryview(bytearray(RECEIVE_BUFFER))\n",
        tests=(f"{RECEIVE}::test_the_connections_read_into_the_workers_one_buffer",),
    ),
    Mutant(
        name="load-saturated-client-not-warned",
        path="zcserve/load/stats.py",
        old="        return self.client_cpu_share >= CLIENT_SATURATED\n",
        new="        return False\n",
        tests=(f"{HOSTILE}::test_a_saturated_client_is_warned_about",),
    ),
    Mutant(
        name="load-ignores-connections-the-server-closed",
        path="zcserve/load/client.py",
        old="the next request reconnects\n            self.stats.reconnects += 1\n",
        new="the next request reconnects\n",
        tests=(
            "tests/load/test_load_hostile.py::"
            "test_a_server_that_closes_after_every_response_counts_as_reconnects",
        ),
    ),
]
