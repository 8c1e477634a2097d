"""zcserve: an asyncio static file server that makes zero-copy I/O measurable."""

__version__ = "0.1.0"
