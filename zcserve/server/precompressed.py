"""Precompressed sidecars (`--precompressed br,gzip,zstd`), as nginx's gzip_static:
`x.css.br` beside `x.css`, no older than it, is served for `x.css` to a client
whose Accept-Encoding takes br. The sidecar is an ordinary open file, so the copy
strategy moves it (sendfile sends compressed bytes with zero copies), and ranges
and conditionals apply to its bytes and its own ETag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from zcserve.errors import ConfigError, HttpError
from zcserve.server.files import Kind, OpenedFile, Resolved, Resolver
from zcserve.server.http import Request, weighted_items
from zcserve.server.respond import Reply

Encoding = Literal["br", "gzip", "zstd"]
ENCODINGS: tuple[str, ...] = get_args(Encoding)
SUFFIXES = {"br": b".br", "gzip": b".gz", "zstd": b".zst"}
"""The sidecar's suffix for each content coding (nginx, caddy and
`precompress` tools use these)."""
VARY = ("Vary", "Accept-Encoding")
"""On every answer under --precompressed."""


def parse_encodings(text: str) -> tuple[str, ...]:
    """`"br,gzip"` from --precompressed as ("br", "gzip"), or ConfigError saying why."""
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    for name in names:
        if name not in ENCODINGS:
            raise ConfigError(
                f"--precompressed {text!r}: unknown encoding {name!r}; "
                f"expected a comma-separated list of {', '.join(ENCODINGS)}"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"--precompressed {text!r}: an encoding is listed twice")
    return names


def accepted(accept_encoding: str, encodings: tuple[str, ...]) -> list[str]:
    """The `encodings` the client takes (RFC 9110 12.5.3): listed with q > 0, or
    covered by `*` with q > 0 and not listed; q=0 refuses. Highest q first, the
    server's order between equals."""
    weights: dict[str, float] = {}
    for coding, weight in weighted_items(accept_encoding):
        if coding == "x-gzip":  # RFC 9110 8.4.1.3: the same coding
            coding = "gzip"
        weights[coding] = max(weight, weights.get(coding, weight))
    star = weights.get("*", 0.0)
    taken = [(weights.get(name, star), index, name) for index, name in enumerate(encodings)]
    return [name for weight, _, name in sorted(taken, key=lambda t: (-t[0], t[1])) if weight > 0]


class _Sidecars:
    """Resolves like `root`, but a file with a sidecar the client takes resolves to
    the sidecar, labelled with its encoding (`OpenedFile.encoding`)."""

    def __init__(self, root: Resolver, wanted: list[str]) -> None:
        self.root = root
        self.wanted = wanted
        self.listings = root.listings
        self.render_listing = root.render_listing

    def cached(self, url_path: bytes) -> OpenedFile | None:
        """Always `resolve`: which file answers depends on the sidecars."""
        return None

    def resolve(self, url_path: bytes) -> Resolved:
        resolved = self.root.resolve(url_path)
        original = resolved.file
        if original is None or url_path.endswith(b"/"):  # a listing, or a folder's index
            return resolved
        for encoding in self.wanted:
            try:
                side = self.root.resolve(url_path + SUFFIXES[encoding]).file
            except HttpError:
                continue
            if side is None:
                continue
            if side.mtime_ns < original.mtime_ns:  # stale: the original changed since
                side.close()
                continue
            encoded = OpenedFile(
                side.fd, original.name, side.size, side.mtime, side.mtime_ns,
                on_close=side.on_close, encoding=encoding,
            )  # fmt: skip
            side.fd, side.on_close = -1, None  # the descriptor (or its lease) moves over
            original.close()
            return Resolved(Kind.FILE, file=encoded)
        return resolved


def plan_with_sidecars(
    request: Request,
    root: Resolver,
    encodings: tuple[str, ...],
    plan: Callable[[Request, Resolver], Reply],
) -> Reply:
    """`plan`'s reply, from a sidecar when one fits. Its Content-Encoding is part of
    the head `plan` renders, and `Vary: Accept-Encoding` one of the added headers
    (`VARY`), on every answer, since any of them could differ with that header."""
    accept = request.headers.get("accept-encoding")
    wanted = accepted(accept, encodings) if accept else []
    return plan(request, _Sidecars(root, wanted) if wanted else root)
