"""Folder listings without I/O: entries in, HTML or JSON bytes out.

`files` reads the folder (and decides what may be listed); this module sorts the
entries as the query asks (`?sort=name|size|mtime&order=asc|desc`, folders first)
and renders them: a page readable on a phone, or JSON for programs.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, quote

from zcserve.server.http import weighted_items

SortKey = Literal["name", "size", "mtime"]
SORT_KEYS: tuple[str, ...] = get_args(SortKey)
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")

_STYLE = (
    "body{font:16px/1.4 system-ui,sans-serif;margin:0 auto;padding:1em;max-width:60em;"
    "color:#222;background:#fff}"
    "h1{font-size:1.2em;word-break:break-all}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{padding:.45em .5em;text-align:left;border-bottom:1px solid #ddd}"
    "th{white-space:nowrap}td:first-child{word-break:break-all}"
    "td.n,th.n{text-align:right;white-space:nowrap}td.t{white-space:nowrap;color:#555}"
    "a{color:#0645ad;text-decoration:none}a:hover{text-decoration:underline}"
    "@media (max-width:40em){td.t,th.t{display:none}}"
    "@media (prefers-color-scheme:dark){body{color:#ddd;background:#111}"
    "th,td{border-color:#333}a{color:#8ab4f8}td.t{color:#aaa}}"
)
"""Small, no script, no web font: legible on a phone and on a projected slide. On a
narrow screen the date column folds away, so names keep their room."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed name: a folder or a regular file, and what stat said of it."""

    name: str
    is_dir: bool
    size: int
    mtime: float


def parse_query(query: bytes) -> tuple[SortKey, bool]:
    """(sort key, descending) from a listing's query; anything unknown is ignored."""
    sort: SortKey = "name"
    descending = False
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == "sort" and value in SORT_KEYS:
            sort = value  # type: ignore[assignment]  # checked against SORT_KEYS
        elif key == "order":
            descending = value == "desc"
    return sort, descending


_SORT_BY: dict[str, Callable[[Entry], Any]] = {
    "name": lambda e: (e.name.casefold(), e.name),
    "size": lambda e: (e.size, e.name.casefold()),
    "mtime": lambda e: (e.mtime, e.name.casefold()),
}


def sort_entries(entries: Sequence[Entry], sort: SortKey, descending: bool) -> list[Entry]:
    """Folders first, then files; each group ordered by `sort`."""
    by = _SORT_BY[sort]
    folders = sorted((e for e in entries if e.is_dir), key=by, reverse=descending)
    files = sorted((e for e in entries if not e.is_dir), key=by, reverse=descending)
    return folders + files


def human_size(size: int) -> str:
    """1536 -> "1.5 KiB"; bytes below 1 KiB are exact."""
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _date(mtime: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(mtime))


def wants_json(accept: str | None) -> bool:
    """True when the client asks for application/json rather than HTML: JSON is
    listed with q > 0 and preferred to text/html (browsers list text/html first)."""
    if accept is None or "json" not in accept:
        return False
    weights: dict[str, float] = {}
    for media, weight in weighted_items(accept):
        weights.setdefault(media, weight)
    json_weight = weights.get("application/json", 0.0)
    return json_weight > 0 and json_weight >= weights.get("text/html", 0.0)


def render_json(entries: Sequence[Entry]) -> bytes:
    """`[{"name", "size", "mtime", "is_dir"}, ...]`: mtime in Unix seconds, size null
    for a folder."""
    rows = [
        {
            "name": e.name,
            "size": None if e.is_dir else e.size,
            "mtime": int(e.mtime),
            "is_dir": e.is_dir,
        }
        for e in entries
    ]
    return json.dumps(rows, ensure_ascii=False).encode("utf-8")


def render_html(
    url_dir: str, entries: Sequence[Entry], sort: SortKey = "name", descending: bool = False
) -> bytes:
    """The listing page; every name is escaped for HTML and for URLs. Column heads
    link to the page sorted by that column, the current one in the other order."""
    title = html.escape(url_dir if url_dir.endswith("/") else url_dir + "/")
    heads = []
    for key, label, css in (
        ("name", "Name", ""),
        ("size", "Size", "n"),
        ("mtime", "Modified", "t"),
    ):
        flip = key == sort and not descending
        mark = (" \u25be" if descending else " \u25b4") if key == sort else ""
        href = f"?sort={key}" + ("&amp;order=desc" if flip else "")
        css_attr = f' class="{css}"' if css else ""
        heads.append(f'<th{css_attr}><a class="sort" href="{href}">{label}</a>{mark}</th>')
    rows = []
    if url_dir not in ("", "/"):
        rows.append('<tr><td><a href="../">../</a></td><td class="n"></td><td class="t"></td></tr>')
    for e in entries:
        suffix = "/" if e.is_dir else ""
        href = html.escape(quote(e.name, safe="") + suffix)
        size = "" if e.is_dir else human_size(e.size)
        rows.append(
            f'<tr><td><a href="{href}">{html.escape(e.name)}{suffix}</a></td>'
            f'<td class="n">{size}</td><td class="t">{_date(e.mtime)}</td></tr>'
        )
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Index of {title}</title><style>{_STYLE}</style></head>\n"
        f"<body><h1>Index of {title}</h1>\n<table>\n<thead><tr>{''.join(heads)}</tr></thead>\n"
        "<tbody>\n" + "\n".join(rows) + "\n</tbody></table></body></html>\n"
    )
    return page.encode("utf-8")
