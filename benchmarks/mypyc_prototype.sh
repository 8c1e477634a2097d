#!/bin/bash
# Issue #25 item 2: does compiling the request path with mypyc pay? A prototype, kept
# out of the tree: it builds and measures in a throwaway git worktree and changes
# nothing in this checkout.
#
# 1. `git worktree add` of $COMMIT twice: "head" (as committed) and "patched" (with the
#    source changes mypyc needs, embedded below; each is commented in the code).
# 2. mypyc builds two sets of extension modules in the patched tree:
#      all:  http connection respond files filecache strategies sockio tls precompressed
#      sync: http connection respond files filecache precompressed (no coroutines)
#    tls and precompressed are in "all" because TlsStream and EncodedFile subclass
#    compiled classes (an interpreted subclass of a compiled class cannot be built).
# 3. Unless SKIP_TESTS=1: $TESTS (default: the four most relevant test files; the
#    whole suite but the soak tests is TESTS=all), pure and each build.
# 4. R rounds (default 5), variants in a rotated order each round: head (pure, as
#    committed), pure (patched source), sync, all. Each runs
#    benchmarks/request_cost.py (plain sendfile) and --tls --strategy auto (the default
#    strategy, sendfile, sends plaintext under TLS: the harness needs --strategy auto).
#    With WRK=1 and wrk installed: the server pinned to CPU 0, wrk on CPU 1 for
#    $WRK_SECONDS, server utime+stime from /proc per request.
# 5. Medians and ranges; the worktrees are removed (KEEP=1 keeps them).
#
# Usage: benchmarks/mypyc_prototype.sh            (R=5 N=30000 COMMIT=c320dd8...)
#        R=3 WRK=1 SKIP_TESTS=1 benchmarks/mypyc_prototype.sh
# The patch is against $COMMIT; on a later commit it may no longer apply.
#
# Result at c320dd8 (mypy/mypyc 2.4.1, CPython 3.11.7, 2 shared cores; two runs,
# R=5 and R=7, medians, µs CPU per request; floor_server 4.6-4.8):
#                         pure          sync                 all
#   request_cost plain    11.0 / 10.5   9.2 / 9.3 (-11..16%)  8.8 / 8.5 (-19..20%)
#   request_cost --tls    17.6 / 17.7  14.6 / 15.4 (-13..17%) 14.0 / 13.6 (-20..23%)
#   wrk, server (noisy)   16.0 / 17.8  14.4 / 16.9 (-5..10%)  14.7 / 15.2 (-8..15%)
# The patch costs pure Python nothing measurable ("head" is within the noise of "pure").
# Tests without the soak ones: pure 2237 pass. sync: 4 fail, all of them
# test_error_outside_a_response_gives_500, which monkeypatches
# connection.RequestParser with a subclass (neither works on compiled code).
# all: 34 fail and 3 error: interpreted subclasses of SocketStream (test_fairness),
# monkeypatched strategies._own_description (test_readall), and exceptions that
# mypyc loses or replaces around awaits in except/finally/async with blocks
# (readwrite and readall: a stalled peer or a cancel is not seen; before the sockio
# and aiofiles changes below, one such path segfaulted).
# What the patch works around, none of it caught by mypy or ruff:
#  - `x[f():]` on a memoryview calls f twice (mypyc's try_gen_slice_op evaluates the
#    bounds, finds no list/str/bytes/tuple op, and the generic path evaluates them
#    again): connection._pump sent a partial head twice. With plain TCP no test
#    failed; a slow reader of 2000 pipelined GETs got 188 duplicated bytes. Under TLS
#    every response broke (BAD_RECORD_TYPE).
#  - stub types are checked at run time: ssl's read(n, buffer) returns an int
#    (typeshed: bytes), httptools gives None for an empty query (its stub: bytes),
#    so "GET /dir?" was a 400.
#  - `send_some = send_now` in a class body makes TlsStream fail to construct.
#  - an await inside an except block, or `async with` on aiofiles, loses the exception.
# Verdict: dropped. The gain worth having needs the coroutine modules, which mypyc
# 2.4.1 compiles wrongly; the sync subset saves 1-2 µs of ~10 per request and needs
# a compiled CI run and rules no linter checks to stay correct. The "mypyc check"
# lines this script prints say whether a newer mypyc still has the two bugs.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
mypyc=${MYPYC:-$(dirname "$python")/mypyc}
commit=${COMMIT:-c320dd8e35bab218cbafac0558ed4de218bcab07}
rounds=${R:-5}
requests=${N:-30000}
wrk_seconds=${WRK_SECONDS:-10}
tests=${TESTS:-tests/test_http.py tests/test_one_core.py tests/test_strategies.py tests/test_files.py}
work=$(mktemp -d /tmp/mypyc-prototype.XXXXXX)
head_tree=$work/head
tree=$work/patched
server_pid=""

cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept: $work"
        return
    fi
    git -C "$repo" worktree remove --force "$tree" 2>/dev/null || true
    git -C "$repo" worktree remove --force "$head_tree" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

git -C "$repo" worktree add --detach --quiet "$head_tree" "$commit"
git -C "$repo" worktree add --detach --quiet "$tree" "$commit"
echo "commit: $(git -C "$tree" rev-parse HEAD)"
echo "python: $("$python" -VV | head -1); $("$mypyc" --version 2>&1 | head -1 || true)"

# The source changes mypyc needs (each line says why), and one test double that has
# to follow the aiofiles change. Pure Python passes the tests with them too.
git -C "$tree" apply <<'MYPYC_PATCH'
diff --git a/tests/test_strategies.py b/tests/test_strategies.py
--- a/tests/test_strategies.py
+++ b/tests/test_strategies.py
@@ -251,6 +251,9 @@ def test_a_cancelled_transfer_waits_for_its_read_in_flight(
         async def __aexit__(self, *exc: Any) -> Any:
             return await self._opening.__aexit__(*exc)
 
+        def __await__(self) -> Any:  # `await aiofiles.open(...)`, as the strategies do
+            return self.__aenter__().__await__()
+
     monkeypatch.setattr(aiofiles, "open", SlowOpen)
     file = open_file(site.path("64k1.bin"))
 
diff --git a/zcserve/server/connection.py b/zcserve/server/connection.py
--- a/zcserve/server/connection.py
+++ b/zcserve/server/connection.py
@@ -479,7 +479,8 @@ class HttpConnection:
             if unsent:
                 send, flags = self._send_call, inflight.flags
                 while unsent:
-                    unsent = unsent[send(unsent, flags) :]
+                    sent = send(unsent, flags)  # mypyc: a call in a slice runs twice
+                    unsent = unsent[sent:]
                     inflight.unsent = unsent
             reply = inflight.reply
             if reply.file is not None:
diff --git a/zcserve/server/http.py b/zcserve/server/http.py
--- a/zcserve/server/http.py
+++ b/zcserve/server/http.py
@@ -16,7 +16,7 @@ from collections.abc import Iterable, Iterator, Mapping
 from dataclasses import dataclass
 from email.utils import formatdate, parsedate_to_datetime
 from types import MappingProxyType
-from typing import NamedTuple
+from typing import Any, NamedTuple
 
 import httptools
 
@@ -286,7 +286,7 @@ class RequestParser:
                 parsed = httptools.parse_url(target)
             except httptools.HttpParserInvalidURLError as exc:
                 raise _Reject(HttpError(400, "malformed request target")) from exc
-            path, query = parsed.path or b"/", parsed.query or b""
+            path, query = _path_and_query(parsed)
         elif target == b"*":
             path, query = target, b""
         else:
@@ -403,6 +403,13 @@ def _absolute_form_path(target: bytes) -> tuple[bytes, bytes]:
         raise _Reject(HttpError(400, "malformed request target")) from exc
     if not parsed.schema or parsed.schema.lower() not in (b"http", b"https"):
         raise _Reject(HttpError(400, "malformed request target"))
+    return _path_and_query(parsed)
+
+
+def _path_and_query(parsed: Any) -> tuple[bytes, bytes]:
+    """httptools gives None for an empty path or query, though its stub says bytes.
+    mypyc checks values against the stub's types: `parsed.query or b""` would raise
+    on None, so `parsed` is Any here."""
     return parsed.path or b"/", parsed.query or b""
 
 
diff --git a/zcserve/server/sockio.py b/zcserve/server/sockio.py
--- a/zcserve/server/sockio.py
+++ b/zcserve/server/sockio.py
@@ -128,8 +128,10 @@ class SocketStream:
         while self.unflushed:
             try:
                 self.flush()
+                continue
             except BlockingIOError:
-                await self.wait_writable()
+                pass  # mypyc: no await inside an except block (it leaks the exception)
+            await self.wait_writable()
 
     async def send_all(self, data: bytes | bytearray | memoryview, *, more: bool = False) -> None:
         """Hand every byte of `data` to the kernel. `more` sets MSG_MORE (cork until the
@@ -144,6 +146,8 @@ class SocketStream:
             try:
                 sent = send(view, flags)
             except BlockingIOError:
+                sent = -1  # mypyc: no await inside an except block (it leaks the exception)
+            if sent < 0:
                 await self.wait_writable()
                 continue
             if counted:
diff --git a/zcserve/server/strategies.py b/zcserve/server/strategies.py
--- a/zcserve/server/strategies.py
+++ b/zcserve/server/strategies.py
@@ -323,7 +323,10 @@ class ReadWriteStrategy(AwaitedReadStrategy):
     async def _copy(
         self, stream: SocketStream, file: OpenedFile, fd: int, offset: int, count: int
     ) -> None:
-        async with aiofiles.open(fd, "rb", buffering=0) as afile:  # closes `fd`
+        # mypyc: no `async with` on aiofiles: an exception from the body is lost when
+        # its __aexit__ awaits the thread pool; a try/finally keeps it.
+        afile = await aiofiles.open(fd, "rb", buffering=0)  # closing it closes `fd`
+        try:
             await afile.seek(offset)
             chunk, left = self._chunk_for(count), count
             # One buffer being sent while the other fills; the second only if needed.
@@ -351,6 +354,8 @@ class ReadWriteStrategy(AwaitedReadStrategy):
                     await _settle(reading)
                 finally:
                     self.buffered -= held
+        finally:
+            await afile.close()
 
 
 def default_readall_budget() -> int:
@@ -430,12 +435,15 @@ class ReadAllStrategy(AwaitedReadStrategy):
         os.lseek(fd, offset, os.SEEK_SET)  # no I/O: not worth a hop to the thread pool
         # Buffered, as the lab's open(): its read(count) loops until `count` or the end
         # of the file, where one read(2) stops short of 2 GiB.
-        async with aiofiles.open(fd, "rb") as afile:  # closes `fd`
+        afile = await aiofiles.open(fd, "rb")  # closing it closes `fd`
+        try:  # mypyc: not `async with` (see ReadWriteStrategy._copy)
             reading = asyncio.ensure_future(afile.read(count))
             try:
                 body = await asyncio.shield(reading)  # a cancel must not orphan it
             finally:
                 await _settle(reading)
+        finally:
+            await afile.close()
         if len(body) != count:
             raise FileShrankError(f"{file.name}: read {len(body)} bytes of {count}")
         view = memoryview(body)
diff --git a/zcserve/server/tls.py b/zcserve/server/tls.py
--- a/zcserve/server/tls.py
+++ b/zcserve/server/tls.py
@@ -108,15 +108,17 @@ class TlsStream(SocketStream):
 
         The ciphertext is received into `buffer` itself: the incoming BIO copies it
         before OpenSSL writes plaintext there, and no bytes object is made per read."""
-        tls, incoming = self._tls, self._incoming
+        incoming = self._incoming
+        # With a buffer, read() fills it and returns a count (typeshed: bytes). mypyc
+        # trusts typeshed and checks for bytes: only a Callable-typed name escapes it.
+        read_into: Callable[[int, memoryview], int] = self._tls.read  # type: ignore[assignment]
         if not self.more_input:
             self._receive_into(buffer)  # BlockingIOError: nothing yet
             if self._outgoing.pending:  # a key update or a ticket to answer
                 self._queue_output()
         while True:
             try:
-                # With a buffer, read() fills it and returns a count (typeshed: bytes).
-                count: int = tls.read(len(buffer), buffer)  # type: ignore[assignment]
+                count = read_into(len(buffer), buffer)
             except ssl.SSLWantReadError:  # part of a record: read on
                 self.more_input = False
                 self._receive_into(buffer)
@@ -158,13 +160,17 @@ class TlsStream(SocketStream):
         unflushed = memoryview(self._outgoing.read())  # empty before: flushed above
         try:
             while unflushed:
-                unflushed = unflushed[self.sock.send(unflushed) :]
+                sent = self.sock.send(unflushed)  # mypyc: a call in a slice runs twice
+                unflushed = unflushed[sent:]
         except BlockingIOError:
             pass
         self.unflushed = unflushed
         return len(view)
 
-    send_some = send_now
+    def send_some(self, data: Buffer) -> int:
+        # mypyc: a method aliased by class assignment (`send_some = send_now`) is an
+        # unsupported attribute default in a native class; construction fails.
+        return self.send_now(data)
 
     def _encrypt(self, view: memoryview) -> None:
         corked = self._corked
@@ -186,7 +192,8 @@ class TlsStream(SocketStream):
             self._encrypt(memoryview(b""))
         unflushed, send = self.unflushed, self.sock.send
         while unflushed:
-            unflushed = unflushed[send(unflushed) :]  # BlockingIOError: full
+            sent = send(unflushed)  # BlockingIOError: full. mypyc: not inside the slice
+            unflushed = unflushed[sent:]
             self.unflushed = unflushed
 
     def _queue_output(self) -> None:
MYPYC_PATCH
echo "patched: $(git -C "$tree" diff --stat | tail -1)"

# --- the two mypyc bugs the patch works around, so a newer mypyc can be re-checked -----
mkdir -p "$work/repro"
cat >"$work/repro/interpreted_helpers.py" <<'PY'
import asyncio
from typing import Any


class ClosesInAThread:
    """Like aiofiles' file context manager: __aexit__ awaits the thread pool."""

    async def __aenter__(self) -> "ClosesInAThread":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)


