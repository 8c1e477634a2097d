"""Generate a demo folder: a few files of known sizes and a subfolder, for listings.

`python -m zcserve.demo DIR` is what `make serve` runs.
"""

from __future__ import annotations

import os
import sys

from zcserve.units import format_size

DEMO_SIZES = (4 * 1024, 64 * 1024, 1024 * 1024, 64 * 1024 * 1024)


def write_file(path: str, size: int, *, seed: int = 0) -> None:
    """A file of `size` pseudo-random bytes (repeatable per seed, cheap to make)."""
    block = bytes((i * 131 + seed * 7 + (i >> 8)) & 0xFF for i in range(1 << 16))
    with open(path, "wb") as out:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            out.write(piece)
            left -= len(piece)


def make_demo(folder: str, sizes: tuple[int, ...] = DEMO_SIZES) -> list[str]:
    """Create `folder` with one file per size; return the file names."""
    os.makedirs(os.path.join(folder, "docs"), exist_ok=True)
    names = []
    for size in sizes:
        name = f"file-{format_size(size)}.bin"
        path = os.path.join(folder, name)
        if not os.path.exists(path) or os.path.getsize(path) != size:
            write_file(path, size, seed=size)
        names.append(name)
    # The root is listed like every other folder; an index this module wrote before
    # (a bare list) would hide that page, so it goes.
    old_index = os.path.join(folder, "index.html")
    if os.path.exists(old_index):
        with open(old_index, encoding="utf-8") as made:
            if "<title>zcserve demo</title>" in made.read():
                os.remove(old_index)
    with open(os.path.join(folder, "docs", "hello.txt"), "w", encoding="utf-8") as out:
        out.write("Hello from zcserve.\n")
    return names


if __name__ == "__main__":
    make_demo(sys.argv[1] if len(sys.argv) > 1 else ".demo")
