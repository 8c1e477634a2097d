"""Defects of the repeat shortcuts: a repeat taken for a request while llhttp holds
part of another, bytes kept as a repeat that were not parsed at rest, a repeat answered
from a file that changed, the rest of a repeat's body sent from the start, and a
repeat missing from the access log and the metrics."""

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
        old="        if self._at_rest and data == self._repeat_bytes:\n",
        new="        if data == self._repeat_bytes:\n",
        tests=(
            f"{PARSER_TESTS}::test_a_repeat_after_a_partial_feed_is_parsed_as_what_it_continues",
        ),
    ),
    Mutant(
        name="repeat-kept-from-bytes-not-parsed-at-rest",
        path=HTTP,
        old="            if self._at_rest:\n                self._repeat_bytes, self.repeat",
        new="            if True:\n                self._repeat_bytes, self.repeat",
        tests=(f"{PARSER_TESTS}::test_bytes_that_were_a_body_are_not_remembered_as_a_request",),
    ),
    Mutant(
        name="repeat-answered-from-a-changed-file",
        path=CONNECTION,
        old="        if server.files.current(request.path) is not entry or server.closing:\n",
        new="        if server.closing:\n",
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
        old="        if done and not (server.timed or server.access_log.on):\n",
        new="        if done:\n",
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
]