async def interpreted_caller(coro: Any) -> None:
    await coro
PY
cat >"$work/repro/mypyc_bugs.py" <<'PY'
import asyncio

from interpreted_helpers import ClosesInAThread, interpreted_caller

calls: list[int] = []


def one() -> int:
    calls.append(1)
    return 1


def slice_start_calls() -> int:
    """How often `view[one():]` calls one() on a memoryview (Python: once)."""
    calls.clear()
    view = memoryview(b"abc")
    view = view[one() :]
    return len(calls)


class Stalled(Exception):
    pass


async def stalled_future() -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(waiter.set_exception, Stalled())
    await waiter


async def send_like_sockio() -> None:
    try:
        raise BlockingIOError(11, "socket full")
    except BlockingIOError:
        await stalled_future()  # Python raises Stalled out of here


async def copy_like_readwrite() -> None:
    async with ClosesInAThread():
        await send_like_sockio()


def exception_out_of_async_with() -> str:
    """What reaches the caller (Python: Stalled)."""
    try:
        asyncio.run(interpreted_caller(copy_like_readwrite()))
    except Exception as exc:
        return type(exc).__name__
    return "nothing"
PY
if (cd "$work/repro" && "$mypyc" mypyc_bugs.py >build.log 2>&1); then
    (cd "$work/repro" && "$python" -c '
import mypyc_bugs as m
assert m.__file__.endswith(".so")
print("mypyc check: view[f():] calls f", m.slice_start_calls(), "times (Python: 1)")
print("mypyc check: an await in an except block, then an async with whose __aexit__",
      "awaits a future:", m.exception_out_of_async_with(), "reaches the caller (Python: Stalled)")')
else
    echo "mypyc check: the repro did not build"
fi

# --- build ---------------------------------------------------------------------------
all_modules="http connection respond files filecache strategies sockio tls precompressed"
sync_modules="http connection respond files filecache precompressed"

remove_extensions() {
    rm -f "$tree"/*.so "$tree"/zcserve/server/*.so
}

build() {  # build NAME MODULES...: compile, then keep the .so files in $work/so-NAME
    local name=$1
    shift
    local paths=()
    for module in "$@"; do paths+=("zcserve/server/$module.py"); done
    remove_extensions
    rm -rf "$tree/build"
    local started=$SECONDS
    (cd "$tree" && "$mypyc" "${paths[@]}") >"$work/build-$name.log" 2>&1 || {
        echo "mypyc build $name failed:"
        tail -30 "$work/build-$name.log"
        exit 1
    }
    mkdir -p "$work/so-$name/server"
    mv "$tree"/*.so "$work/so-$name/"
    mv "$tree"/zcserve/server/*.so "$work/so-$name/server/"
    echo "built $name in $((SECONDS - started)) s; mypyc said:"
    grep -E "(error|warning|note):" "$work/build-$name.log" | sed 's/^/    /' || echo "    nothing"
}

use() {  # use VARIANT: pure/head have no extension modules
    remove_extensions
    case $1 in
        all | sync)
            cp "$work/so-$1"/*.so "$tree/"
            cp "$work/so-$1"/server/*.so "$tree/zcserve/server/"
            ;;
    esac
}

tree_of() {
    if [ "$1" = head ]; then echo "$head_tree"; else echo "$tree"; fi
}

build all $all_modules
build sync $sync_modules

for variant in head pure sync all; do
    use "$variant"
    dir=$(tree_of "$variant")
    compiled=$(cd "$dir" && "$python" -c '
import importlib
names = "http connection respond files filecache strategies sockio tls precompressed"
print(" ".join(n for n in names.split()
      if importlib.import_module("zcserve.server." + n).__file__.endswith(".so")) or "none")')
    echo "$variant: compiled modules: $compiled"
done

# --- tests ---------------------------------------------------------------------------
if [ "$tests" = all ]; then test_args=(-m "not soak"); else read -ra test_args <<<"$tests"; fi
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    for variant in pure sync all; do
        use "$variant"
        echo "tests ($variant):"
        (cd "$tree" && timeout 3600 "$python" -X faulthandler -m pytest -q -p no:cacheprovider \
            "${test_args[@]}" 2>&1) >"$work/tests-$variant.log" || true
        grep -E "^FAILED|^ERROR|Fatal Python error| passed| failed" "$work/tests-$variant.log" |
            sed 's/^/    /'
    done
fi

# --- measure -------------------------------------------------------------------------
results=$work/results.txt
: >"$results"

request_cost() {  # request_cost VARIANT MODE: one run, appends "VARIANT MODE µs [floor]"
    local variant=$1 mode=$2 dir out
    dir=$(tree_of "$variant")
    if [ "$mode" = plain ]; then
        out=$(cd "$dir" && "$python" benchmarks/request_cost.py -n "$requests" 2>&1 | tail -1)
        echo "$out" | sed -n "s/.*: \([0-9.]*\) µs CPU per request; floor: \([0-9.]*\).*/$variant plain \1 \2/p" >>"$results"
    else
        out=$(cd "$dir" && "$python" benchmarks/request_cost.py --tls --strategy auto \
            -n "$requests" 2>&1 | tail -1)
        echo "$out" | sed -n "s/.*: \([0-9.]*\) µs CPU per request.*/$variant tls \1/p" >>"$results"
    fi
    grep -q "µs CPU per request" <<<"$out" || echo "    $variant $mode failed: $out"
}

wrk_cost() {  # wrk_cost VARIANT: server CPU µs per request under wrk, pinned
    local variant=$1 dir root ready url pid before after requests_done ticks line
    dir=$(tree_of "$variant")
    root=$work/wrk-root
    mkdir -p "$root"
    [ -f "$root/f4k.bin" ] || head -c 4096 /dev/urandom >"$root/f4k.bin"
    ready=$work/ready-$variant.json
    (cd "$dir" && exec taskset -c 0 "$python" -m zcserve serve "$root" -b 127.0.0.1 -p 0 \
        --quiet --ready-json --strategy sendfile >"$ready" 2>"$work/server-$variant.err") &
    server_pid=$!
    for _ in $(seq 100); do grep -q '"ready"' "$ready" 2>/dev/null && break; sleep 0.1; done
    line=$(grep '"ready"' "$ready")
    url=$("$python" -c 'import json,sys; print(json.loads(sys.argv[1])["url"])' "$line")
    pid=$("$python" -c 'import json,sys; print(json.loads(sys.argv[1])["pid"])' "$line")
    ticks=$(getconf CLK_TCK)
    cpu() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat"; }
    taskset -c 1 wrk -t1 -c64 -d2s "$url/f4k.bin" >/dev/null  # warm-up
    before=$(cpu)
    out=$(taskset -c 1 wrk -t1 -c64 -d"${wrk_seconds}s" "$url/f4k.bin")
    after=$(cpu)
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    requests_done=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
    if grep -q "Non-2xx" <<<"$out"; then echo "    $variant: wrk saw errors: $out"; fi
    "$python" -c "
import sys
ticks, before, after, n = map(float, sys.argv[1:5])
print(sys.argv[5], 'wrk', f'{1e6 * (after - before) / ticks / n:.2f}', int(n))
" "$ticks" "$before" "$after" "$requests_done" "$variant" >>"$results"
}

variants=(head pure sync all)
for round in $(seq "$rounds"); do
    # rotate the order, so no variant always runs first or last
    shift_by=$(((round - 1) % ${#variants[@]}))
    order=("${variants[@]:shift_by}" "${variants[@]:0:shift_by}")
    echo "round $round: ${order[*]}"
    for variant in "${order[@]}"; do
        use "$variant"
        request_cost "$variant" plain
        request_cost "$variant" tls
        if [ "${WRK:-0}" = 1 ] && command -v wrk >/dev/null; then wrk_cost "$variant"; fi
    done
done
remove_extensions

"$python" - "$results" <<'SUMMARY'
import statistics
import sys

runs: dict[tuple[str, str], list[float]] = {}
floors: list[float] = []
for line in open(sys.argv[1]):
    parts = line.split()
    runs.setdefault((parts[0], parts[1]), []).append(float(parts[2]))
    if parts[1] == "plain":
        floors.append(float(parts[3]))
labels = {
    "plain": "request_cost.py (sendfile, 4 KiB, keep-alive), µs CPU/request",
    "tls": "request_cost.py --tls --strategy auto, µs CPU/request",
    "wrk": "wrk -c64 f4k.bin, server µs CPU/request (pinned)",
}
for mode, label in labels.items():
    if not any(m == mode for _, m in runs):
        continue
    print(f"\n{label}")
    base = statistics.median(runs.get(("pure", mode), [float("nan")]))
    for variant in ("head", "pure", "sync", "all"):
        values = runs.get((variant, mode))
        if not values:
            continue
        median = statistics.median(values)
        print(
            f"  {variant:5} median {median:6.2f}  range {min(values):6.2f}-{max(values):6.2f}"
            f"  n={len(values)}  vs pure {100 * (median / base - 1):+5.1f}%"
        )
if floors:
    print(f"\nfloor (floor_server.py callback): median {statistics.median(floors):.2f} µs")
SUMMARY
