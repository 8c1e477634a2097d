"""The demo folder `make serve` shows: its index links every folder and file, and each
link answers."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from tests.procs import serving
from zcserve.demo import make_demo


def test_the_demo_index_links_every_folder_and_file(tmp_path: Path) -> None:
    names = make_demo(str(tmp_path), sizes=(4096, 65536))
    with serving(str(tmp_path), "--listing") as child:
        index = urllib.request.urlopen(f"{child.url}/", timeout=10).read().decode()
        links = re.findall(r'href="([^"]+)"', index)
        assert links == ["docs/", *names]
        for link in links:
            with urllib.request.urlopen(f"{child.url}/{link}", timeout=10) as response:
                assert response.status == 200
        listing = urllib.request.urlopen(f"{child.url}/docs/", timeout=10).read().decode()
        assert "hello.txt" in listing
