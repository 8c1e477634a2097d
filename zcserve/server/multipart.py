"""The body of a multipart/byteranges reply, sent as a strategy: each part's head,
then its range moved by the real copy strategy (sendfile sends every part with
zero copies), then the closing boundary."""

from __future__ import annotations

from zcserve.server.files import OpenedFile
from zcserve.server.respond import MultipartReply
from zcserve.server.sockio import SocketStream
from zcserve.server.strategies import CopyStrategy, Transfer


class MultipartBody:
    """Stands in for the chosen strategy for one `MultipartReply`: nothing is taken
    before the head (`start` is None), and `send` moves the parts in order."""

    def __init__(self, strategy: CopyStrategy, reply: MultipartReply) -> None:
        self.strategy = strategy
        self.reply = reply
        self.name = strategy.name
        """The strategy that moves the bytes, which metrics and the access log report."""

    def choose(self, stream: SocketStream) -> CopyStrategy:
        return self

    def start(
        self, stream: SocketStream, file: OpenedFile, offset: int, count: int
    ) -> Transfer | None:
        return None

    async def send(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> None:
        """Every part of the reply; `offset` and `count` (the whole body) are unused."""
        strategy = self.strategy
        for part_head, part_offset, part_count in self.reply.parts:
            await stream.send_all(part_head, more=True)
            await strategy.send(stream, file, part_offset, part_count)
        await stream.send_all(self.reply.tail)
