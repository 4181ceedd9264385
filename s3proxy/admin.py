"""The admin listener: `/metrics`, `/healthz`, `/readyz` and `/proxy.pac` on a port of its own.

# Strategy: a deliberately tiny HTTP/1.1 server on `asyncio.start_server`, so it runs inside mitmproxy's
# event loop with no thread and no extra dependency. One request per connection (`Connection: close`), GET
# and HEAD only, request head capped at 16 KiB and read under a timeout, so a slow or hostile client costs
# one small task. It knows nothing about the proxy: what it serves comes from callables given to it (metrics
# text, a readiness check, the PAC text), which the caller points at whatever config is current, so a reload
# needs no restart of this listener.
#
# It is separate from the proxy port so that scrapers and probes never go through the proxy; the proxy must
# still refuse to tunnel to it (`targets_admin`), or any proxy client could reach it through a CONNECT.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("s3proxy.admin")

ReadyCheck = Callable[[], Awaitable[tuple[bool, str]]]
"""Returns (ready, reason); the reason is shown on /readyz either way."""

MAX_HEAD = 16 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, (text + "\n").encode(), headers=headers)


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    path: str  # without query
    host: str | None  # the Host header, as sent


def parse_head(head: bytes) -> RequestHead:
    """Parse an HTTP/1.x request head (request line and header fields). Raises ValueError."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise ValueError("undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise ValueError("malformed request line")
    method, target, _ = parts
    if target.startswith(("http://", "https://")):  # absolute form: keep the path
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    if not target.startswith("/"):
        raise ValueError("request target must be a path")
    host = None
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError("malformed header field")
        if name.lower() == "host":
            host = value.strip()
    return RequestHead(method, target.partition("?")[0], host)


class AdminServer:
    """Serves the admin endpoints. Every source is a callable, read per request."""

    def __init__(
        self,
        *,
        metrics: Callable[[], bytes] | None = None,
        metrics_content_type: str = "text/plain; version=0.0.4; charset=utf-8",
        ready: ReadyCheck | None = None,
        pac: Callable[[str | None], str] | None = None,
        ready_timeout: float = 5.0,
        read_timeout: float = 5.0,
    ) -> None:
        self._metrics = metrics
        self._metrics_type = metrics_content_type
        self._ready = ready
        self._pac = pac
        self._ready_timeout = ready_timeout
        self._read_timeout = read_timeout
        self._server: asyncio.Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (port 0: any free port, see `address`)."""
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None and self._server.sockets, "not started"
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # -- requests ----------------------------------------------------------------------------------------
    async def respond(self, head: RequestHead) -> Response:
        """The response for one parsed request (no I/O besides the readiness check)."""
        allow = (("Allow", "GET, HEAD"),)
        routes = {"/metrics", "/healthz", "/readyz", "/proxy.pac"}
        if head.path not in routes or (head.path == "/metrics" and self._metrics is None):
            return _text(404, "not found: try /metrics, /healthz, /readyz, /proxy.pac")
        if head.method not in ("GET", "HEAD"):
            return _text(405, "method not allowed", allow)
        if head.path == "/healthz":
            return _text(200, "ok")
        if head.path == "/readyz":
            return await self._readiness()
        if head.path == "/metrics":
            assert self._metrics is not None
            return Response(200, self._metrics(), self._metrics_type)
        if self._pac is None:
            return _text(404, "no PAC file configured")
        try:
            return Response(200, self._pac(head.host).encode(), "application/x-ns-proxy-autoconfig")
        except ValueError as e:
            return _text(400, f"cannot make the PAC file: {e}")

    async def _readiness(self) -> Response:
        if self._ready is None:
            return _text(200, "ready")
        try:
            ok, reason = await asyncio.wait_for(self._ready(), self._ready_timeout)
        except TimeoutError:
            return _text(503, f"not ready: readiness check took longer than {self._ready_timeout:g}s")
        except Exception as e:  # a failing check means "not ready", never a crash
            log.warning("readiness check failed: %r", e)
            return _text(503, f"not ready: readiness check failed ({type(e).__name__})")
        return _text(200 if ok else 503, ("ready" if ok else "not ready") + (f": {reason}" if reason else ""))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = "GET"
        try:
            try:
                head_bytes = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._read_timeout)
            except TimeoutError:
                response = _text(408, "request timeout")
            except asyncio.LimitOverrunError:
                response = _text(431, "request head too large")
            except asyncio.IncompleteReadError:
                return  # closed before a full request: nothing to answer
            else:
                try:
                    head = parse_head(head_bytes[:-4])
                except ValueError as e:
                    response = _text(400, f"bad request: {e}")
                else:
                    method = head.method
                    try:
                        response = await self.respond(head)
                    except Exception:
                        log.exception("admin request %s %s failed", head.method, head.path)
                        response = _text(500, "internal error")
            writer.write(_serialize(response, head_only=method == "HEAD"))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


def _serialize(r: Response, *, head_only: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {r.status} {_REASONS.get(r.status, 'Unknown')}",
        f"Content-Type: {r.content_type}",
        f"Content-Length: {len(r.body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{k}: {v}" for k, v in r.headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + r.body


def targets_admin(host: str, port: int, admin_host: str, admin_port: int) -> bool:
    """True if a CONNECT/request to host:port could reach the admin listener on this machine: same port and
    a loopback, unspecified or the admin address (the proxy must refuse those, not tunnel them)."""
    if port != admin_port:
        return False
    h = host.strip("[]").lower().rstrip(".")
    if h in ("localhost", admin_host.strip("[]").lower()) or h.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    try:
        admin_ip = ipaddress.ip_address(admin_host.strip("[]"))
    except ValueError:
        admin_ip = None
    return (
        ip.is_loopback
        or ip.is_unspecified
        or (admin_ip is not None and (admin_ip.is_unspecified or ip == admin_ip))
    )
