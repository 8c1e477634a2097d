"""One connection's life, for plain TCP, TLS and raw mode alike: read, parse,
respond in order, linger, close.

`HttpConnection` is driven by loop callbacks. It reads into one small reused
buffer, feeds the sans-I/O parser, answers requests in order (pipelining) and
hands file bodies to the copy strategy. It reads and writes through its stream's
`io_calls`, so TLS (`tls.TlsStream`) is a detail below it. Its state is one
`Phase` and, while a response is on its way, one `InFlight`.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import math
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeAlias

from zcserve.errors import FileShrankError, HttpError, SendStalledError, TransferError
from zcserve.server.accesslog import AccessLog
from zcserve.server.config import ServerConfig
from zcserve.server.decorate import Planner
from zcserve.server.filecache import Entry, OpenFileCache
from zcserve.server.files import OpenedFile
from zcserve.server.http import (
    Limits,
    Request,
    RequestParser,
    current_date_ends,
    current_http_date,
    error_response,
    without_keep_alive,
)
from zcserve.server.metrics import Metrics
from zcserve.server.multipart import MultipartBody
from zcserve.server.outbox import Outbox
from zcserve.server.respond import (
    LISTING_TRIES,
    ListingPending,
    MemoryReply,
    MultipartReply,
    Reply,
    WholeReply,
    error_reply,
)
from zcserve.server.sockio import MSG_MORE, SocketStream, unacknowledged
from zcserve.server.strategies import (
    CopyStrategy,
    FallbackStrategy,
    MemoryStrategy,
    Progress,
    Transfer,
)

log = logging.getLogger("zcserve")

RECV_BUFFER = 8 * 1024
"""Per-connection receive buffer, reused for every read. It is resident for the
connection's whole life (bytearray zero-fills it), so it is sized like nginx's
large_client_header_buffers (8k), not uvicorn's 64 KiB: 10,000 idle connections
then cost about 80 MiB here rather than 640 MiB. Longer heads take several reads."""
LINGER_TIME = 30.0
"""Longest a closing connection reads and discards (nginx's lingering_time)."""
LINGER_IDLE = 5.0
"""Longest wait for the client's next bytes while lingering (nginx's lingering_timeout)."""
LINGER_BYTES = 1024 * 1024
"""Bytes discarded after which a lingering connection closes, but only once the
client has acknowledged the whole response: a close with unread input resets,
and a reset destroys what the client has not read yet."""
MIN_REQUEST_BYTES = 16
"""The shortest request llhttp completes (`GET / HTTP/1.0\\n\\n`): a feed of
`max_pipelined` times this many bytes cannot complete more than `max_pipelined`."""

_DONE = Progress.DONE  # enum members bound once: each lookup costs on the hot path
PEER_GONE = (TransferError, OSError)
"""A peer that left, stalled or broke: TimeoutError and ConnectionError are OSErrors."""
OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM))
"""What a strategy's `start` may run out of (a descriptor, a pipe, a mapping): 503."""
_EMPTY = memoryview(b"")
_monotonic = time.monotonic  # bound once: every repeat reads it


class ServerState(Protocol):
    """What a connection reads of the server that accepted it."""

    config: ServerConfig
    files: OpenFileCache
    strategy: CopyStrategy
    limits: Limits
    access_log: AccessLog
    metrics: Metrics
    metrics_on: bool
    """False when nothing reads the metrics: the hot path then skips its counters."""
    timed: bool
    """True when the metrics or the access log need each request's start time."""
    repeats: bool
    """Whether a repeated request may be answered from its last answer's cache entry
    (`HttpConnection._answer_repeat`): not with --precompressed, whose choice
    depends on other files."""
    plan: Planner
    """`plan_reply`, or the planner --header, --cors, --max-ranges and --precompressed
    chose at start-up (`decorate.make_planner`)."""
    outbox: Outbox

    @property
    def closing(self) -> bool:
        """True once shutdown began: finish the response in flight, then close."""

    def render_listing(self, pending: ListingPending) -> asyncio.Future[Any]:
        """The listing rendered in a thread and kept; one rendering for many asking."""


class Phase(enum.Enum):
    """Where a connection is; the readable callback, the deadline check and `close`
    dispatch on it."""

    READING = "reading"
    """Between responses: reading and parsing heads (an idle keep-alive too)."""
    RESPONDING = "responding"
    """A response is on its way; the next request waits in the kernel."""
    LINGERING = "lingering"
    """The last response is in the kernel and the write side shut: discard input."""
    CLOSED = "closed"


