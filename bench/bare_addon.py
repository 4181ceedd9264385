"""The baseline for bench/run.py: the least a mitmproxy addon must do to carry S3 traffic to an endpoint.

It only points every decrypted request at one upstream name and port (`bare_upstream=HOST:PORT`, e.g.
`bucket.vpce-….vpce.amazonaws.com:8443`), streams both bodies (mitmproxy's native pass-through, `stream =
True`) and answers the event loop's name lookups for that name with `bare_address` (mitmproxy keeps the
upstream connection of a client connection open and reuses it). No classification, no signing, no DNS, no
log: whatever s3proxy costs on top of this is what the benchmark calls s3proxy's overhead.

    mitmdump -q -s bench/bare_addon.py --set bare_upstream=NAME:PORT --set bare_address=127.0.0.1 ...
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from mitmproxy import ctx, http


class BareRewrite:
    def __init__(self) -> None:
        self.host = ""
        self.port = 443
        self.address = "127.0.0.1"

    def load(self, loader: Any) -> None:
        loader.add_option("bare_upstream", str, "", "HOST:PORT every request is sent to")
        loader.add_option("bare_address", str, "127.0.0.1", "address the upstream name resolves to")

    def configure(self, updated: set[str]) -> None:
        if "bare_upstream" in updated and ctx.options.bare_upstream:
            host, _, port = ctx.options.bare_upstream.rpartition(":")
            self.host, self.port = host, int(port)
        if "bare_address" in updated:
            self.address = ctx.options.bare_address

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        original = loop.getaddrinfo

        async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host == self.host:
                return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (self.address, port))]
            return await original(host, port, *args, **kwargs)

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        r = flow.request
        r.scheme, r.host, r.port = "https", self.host, self.port
        r.stream = True

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            flow.response.stream = True


addons = [BareRewrite()]
