"""Defects of the repeat shortcuts: a repeat taken for a request while llhttp holds
part of another, bytes kept as a repeat that were not parsed at rest, a repeat answered
from a file that changed, the rest of a repeat's body sent from the start, a repeat
missing from the access log and the metrics, a trusted repeat sent from a descriptor
the cache closed or with a stale Date, a repeat read past the parser after it was
fed something else, and a repeat that leaves the keep-alive deadline where it was."""

from __future__ import annotations

from tests.mutants import Mutant

HTTP = "zcserve/server/http.py"
CONNECTION = "zcserve/server/connection.py"
PARSER_TESTS = "tests/server/test_http.py"
REPEATS = "tests/server/test_repeats.py"

MUTANTS: list[Mutant] = [
    Mutant(
        name="repeat-taken-while-a-message-is-begun",
        path=HTTP,
        old="        if self._at_rest and data == self.repeat_bytes:\n",
        new="        if data == self.repeat_bytes:\n",
        tests=(
            f"{PARSER_TESTS}::test_a_repeat_after_a_partial_feed_is_parsed_as_what_it_continues",
        ),
    ),
    Mutant(
        name="repeat-kept-from-bytes-not-parsed-at-rest",
        path=HTTP,
        old="            if self._at_rest:\n                self.repeat_bytes, self.repeat",
        new="            if True:\n                self.repeat_bytes, self.repeat",
        tests=(f"{PARSER_TESTS}::test_bytes_that_were_a_body_are_not_remembered_as_a_request",),
    ),
    Mutant(
        name="repeat-answered-from-a-changed-file",
        path=CONNECTION,
        old="        if files.current(request.path) is not entry or kept[0]",
        new="        if kept[0]",
        tests=(f"{REPEATS}::test_repeats_are_exact_and_see_a_changed_file_at_once",),
    ),
    Mutant(
        name="repeat-rest-sent-from-the-start",
        path=CONNECTION,
        old="            inflight.transfer = transfer\n",
        new="            inflight.transfer = None\n",
        tests=(f"{REPEATS}::test_repeats_the_socket_takes_in_part_are_finished_whole",),
    ),
    Mutant(
        name="repeat-neither-logged-nor-counted",
        path=CONNECTION,
        old="            quiet = not (self.server.timed or self.server.access_log.on)\n",
        new="            quiet = True\n",
        tests=(f"{REPEATS}::test_repeats_are_logged_and_counted_like_any_answer",),
    ),
    Mutant(
        name="repeat-fallbacks-not-counted",
        path=CONNECTION,
        old="            if self._fell_back:\n                server.metrics.fallbacks += 1\n",
        new="            if self._fell_back:\n                pass\n",
        tests=(f"{REPEATS}::test_repeats_are_logged_and_counted_like_any_answer",),
    ),
    Mutant(
        name="repeat-answers-not-counted",
        path=CONNECTION,
        old="            server.metrics.repeats += 1\n",
        new="            pass\n",
        tests=(f"{REPEATS}::test_repeats_are_logged_and_counted_like_any_answer",),
    ),
    Mutant(
        name="trusted-repeat-lends-a-closed-descriptor",
        path=CONNECTION,
        old="        if server.closing or entry.evicted:  # dropped",
        new="        if server.closing:  # dropped",
        tests=(
            f"{REPEATS}::test_trusted_repeats_read_their_own_file_after_its_entry_is_squeezed_out",
        ),
    ),
    Mutant(
        name="trusted-repeat-keeps-a-stale-date",
        path=CONNECTION,
        old="            repeat.until = min(entry.checked + files.valid, current_date_ends())\n",
        new="            repeat.until = entry.checked + files.valid\n",
        tests=(f"{REPEATS}::test_trusted_repeats_keep_the_date_header_current",),
    ),
    Mutant(
        name="repeat-read-past-the-parser-after-another-feed",
        path=CONNECTION,
        old="        self._repeat_length = -1\n        try:\n",
        new="        try:\n",
        tests=(f"{REPEATS}::test_a_repeat_after_a_partial_head_is_read_as_what_it_continues",),
    ),
    Mutant(
        name="repeat-leaves-the-keepalive-deadline-behind",
        path=CONNECTION,
        old=(
            "            if self.phase is _READING:\n"
            "                self._advance()\n        except"
        ),
        new="            pass\n        except",
        tests=(f"{REPEATS}::test_repeats_keep_a_connection_alive_until_it_idles",),
    ),
]
