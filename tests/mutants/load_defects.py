"""Defects in the load generator's report and body verification (zcserve/load/)."""

from __future__ import annotations

from tests.mutants import Mutant

PERCENTILE_TESTS = (
    "tests/load/test_load_percentiles.py::test_figures_name_the_percentile_they_were_computed_at",
    "tests/load/test_load_percentiles.py::test_percentiles_of_a_known_distribution",
)
VERIFY_TESTS = (
    "tests/load/test_loadgen.py::test_verify_catches_a_change_in_the_last_byte_of_24_mib",
    "tests/load/test_loadgen.py::test_verify_passes_the_same_24_mib",
    "tests/load/test_loadgen.py::test_cli_verify_exits_1_on_a_change_in_the_last_byte",
    "tests/load/test_loadgen.py::test_expect_compares_every_byte_of_24_mib",
    "tests/load/test_loadgen.py::test_cli_expect_exits_1_on_a_file_that_differs_in_its_last_byte",
)

MUTANTS: list[Mutant] = [
    Mutant(
        name="load-p90-p99.9-labels-swapped",
        path="zcserve/load/stats.py",
        old='    ("p90", 90.0),\n    ("p95", 95.0),\n    ("p99", 99.0),\n    ("p99.9", 99.9),\n',
        new='    ("p99.9", 90.0),\n    ("p95", 95.0),\n    ("p99", 99.0),\n    ("p90", 99.9),\n',
        tests=PERCENTILE_TESTS,
    ),
    Mutant(
        name="load-p90-computed-at-99.9",
        path="zcserve/load/stats.py",
        old='    ("p90", 90.0),\n',
        new='    ("p90", 99.9),\n',
        tests=PERCENTILE_TESTS,
    ),
    Mutant(
        name="load-summary-prints-p90-under-p99.9",
        path="zcserve/load/report.py",
        old='"  ".join(f"{name} {format_ms(latency[name])}" for name in LATENCY_SHOWN)',
        new='"  ".join(\n            f"{name} {format_ms(latency[key])}"\n'
        "            for name, key in zip(LATENCY_SHOWN, "
        '("p50", "p75", "p99.9", "p95", "p99", "p90"))\n        )',
        tests=PERCENTILE_TESTS,
    ),
    Mutant(
        name="load-verify-hashes-first-64k-of-body",
        path="zcserve/load/http.py",
        old="        self.body_bytes += len(body)\n"
        "        if self.hasher is not None:\n"
        "            self.hasher.update(body)\n",
        new="        already = self.body_bytes\n"
        "        self.body_bytes += len(body)\n"
        "        if self.hasher is not None and already < 65536:\n"
        "            self.hasher.update(body[: 65536 - already])\n",
        tests=VERIFY_TESTS,
    ),
    Mutant(
        name="load-expect-hashes-first-64k-of-file",
        path="zcserve/load/probe.py",
        old='        return hashlib.file_digest(file, "sha256").digest()',
        new="        return hashlib.sha256(file.read(65536)).digest()",
        tests=VERIFY_TESTS,
    ),
]
