"""A real browser against a real server: headless Chromium fetches a file and a range
from a page's script, renders a listing, and seeks into an audio file.

Skipped only when no Chromium is installed (`.ci/run` installs Debian's `chromium`).
The page writes its findings into the DOM, and `--dump-dom` prints the DOM once the
page's work is done (`--virtual-time-budget` lets its timers and fetches run)."""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import struct
import subprocess
import wave
from pathlib import Path

import pytest

from tests.support.servers import start_child

CHROMIUM = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (found := shutil.which(name))
    ),
    None,
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")

PAGE = """<!DOCTYPE html>
<meta charset=utf-8>
<title>browser check</title>
<pre id=result>pending</pre>
<audio id=audio preload=auto src="tone.wav"></audio>
<script>
async function check() {
  const whole = await fetch("big.bin");
  const digest = await crypto.subtle.digest("SHA-256", await whole.arrayBuffer());
  const hex = [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, "0")).join("");
  const part = await fetch("big.bin", {headers: {Range: "bytes=100-199"}});
  const bytes = new Uint8Array(await part.arrayBuffer());
  document.getElementById("result").textContent =
    `sha256=${hex} range=${part.status}:${bytes.length}:${bytes[0]}`;
}
const audio = document.getElementById("audio");
audio.addEventListener("loadedmetadata", () => { audio.currentTime = audio.duration * 0.75; });
audio.addEventListener("seeked", () => { document.title = "seeked"; });
check().catch(e => { document.getElementById("result").textContent = "error " + e; });
</script>
"""


def write_tone(path: Path, seconds: int = 600, rate: int = 32000) -> None:
    """A mono 16-bit WAV (a format Chromium plays), made here rather than downloaded.
    Ten minutes (38 MB): more than the browser buffers ahead, so a seek to 75 % must
    ask the server for a later range."""
    one_second = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(rate)
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(one_second * seconds)


def dump_dom(url: str, profile: Path) -> str:
    assert CHROMIUM is not None
    result = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--mute-audio", f"--user-data-dir={profile}",
            "--virtual-time-budget=15000", "--dump-dom", url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "folder").mkdir(parents=True)
    (root / "folder" / "note.txt").write_text("a note\n")
    (root / "page.html").write_text(PAGE)
    (root / "big.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    write_tone(root / "tone.wav")
    return root


def test_a_page_downloads_hashes_and_fetches_a_range(site: Path, tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"
    with start_child(str(site), "--listing", "--access-log", str(access_log)) as child:
        dom = dump_dom(f"{child.url}/page.html", tmp_path / "profile")
    expected = hashlib.sha256((site / "big.bin").read_bytes()).hexdigest()
    assert f"sha256={expected} range=206:100:100" in dom, dom[-1000:]
    assert "<title>seeked</title>" in dom, "the audio element never finished seeking"
    # The media element asks by Range from the start, then again for the seek; the
    # seek's answer may still be in flight when Chromium exits, and an aborted
    # response is logged too, with the bytes it was sent.
    audio = [line for line in access_log.read_text().splitlines() if "GET /tone.wav" in line]
    assert sum('" 206 ' in line for line in audio) >= 2, audio


def test_the_listing_renders_with_its_links(site: Path, tmp_path: Path) -> None:
    with start_child(str(site), "--listing") as child:
        dom = dump_dom(f"{child.url}/folder/", tmp_path / "profile")
    assert re.search(r'<a href="[^"]*note\.txt"', dom), dom[-1000:]


NAVIGATOR = """<!DOCTYPE html>
<meta charset=utf-8>
<title>listing check</title>
<pre id=result>pending</pre>
<iframe id=frame src="/a/b/"></iframe>
<script>
const frame = document.getElementById("frame");
const seen = [];
const steps = [
  doc => {  // in /a/b/: click the breadcrumb that leads to /a/
    seen.push("at " + frame.contentWindow.location.pathname);
    doc.querySelector('h1 a[href="/a/"]').click();
  },
  doc => {  // in /a/: type into the filter, then sort by size
    seen.push("at " + frame.contentWindow.location.pathname);
    const box = doc.getElementById("filter");
    box.value = "NOTE";
    box.dispatchEvent(new Event("input"));
    const shown = [...doc.querySelectorAll("tbody tr[data-name]")].filter(r => !r.hidden);
    seen.push("filtered " + shown.map(r => r.dataset.name).join(","));
    doc.querySelector('th button[value="size"]').click();
  },
  doc => {  // the sorted page
    seen.push("at " + frame.contentWindow.location.pathname + frame.contentWindow.location.search);
    const names = [...doc.querySelectorAll("tbody tr[data-name]")].map(r => r.dataset.name);
    seen.push("order " + names.join(","));
    document.getElementById("result").textContent = seen.join("; ");
  },
];
frame.addEventListener("load", () => {
  const step = steps.shift();
  try { if (step) step(frame.contentDocument); }
  catch (e) { document.getElementById("result").textContent = "error " + e + " after " + seen; }
});
</script>
"""


def test_a_listing_navigates_by_breadcrumb_filter_and_sort(tmp_path: Path) -> None:
    """In a real browser: a breadcrumb leads up, the filter hides rows as one types
    (no request), and a column head sorts through the server."""
    root = tmp_path / "site"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "notes.txt").write_bytes(b"x" * 300)
    (root / "a" / "big-note.bin").write_bytes(b"x" * 5000)
    (root / "a" / "other.txt").write_bytes(b"x" * 10)
    (root / "navigator.html").write_text(NAVIGATOR)
    access_log = tmp_path / "access.log"
    with start_child(str(root), "--listing", "--access-log", str(access_log)) as child:
        dom = dump_dom(f"{child.url}/navigator.html", tmp_path / "profile")
    result = re.search(r'<pre id="result">(.*?)</pre>', dom)
    assert result is not None, dom[-1000:]
    assert result.group(1) == (
        "at /a/b/; at /a/; filtered big-note.bin,notes.txt; at /a/?sort=size; "
        "order b,other.txt,notes.txt,big-note.bin"
    )
    requested = re.findall(r'"GET (\S+) ', access_log.read_text())
    assert requested.count("/a/") == 1  # the filter asked the server nothing
    assert "/a/?sort=size" in requested
