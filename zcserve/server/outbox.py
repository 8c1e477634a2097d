"""Answers made in one pass of the event loop, sent together at its end.

A connection that sends its answer as soon as it has made it wakes its client
once per answer; on loopback (a proxy or a load generator on the same host) each
wake-up is an interrupt to the client's CPU that the sender pays for, 10 µs and
more inside a VM. Made during the pass and sent back to back at its end, the
answers of one pass wake a client once. Redis sends its replies the same way,
before its loop sleeps. Nothing waits longer than the pass that made it:
BENCHMARKS 16.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger("zcserve")


class Holder(Protocol):
    """A connection with an answer held for the end of the pass."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def send_held(self) -> None:
        """Send the held answer: it is this connection's turn."""

    def close(self) -> None: ...


class Outbox:
    """The connections whose answers wait for the end of this loop pass; one per
    server (and so per loop)."""

    __slots__ = ("_held", "_scheduled", "flushing")

    def __init__(self) -> None:
        self._held: list[Holder] = []
        self._scheduled = False
        self.flushing = False
        """True while the held answers go out: a connection answering its next
        request then (one pipelined behind the first) sends at once."""

    def hold(self, connection: Holder) -> None:
        """Send `connection`'s answer at the end of this pass."""
        self._held.append(connection)
        if not self._scheduled:
            self._scheduled = True
            # Ready callbacks run after the pass's I/O callbacks, uvloop's and asyncio's.
            connection.loop.call_soon(self._on_pass_end)

    def _on_pass_end(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Send every held answer now, in the order they were made."""
        held, self._held = self._held, []
        self.flushing = True
        try:
            for connection in held:
                try:
                    connection.send_held()
                except Exception:  # a bug costs its own connection, not the others'
                    log.exception("unexpected error sending a held answer")
                    connection.close()
        finally:
            self.flushing = False
