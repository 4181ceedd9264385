"""`pause_reading`: the client is not read while the requestheaders hook waits, with asyncio's own flow
control left intact (a real asyncio stream over a socketpair)."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

from addons.s3proxy_addon import pause_reading


async def _stream() -> tuple[Any, socket.socket]:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours, limit=1024)
    return SimpleNamespace(reader=reader, writer=writer), theirs


def test_a_reading_connection_is_paused_and_handed_back() -> None:
    async def main() -> None:
        io, peer = await _stream()
        transport = io.writer.transport
        assert pause_reading(io) is transport
        assert not transport.is_reading()
        transport.resume_reading()
        assert transport.is_reading()
        io.writer.close()
        peer.close()

    asyncio.run(main())


def test_a_pause_of_asyncio_own_becomes_ours() -> None:
    async def main() -> None:
        io, peer = await _stream()
        transport = io.writer.transport
        peer.sendall(b"x" * 4096)  # more than twice the reader's limit: the reader pauses the socket
        while transport.is_reading():
            await asyncio.sleep(0.01)
        assert io.reader._paused
        assert pause_reading(io) is transport
        assert not io.reader._paused  # draining the reader no longer resumes the socket behind our back
        await io.reader.read(4096)
        assert not transport.is_reading()
        transport.resume_reading()  # ours to resume; the reader pauses it again by itself when needed
        assert transport.is_reading()
        io.writer.close()
        peer.close()

    asyncio.run(main())


def test_nothing_to_resume_when_closing_or_paused_by_another() -> None:
    async def main() -> None:
        io, peer = await _stream()
        io.writer.transport.pause_reading()  # someone else's pause: theirs to resume
        assert pause_reading(io) is None
        io.writer.close()
        assert pause_reading(io) is None
        assert pause_reading(None) is None
        peer.close()

    asyncio.run(main())
