"""Reading an HTTP body no larger than a limit (aiohttp, server and client side alike).

Size limits are enforced while reading, never after: a body that declares more than the
limit is refused before a byte of it is read, and one that streams past it (chunked, or
lying in its Content-Length) is dropped at the first chunk over.
"""

from __future__ import annotations

from typing import Any


async def read_capped(message: Any, limit: int, *, chunk: int = 65536) -> bytes | None:
    """The body of ``message`` (an ``aiohttp.web.Request`` or ``aiohttp.ClientResponse``),
    or None as soon as it is known to exceed ``limit`` bytes (then it is not read further)."""
    if message.content_length is not None and message.content_length > limit:
        return None
    data = bytearray()
    while True:
        piece = await message.content.read(chunk)
        if not piece:
            return bytes(data)
        data += piece
        if len(data) > limit:
            return None
