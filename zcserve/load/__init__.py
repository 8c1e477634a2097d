"""`zcserve load`: a load generator that measures any HTTP/1.1 server.

Nothing here imports the server or the bench: a load worker must start without
loading the code it measures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zcserve.load.run import LoadOptions, LoadResult, run_load, run_load_async

__all__ = ["LoadOptions", "LoadResult", "run_load", "run_load_async"]


def __getattr__(name: str) -> object:
    """The Python API, imported on first use: a worker process needs none of it."""
    if name in __all__:
        from zcserve.load import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
