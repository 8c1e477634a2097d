"""The demo folder `make serve` shows: its root is the same styled listing as every
other folder, links every folder and file, and each link answers."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from tests.support.servers import start_child
from zcserve.demo import make_demo


def test_the_demo_root_is_a_styled_listing_of_every_folder_and_file(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<title>zcserve demo</title><ul></ul>")  # an old demo
    names = make_demo(str(tmp_path), sizes=(4096, 65536))
    with start_child(str(tmp_path), "--listing") as child:
        index = urllib.request.urlopen(f"{child.url}/", timeout=10).read().decode()
        links = re.findall(r'<td><a href="([^"]+)"', index)
        assert links == ["docs/", *names]
        docs = urllib.request.urlopen(f"{child.url}/docs/", timeout=10).read().decode()
        # The same page for the root as for a subfolder: the style, the filter box.
        for page in (index, docs):
            assert "<style>" in page and 'id="filter"' in page and "Index of" in page
        for link in links:
            with urllib.request.urlopen(f"{child.url}/{link}", timeout=10) as response:
                assert response.status == 200
        assert "hello.txt" in docs
