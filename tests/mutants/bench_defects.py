"""Defects in what the bench reports and the counters it reads (zcserve/bench/,
the server's --metrics), and in what `zcserve serve` leaves on stderr."""

from __future__ import annotations

from tests.mutants import Mutant

BENCH = "tests/bench/test_bench.py"
ROWS_NAME_THE_STRATEGY = (f"{BENCH}::test_each_row_names_the_strategy_that_ran",)
MEGABYTES = (f"{BENCH}::test_megabytes_per_second_is_bytes_in_the_window_over_its_length",)
TABLES = (f"{BENCH}::test_tables_show_the_measured_figures",)
LAB_LINE = (f"{BENCH}::test_the_lab_line_shows_the_ratio_as_the_rows_and_seed_json_do",)
LOAD_CPUS = (f"{BENCH}::test_client_bound_counts_the_cpus_the_load_processes_could_use",)
METRICS = "tests/server/test_metrics.py"
COUNTERS = (f"{METRICS}::test_counters_match_the_load_generator",)
TLS_COUNTERS = (f"{METRICS}::test_tls_counts_the_fallback",)

MUTANTS: list[Mutant] = [
    Mutant(
        name="bench-ignores-strategies-runs-auto",
        path="zcserve/bench/sweep.py",
        old='args = [folder, "--strategy", strategy, "--loop", options.loop]',
        new='args = [folder, "--strategy", "auto", "--loop", options.loop]',
        tests=ROWS_NAME_THE_STRATEGY,
    ),
    Mutant(
        name="bench-megabytes-per-second-doubled",
        path="zcserve/bench/sweep.py",
        old="megabytes_per_second=result.window_megabytes_per_second,",
        new="megabytes_per_second=2 * result.window_megabytes_per_second,",
        tests=MEGABYTES,
    ),
    Mutant(
        name="bench-markdown-table-megabytes-doubled",
        path="zcserve/bench/results.py",
        old='f"| {row.requests_per_second:,.0f} | {row.megabytes_per_second:,.1f} "',
        new='f"| {row.requests_per_second:,.0f} | {2 * row.megabytes_per_second:,.1f} "',
        tests=TABLES,
    ),
    Mutant(
        name="bench-printed-table-megabytes-doubled",
        path="zcserve/bench/results.py",
        old='            f"{row.megabytes_per_second:,.1f}",\n',
        new='            f"{2 * row.megabytes_per_second:,.1f}",\n',
        tests=TABLES,
    ),
    Mutant(
        name="bench-seed-lab-line-ratio-flipped",
        path="zcserve/bench/seed.py",
        old='f"this run: {naive.seconds / zero_copy.seconds:.2f}x."',
        new='f"this run: {zero_copy.seconds / naive.seconds:.2f}x."',
        tests=LAB_LINE,
    ),
    Mutant(
        name="bench-client-bound-counts-the-cpus-given",
        path="zcserve/bench/sweep.py",
        old="client_cpus=min(placement.client_cpus, result.processes),",
        new="client_cpus=len(placement.client or ()) or placement.client_cpus,",
        tests=LOAD_CPUS,
    ),
    Mutant(
        name="metrics-auto-bytes-labelled-auto-tcp",
        path="zcserve/server/connection.py",
        old="self.server.metrics.sent(inflight.strategy.name, sent)",
        new="self.server.metrics.sent(self.server.strategy.name, sent)",
        tests=COUNTERS,
    ),
    Mutant(
        name="metrics-auto-bytes-labelled-auto-tls",
        path="zcserve/server/connection.py",
        old="self.server.metrics.sent(inflight.strategy.name, sent)",
        new="self.server.metrics.sent(self.server.strategy.name, sent)",
        tests=TLS_COUNTERS,
    ),
    Mutant(
        name="metrics-mmap-bytes-not-counted",
        path="zcserve/server/connection.py",
        old="self.server.metrics.sent(inflight.strategy.name, sent)",
        new="self.server.metrics.sent("
        'inflight.strategy.name, sent * (inflight.strategy.name != "mmap"))',
        tests=COUNTERS,
    ),
    Mutant(
        name="metrics-fallbacks-never-counted",
        path="zcserve/server/connection.py",
        old=(
            "        strategy = self._chosen\n        if self._fell_back:\n"
            "            server.metrics.fallbacks += 1\n"
        ),
        new="        strategy = self._chosen\n        if self._fell_back:\n            pass\n",
        tests=TLS_COUNTERS,
    ),
    Mutant(
        name="metrics-merge-drops-fallbacks",
        path="zcserve/server/metrics.py",
        old="            total.fallbacks += part.fallbacks\n",
        new="",
        tests=(f"{METRICS}::test_merged_metrics_add_up",),
    ),
    Mutant(
        name="metrics-active-connections-never-decremented",
        path="zcserve/server/server.py",
        old="self.metrics.active_connections -= 1",
        new="self.metrics.active_connections -= 0",
        tests=COUNTERS,
    ),
    Mutant(
        name="metrics-active-connections-never-incremented",
        path="zcserve/server/server.py",
        old="self.metrics.active_connections += 1",
        new="self.metrics.active_connections += 0",
        tests=COUNTERS,
    ),
    Mutant(
        name="serve-clean-stop-writes-stderr",
        path="zcserve/server/server.py",
        old='log.info("stopped after',
        new='log.exception("stopped after',
        tests=("tests/e2e/test_cli.py::test_announces_serves_and_stops_cleanly",),
    ),
]
