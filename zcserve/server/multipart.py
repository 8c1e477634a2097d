"""The body of a multipart/byteranges reply, sent as a strategy: each part's head,
then its range moved by the real copy strategy (sendfile sends every part with
zero copies), then the closing boundary."""

from __future__ import annotations

from typing import ClassVar, cast

from zcserve.server.files import OpenedFile
from zcserve.server.respond import MultipartReply
from zcserve.server.sockio import SocketStream
from zcserve.server.strategies import CopyStrategy, Transfer


class MultipartBody:
    """Stands in for the chosen strategy for one `MultipartReply`: nothing is taken
    before the head (`start` is None), and `send` moves the parts in order."""

    name: ClassVar[str] = "multipart"
    """Overridden by `multipart_body` with the name of the strategy that moves the
    bytes, which metrics and the access log report."""

    def __init__(self, strategy: CopyStrategy, reply: MultipartReply) -> None:
        self.strategy = strategy
        self.reply = reply

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


_BY_NAME: dict[str, type[MultipartBody]] = {}


def multipart_body(strategy: CopyStrategy, reply: MultipartReply) -> CopyStrategy:
    """A `MultipartBody` that carries the real strategy's name, as a class variable
    like every strategy's (one small class per strategy name, made once)."""
    cls = _BY_NAME.get(strategy.name)
    if cls is None:
        made = type(f"MultipartBody_{strategy.name}", (MultipartBody,), {"name": strategy.name})
        cls = _BY_NAME[strategy.name] = cast(type[MultipartBody], made)
    return cls(strategy, reply)
