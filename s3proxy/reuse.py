"""Upstream connections shared across client connections (`upstream.reuse_idle`).

mitmproxy keeps an upstream connection for as long as the client connection that opened it. A client that
opens a new connection per request (curl in a script, many legacy tools) therefore costs a new TCP + TLS
handshake to the endpoint (and the address probe of `upstream.verify_interval`) on every request. Here, when
a client connection ends, each of its endpoint connections that sits idle between two HTTP/1.1 exchanges is
kept for `reuse_idle` seconds, and the next client connection that needs the same endpoint name takes it
instead of opening one.

Where it is safe:
- Only connections to this proxy's own endpoint names (`Reuse.wants`), over verified TLS, without an
  upstream proxy, speaking HTTP/1.1, one pool per name and port; S3 requests carry their authority in each
  request's signature, never in the connection, so any client's request may use any of them.
- Only between exchanges: the HTTP/1 client layer has no request, no response and no unread byte, TLS has
  nothing pending, nothing of the connection waits on a hook, its reading task waits in read() (it holds
  no byte it has not delivered), and no byte arrived while no request was out (not even part of a TLS
  record).
- Only under the config it was opened with: a reload closes the kept ones, and ones busy during the reload
  are not kept afterwards.
- An idle connection on which the endpoint sends anything (its close, a stray byte) is closed at once, and
  one is checked again when taken. Idle connections expire after `reuse_idle` seconds and are not kept once
  older than MAX_AGE, or once their address is no longer the one a new connection would try first
  (`Reuse.keep_address`: a failover ends, the preferred zone is back, the DNS answer expired). A config
  reload closes them all.
- A GET or HEAD whose reused connection turns out closed before any answer is sent again
  (`install_stale_connection_replay` in the addon) on a new, probed connection: never on another kept one,
  likely closed in the same batch.

How: the layer stack mitmproxy built for the connection (TLS, HTTP/1 client) moves with it. It leaves the
old client's `HttpLayer.connections` and its handler's `transports`, and joins the new ones; its reading
task stays the same and delivers what it reads to whichever handler owns the connection at that moment
(`handle_connection`). tests/test_reuse.py pins the mitmproxy code this relies on.

`IdlePool` is the pure part (which connection, how long); the rest is the mitmproxy glue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# An idle connection older than this (seconds since its TCP connect) is closed instead of kept.
MAX_AGE = 60.0

HOME = "_s3proxy_reuse_home"  # on a Server: the HttpLayer whose `connections` holds its layer stack
OWNER = "_s3proxy_reuse_owner"  # on a Server: the ConnectionHandler that reads it (None: idle, kept)
GENERATION = "_s3proxy_reuse_generation"  # on a Server: the config generation it was opened under
READING = "_s3proxy_reuse_reading"  # on a Server: its reading task waits in read(), holding nothing
STRAY = "_s3proxy_reuse_stray"  # on a Server: bytes arrived while no request was out: never reuse it
HANDLER = "_s3proxy_handler"  # on a Client: its ConnectionHandler
# flow.metadata key: this flow's next upstream connection must be a new one (the stale-connection replay).
NEW_CONNECTION_KEY = "s3proxy_replayed"


def pool_key(address: Any) -> str:
    """One pool per endpoint name and port."""
    return f"{address[0]}:{address[1]}"


@dataclass(slots=True)
class _Kept[T]:
    item: T
    until: float


class IdlePool[T]:
    """Idle items by name, at most `max_per_name` each (beyond that a new one is not kept: the caller
    closes it), each for `idle_seconds`; the most recently kept one is handed out first (the likeliest to
    be alive)."""

    def __init__(self, idle_seconds: float = 0.0, max_per_name: int = 0) -> None:
        self.idle_seconds = idle_seconds
        self.max_per_name = max_per_name
        self._by_name: dict[str, list[_Kept[T]]] = {}

    @property
    def enabled(self) -> bool:
        return self.idle_seconds > 0 and self.max_per_name > 0

    def put(self, name: str, item: T, now: float) -> bool:
        """Keep `item` until now + idle_seconds. False (not kept) when reuse is off or `name` is full."""
        if not self.enabled:
            return False
        kept = self._by_name.setdefault(name, [])
        if len(kept) >= self.max_per_name:
            return False
        kept.append(_Kept(item, now + self.idle_seconds))
        return True

    def take(self, name: str, now: float) -> tuple[T | None, list[T]]:
        """(the newest unexpired item for `name` or None, the expired ones removed on the way)."""
        kept = self._by_name.get(name)
        if not kept:
            return None, []
        item = kept.pop()
        stale = [k.item for k in kept if k.until <= now]
        if stale:
            kept[:] = [k for k in kept if k.until > now]
        if not kept:
            del self._by_name[name]
        if item.until <= now:
            stale.append(item.item)
            return None, stale
        return item.item, stale

    def remove_where(self, name: str, match: Callable[[T], bool]) -> bool:
        """Remove the first item of `name` that `match` accepts; False when none did."""
        kept = self._by_name.get(name)
        if not kept:
            return False
        for i, k in enumerate(kept):
            if match(k.item):
                del kept[i]
                if not kept:
                    del self._by_name[name]
                return True
        return False

    def next_due(self) -> float | None:
        """When the first kept item expires (None: nothing kept)."""
        return min((k.until for kept in self._by_name.values() for k in kept), default=None)

    def expired(self, now: float) -> list[T]:
        """Remove and return every item whose time is up."""
        out: list[T] = []
        for name in list(self._by_name):
            kept = self._by_name[name]
            out += [k.item for k in kept if k.until <= now]
            kept[:] = [k for k in kept if k.until > now]
            if not kept:
                del self._by_name[name]
        return out

    def drain(self) -> list[T]:
        """Remove and return everything."""
        out = [k.item for kept in self._by_name.values() for k in kept]
        self._by_name.clear()
        return out

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._by_name.values())


# ------------------------------------------------------------------------------------------ mitmproxy glue


@dataclass(slots=True)
class Idle:
    """A kept connection: the Server, the root of its layer stack, its reader/writer and reading task."""

    server: Any
    root: Any
    io: Any


class Reuse:
    """The process's shared upstream connections. The addon sets the policy (`configure`)."""

    def __init__(self) -> None:
        self.pool: IdlePool[Idle] = IdlePool()
        self.wants: Callable[[str], bool] = lambda _host: False  # one of our endpoint names?
        # Is (host, address) still where a new connection to host would go (zonal preference, benches)?
        self.keep_address: Callable[[str, str], bool] = lambda _host, _address: True
        self.on_reuse: Callable[[str], None] = lambda _host: None  # a metric
        self.clock: Callable[[], float] = time.monotonic
        # Bumped by every configure: a connection opened under an older config (endpoint ports, CA bundle)
        # is never kept or taken, even one that was busy when the config changed.
        self.generation = 0
        self._sweep: asyncio.TimerHandle | None = None

    def configure(self, idle_seconds: float, max_per_name: int) -> None:
        """New limits; every kept connection is closed (a reload may have changed endpoints or CAs)."""
        self.generation += 1
        self.close_all()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.pool.idle_seconds, self.pool.max_per_name = idle_seconds, max_per_name

    def close_all(self) -> None:
        for idle in self.pool.drain():
            _close(idle)

    # -- parking (a client connection ended) ----------------------------------------------------------
    def park_idle(self, handler: Any) -> int:
        """Keep every idle endpoint connection of `handler` (whose client connection has ended) for the
        next client connection. Returns how many were kept."""
        if not self.pool.enabled:
            return 0
        now = self.clock()
        kept = 0
        for server, io in list(handler.transports.items()):
            owner: Any = getattr(server, OWNER, None)
            if owner is not handler:
                continue
            home = getattr(server, HOME, None)
            if home is None:
                continue
            root = home.connections.get(server)
            if root is None or not self._reusable(server, root, io, home):
                continue
            idle = Idle(server, root, io)
            if not self.pool.put(pool_key(server.address), idle, now):
                continue
            del handler.transports[server]
            for layer in _http_layers(home):
                layer.connections.pop(server, None)
            setattr(server, OWNER, None)
            setattr(server, HOME, None)
            kept += 1
        if kept:
            self._arm_sweep()
        return kept

    def _reusable(self, server: Any, root: Any, io: Any, home: Any) -> bool:
        from mitmproxy.connection import ConnectionState
        from mitmproxy.proxy import tunnel
        from mitmproxy.proxy.layers.http import HttpClient
        from mitmproxy.proxy.layers.http._http1 import Http1Client
        from mitmproxy.proxy.layers.tls import ServerTLSLayer

        if (
            getattr(server, GENERATION, None) != self.generation
            or not getattr(server, READING, False)
            or getattr(server, STRAY, False)
            or server.state is not ConnectionState.OPEN
            or server.error
            or not server.tls_established
            or server.via is not None
            or server.transport_protocol != "tcp"
            or server.timestamp_start is None
            or time.time() - server.timestamp_start >= MAX_AGE
            or not server.peername
            or not self.wants(str(server.address[0]))
            or not self.keep_address(str(server.address[0]), str(server.peername[0]))
            or (home is not None and server in home.waiting_for_establishment)
        ):
            return False
        if type(root) is not ServerTLSLayer or root.tunnel_state is not tunnel.TunnelState.OPEN:
            return False
        if root.tls is None or root.tls.pending():
            return False
        client_layer = getattr(root, "child_layer", None)
        if type(client_layer) is not HttpClient:
            return False
        h1 = getattr(client_layer, "child_layer", None)
        if (
            type(h1) is not Http1Client
            or h1.stream_id is not None
            or h1.request is not None
            or h1.response is not None
            or h1.buf
            or getattr(h1.state, "__func__", None) is not Http1Client.read_headers
        ):
            return False
        for layer in (root, client_layer, h1):
            if layer._paused is not None or layer._paused_event_queue:
                return False
        reader, writer = io.reader, io.writer
        if reader is None or writer is None or writer.is_closing():
            return False
        # asyncio's StreamReader state, read directly: at_eof() would make s3proxy.tuning's reader hand its
        # held receive back to the buffer.
        if (
            getattr(reader, "_eof", False)
            or getattr(reader, "_buffer", b"")
            or getattr(reader, "_s3proxy_held", None) is not None
            or reader.exception() is not None
        ):
            return False
        return io.handler is not None and not io.handler.done() and not io.handler.cancelling()

    def _arm_sweep(self) -> None:
        due = self.pool.next_due()
        if self._sweep is None and due is not None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(max(0.0, due - self.clock()), self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep = None
        for idle in self.pool.expired(self.clock()):
            _close(idle)
        if len(self.pool):
            self._arm_sweep()

    # -- taking (a client connection needs an endpoint connection) ------------------------------------
    def take(self, address: Any) -> Idle | None:
        while True:
            idle, stale = self.pool.take(pool_key(address), self.clock())
            for s in stale:
                _close(s)
            if idle is None:
                return None
            if self._reusable(idle.server, idle.root, idle.io, None):
                return idle
            _close(idle)

    def discard(self, server: Any) -> None:
        """A kept connection ended by itself (the endpoint closed it or sent something)."""
        self.pool.remove_where(pool_key(server.address), lambda idle: idle.server is server)


def _http_layers(layer: Any) -> list[Any]:
    """`layer` (an HttpLayer) and the HttpLayers enclosing it: every one that may route its connections.
    A layer's context lists its ancestors, outermost first, and the layer itself."""
    from mitmproxy.proxy.layers import http as http_layers

    return [x for x in layer.context.layers if isinstance(x, http_layers.HttpLayer)]


REUSE = Reuse()


def _between_exchanges(connection: Any) -> bool:
    """True when the connection's HTTP/1 client layer has no request out (nothing is expected)."""
    home = getattr(connection, HOME, None)
    root = home.connections.get(connection) if home is not None else None
    h1 = getattr(getattr(root, "child_layer", None), "child_layer", None)
    return h1 is not None and getattr(h1, "request", False) is None


def _close(idle: Idle) -> None:
    # The reading task (OWNER None) closes the writer and ends quietly.
    if idle.io.handler is not None and not idle.io.handler.done():
        idle.io.handler.cancel("idle upstream connection closed")


def install() -> None:
    """Patch mitmproxy (once per process): get_connection takes kept connections, handle_connection reads
    for whichever handler owns the connection, every handler is findable from its Client."""
    from mitmproxy.connection import ConnectionState
    from mitmproxy.proxy import events, server
    from mitmproxy.proxy.layers import http as http_layers

    layer_cls = http_layers.HttpLayer
    handler_cls = server.ConnectionHandler
    if getattr(layer_cls.get_connection, "_s3proxy", False):
        return
    original_get = layer_cls.get_connection
    original_init = handler_cls.__init__
    original_handle = handler_cls.handle_connection

    def get_connection(self: Any, event: Any, *, reuse: bool = True) -> Any:
        if not (
            reuse
            and event.tls
            and event.via is None
            and event.transport_protocol == "tcp"
            and REUSE.pool.enabled
            and REUSE.wants(event.address[0])
        ):
            return (yield from original_get(self, event, reuse=reuse))
        for connection in self.connections:
            if event.connection_spec_matches(connection) and (
                connection.connected or connection.error or connection in self.waiting_for_establishment
            ):
                # This client's own connection: mitmproxy uses it (or reports its error).
                return (yield from original_get(self, event, reuse=reuse))
        handler = getattr(self.context.client, HANDLER, None)
        stream = self.command_sources.get(event)
        flow = getattr(stream, "flow", None)
        fresh = flow is not None and bool(flow.metadata.get(NEW_CONNECTION_KEY))
        idle = REUSE.take(event.address) if handler is not None and not fresh else None
        if idle is not None and not event.connection_spec_matches(idle.server):
            _close(idle)  # not possible with pools keyed by name and port; never hand it out if it were
            idle = None
        if handler is None or idle is None:
            yield from original_get(self, event, reuse=reuse)
            if self.connections:
                # mitmproxy's get_connection adds the new connection's stack last.
                new = next(reversed(self.connections))
                if event.connection_spec_matches(new) and getattr(new, HOME, None) is None:
                    setattr(new, HOME, self)
                    setattr(new, GENERATION, REUSE.generation)
            return None
        conn = idle.server
        handler.transports[conn] = server.ConnectionIO(
            handler=idle.io.handler, reader=idle.io.reader, writer=idle.io.writer
        )
        setattr(conn, OWNER, handler)
        setattr(conn, HOME, self)
        self.connections[conn] = idle.root
        # Enclosing HTTP layers (the CONNECT request's, in regular mode) route a connection's events to the
        # child it was opened through; mitmproxy learns that from the OpenConnection command, which a taken
        # connection never sends. Each layer's context lists its ancestors, outermost first.
        layers = self.context.layers
        for i, outer in enumerate(layers):
            if outer is self:
                break
            if isinstance(outer, layer_cls) and i + 1 < len(layers):
                outer.connections[conn] = layers[i + 1]
        REUSE.on_reuse(str(event.address[0]))
        stream = self.command_sources.pop(event)
        yield from self.event_to_child(stream, http_layers.GetHttpConnectionCompleted(event, (conn, None)))
        return None

    def __init__(self: Any, context: Any) -> None:
        original_init(self, context)
        setattr(context.client, HANDLER, self)

    async def handle_connection(self: Any, connection: Any) -> None:
        # mitmproxy's ConnectionHandler.handle_connection, for endpoint connections that may be kept:
        # what is read goes to the handler that owns the connection now; while kept (no owner), anything
        # read (the endpoint's close or a stray byte) ends it quietly.
        if getattr(connection, HOME, None) is None:
            return await original_handle(self, connection)
        setattr(connection, OWNER, self)
        io = self.transports[connection]
        reader, writer = io.reader, io.writer
        assert reader and writer
        cancelled: BaseException | None = None
        while True:
            setattr(connection, READING, True)  # only now may the connection be kept
            try:
                data = await reader.read(65535)
                if not data:
                    raise OSError("Connection closed by peer.")
            except OSError:
                break
            except asyncio.CancelledError as e:
                cancelled = e
                break
            finally:
                setattr(connection, READING, False)
            owner = getattr(connection, OWNER)
            if owner is None:
                break
            if _between_exchanges(connection):
                # Bytes nobody asked for (a close_notify, a stray byte, part of a TLS record the HTTP layer
                # will never see): the connection's state is no longer known to be clean.
                setattr(connection, STRAY, True)
            await owner.server_event(events.DataReceived(connection, data))
            try:
                await owner.drain_writers()
            except asyncio.CancelledError as e:
                cancelled = e
                break

        owner = getattr(connection, OWNER)
        if owner is None:
            REUSE.discard(connection)
            connection.state = ConnectionState.CLOSED
            try:
                writer.close()
            except OSError:
                pass
            if cancelled:
                raise cancelled
            return

        if cancelled is None and connection.transport_protocol == "tcp":
            connection.state &= ~ConnectionState.CAN_READ
        else:
            connection.state = ConnectionState.CLOSED
        await owner.server_event(events.ConnectionClosed(connection))
        if connection.state is ConnectionState.CAN_WRITE:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError as e:
                cancelled = e
        try:
            writer.close()
        except OSError:
            pass
        owner.transports.pop(connection, None)
        if cancelled:
            raise cancelled

    for owner, name, replacement, original in (
        (layer_cls, "get_connection", get_connection, original_get),
        (handler_cls, "__init__", __init__, original_init),
        (handler_cls, "handle_connection", handle_connection, original_handle),
    ):
        replacement.__dict__.update(_s3proxy=True, __wrapped__=original)
        setattr(owner, name, replacement)
