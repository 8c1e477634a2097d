"""Kept for one release: the load generator's Python API now lives in `zcserve.load`."""

from zcserve.load.command import add_command, run_command
from zcserve.load.run import LoadOptions, LoadResult, run_load, run_load_async

__all__ = ["LoadOptions", "LoadResult", "add_command", "run_command", "run_load", "run_load_async"]
