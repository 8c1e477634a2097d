"""How long the tests wait, in one place, and the one way they wait for something.

Rules, so that the suite holds on a loaded 2-core machine and against a server that
enforces its timeouts with a coarse periodic sweep:

* nothing waits on a bare sleep: a test waits for something it can observe (a
  response, a close, a count back to its start) with `wait_for` or a socket
  timeout, and gives up after a deadline that only a broken server reaches;
* a server's timeout T is asserted as a lower and an upper bound, never a narrow
  window: the connection is cut no earlier than T - EARLY after a moment surely
  before the server's timer started, and no later than `latest_cut(T)` after a
  moment surely after it started;
* "still open" is shown by a further exchange on the connection, not by silence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEADLINE = 10.0
"""How long to wait for what should come at once: a response, a close, a log line, a
count of descriptors or connections back to its start."""
PROCESS_DEADLINE = 20.0
"""How long to wait for what a process does at once but a loaded machine may delay:
a child's exit, a worker forked or replaced, a supervisor's answer to a signal."""
CLIENT_TIMEOUT = 20.0
"""The socket timeout of a test's client: a read that takes this long has failed."""
READY_TIMEOUT = 10.0
"""How long an in-process server (zcserve or a scripted one) may take to start or stop."""
SETTLE = 20.0
"""How long a --metrics counter may take to reach its value (a worker's snapshot lags
by up to half a second; a loaded CI machine lags more)."""

EARLY = 0.05
"""How much sooner than its timeout a connection may be cut (clock granularity)."""
TICK = 1.0
"""The coarsest timer resolution a server may enforce its timeouts with."""
MARGIN = 2.0
"""Scheduling slack on a loaded machine, on top of the timeout and the tick."""


def latest_cut(timeout: float) -> float:
    """The longest a connection with `timeout` may outlive it."""
    return timeout + TICK + MARGIN


def wait_for(check: Callable[[], T], timeout: float, what: str, *, every: float = 0.02) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s (last: {result!r})")
        time.sleep(every)
