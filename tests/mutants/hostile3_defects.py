"""Defects of the third hostile-input round: error answers' representation headers,
and what the access log writes."""

from __future__ import annotations

from tests.mutants import Mutant

SLOW_READER = (
    "tests/server/test_one_core.py::test_a_slow_steady_reader_is_not_cut_at_the_send_timeout"
)

MUTANTS: list[Mutant] = [
    Mutant(
        name="unsatisfiable-range-labelled-with-the-sidecar-encoding",
        path="zcserve/server/respond.py",
        old='                    ("Content-Range", f"bytes */{file.size}"),\n',
        new='                    ("Content-Range", f"bytes */{file.size}"),\n'
        "                    *validators[2:],\n",
        tests=(
            "tests/server/test_precompressed.py::test_an_unsatisfiable_range_is_not_labelled_encoded",
        ),
    ),
    Mutant(
        name="log-writes-c1-controls-raw",
        path="zcserve/server/accesslog.py",
        old="*range(0x20), *range(0x7F, 0x100), ord(",
        new="*range(0x20), 0x7F, ord(",
        tests=(
            "tests/server/test_access_log_formats.py::test_random_bytes_in_logged_fields_stay_printable",
        ),
    ),
    Mutant(
        name="repeated-flag-adds-to-the-environment",
        path="zcserve/cliargs.py",
        old=" if getattr(namespace, marker, False) else []\n",
        new="\n",
        tests=("tests/e2e/test_cli_env.py::test_variables_set_defaults_and_flags_win",),
    ),
    Mutant(
        name="send-deadline-ignores-a-slow-reader-s-progress",
        path="zcserve/server/connection.py",
        old="                if queued < self._queued:  # a slow reader, still reading: wait on\n",
        new="                if False:\n",
        tests=(SLOW_READER,),
    ),
    Mutant(
        name="awaited-send-ignores-a-slow-reader-s-progress",
        path="zcserve/server/sockio.py",
        old="                    if now_queued >= queued:\n",
        new="                    if True:\n",
        tests=(SLOW_READER,),
    ),
    Mutant(
        name="linger-goes-on-after-the-client-closed",
        path="zcserve/server/connection.py",
        old="            self.close()\n            return\n        self._drained += received\n",
        new="            return\n        self._drained += received\n",
        tests=(
            "tests/server/test_one_core.py::test_a_lingering_connection_closes_when_its_client_does",
        ),
    ),
    Mutant(
        name="request-body-counter-never-reset",
        path="zcserve/server/http.py",
        old="        self._body_bytes = 0\n        headers, version = head.headers, head.version\n",
        new="        headers, version = head.headers, head.version\n",
        tests=(
            "tests/server/test_one_core.py::test_small_bodies_on_a_keepalive_connection_are_not_summed",
        ),
    ),
    Mutant(
        name="readall-budget-never-refuses",
        path="zcserve/server/strategies.py",
        old="        if self.held + count > self.budget:\n",
        new="        if False:\n",
        tests=(
            "tests/server/test_readall.py::test_past_the_budget_a_request_gets_503_and_retry_after",
        ),
    ),
    Mutant(
        name="listing-rendered-on-the-loop",
        path="zcserve/server/respond.py",
        old="    page = root.listings.get(key, time.monotonic())\n",
        new="    page = root.render_listing(resolved, query)\n",
        tests=(
            "tests/server/test_listing_large.py::"
            "test_small_requests_are_answered_while_large_listings_render",
        ),
    ),
    Mutant(
        name="listing-cache-blind-to-the-folder-version",
        path="zcserve/server/respond.py",
        old="    folder = (resolved.folder, resolved.version)\n",
        new="    folder = (resolved.folder, 0)\n",
        tests=("tests/server/test_listing.py::test_a_new_name_is_listed_at_once",),
    ),
    Mutant(
        name="listing-shows-symlinks-out-of-the-root",
        path="zcserve/server/files.py",
        old="                if inside is not None and entry.is_symlink():\n",
        new="                if False:\n",
        tests=("tests/server/test_dotfiles.py::test_every_listed_link_is_served",),
    ),
    Mutant(
        name="listing-max-ignored",
        path="zcserve/server/files.py",
        old="        page = paginate(self.list_folder(resolved), query, self.listing_max)\n",
        new="        page = paginate(self.list_folder(resolved), query, 1_000_000)\n",
        tests=(
            "tests/server/test_listing.py::"
            "test_a_long_listing_is_paged_with_a_visible_note_and_next_links",
        ),
    ),
    Mutant(
        name="listing-page-past-the-last-rendered-anew",
        path="zcserve/server/respond.py",
        old="    if last is not None and query.page > last:\n",
        new="    if False:\n",
        tests=("tests/server/test_listing.py::test_pages_past_the_last_share_the_last_page",),
    ),
]
