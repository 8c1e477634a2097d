"""The shared fixtures: a generated site with a secret outside it, live servers on
it, one certificate, and the two transports.

`live` runs over every copy strategy and both event loops (for tests that move body
bytes), `default_live` with the default strategy on each loop (for path and HTTP
semantics, which do not depend on how bytes are copied). Helpers are imported from
tests/support/, never from here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import start_server
from tests.support.site import DEFAULT_STRATEGY, LOOPS, Live, Site, make_site
from tests.support.tls import Certificate, Transport, make_certificate
from zcserve.server.strategies import STRATEGY_NAMES


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return make_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(
    scope="session",
    params=[(s, loop) for s in STRATEGY_NAMES for loop in LOOPS],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def live(request: pytest.FixtureRequest, site: Site) -> Iterator[Live]:
    strategy, loop = request.param
    with start_server(root=site.root, strategy=strategy, loop=loop) as thread:
        yield Live(thread.port, strategy, loop, thread)


@pytest.fixture(scope="session", params=LOOPS, ids=lambda loop: f"default-{loop}")
def default_live(request: pytest.FixtureRequest, site: Site) -> Iterator[Live]:
    loop: str = request.param
    with start_server(root=site.root, strategy=DEFAULT_STRATEGY, loop=loop) as thread:
        yield Live(thread.port, DEFAULT_STRATEGY, loop, thread)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """The self-signed certificate every TLS test uses (server and client alike)."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module", params=["plain", "tls"])
def transport(request: pytest.FixtureRequest) -> Transport:
    """Plain TCP, then TLS with `certificate` (asked for only then: without openssl,
    only the TLS half skips)."""
    if request.param == "plain":
        return Transport("plain", None)
    certificate: Certificate = request.getfixturevalue("certificate")
    return Transport("tls", certificate)
