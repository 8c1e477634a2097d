"""Defects of the third hostile-input round: error answers' representation headers,
and what the access log writes."""

from __future__ import annotations

from tests.mutants import Mutant

MUTANTS: list[Mutant] = [
    Mutant(
        name="unsatisfiable-range-labelled-with-the-sidecar-encoding",
        path="zcserve/server/precompressed.py",
        old="    if sidecars.used is not None and reply.status in (200, 206, 304):\n",
        new="    if sidecars.used is not None and reply.status in (200, 206, 304, 416):\n",
        tests=("tests/test_precompressed.py::test_an_unsatisfiable_range_is_not_labelled_encoded",),
    ),
    Mutant(
        name="log-writes-c1-controls-raw",
        path="zcserve/server/accesslog.py",
        old="*range(0x20), *range(0x7F, 0x100), ord(",
        new="*range(0x20), 0x7F, ord(",
        tests=(
            "tests/test_access_log_formats.py::test_random_bytes_in_logged_fields_stay_printable",
        ),
    ),
    Mutant(
        name="repeated-flag-adds-to-the-environment",
        path="zcserve/cli.py",
        old=" if getattr(namespace, marker, False) else []\n",
        new="\n",
        tests=("tests/test_cli_env.py::test_variables_set_defaults_and_flags_win",),
    ),
]
