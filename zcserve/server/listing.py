"""Folder listings without I/O: entries in, HTML or JSON bytes out.

`files` reads the folder (and decides what may be listed); this module sorts the
entries as the query asks (`?sort=name|size|mtime&order=asc|desc`, folders first),
cuts them into pages of `--listing-max` entries (`?page=N`) and renders one: a page
readable on a phone, or JSON for programs (`Accept: application/json` or
`?format=json`). `ListingCache` keeps rendered pages for a short while.
"""

from __future__ import annotations

import heapq
import html
import itertools
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args
from urllib.parse import parse_qsl, quote

from zcserve.server.http import weighted_items

SortKey = Literal["name", "size", "mtime"]
SORT_KEYS: tuple[str, ...] = get_args(SortKey)
LISTING_MAX = 10_000
"""Entries on one page by default (`--listing-max`): about 2 MB of HTML."""
_SORT_RUN = 2048
"""Entries sorted in one go (see `_ordered`)."""
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_LAST_PAGE = 1_000_000
"""Past any real folder's last page; bounds the number parsed from `?page=`."""

_STYLE = (
    "body{font:16px/1.4 system-ui,sans-serif;margin:0 auto;padding:1em;max-width:60em;"
    "color:#222;background:#fff}"
    "h1{font-size:1.2em;word-break:break-all}h1 a{color:inherit}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{padding:.45em .5em;text-align:left;border-bottom:1px solid #ddd}"
    "th{white-space:nowrap}td:first-child{word-break:break-all}"
    "td.n,th.n{text-align:right;white-space:nowrap}td.t{white-space:nowrap;color:#555}"
    "a,button.sort{color:#0645ad;text-decoration:none}a:hover,button.sort:hover"
    "{text-decoration:underline}th form{display:inline;margin:0}"
    "button.sort{font:inherit;font-weight:bold;background:none;border:0;padding:0;cursor:pointer}"
    "p.sum{color:#555;margin:.3em 0}input{font:inherit;width:100%;box-sizing:border-box;"
    "padding:.3em .5em;margin:.3em 0 .6em}"
    "@media (max-width:40em){td.t,th.t{display:none}}"
    "@media (prefers-color-scheme:dark){body{color:#ddd;background:#111}"
    "th,td{border-color:#333}a,button.sort{color:#8ab4f8}td.t,p.sum{color:#aaa}"
    "input{background:#222;color:#ddd;border:1px solid #444}}"
)
"""Small, no web font: legible on a phone and on a projected slide. On a narrow
screen the date column folds away, so names keep their room."""

_FILTER_SCRIPT = (
    "<script>(function(){var box=document.getElementById('filter');"
    "var rows=document.querySelectorAll('tbody tr[data-name]');"
    "box.addEventListener('input',function(){var q=box.value.toLowerCase();"
    "rows.forEach(function(r){r.hidden=q!==''&&r.dataset.name.indexOf(q)<0;});});"
    "})();</script>"
)
"""Filters the rows of this page as the user types, with no round trip."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed name: a folder or a regular file, and what stat said of it."""

    name: str
    is_dir: bool
    size: int
    mtime: float


class ListingQuery(NamedTuple):
    """What a listing request asks for; part of the rendered page's cache key."""

    sort: SortKey = "name"
    descending: bool = False
    page: int = 1
    as_json: bool = False


def parse_query(query: bytes, accept: str | None = None) -> ListingQuery:
    """The listing's query (`sort`, `order`, `page`, `format=json`) and Accept
    header; anything unknown or malformed is ignored."""
    sort: SortKey = "name"
    descending = False
    page = 1
    as_json = wants_json(accept)
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == "sort" and value in SORT_KEYS:
            sort = value  # type: ignore[assignment]  # checked against SORT_KEYS
        elif key == "order":
            descending = value == "desc"
        elif key == "page" and value.isdigit() and len(value) < 8:
            page = min(max(int(value), 1), _LAST_PAGE)
        elif key == "format":
            as_json = value == "json"
    return ListingQuery(sort, descending, page, as_json)


_SORT_BY: dict[str, Callable[[Entry], Any]] = {
    "name": lambda e: (e.name.casefold(), e.name),
    "size": lambda e: (e.size, e.name.casefold()),
    "mtime": lambda e: (e.mtime, e.name.casefold()),
}


def sort_entries(entries: Sequence[Entry], sort: SortKey, descending: bool) -> list[Entry]:
    """Folders first, then files; each group ordered by `sort`."""
    return list(_ordered(entries, sort, descending))


