"""Where a bench mode works: the files it serves and the folder its results go to."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from zcserve.demo import write_file
from zcserve.units import format_size


def make_files(folder: str, sizes: Sequence[int]) -> dict[int, str]:
    """One file of each size in `folder`, named by its size (4KiB.bin); size -> path."""
    paths = {}
    for size in sizes:
        path = os.path.join(folder, f"{format_size(size)}.bin")
        write_file(path, size, seed=size % 251)
        paths[size] = path
    return paths


def output_folder(requested: str | None) -> str:
    """--out, or bench-results/DATE-TIME when it is not given."""
    if requested:
        return requested
    return os.path.join("bench-results", time.strftime("%Y%m%d-%H%M%S"))