_READING, _RESPONDING, _LINGERING, _CLOSED = (
    Phase.READING, Phase.RESPONDING, Phase.LINGERING, Phase.CLOSED
)  # fmt: skip


class InFlight:
    """The response on its way, from commit to the last byte in the kernel.

    One per connection, begun afresh for each response: a new object per response
    is one more allocation the cyclic GC tracks, which cost 0.8 µs per request under
    load (BENCHMARKS 6b)."""

    __slots__ = (
        "request", "reply", "started", "last", "linger", "logged", "unsent", "flags",
        "strategy", "transfer", "body_start", "task",
    )  # fmt: skip

    def __init__(self) -> None:
        self.begin(None, _NO_REPLY, 0.0, True)

    def begin(self, request: Request | None, reply: Reply, started: float, last: bool) -> None:
        self.request = request
        self.reply = reply
        self.started = started
        self.last = last
        """No request behind this one is answered: the connection closes after it."""
        self.linger = False
        """Linger after it even if the client seems to have sent nothing more (an
        error answer: the rest of a refused request may still be on its way)."""
        self.logged = True
        """False in raw mode, which has no requests to log."""
        self.unsent = _EMPTY
        """Head (or in-memory body) bytes the socket has not taken yet."""
        self.flags = 0
        self.strategy: CopyStrategy | None = None
        self.transfer: Transfer | None = None
        self.body_start = 0
        self.task: asyncio.Task[None] | None = None
        """The coroutine that moves the rest of the body, if it was handed off."""

    def end(self) -> None:
        """Let go of the request and the reply (a listing's body may be large)."""
        self.request = None
        self.reply = _NO_REPLY
        self.unsent = _EMPTY


_NO_REPLY = Reply(0, b"", False)
"""The reply of an `InFlight` between responses."""


class Repeat:
    """What answering a byte-identical request again needs, kept from the last whole
    answer: the parser hands back the very `Request` it made for those bytes, and
    the answer holds while `entry` is the current one for its path."""

    __slots__ = ("request", "entry", "key", "whole", "quiet", "until")

    def __init__(
        self, request: Request | None, entry: Entry | None, whole: bool, quiet: bool = False
    ) -> None:
        self.request = request
        self.entry = entry
        self.key = (True, request.version if request is not None else "")
        """The keep-alive head's key in the entry's `heads` and `wholes`."""
        self.whole = whole
        """The memory cache's answer, head and body in one (`MemoryReply`)."""
        self.quiet = quiet
        """Nothing logs or times its answers: one sent whole needs no `InFlight`."""
        self.until = 0.0
        """Until when (monotonic) the entry is trusted and its kept head's Date is
        current (`_recheck_repeat`); 0 with --cache-valid 0: every repeat is checked."""


_NO_REPEAT = Repeat(None, None, False)

HeldRepeat: TypeAlias = tuple[Repeat, bytes, "OpenedFile | None", float]
"""A repeat's answer waiting for the end of the loop pass: the repeat, its head (or
whole answer), its lent file, and when it was asked for. A plain tuple: one is made
per request."""


