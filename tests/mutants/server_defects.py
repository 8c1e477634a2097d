"""Defects in the server's containment, path decoding and copy strategies
(zcserve/server/files.py, zcserve/server/strategies.py)."""

from __future__ import annotations

from tests.mutants import Mutant

FILES = "zcserve/server/files.py"
STRATEGIES = "zcserve/server/strategies.py"

STRATEGY_TESTS = "tests/server/test_strategies.py"
SENDFILE_SPY = f"{STRATEGY_TESTS}::test_sendfile_carries_the_body_and_nothing_reads_the_file"
SPLICE_SPY = f"{STRATEGY_TESTS}::test_splice_carries_the_body_and_nothing_reads_the_file"
MMAP_SPY = f"{STRATEGY_TESTS}::test_mmap_sends_from_the_mapping_and_never_reads_it"
STRACE = f"{STRATEGY_TESTS}::test_zero_copy_under_strace"
BYTES_SENT = f"{STRATEGY_TESTS}::test_bytes_sent_grows_by_exactly_count"
FAIRNESS = "tests/server/test_fairness.py::test_a_transfer_that_never_waits_still_lets_others_run"

SENDFILE_START = "        step = functools.partial(os.sendfile, stream.fd, file.fd)\n"
"""The first line of the sendfile strategy's transfer: an extra read goes before it."""

MUTANTS: list[Mutant] = [
    Mutant(
        name="containment-string-prefix-without-slash",
        path=FILES,
        old="real.startswith(self._prefix)",
        new="real.startswith(self.path)",
        tests=(
            "tests/server/test_containment.py::test_outside_the_root_is_refused",
            "tests/server/test_containment.py::test_live_sibling_with_the_same_prefix_is_refused",
        ),
    ),
    Mutant(
        name="dot-dot-not-refused-after-decoding",
        path=FILES,
        old='        if segment == "..":\n'
        '            raise HttpError(404, "path leaves the root")\n',
        new="",
        tests=(
            "tests/server/test_files.py::test_url_segments_refuses_every_spelling_of_dot_dot",
            "tests/server/test_files.py::test_dot_dot_is_refused_before_anything_is_opened",
            "tests/server/test_containment.py::test_dot_dot_is_refused_before_anything_is_opened",
            "tests/server/test_containment.py::test_live_dot_dot_inside_the_root_is_404",
        ),
    ),
    Mutant(
        name="auto-never-uses-sendfile",
        path=STRATEGIES,
        old="            return self.zero_copy\n",
        new="            return self.fallback\n",
        tests=(f"{SENDFILE_SPY}[auto-uvloop]", f"{SENDFILE_SPY}[auto-asyncio]", STRACE),
    ),
    Mutant(
        name="sendfile-extra-read-through-file-object",
        path=STRATEGIES,
        old=SENDFILE_START,
        new='        with open(file.fd, "rb", closefd=False) as extra:\n'
        "            extra.seek(offset)\n"
        "            extra.read(count)\n" + SENDFILE_START,
        tests=(SENDFILE_SPY, STRACE),
    ),
    Mutant(
        name="sendfile-extra-readinto-through-fileio",
        path=STRATEGIES,
        old=SENDFILE_START,
        new='        with __import__("io").FileIO(file.fd, closefd=False) as extra:\n'
        "            extra.seek(offset)\n"
        "            scratch = bytearray(65536)  # reused: no copy piles up\n"
        "            while extra.readinto(scratch):\n"
        "                pass\n" + SENDFILE_START,
        tests=(SENDFILE_SPY, STRACE),
    ),
    Mutant(
        name="sendfile-extra-read-through-mmap-slice",
        path=STRATEGIES,
        old=SENDFILE_START,
        new="        with mmap.mmap(file.fd, 0, access=mmap.ACCESS_READ) as extra:\n"
        "            extra[offset : offset + count]\n" + SENDFILE_START,
        tests=(SENDFILE_SPY,),
    ),
    Mutant(
        name="splice-copies-through-userspace",
        path=STRATEGIES,
        old="in_pipe = splice(file_fd, write_end, min(pipe_size, size), offset, None, flags)",
        new="in_pipe = os.write(write_end, os.pread(file_fd, min(pipe_size, size), offset))",
        tests=(SPLICE_SPY, STRACE),
    ),
    Mutant(
        name="mmap-reads-the-mapping-in-python",
        path=STRATEGIES,
        old="                    return send(piece)\n",
        new="                    return send(\n"
        "                        mapping[offset - start : offset - start + len(piece)]\n"
        "                    )\n",
        tests=(MMAP_SPY, STRACE),
    ),
    Mutant(
        name="mmap-copies-each-slice-to-bytes",
        path=STRATEGIES,
        old="                    return send(piece)\n",
        new="                    return send(bytes(piece))\n",
        tests=(MMAP_SPY, STRACE),
    ),
    Mutant(
        name="fairness-turn-removed",
        path=STRATEGIES,
        old="                if offset >= turn_ends:\n                    return _YIELD\n",
        new="",
        tests=(FAIRNESS,),
    ),
    Mutant(
        name="pump-does-not-yield-on-the-turn",
        path=STRATEGIES,
        old="            elif progress is Progress.YIELD:\n"
        "                await asyncio.sleep(0)\n",
        new="            elif progress is Progress.YIELD:\n                pass\n",
        tests=(FAIRNESS,),
    ),
    Mutant(
        name="bytes-sent-skips-splice-and-fallback",
        path=STRATEGIES,
        old="            self.offset = offset\n            self.stream.bytes_sent += sent\n",
        new="            self.offset = offset\n"
        '            name = getattr(self._step, "__qualname__", "")\n'
        '            if not name.startswith(("Splice", "Fallback")):\n'
        "                self.stream.bytes_sent += sent\n",
        tests=(BYTES_SENT,),
    ),
]
