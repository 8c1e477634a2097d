"""Defects of the repeat shortcuts: a repeat taken for a request while llhttp holds
part of another, the end of a split head remembered as a request, a repeat answered
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
        old="if repeat is not None and self._at_rest and data == repeat[0]:",
        new="if repeat is not None and data == repeat[0]:",
        tests=(
            f"{PARSER_TESTS}::test_a_repeat_after_a_partial_feed_is_parsed_as_what_it_continues",
        ),
    ),
    Mutant(
        name="repeat-remembers-the-end-of-a-split-head",
        path=HTTP,
        old="        if at_rest and was_at_rest and len(self._ready) == 1",
        new="        if at_rest and len(self._ready) == 1",
        tests=(f"{PARSER_TESTS}::test_the_end_of_a_split_head_is_not_remembered_as_a_request",),
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
        old="strategy.start(self.stream, reply.file, body_sent, count)",
        new="strategy.start(self.stream, reply.file, 0, count)",
        tests=(f"{REPEATS}::test_repeats_the_socket_takes_in_part_are_finished_whole",),
    ),
    Mutant(
        name="repeat-neither-logged-nor-counted",
        path=CONNECTION,
        old="                self._account_repeat(request, repeat, started)\n",
        new="                pass\n",
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
        name="repeat-taken-while-a-body-is-owed",
        path=HTTP,
        old="            not self.in_head\n            and isinstance(last, Request)",
        new="            isinstance(last, Request)",
        tests=(
            "tests/server/test_repeats_hostile.py::test_parser_is_not_at_rest_while_a_body_is_owed",
            "tests/server/test_fuzz.py::test_fuzz_parser_repeats",
        ),
    ),
]
