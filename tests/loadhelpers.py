"""Old home of the load tests' helpers, now in tests/support/: kept only until
tests/test_load_output.py and tests/test_load_receive.py move to tests/load/ and
import from there."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.scripted import Behaviour as Behaviour
from tests.support.scripted import ScriptedServer as ScriptedServer
from tests.support.servers import start_child
from tests.support.tls import make_certificate as make_certificate


@contextmanager
def zcserve_child(*args: str) -> Iterator[str]:
    """`start_child(*args)`, yielding its URL."""
    with start_child(*args) as child:
        yield child.url