def _ordered(entries: Sequence[Entry], sort: SortKey, descending: bool) -> Iterator[Entry]:
    """`sort_entries`, made as it is read: sorted runs of `_SORT_RUN`, merged. One
    `sorted` of 100,000 names holds the GIL for tens of milliseconds, and the
    loop's thread would wait that long; a run holds it for about one."""
    by = _SORT_BY[sort]
    groups = ([e for e in entries if e.is_dir], [e for e in entries if not e.is_dir])
    merged = []
    for group in groups:
        runs = [
            sorted(group[start : start + _SORT_RUN], key=by, reverse=descending)
            for start in range(0, len(group), _SORT_RUN)
        ]
        merged.append(heapq.merge(*runs, key=by, reverse=descending))
    return itertools.chain(*merged)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a sorted listing, and what the whole folder holds."""

    entries: Sequence[Entry]
    number: int
    pages: int
    first: int
    """Index of this page's first entry in the whole sorted listing."""
    folders: int
    files: int
    total_size: int
    """The files' sizes added up, over every page."""

    @property
    def count(self) -> int:
        return self.folders + self.files


def paginate(entries: Sequence[Entry], query: ListingQuery, per_page: int) -> Page:
    """The page `query` asks for (the last one if it asks past the end); only the
    entries up to its end are put in order."""
    pages = max(1, -(-len(entries) // per_page))
    number = min(query.page, pages)
    first = (number - 1) * per_page
    folders = sum(1 for e in entries if e.is_dir)
    total_size = sum(e.size for e in entries if not e.is_dir)
    ordered = _ordered(entries, query.sort, query.descending)
    shown = list(itertools.islice(ordered, first, first + per_page))
    return Page(shown, number, pages, first, folders, len(entries) - folders, total_size)


def human_size(size: int) -> str:
    """1536 -> "1.5 KiB"; bytes below 1 KiB are exact."""
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _date(mtime: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(mtime))


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


def _page_query(query: ListingQuery, number: int) -> str:
    """The query string of page `number` in the same order (not HTML-escaped)."""
    parts = []
    if query.sort != "name":
        parts.append(f"sort={query.sort}")
    if query.descending:
        parts.append("order=desc")
    if query.as_json:
        parts.append("format=json")
    if number > 1:
        parts.append(f"page={number}")
    return "?" + "&".join(parts) if parts else "./"


def render_json(url_dir: str, page: Page, query: ListingQuery) -> bytes:
    """`{"path", "count", "folders", "files", "total_size", "page", "pages", "next",
    "entries": [{"name", "size", "mtime", "is_dir"}, ...]}`: mtime in Unix seconds,
    size null for a folder, `next` the next page's URL or null."""
    document = {
        "path": _slashed(url_dir),
        "count": page.count,
        "folders": page.folders,
        "files": page.files,
        "total_size": page.total_size,
        "page": page.number,
        "pages": page.pages,
        "next": (_page_query(query, page.number + 1) if page.number < page.pages else None),
        "entries": [
            {
                "name": e.name,
                "size": None if e.is_dir else e.size,
                "mtime": int(e.mtime),
                "is_dir": e.is_dir,
            }
            for e in page.entries
        ],
    }
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def _slashed(url_dir: str) -> str:
    return url_dir if url_dir.endswith("/") else url_dir + "/"


def breadcrumbs(url_dir: str) -> str:
    """ "/a/b/" as links to "/", "/a/" and "/a/b/", each part escaped."""
    parts = [part for part in url_dir.split("/") if part]
    links = ['<a href="/">/</a>']
    href = "/"
    for part in parts:
        href += quote(part, safe="") + "/"
        links.append(f'<a href="{html.escape(href)}">{html.escape(part)}/</a>')
    return "".join(links)


def _summary(page: Page) -> str:
    folders = f"{page.folders} folder" + ("" if page.folders == 1 else "s")
    files = f"{page.files} file" + ("" if page.files == 1 else "s")
    return f"{folders}, {files}, {human_size(page.total_size)} in all"


def _pager(page: Page, query: ListingQuery) -> str:
    """The note that a listing is cut into pages, with links to the others."""
    if page.pages == 1:
        return ""
    shown = f"Entries {page.first + 1:,}–{page.first + len(page.entries):,} of {page.count:,}"
    links = []
    for rel, number, label in (
        ("prev", page.number - 1, "previous page"),
        ("next", page.number + 1, "next page"),
    ):
        if 1 <= number <= page.pages:
            href = html.escape(_page_query(query, number))
            links.append(f'<a rel="{rel}" href="{href}">{label}</a>')
    where = f"{shown} (page {page.number} of {page.pages})."
    return f'<p class="sum pager">{where} {" · ".join(links)}</p>\n'


def render_html(url_dir: str, page: Page, query: ListingQuery | None = None) -> bytes:
    """The listing page; every name is escaped for HTML and for URLs. Column heads
    lead to the page sorted by that column, the current one in the other order.
    They are GET forms, not links, so `wget -r` fetches each folder once: wget
    follows `rel="nofollow"` links, but submits no forms."""
    query = query or ListingQuery()
    title = html.escape(_slashed(url_dir))
    heads = []
    for key, label, css in (
        ("name", "Name", ""),
        ("size", "Size", "n"),
        ("mtime", "Modified", "t"),
    ):
        flip = key == query.sort and not query.descending
        mark = (" \u25be" if query.descending else " \u25b4") if key == query.sort else ""
        order = '<input type="hidden" name="order" value="desc">' if flip else ""
        css_attr = f' class="{css}"' if css else ""
        heads.append(
            f'<th{css_attr}><form>{order}<button class="sort" name="sort" value="{key}">'
            f"{label}</button>{mark}</form></th>"
        )
    rows = []
    if url_dir not in ("", "/"):
        rows.append('<tr><td><a href="../">../</a></td><td class="n"></td><td class="t"></td></tr>')
    for e in page.entries:
        suffix = "/" if e.is_dir else ""
        href = html.escape(quote(e.name, safe="") + suffix)
        name = html.escape(e.name)
        size = "" if e.is_dir else human_size(e.size)
        rows.append(
            f'<tr data-name="{html.escape(e.name.lower())}"><td><a href="{href}">{name}{suffix}</a>'
            f'</td><td class="n">{size}</td><td class="t">{_date(e.mtime)}</td></tr>'
        )
    pager = _pager(page, query)
    out = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Index of {title}</title><style>{_STYLE}</style></head>\n"
        f"<body><h1>Index of {breadcrumbs(url_dir)}</h1>\n"
        f'<p class="sum">{_summary(page)}</p>\n{pager}'
        '<input id="filter" type="search" placeholder="Filter this page" '
        'aria-label="Filter this page" autocomplete="off">\n'
        f"<table>\n<thead><tr>{''.join(heads)}</tr></thead>\n"
        "<tbody>\n" + "\n".join(rows) + f"\n</tbody></table>\n{pager}{_FILTER_SCRIPT}"
        "</body></html>\n"
    )
    return out.encode("utf-8")


class RenderedPage(NamedTuple):
    """A rendered listing page, and how many pages its folder has."""

    body: bytes
    media: str
    pages: int


FOLDERS_COUNTED = 4096
"""Folder versions whose page count `ListingCache` keeps (a few ints each)."""


class ListingCache:
    """Rendered listing pages, by (folder, folder version, query), for `max_age`
    seconds at most, `capacity` bytes in all; and each folder version's number of
    pages, so that a page asked past the last is the last page's key, not a new
    rendering (`?page=99999` then `?page=99998` ... would each read the folder).

    A folder's version (its stat identity) changes when a name is added, removed
    or renamed, but not when a file in it is rewritten: the age cap bounds how
    stale a listed size or date can be."""

    def __init__(self, capacity: int, max_age: float) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self.held = 0
        self._pages: OrderedDict[Hashable, tuple[float, RenderedPage]] = OrderedDict()
        self._counts: dict[Hashable, int] = {}

    def get(self, key: Hashable, now: float) -> RenderedPage | None:
        """The page, or None when absent or too old."""
        found = self._pages.get(key)
        if found is None:
            return None
        made, page = found
        if now - made > self.max_age:
            self._drop(key)
            return None
        self._pages.move_to_end(key)
        return page

    def put(self, key: Hashable, folder: Hashable, page: RenderedPage, now: float) -> None:
        """Keep a page, and its `folder` version's page count; the least recently
        used pages go first when over `capacity`. A page larger than the whole
        capacity is not kept."""
        if len(self._counts) >= FOLDERS_COUNTED:
            self._counts.clear()
        self._counts[folder] = page.pages
        self._drop(key)
        if len(page.body) > self.capacity:
            return
        self._pages[key] = (now, page)
        self.held += len(page.body)
        while self.held > self.capacity:
            self._drop(next(iter(self._pages)))

    def last_page(self, folder: Hashable) -> int | None:
        """The number of pages of this folder version, once one page was rendered."""
        return self._counts.get(folder)

    def _drop(self, key: Hashable) -> None:
        found = self._pages.pop(key, None)
        if found is not None:
            self.held -= len(found[1].body)
