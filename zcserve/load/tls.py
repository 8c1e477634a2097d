"""TLS for the load generator: the client context and handshake failures in one line.

Every connection to an https:// origin does a full handshake (no session
resumption), offers ALPN `http/1.1` only and sends the URL's host as SNI (Python
sends no SNI for an IP literal, as RFC 6066 says, but still checks the address
against the certificate). The handshake is timed apart from the requests.
"""

from __future__ import annotations

import os
import ssl

from zcserve.errors import ConfigError

ALPN_PROTOCOLS = ("http/1.1",)
"""What the client offers; the load generator speaks HTTP/1.1 and nothing else."""
UNTRUSTED_HINT = "trust it with --cacert FILE, or skip the check with --insecure"
NOT_FROM_CACERT_HINT = "no CA in --cacert {cacert} signed it; skip the check with --insecure"
"""The hint when --cacert was given: trusting it is what was tried."""


class HandshakeError(OSError):
    """The TCP connection opened but the TLS handshake failed; `__cause__` says why."""


def client_context(*, insecure: bool, cacert: str | None) -> ssl.SSLContext:
    """A client context: the system's CAs (or only `cacert`'s), host names checked,
    unless `insecure`, which checks neither. `ConfigError` when `cacert` is unusable."""
    if insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            # Purpose.SERVER_AUTH: CERT_REQUIRED and check_hostname; with cafile, only
            # those CAs are trusted, not the system's.
            context = ssl.create_default_context(cafile=cacert)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"cannot load --cacert {cacert!r}: {exc.reason or exc}; expected PEM certificates"
            ) from None
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(f"cannot load --cacert {cacert!r}: {why}") from None
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    return context


def describe_handshake_error(exc: BaseException, cacert: str | None = None) -> str:
    """Why a handshake failed, for the one-line error of the first connection; the
    hint for an untrusted certificate depends on whether `cacert` was given."""
    if isinstance(exc, HandshakeError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = UNTRUSTED_HINT if cacert is None else NOT_FROM_CACERT_HINT.format(cacert=cacert)
        return f"TLS certificate verify failed: {exc.verify_message}; {hint}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    if isinstance(exc, ConnectionError):
        return "TLS handshake failed: the server closed the connection (is it serving https?)"
    if isinstance(exc, OSError) and exc.errno:
        return f"TLS handshake failed: {os.strerror(exc.errno)}"
    return f"TLS handshake failed: {exc}"