class HttpConnection:
    """One HTTP/1.1 connection, plain or TLS, driven by loop callbacks.

    The common case, a request whose answer fits in the socket buffer, is read and
    answered in one readable callback and sent when that loop pass ends, with the
    pass's other answers (`Outbox`): no task, no future, no timer object. The
    connection waits for writability only when the socket is full, and reads
    nothing while a response is pending (backpressure; pipelined answers stay in
    order). Its one deadline is a number that the server's sweep checks
    (`check_deadline`).
    """

    __slots__ = (
        "server", "loop", "sock", "fd", "stream", "parser", "pending", "deadline",
        "phase", "peer", "_on_close", "_buffer", "_view", "_unparsed", "_feed_max",
        "_recv", "_send_call", "_reading", "_writing", "_head_deadline",
        "_inflight", "_response", "_chosen", "_fell_back", "_linger_ends", "_drained", "_queued",
        "_head_flags", "_header_timeout", "_keepalive_timeout", "_repeat", "_repeat_length",
        "_repeat_bytes", "_outbox", "_held",
    )  # fmt: skip

    def __init__(
        self,
        server: ServerState,
        stream: SocketStream,
        on_close: Callable[[HttpConnection], object],
        peer: str,
        *,
        deadline: float,
    ) -> None:
        self.server = server
        self.loop = stream.loop
        self.stream = stream
        self.sock = stream.sock
        self.fd = stream.fd
        self.parser = RequestParser(server.limits)
        self.pending: deque[Request | HttpError] = deque()
        self.deadline = deadline
        """When the sweep acts: the first head must arrive by the header deadline of
        the accept, which a TLS handshake has already spent part of."""
        self.phase = _READING
        self.peer = peer
        self._on_close: Callable[[HttpConnection], object] | None = on_close
        self._buffer = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self._unparsed = _EMPTY
        """Received bytes not fed to the parser yet (see `_feed_max`)."""
        self._feed_max = server.limits.max_pipelined * MIN_REQUEST_BYTES
        """Most bytes fed at once, so that at most --max-pipelined requests are
        parsed ahead of their answers, however densely a client packs them."""
        self._recv, self._send_call = stream.io_calls()
        self._reading = False
        self._writing = False
        self._head_deadline: float | None = deadline
        self._inflight: InFlight | None = None
        """The response in flight: `_response` between its commit and its end."""
        self._response = InFlight()
        # What moves this connection's bodies is known once its stream is: auto's
        # choice depends only on the socket.
        self._chosen = server.strategy.choose(stream)
        self._fell_back = (
            self._chosen is not server.strategy and self._chosen.name == FallbackStrategy.name
        )
        """auto could not use its zero-copy path here: each body is counted."""
        self._linger_ends = 0.0
        self._drained = 0
        self._queued = 0
        """Unacknowledged bytes when the send deadline was last set."""
        config = server.config  # read once: these run once per request
        self._head_flags = MSG_MORE if config.cork else 0
        self._header_timeout = config.header_timeout
        self._keepalive_timeout = config.keepalive_timeout
        self._repeat = _NO_REPEAT
        self._repeat_length = -1
        self._repeat_bytes = b""
        """The parser's repeat bytes while `_repeat` answers them and the parser rests
        after them (see `_on_readable`); -1: no read is a repeat without the parser."""
        self._outbox = server.outbox
        self._held: InFlight | HeldRepeat | None = None
        """The answer waiting for the end of the loop pass (`send_held`): planned (its
        `InFlight`, also `_inflight`), or a repeat's."""

    @property
    def busy(self) -> bool:
        """Shutdown waits for a busy connection: its last bytes are still going out."""
        return self.phase is _RESPONDING or self.phase is _LINGERING

    def start(self) -> None:
        self._resume_reading()
        if self.stream.more_input:
            # The handshake's last flight may have carried the first request.
            self.loop.call_soon(self._on_readable)

    def start_raw(self, file: OpenedFile) -> None:
        """The lab's raw protocol: no HTTP; send the whole file at once, then close."""
        reply = Reply(200, b"", False, file=file, count=file.size)
        if not file.size:
            file.close()
            reply.file = None
        inflight = self._response
        inflight.begin(None, reply, 0.0, True)
        inflight.logged = False
        self._commit(inflight)

    def refuse(self, response: bytes) -> None:
        """Answer a connection that cannot be served (plain HTTP on the TLS port) with
        `response`, then linger and close."""
        self._answer_error(400, None, response)

    # reading ---------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self._reading:
            self.loop.add_reader(self.fd, self._on_readable)
            self._reading = True

    def _pause_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.fd)
            self._reading = False

    def _on_readable(self) -> None:
        if self.phase is not _READING:
            self._readable_otherwise()
            return
        data = self._unparsed
        if data:
            self._unparsed = _EMPTY
        else:
            try:
                received = self._recv(self._view)
            except BlockingIOError:
                return
            except OSError as exc:
                self._end(exc)
                return
            if received == 0:
                self.close()
                return
            if (
                received == self._repeat_length
                and self._buffer.startswith(self._repeat_bytes)
                and self._answer_repeat(self._repeat)
            ):
                # The parser would hand back its repeat for these bytes, unchanged:
                # answered without it, its list or `pending`, when the pass ends.
                return
            data = self._view[:received]
        # Any other feed may leave the parser elsewhere than at rest after the repeat.
        self._repeat_length = -1
        try:
            if len(data) > self._feed_max:
                self._unparsed = data[self._feed_max :]
                data = data[: self._feed_max]
            parser = self.parser
            requests = parser.feed(data)
            self.pending.extend(requests)
            # Any byte since the last complete request starts the header clock: a
            # client sending only CRLFs (which llhttp skips) must not stay forever.
            if parser.in_head or not requests:
                if self._head_deadline is None:
                    self._head_deadline = self.loop.time() + self._header_timeout
                self.deadline = self._head_deadline
            else:
                self._head_deadline = None
            self._advance()
        except Exception:
            self._internal_error()

    def _readable_otherwise(self) -> None:
        if self.phase is _LINGERING:
            self._discard()
        elif self.phase is _RESPONDING:
            # The next request waits in the kernel until this response is out: that
            # is backpressure, and it keeps answers in order. Reading is paused only
            # now, when a client actually sends ahead, so the common case costs no
            # epoll_ctl per response.
            self._pause_reading()

    def _advance(self) -> None:
        """Answer pending requests in order until one has to wait for the socket or
        ends the connection; then wait for the next head."""
        pending = self.pending
        while pending and self.phase is _READING:
            item = pending.popleft()
            if isinstance(item, HttpError):
                self._answer_error(item.status, None)
            else:
                self._respond(item)
        if self.phase is not _READING:
            return
        if self.server.closing:
            self.close()
            return
        if self._head_deadline is not None:
            self.deadline = self._head_deadline
        else:
            self.deadline = self.loop.time() + self._keepalive_timeout
        if not self._reading:
            self._resume_reading()
        if self._unparsed or self.stream.more_input:
            # Bytes already received wait in userspace: no readable event will come.
            self.loop.call_soon(self._on_readable)

    # responding ------------------------------------------------------------------

    def _respond(self, request: Request, tries: int = 0, started: float = 0.0) -> None:
        repeating = request is self.parser.repeat
        if repeating and request is self._repeat.request:
            if self._answer_repeat(self._repeat):
                self._arm_repeat()
                return
        server = self.server
        if server.timed and not tries:
            started = time.perf_counter()
        if server.closing:  # say so, rather than drop the connection unannounced
            request = without_keep_alive(request)
        try:
            reply = server.plan(request, server.files)
        except ListingPending as pending:
            self._await_listing(request, pending, tries + 1, started)
            return
        except Exception:
            # Nothing is sent yet, so any failure, an OSError from the file system
            # included, is the server's own: a 500, not the silence of a lost peer.
            log.exception("unexpected error answering %s %r", request.method, request.target)
            self._answer_500(request)
            return
        inflight = self._response
        inflight.begin(request, reply, started, not reply.keep_alive)
        if repeating and server.repeats:
            self._remember(request, reply)
        self._commit(inflight)

    def _remember(self, request: Request, reply: Reply) -> None:
        """Keep what answering the parser's repeat `request` again takes, if its answer
        was a whole file's, kept alive. Only for a repeat: what is kept lives until
        the next request, and the cyclic GC would meet one per request in its older
        generations (BENCHMARKS 13)."""
        self._repeat = _NO_REPEAT
        whole = reply.__class__ is MemoryReply
        if not whole and reply.__class__ is not WholeReply:
            return
        entry = self.server.files.entry(request.path)
        if reply.keep_alive and request.method == "GET" and entry is not None:
            quiet = not (self.server.timed or self.server.access_log.on)
            self._repeat = Repeat(request, entry, whole, quiet)
            self._arm_repeat()

    def _arm_repeat(self) -> None:
        """Let `_on_readable` answer the parser's repeat bytes itself: called when the
        parser has just handed its repeat back, so it rests after those bytes."""
        self._repeat_length = len(self.parser.repeat_bytes)
        self._repeat_bytes = self.parser.repeat_bytes

    def _answer_repeat(self, repeat: Repeat) -> bool:
        """Answer a repeat of the last whole answer's request straight from its cache
        entry: no planning and no `InFlight`, the body moved by the strategy's own
        `Transfer` as any body is, so every strategy gains the same. Checked, and its
        file lent, now; sent when the loop pass ends (`Outbox`), or now while that
        end is under way. False, having taken nothing, when the entry changed, a new
        Date second needs a new head, or shutdown began: the common way answers."""
        server = self.server
        request, entry = repeat.request, repeat.entry
        assert request is not None and entry is not None
        started = time.perf_counter() if server.timed else 0.0
        if server.closing or entry.evicted:  # dropped: changed, squeezed out or unused
            return False
        kept = (entry.wholes if repeat.whole else entry.heads).get(repeat.key)
        if kept is None or (  # let go for room, changed, or a new Date second
            _monotonic() >= repeat.until and not self._recheck_repeat(repeat, request, kept)
        ):
            return False
        # Lent now, so that the cache keeps the descriptor open while the answer waits.
        held: HeldRepeat = (repeat, kept[1], None if repeat.whole else entry.lend(), started)
        if self._outbox.flushing:
            return self._send_repeat(held)
        self._hold(held)
        return True

    def _send_repeat(self, held: HeldRepeat) -> bool:
        """Send a repeat's answer; if the socket takes only part, the rest goes the
        common way, as an `InFlight` that `_pump` moves on and `_finish` accounts for.
        False, having sent nothing and given the file back, when the strategy lacks
        what it needs (the common way answers that)."""
        repeat, data, file, started = held
        server = self.server
        transfer: Transfer | None = None
        flags = 0
        if file is not None:
            flags = self._head_flags
            # Taken before the head goes out, as `_start_sending` does.
            try:
                transfer = self._chosen.start(self.stream, file, 0, file.size)
            except Exception:
                transfer = None
            if transfer is None:
                file.close()
                return False
            if self._fell_back:
                server.metrics.fallbacks += 1
        if server.metrics_on:
            server.metrics.repeats += 1
        stream = self.stream
        body_start = stream.bytes_sent
        sent = 0
        progress: Progress | None = None
        failure: BaseException | None = None
        try:
            sent = self._send_call(data, flags)
            if transfer is not None and sent == len(data):
                progress = transfer.advance()
        except BlockingIOError:
            pass
        except PEER_GONE as exc:
            failure = exc
        if (
            repeat.quiet
            and sent == len(data)
            and failure is None
            and (progress is None or progress is _DONE)
            and not stream.unflushed
        ):
            if transfer is not None and file is not None:
                transfer.close()
                file.close()
            self.phase = _READING
            return True
        request, entry = repeat.request, repeat.entry
        assert request is not None and entry is not None
        inflight = self._response
        size = entry.size
        if file is None:
            inflight.begin(
                request, MemoryReply(200, data, True, b"", None, 0, size), started, False
            )
        else:
            inflight.begin(request, WholeReply(200, data, True, b"", file, 0, size), started, False)
            inflight.strategy = self._chosen
            inflight.transfer = transfer
            inflight.body_start = body_start
        inflight.unsent = memoryview(data)[sent:]
        inflight.flags = flags
        self._inflight = inflight
        self.phase = _RESPONDING
        if failure is not None:
            self._end(failure)
        elif progress is not None and progress is not _DONE:
            assert transfer is not None
            self._transfer_waits(transfer, progress)
        else:
            self._pump()
        return True

    def send_held(self) -> None:
        """Send the answer held for the end of the loop pass (`Outbox`), then go on
        to the next request. What its body needs (a pipe, a buffer) is taken only
        now, one answer at a time, so a pass's answers share the strategy's pool."""
        held = self._held
        if held is None:  # closed meanwhile
            return
        self._held = None
        try:
            if isinstance(held, InFlight):
                self._start_sending(held)
            elif not self._send_repeat(held):
                # The common way, planned afresh (a 503 if the strategy still lacks
                # what it needs), and kept again as a repeat if it can be.
                request = held[0].request
                assert request is not None
                self._repeat, self._repeat_length = _NO_REPEAT, -1
                self.phase = _READING
                self._respond(request)
            if self.phase is _READING:
                self._advance()
        except Exception:
            self._internal_error()

    def _recheck_repeat(self, repeat: Repeat, request: Request, kept: tuple[str, bytes]) -> bool:
        """Whether the repeat's entry is still the current one for the path and its
        `kept` answer has this second's Date; with --cache-valid, both are then
        trusted until the first of them is due again, and the memory cache's
        recency is kept to that step, not to the request."""
        files, entry = self.server.files, repeat.entry
        if files.current(request.path) is not entry or kept[0] is not current_http_date():
            return False
        assert entry is not None
        if repeat.whole:
            if entry.body is None:  # let go for room since its answer was made
                return False
            assert files.memory is not None
            files.memory.touch(entry)
        if files.valid:
            repeat.until = min(entry.checked + files.valid, current_date_ends())
        return True

    def _await_listing(
        self, request: Request, pending: ListingPending, tries: int, started: float
    ) -> None:
        """Have the listing rendered in a thread, then plan `request` again; the
        loop serves other connections meanwhile, and this one's next request waits."""
        if tries > LISTING_TRIES:
            self.phase = _READING
            self._answer_error(503, request)
            return
        self.phase = _RESPONDING
        rendered = self.server.render_listing(pending)
        rendered.add_done_callback(lambda done: self._on_listing(request, done, tries, started))

    def _on_listing(
        self, request: Request, done: asyncio.Future[Any], tries: int, started: float
    ) -> None:
        if self.phase is not _RESPONDING or self._inflight is not None:
            return  # closed meanwhile
        self.phase = _READING
        exc = None if done.cancelled() else done.exception()
        if exc is not None and not isinstance(exc, HttpError):
            # A folder gone or refused meanwhile (HttpError) is planned again, and
            # answered as any other request for it.
            log.error("listing %r failed", request.target, exc_info=exc)
            self._answer_500(request)
            return
        self._respond(request, tries, started)
        if self.phase is _READING:
            self._advance()

    def _commit(self, inflight: InFlight) -> None:
        """Make `inflight` the connection's answer. A keep-alive answer is sent when
        the loop pass ends (`Outbox`); a last one goes now, so that its close frees
        a descriptor the next connection of the pass may need."""
        self._inflight = inflight
        if not inflight.last and not self._outbox.flushing:
            self._hold(inflight)
            return
        self.phase = _RESPONDING
        self._start_sending(inflight)

    def _hold(self, answer: InFlight | HeldRepeat) -> None:
        """Send `answer` at the end of this loop pass, with the pass's other answers."""
        self._held = answer
        self.phase = _RESPONDING
        self._outbox.hold(self)

    def _start_sending(self, inflight: InFlight) -> None:
        """Take what the body needs, then send the head: from here on, bytes go."""
        reply = inflight.reply
        file = reply.file
        if file is None:
            self._send(reply.head + reply.body if reply.body else reply.head, 0)
            return
        server = self.server
        strategy = self._chosen
        if self._fell_back:
            server.metrics.fallbacks += 1
        if reply.__class__ is MultipartReply:  # several ranges: parts go one by one
            strategy = MultipartBody(strategy, reply)
        # What the body needs (a pipe, a descriptor of its own) is taken before the
        # head goes out: after a 200 and its length, a missing one could only cut
        # the body short.
        try:
            inflight.transfer = strategy.start(self.stream, file, reply.offset, reply.count)
        except Exception as exc:
            reply.close()
            request = inflight.request
            if isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCES:
                log.debug("answering %s with 503: %s", self.peer, exc)
                inflight.reply = reply = error_reply(HttpError(503, str(exc)), request)
                inflight.last = not reply.keep_alive
                self._send(reply.head + reply.body, 0)
                return
            log.exception("unexpected error answering %s", self.peer)
            self._inflight = None
            self._answer_500(request)
            return
        inflight.strategy = strategy
        inflight.body_start = self.stream.bytes_sent
        self._send(reply.head, self._head_flags)

    def _answer_error(self, status: int, request: Request | None, whole: bytes = b"") -> None:
        """Answer with an error (the parser's, or `whole` when given), then close:
        linger, since the rest of what was refused may still be on its way."""
        head, _, body = (whole or error_response(status, keep_alive=False)).partition(b"\r\n\r\n")
        started = time.perf_counter() if self.server.timed else 0.0
        reply = Reply(status, head + b"\r\n\r\n", False, body)
        inflight = self._response
        inflight.begin(request, reply, started, True)
        inflight.linger = True
        self._commit(inflight)

    def _answer_500(self, request: Request | None) -> None:
        self.server.metrics.error("internal")
        self._answer_error(500, request)

    def _send(self, data: bytes, flags: int) -> None:
        try:
            sent = self._send_call(data, flags)
        except BlockingIOError:
            sent = 0
        except PEER_GONE as exc:
            inflight = self._inflight
            assert inflight is not None
            inflight.unsent = memoryview(data)  # none of it went: the log says so
            self._end(exc)
            return
        if sent < len(data):  # the socket is full: keep the rest for _pump
            inflight = self._inflight
            assert inflight is not None
            inflight.unsent = memoryview(data)[sent:]
            inflight.flags = flags
        self._pump()

    def _pump(self) -> None:
        """Move the response in flight on as far as the socket takes it now."""
        inflight = self._inflight
        assert inflight is not None
        try:
            unsent = inflight.unsent
            if unsent:
                send, flags = self._send_call, inflight.flags
                while unsent:
                    unsent = unsent[send(unsent, flags) :]
                    inflight.unsent = unsent
            reply = inflight.reply
            if reply.file is not None:
                transfer = inflight.transfer
                if transfer is None:  # a strategy that only knows how to be awaited
                    assert inflight.strategy is not None
                    self._await(
                        inflight.strategy.send(self.stream, reply.file, reply.offset, reply.count)
                    )
                    return
                progress = transfer.advance()
                if progress is not _DONE:
                    self._transfer_waits(transfer, progress)
                    return
            if self.stream.unflushed:  # TLS ciphertext: in the kernel before we go on
                self.stream.flush()
            self._finish()
        except BlockingIOError:
            self._wait_writable()
        except PEER_GONE as exc:
            self._end(exc)
        except Exception:
            self._internal_error()

    def _go_on(self) -> None:
        """A loop callback's way back in: move the response on, then the next one."""
        if self.phase is not _RESPONDING:  # closed since the callback was scheduled
            return
        self._pump()
        if self.phase is _READING:
            self._advance()

    def _transfer_waits(self, transfer: Transfer, progress: Progress) -> None:
        if progress is Progress.WAIT:
            self._wait_writable()
        elif progress is Progress.YIELD:  # let other connections run
            self._stop_writing()
            self.deadline = math.inf
            self.loop.call_soon(self._go_on)
        else:  # HANDOFF
            assert transfer.rest is not None
            self._await(transfer.rest(transfer.offset, transfer.end - transfer.offset))

    def _wait_writable(self) -> None:
        if not self._writing:
            self.loop.add_writer(self.fd, self._go_on)
            self._writing = True
        self.deadline = self.loop.time() + self.server.config.send_timeout
        self._queued = unacknowledged(self.sock)

    def _stop_writing(self) -> None:
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False

    def _await(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Hand the rest of the body to a coroutine; it keeps its own send timeout."""
        inflight = self._inflight
        assert inflight is not None
        self._stop_writing()
        self.deadline = math.inf
        inflight.task = self.loop.create_task(coroutine)
        inflight.task.add_done_callback(self._on_awaited)

    def _on_awaited(self, task: asyncio.Task[None]) -> None:
        inflight = self._inflight
        if inflight is not None:
            inflight.task = None
        if task.cancelled() or self.phase is _CLOSED:
            self.close()  # finish the close it deferred
            return
        exc = task.exception()
        if exc is None:  # the coroutine moved the whole body, and waited for it
            self._finish()
            if self.phase is _READING:
                self._advance()
        elif isinstance(exc, PEER_GONE):
            self._end(exc)
        else:
            self._internal_error(exc)

    def _finish(self) -> None:
        """The response is in the kernel: account for it, then go on or close."""
        if self._writing:
            self._stop_writing()
        inflight = self._inflight
        assert inflight is not None
        reply = inflight.reply
        server = self.server
        if inflight.logged:
            if server.access_log.on:  # first, while the strategy is still known
                self._log_response(inflight)
            if server.metrics_on:
                server.metrics.response(reply.status, time.perf_counter() - inflight.started)
                if reply.__class__ is MemoryReply:
                    server.metrics.sent(MemoryStrategy.name, reply.count)
        file = reply.file
        if file is not None:
            self._release_body(inflight)
            file.close()  # what `reply.close()` does, one call shorter
        self._inflight = None
        inflight.end()
        if not inflight.last and not server.closing:
            self.phase = _READING
            return
        # Nothing behind the last response is answered. Requests may already be in
        # the receive queue: a plain close would answer them with a reset that
        # destroys this response in flight. As nginx's lingering_close, linger
        # when the client sent more.
        if inflight.linger or self._client_sent_more():
            self._linger()
        else:
            self.close()

    def _log_response(self, inflight: InFlight) -> None:
        """The access-log line of the response in flight, finished or cut short: the
        body bytes counted are those actually sent."""
        server = self.server
        reply = inflight.reply
        if reply.__class__ is MemoryReply:  # the body is the end of what `head` holds
            body = max(0, reply.count - len(inflight.unsent))
            strategy: str | None = MemoryStrategy.name
        elif reply.file is None:
            body = max(0, len(reply.body) - len(inflight.unsent))
            strategy = None
        else:
            body = self.stream.bytes_sent - inflight.body_start
            strategy = inflight.strategy.name if inflight.strategy is not None else None
        seconds = time.perf_counter() - inflight.started if server.access_log.timed else None
        log_access(server, self.peer, inflight.request, reply.status, body, seconds, strategy)

    def _client_sent_more(self) -> bool:
        return (
            bool(self.pending) or bool(self._unparsed) or self.parser.in_head
            or self.stream.more_input  # TLS: the rest of a record, inside OpenSSL
            or _unread_input(self.sock)
        )  # fmt: skip

    def _release_body(self, inflight: InFlight) -> int:
        """Close the transfer and count its bytes; return them."""
        sent = self.stream.bytes_sent - inflight.body_start
        if inflight.transfer is not None:
            inflight.transfer.close()
            inflight.transfer = None
        if inflight.strategy is not None:
            if self.server.metrics_on:
                self.server.metrics.sent(inflight.strategy.name, sent)
            inflight.strategy = None
        return sent

    # endings -----------------------------------------------------------------------

    def _linger(self) -> None:
        """Close the way nginx's lingering_close does, after the last response on a
        connection: the client may still be sending, and closing with unread input
        makes the kernel send a reset that can destroy the response in flight (RFC
        9112 9.6). Shut the write side, then read and discard until the client
        closes, goes quiet for LINGER_IDLE, or LINGER_TIME ends."""
        self.pending.clear()
        self._unparsed = _EMPTY
        try:
            self.stream.shutdown_write()
        except OSError:
            self.close()
            return
        self.phase = _LINGERING
        now = self.loop.time()
        self._linger_ends = now + max(LINGER_TIME, self.server.config.send_timeout)
        self.deadline = min(now + LINGER_IDLE, self._linger_ends)
        self._drained = 0
        self._resume_reading()

    def _discard(self) -> None:
        """Read and drop what a lingering client sends (raw bytes, under TLS too)."""
        try:
            received = self.sock.recv_into(self._buffer)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if received == 0:
            self.close()
            return
        self._drained += received
        self.deadline = min(self.loop.time() + LINGER_IDLE, self._linger_ends)
        if self._drained >= LINGER_BYTES and unacknowledged(self.sock) == 0:
            self.close()

    def _end(self, exc: BaseException) -> None:
        """The peer left, stalled or broke the connection; a response cut short is
        still logged, with the bytes that went out."""
        self.server.metrics.error(_error_kind(exc))
        log.debug("connection from %s ended: %s", self.peer, exc)
        inflight = self._inflight
        if inflight is not None and inflight.logged and self.server.access_log.on:
            self._log_response(inflight)
        self.close()

    def _internal_error(self, exc: BaseException | None = None) -> None:
        """A bug: log it with its traceback; answer 500 if nothing of a response is
        out yet, else close. It costs this connection only."""
        if exc is None:
            log.exception("unexpected error on the connection from %s", self.peer)
        else:
            log.error("unexpected error on the connection from %s", self.peer, exc_info=exc)
        inflight = self._inflight
        if inflight is None:
            if self.phase is _READING:
                self._answer_500(None)
            else:
                self.close()
            return
        # Part of this response may be out (its head goes first): it cannot become
        # a 500 any more; the connection ends, visibly short.
        server = self.server
        server.metrics.error("internal")
        server.metrics.response(500, 0.0)
        body = self._release_body(inflight)
        if server.access_log.on and inflight.logged:
            log_access(server, self.peer, inflight.request, 500, body)
        self.close()

    def check_deadline(self, now: float) -> None:
        """Called by the server's sweep: close the connection if it is past due."""
        if now < self.deadline:
            return
        phase = self.phase
        if phase is _LINGERING:
            self.close()
        elif phase is _RESPONDING:
            if self._writing:
                timeout = self.server.config.send_timeout
                queued = unacknowledged(self.sock)
                if queued < self._queued:  # a slow reader, still reading: wait on
                    self._queued = queued
                    self.deadline = now + timeout
                    return
                self._end(SendStalledError(f"peer read nothing for {timeout:g}s"))
        elif phase is _READING:
            self.server.metrics.error("timeout")
            log.debug("connection from %s timed out", self.peer)
            self.close()

    def close(self) -> None:
        """Close now; a body coroutine in flight is cancelled first, and the socket
        closes when it has let go."""
        if self._on_close is None:
            return
        inflight = self._inflight
        self.phase = _CLOSED
        if inflight is not None and inflight.task is not None:
            inflight.task.cancel()
            return
        self._stop_writing()
        self._pause_reading()
        held, self._held = self._held, None  # a held answer is never sent now
        if isinstance(held, tuple) and held[2] is not None:
            held[2].close()  # the repeat's lent file (an `InFlight`'s goes below)
        if inflight is not None:
            self._release_body(inflight)
            inflight.reply.close()
            self._inflight = None
            inflight.end()
        else:
            # Between responses only: after part of one, close_notify would pass a
            # cut-short body off as a complete one.
            self.stream.close_notify()
        self._unparsed = _EMPTY
        self._view.release()
        close_socket(self.sock)
        on_close, self._on_close = self._on_close, None
        on_close(self)


def log_access(
    server: ServerState,
    peer: str,
    request: Request | None,
    status: int,
    size: int,
    seconds: float | None = None,
    strategy: str | None = None,
) -> None:
    """One access-log line; a line the log cannot take is counted, never raised."""
    if not server.access_log.write(peer, request, status, size, seconds, strategy):
        server.metrics.access_log_errors += 1


def _unread_input(sock: socket.socket) -> bool:
    """Whether the client's bytes wait unread in the kernel."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing waiting; anything else: gone
        return False


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, FileShrankError):
        return "file_shrank"
    if isinstance(exc, SendStalledError):
        return "send_stalled"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, ConnectionError):
        return "reset"
    return "io"


def close_socket(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:  # pragma: no cover - close on a dead socket
        pass
