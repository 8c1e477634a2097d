"""What a root answers for a path, resolved in-process without a socket."""

from __future__ import annotations

from zcserve.errors import HttpError
from zcserve.server.filecache import OpenFileCache
from zcserve.server.files import Kind, Root


def resolve_status(root: Root | OpenFileCache, path: bytes) -> int:
    """200 for a file or listing (closing what was opened), 301 for a slash
    redirect, else the refusal's status."""
    try:
        resolved = root.resolve(path)
    except HttpError as error:
        return error.status
    if resolved.file is not None:
        resolved.file.close()
    return 200 if resolved.kind is not Kind.REDIRECT else 301
