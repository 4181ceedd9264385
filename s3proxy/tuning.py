"""What s3proxy changes in how mitmproxy runs, for speed (issue 7; measured with bench/run.py).

Each change keeps mitmproxy's behaviour and only removes work it repeats per read, per hook or per
message; each is documented with what it replaces and is covered by tests/test_tuning.py, which pins the
mitmproxy internals it relies on, so an upgrade that moves them fails a test rather than slowing down or
misbehaving silently. `S3PROXY_NO_TUNE=1` turns them all off, `S3PROXY_NO_TUNE=name,name` the ones named
(for comparison: bench/README.md).

- `wider_reads`: mitmproxy reads 64 KiB per socket read and pushes each read through its whole layer
  stack; s3proxy takes what asyncio already buffered, up to `READ_SIZE`, in one pass, without pausing and
  resuming the socket around every read, has a bulk transfer's socket receive that much per call
  (asyncio: 256 KiB), and hands a receive on as the bytes object it is instead of copying it into and out
  of the reader's buffer.
- `batched_tls_output`: after encrypting, mitmproxy drains OpenSSL's output 64 KiB at a time and sends each
  piece as its own command (a pass through the layer stack and a syscall each), into a buffer pyOpenSSL
  allocates per call, until a read raises WantReadError; s3proxy drains what is pending in one piece,
  through one reused buffer, and stops there.
- `fewer_tls_copies`: mitmproxy decrypts one TLS record (16 KiB) per call into a fresh 64 KiB buffer, copies
  it out, appends it to a bytearray and copies that again; s3proxy decrypts every record available into one
  reused buffer and copies it out once, and learns that OpenSSL needs more input (how nearly every read
  ends) without raising and catching WantReadError. Errors are handled as mitmproxy handles them (logged,
  or the close passed on after the plaintext before it).
- `direct_bodies`: mitmproxy appends every body read to h11's receive buffer and h11 slices it out again
  (three copies); when the buffer is empty and the read lies within the declared Content-Length, s3proxy
  passes the read on as the body data it is. Chunked, close-delimited and pipelined data take mitmproxy's
  own path.
- `no_message_typecheck`: every HTTP request and response mitmproxy builds re-checks the type of each of
  its fields (a debug aid mitmproxy skips under `python -O`); the messages come from mitmproxy's own
  parser and s3proxy's addon sets only typed values.
- `cheap_option_reads`: reading an option (`ctx.options.x`, `context.options.x`: mitmproxy's layers and
  addons read several per request) deep-copies its value, twice when it was never set; s3proxy returns
  values of immutable types (str, int, float, bool, bytes, None) as they are, which is what deepcopy
  returns for them, and still copies lists, dicts and other values once.
- `lean_context_fork`: each request's HTTP stream gets a fork of its connection's context, which builds a
  new Server (with a fresh uuid4: a getrandom syscall) only to replace it with the connection's own at
  once; s3proxy's fork sets the same four attributes without building it.
- `faster_header_lookups`: a header lookup lower-cases the name of every header of the message, and a
  lookup of an absent header (`headers.get(...)`, `name in headers`: mitmproxy asks for
  Transfer-Encoding, Connection and others several times per message) raises and catches a KeyError;
  s3proxy indexes a message's headers by lower-cased name once per change of its headers, remembers how
  the names it is asked for encode, and answers absent names without an exception.
- `inline_watchdog`: each hook disarms the connection's inactivity watchdog through a generator-based
  context manager and awaits the flow's `wait_for_resume()`, which returns at once unless the flow was
  intercepted (s3proxy never intercepts); s3proxy does the same disarming and re-arming inline and awaits
  only for an intercepted flow.
- `lean_log_records` (only in `s3proxy run`'s processes, not where s3proxy is imported as a library):
  every log record (one access line per request) looked up its caller (a walk up the stack), its thread
  and its asyncio task; no handler of the process formats them (the access log writes its message,
  mitmproxy's formatter a time and the message), so the records no longer carry them.
- `cached_hook_args`: a hook's arguments are its dataclass fields, which mitmproxy looks up with
  `dataclasses.fields()` each time it asks (several times per hook); s3proxy remembers the names per class.
- `inline_hooks`: mitmproxy runs each hook in a task that, having finished (most do, within the eager
  first step mitmproxy's task factory gives it), waits for the connection's event lock, which the code that
  started it still holds: one more loop pass, a lock waiter and a named, referenced task per hook. s3proxy
  hands the HookCompleted of a hook that finished at once to the event processing already running under
  the lock, names and references only the tasks that outlive their first step, and leaves hooks that
  suspend (an addon awaited something) to finish as mitmproxy's tasks do.
- `coalesced_writes` (part of inline_hooks' server_event): consecutive SendData commands for one connection
  (a response's head and body, a handshake flight) become one socket write instead of one each; a Log
  between them does not separate them, any other command writes what is held first, and so does the end of
  each event, so nothing waits for a hook or a later event. Datagram connections keep one write per
  SendData; a write that fails is logged as mitmproxy logs it ("mitmproxy has crashed!").
- `tunnel_shortcut` (part of inline_hooks' server_event): in regular mode every event of a CONNECT tunnel
  enters at the connection's root and goes down through the layers that carried the CONNECT (the mode
  layer, the outer HTTP layer and, for the client's bytes, its HTTP/1 server in pipe state) to the
  CONNECT's stream, which hands it to the tunnel's own layers unchanged; every command climbs back up the
  same way, a SendData for the client turned into an HTTP event and back into the same SendData. Once the
  tunnel is a pipe, s3proxy hands those events to the tunnel's layers directly and passes their commands on
  as the outer layers would (an empty write for the client dropped, a close of the client through the
  outer HTTP/1 server, a server half-close made a close, a new server connection entered in the outer
  routing table); the client's close and any event the outer layers would treat otherwise take
  mitmproxy's path.
- `fast_hooks`: mitmproxy dispatches each hook by walking every addon (and its children) inside a
  context manager, recomputing the hook's arguments per addon, then does the same for an `update` hook
  no s3proxy addon implements; s3proxy dispatches to a cached list of the addons that implement the hook,
  with the same error handling (an exception is logged and skips the rest of that top-level addon's tree,
  the next addon still runs; `AddonHalt` stops the chain; `OptionsError` propagates).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import inspect
import logging
import os
import threading
from asyncio import selector_events
from collections.abc import Callable
from typing import Any

# mitmproxy reads at most this much per socket read (its own constant).
MITMPROXY_READ_SIZE = 65535
READ_SIZE = 512 * 1024
# What asyncio's socket transports receive per call (256 KiB), until one of mitmproxy's fills it.
ASYNCIO_RECEIVE_SIZE: int = selector_events._SelectorSocketTransport.max_size  # type: ignore[attr-defined]
# A reader pauses its socket when more than twice its limit waits unread (asyncio's StreamReader).
READ_LIMIT = READ_SIZE // 2
# The most TLS output drained in one piece: a READ_SIZE read re-encrypted, with room to spare.
TLS_DRAIN_SIZE = READ_SIZE + 64 * 1024
# Room for what OpenSSL held back from an earlier read (part of a TLS record) on top of a READ_SIZE read;
# more plaintext than fits is read in further passes.
TLS_HELD_BACK = 2 * 16 * 1024 + 1024


def enabled(name: str, environ: Any = os.environ) -> bool:
    """`S3PROXY_NO_TUNE=1` turns every change off; a comma-separated list of names turns those off."""
    off = {n.strip() for n in environ.get("S3PROXY_NO_TUNE", "").split(",")}
    return not (off & {"1", "all", name})


def tune_mitmproxy() -> None:
    """The process-wide changes (fast_hooks is per master: see `fast_hooks`)."""
    for change in (
        wider_reads,
        batched_tls_output,
        fewer_tls_copies,
        direct_bodies,
        no_message_typecheck,
        cheap_option_reads,
        lean_context_fork,
        faster_header_lookups,
        inline_watchdog,
        cached_hook_args,
        inline_hooks,
    ):
        if enabled(change.__name__):
            change()


# What each change replaced, by "module.Class.name": for tests/test_tuning.py, which compares both.
ORIGINALS: dict[str, Callable[..., Any]] = {}


def _once(owner: Any, name: str, replacement: Callable[..., Any]) -> None:
    current = getattr(owner, name)
    if getattr(current, "_s3proxy", False):
        return
    ORIGINALS[f"{owner.__module__}.{owner.__qualname__}.{name}"] = current
    replacement._s3proxy = True  # type: ignore[attr-defined]
    setattr(owner, name, replacement)


def wider_reads() -> None:
    """Only reads of exactly mitmproxy's size (its proxy server's connection loop is the one reader asking
    for 65535 bytes) are widened; every other StreamReader read is left as asked.

    The first such read lets its reader hold up to READ_SIZE unread before pausing the socket: asyncio's
    default limit pauses it above 128 KiB, that is after every wide read, and resumes it at the next (two
    epoll_ctl calls and their selector bookkeeping per read). Once a receive fills what asyncio's socket
    transport receives per call (`max_size`, 256 KiB), a bulk transfer, that transport receives up to
    READ_SIZE per call; connections that carry small requests keep asyncio's size (each receive allocates
    that much before it is cut to what arrived). What one connection holds unread stays bounded:
    READ_SIZE, plus what the receive that crossed it brought (at most READ_SIZE).

    From then on a receive that arrives while nothing else waits unread is held as the bytes object it
    is and handed to the next read as is: asyncio copies each receive into the reader's bytearray and
    copies it out again. A second receive before that read joins the first in the bytearray, in order,
    and the read takes asyncio's own path, so each read returns what asyncio's would have."""
    original_read = asyncio.StreamReader.read
    original_feed = asyncio.StreamReader.feed_data
    reader_class: Any = asyncio.StreamReader
    reader_class._s3proxy_wide = False
    reader_class._s3proxy_held = None

    def feed_data(self: Any, data: bytes) -> None:
        if self._s3proxy_wide and len(data) >= ASYNCIO_RECEIVE_SIZE:
            transport = self._transport
            if getattr(transport, "max_size", READ_SIZE) < READ_SIZE:
                transport.max_size = READ_SIZE
        held = self._s3proxy_held
        if held is not None:
            self._s3proxy_held = None
            self._buffer.extend(held)  # empty while a receive is held
        elif (
            self._s3proxy_wide
            and type(data) is bytes
            and 0 < len(data) <= 2 * self._limit  # asyncio would not pause for it either
            and not self._buffer
            and not self._eof  # asyncio's assertion, left to it
        ):
            self._s3proxy_held = data
            self._wakeup_waiter()
            return
        original_feed(self, data)

    def unhold(self: Any) -> None:
        # Another way of reading: the reader goes back to asyncio's buffering, held receive included.
        if self._s3proxy_wide:
            self._s3proxy_wide = False
            held = self._s3proxy_held
            if held is not None:
                self._s3proxy_held = None
                self._buffer.extend(held)

    async def read(self: Any, n: int = -1) -> bytes:
        if n != MITMPROXY_READ_SIZE:
            unhold(self)
            return await original_read(self, n)
        if not self._s3proxy_wide:
            self._s3proxy_wide = True
            self._limit = READ_LIMIT
        if self._exception is not None:
            raise self._exception
        held = self._s3proxy_held
        if held is None and not self._buffer and not self._eof:
            await self._wait_for_data("read")
            held = self._s3proxy_held
        if held is not None:
            self._s3proxy_held = None
            self._maybe_resume_transport()
            return held  # type: ignore[no-any-return]
        return await original_read(self, READ_SIZE)

    _once(asyncio.StreamReader, "read", read)
    _once(asyncio.StreamReader, "feed_data", feed_data)

    # Any other way of reading (none is used on mitmproxy's readers) puts a held receive back where
    # asyncio keeps it, in the buffer, and stops holding; readline and iteration go through readuntil.
    original_at_eof = asyncio.StreamReader.at_eof
    original_readuntil = asyncio.StreamReader.readuntil
    original_readexactly = asyncio.StreamReader.readexactly

    def at_eof(self: Any) -> bool:
        unhold(self)
        return original_at_eof(self)

    async def readuntil(self: Any, separator: Any = b"\n") -> bytes:
        unhold(self)
        return await original_readuntil(self, separator)

    async def readexactly(self: Any, n: int) -> bytes:
        unhold(self)
        return await original_readexactly(self, n)

    _once(asyncio.StreamReader, "at_eof", at_eof)
    _once(asyncio.StreamReader, "readuntil", readuntil)
    _once(asyncio.StreamReader, "readexactly", readexactly)


# One scratch buffer per thread (the event loop's) for OpenSSL to write into: each use copies what it
# needs out before returning, and allocating hundreds of KiB per read or drain costs more than the copy.
SCRATCH_SIZE = max(TLS_DRAIN_SIZE, READ_SIZE + TLS_HELD_BACK)
_local = threading.local()


def _scratch() -> Any:
    scratch = getattr(_local, "scratch", None)
    if scratch is None:
        from OpenSSL.SSL import _no_zero_allocator  # type: ignore[attr-defined]  # pinned by tests

        scratch = _local.scratch = _no_zero_allocator("char[]", SCRATCH_SIZE)
    return scratch


def batched_tls_output() -> None:
    from mitmproxy.proxy import commands
    from mitmproxy.proxy.layers import tls
    from OpenSSL import SSL
    from OpenSSL.SSL import _ffi, _lib  # type: ignore[attr-defined]  # pinned by tests/test_tuning.py

    def tls_interact(self: Any) -> Any:
        # mitmproxy's TLSLayer.tls_interact, draining up to TLS_DRAIN_SIZE per read instead of 64 KiB, into
        # the scratch buffer: pyOpenSSL's bio_read, without allocating a buffer of that size per call.
        conn = self.tls
        while True:
            bio = conn._from_ssl
            if bio is None:
                raise TypeError("Connection sock was not None")  # as bio_read: mitmproxy uses memory BIOs
            scratch = _scratch()
            result = _lib.BIO_read(bio, scratch, TLS_DRAIN_SIZE)
            if result <= 0:
                if _lib.BIO_should_retry(bio) and _lib.BIO_should_read(bio):
                    return  # drained: what `_handle_bio_errors` raises WantReadError for, without raising
                try:
                    conn._handle_bio_errors(bio, result)
                except SSL.WantReadError:
                    return
            yield commands.SendData(self.conn, _ffi.buffer(scratch, result)[:])
            if result < TLS_DRAIN_SIZE:
                return  # a memory BIO gives all it holds: the next read would find it drained

    _once(tls.TLSLayer, "tls_interact", tls_interact)


def fewer_tls_copies() -> None:
    from mitmproxy import connection
    from mitmproxy.proxy import commands, events
    from mitmproxy.proxy.layers import tls
    from OpenSSL import SSL
    from OpenSSL.SSL import _ffi, _lib  # type: ignore[attr-defined]  # pinned by tests/test_tuning.py

    def wants_input(conn: Any, result: int) -> bool:
        """Whether pyOpenSSL's `_raise_ssl_error` would raise WantReadError, without raising it: with no
        problem left by a callback (those come first), OpenSSL's error is SSL_ERROR_WANT_READ. That is how
        nearly every read ends, and raising and catching it cost more than the check."""
        ctx = conn._context
        for helper in (ctx._verify_helper, ctx._alpn_select_helper, ctx._ocsp_helper):
            if helper is not None and helper._problems:
                return False
        return _lib.SSL_get_error(conn._ssl, result) == _lib.SSL_ERROR_WANT_READ  # type: ignore[no-any-return]

    def read_plaintext(conn: SSL.Connection) -> tuple[bytes, SSL.Error | None]:
        """Everything OpenSSL can decrypt now, and the error that ended the reading (WantReadError when
        it simply needs more input), as pyOpenSSL's `recv` would have raised it."""
        scratch = _scratch()
        pieces: list[bytes] = []
        while True:
            off = 0
            err: SSL.Error | None = None
            while off < SCRATCH_SIZE:
                result = _lib.SSL_read(conn._ssl, scratch + off, SCRATCH_SIZE - off)
                if result <= 0:
                    if wants_input(conn, result):
                        err = SSL.WantReadError()
                        break
                    try:
                        conn._raise_ssl_error(conn._ssl, result)
                    except SSL.Error as e:
                        # Without its traceback: that would tie this frame (and the plaintext) into a
                        # reference cycle that lives until the garbage collector runs.
                        err = e.with_traceback(None)
                    else:
                        err = SSL.WantReadError()
                    break
                off += result
            pieces.append(_ffi.buffer(scratch, off)[:])
            if err is not None:
                return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), err

    def receive_data(self: Any, data: bytes) -> Any:
        # mitmproxy's TLSLayer.receive_data with the record-by-record loop replaced by read_plaintext.
        if data:
            self.tls.bio_write(data)
        plaintext, err = read_plaintext(self.tls)
        close = isinstance(err, SSL.ZeroReturnError)
        if not close and not isinstance(err, SSL.WantReadError):
            yield commands.Log(f"TLS Error: {err}", logging.WARNING)
        # Can we send something? Note that this must happen after `recv()`, which may have advanced the
        # state machine (mitmproxy's note).
        yield from self.tls_interact()
        if plaintext:
            yield from self.event_to_child(events.DataReceived(self.conn, plaintext))
        if close:
            self.conn.state &= ~connection.ConnectionState.CAN_READ
            if self.debug:
                yield commands.Log(f"{self.debug}[tls] close_notify {self.conn}", logging.DEBUG)
            yield from self.event_to_child(events.ConnectionClosed(self.conn))

    _once(tls.TLSLayer, "receive_data", receive_data)


def direct_bodies() -> None:
    from h11._readers import ContentLengthReader
    from mitmproxy.proxy import events
    from mitmproxy.proxy.layers.http import _http1
    from mitmproxy.proxy.layers.http._base import ReceiveHttp

    cls = _http1.Http1Connection
    original = cls._handle_event

    def _handle_event(self: Any, event: Any) -> Any:
        reader = getattr(self, "body_reader", None)
        if (
            type(event) is events.DataReceived
            and type(reader) is ContentLengthReader
            # read_body as it is now: the addon wraps it (install_trailer_protocol_error)
            and getattr(self.state, "__func__", None) is cls.read_body
            and not self.buf
            and type(event.data) is bytes
            and 0 < len(event.data) <= reader._remaining
        ):
            # What h11's ContentLengthReader would hand out, without the round trip through its buffer.
            reader._remaining -= len(event.data)
            yield ReceiveHttp(self.ReceiveData(self.stream_id, event.data))
            if reader._remaining == 0:
                # The reader now answers EndOfMessage from the empty buffer: mitmproxy's own ending.
                yield from self.read_body(events.DataReceived(self.conn, b""))
            return
        yield from original(self, event)

    _once(_http1.Http1Connection, "_handle_event", _handle_event)


def no_message_typecheck() -> None:
    from mitmproxy import http

    if "__post_init__" not in vars(http.MessageData):
        return  # python -O: mitmproxy defines no check

    def __post_init__(self: Any) -> None:
        return None

    _once(http.MessageData, "__post_init__", __post_init__)


# Types whose values deepcopy returns as they are (copy._deepcopy_atomic): an option holding one of these
# exactly can be handed out without copying.
_ATOMIC_OPTION_TYPES = frozenset({str, int, float, bool, bytes, type(None)})


def cheap_option_reads() -> None:
    from mitmproxy import optmanager

    unset = optmanager.unset

    def current(self: Any) -> Any:
        value = self._default if self.value is unset else self.value
        if type(value) in _ATOMIC_OPTION_TYPES:
            return value
        return copy.deepcopy(value)

    _once(optmanager._Option, "current", current)


def lean_context_fork() -> None:
    from mitmproxy.proxy import context

    cls = context.Context

    def fork(self: Any) -> Any:
        ret = object.__new__(cls)
        ret.client = self.client
        ret.options = self.options
        ret.server = self.server
        ret.layers = self.layers.copy()
        return ret

    _once(cls, "fork", fork)


# Header names asked for as str, encoded and lower-cased (the names mitmproxy and s3proxy ask for are a
# few constants; names from requests could be anything, so only this many are kept).
_HEADER_KEYS: dict[str, bytes] = {}
_HEADER_KEYS_MAX = 512


def faster_header_lookups() -> None:
    from mitmproxy import http

    cls = http.Headers
    always_bytes, native = http._always_bytes, http._native
    keys = _HEADER_KEYS
    original_get_all = cls.get_all

    def get_all(self: Any, name: str | bytes) -> list[str]:
        fields = self.fields
        if type(fields) is not tuple:
            # Only a tuple is known not to change while it is the headers' fields (mitmproxy always
            # assigns one); anything else is looked up as mitmproxy looks it up.
            return original_get_all(self, name)
        key = keys.get(name) if type(name) is str else None
        if key is None:
            key = always_bytes(name).lower()
            if type(name) is str and len(keys) < _HEADER_KEYS_MAX:
                keys[name] = key
        cached = self.__dict__.get("_s3proxy_index")
        if cached is None or cached[0] is not fields:
            # The raw values by lower-cased name, in order, for this tuple of fields (a change of the
            # headers replaces the tuple).
            index: dict[bytes, list[bytes]] = {}
            for k, v in fields:
                lowered = k.lower()
                if lowered in index:
                    index[lowered].append(v)
                else:
                    index[lowered] = [v]
            cached = (fields, index)
            self.__dict__["_s3proxy_index"] = cached
        values = cached[1].get(key)
        return [native(v) for v in values] if values else []

    def get(self: Any, key: str | bytes, default: Any = None) -> Any:
        values = self.get_all(key)
        return self._reduce_values(values) if values else default

    def __contains__(self: Any, key: object) -> bool:
        return bool(self.get_all(key))

    _once(cls, "get_all", get_all)
    _once(cls, "get", get)
    _once(cls, "__contains__", __contains__)


def inline_watchdog() -> None:
    from mitmproxy import flow
    from mitmproxy.proxy import mode_servers

    Flow = flow.Flow

    async def handle_hook(self: Any, hook: Any) -> None:
        # mitmproxy's ProxyConnectionHandler.handle_hook with TimeoutWatchdog.disarm written out.
        watchdog = self.timeout_watchdog
        watchdog.can_timeout.clear()
        watchdog.blocker += 1
        try:
            (data,) = hook.args()
            await self.master.addons.handle_lifecycle(hook)
            if isinstance(data, Flow) and data.intercepted:
                await data.wait_for_resume()  # type: ignore[no-untyped-call]
        finally:
            watchdog.blocker -= 1
            if watchdog.blocker == 0:
                watchdog.register_activity()
                watchdog.can_timeout.set()

    _once(mode_servers.ProxyConnectionHandler, "handle_hook", handle_hook)


def lean_log_records() -> None:
    """logging's own switches for this (its documentation, "Optimization"); records still carry their
    time, level, logger name, message and process. Without the caller lookup, `stack_info=True` adds no
    stack to a record either (nothing in s3proxy or mitmproxy asks for one)."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined,unused-ignore]  # Python 3.12+


def cached_hook_args() -> None:
    from mitmproxy import hooks

    names: dict[type, tuple[str, ...]] = {}

    def args(self: Any) -> list[Any]:
        cls = type(self)
        found = names.get(cls)
        if found is None:
            found = names[cls] = tuple(f.name for f in dataclasses.fields(self))
        return [getattr(self, name) for name in found]

    _once(hooks.Hook, "args", args)


def _layer_route(handler: Any, event: Any) -> Any:
    """mitmproxy's own routing: every event enters the connection's root layer."""
    return handler.layer.handle_event(event)


def _tunnel_router() -> Callable[[Any, Any], Any]:
    """`tunnel_shortcut`: how inline_hooks' server_event hands an event to a connection's layers.

    In regular mode every event of a CONNECT tunnel goes down through the layers that carried the CONNECT
    (the HttpProxy mode layer, a NextLayer, the outer HttpLayer, and for the client's bytes its HTTP/1
    server in pipe state) to the CONNECT's HttpStream, which hands it to the tunnel's own layers (TLS,
    inner HTTP) unchanged; every command comes back up through them, where the stream turns a SendData for
    the client into a ResponseData and the outer HTTP/1 server turns that back into the same SendData. Once
    the tunnel is a pipe, s3proxy gives the tunnel's layers the events that would reach them unchanged and
    passes their commands on as the outer layers would, keeping the outer HttpLayer's routing table as it
    keeps it. Everything else (the client's close, an event while an outer layer is paused, proxy_debug,
    any other mode) takes mitmproxy's path. Until a connection's tunnel is a pipe (and on a
    connection that never has one: plain-HTTP proxy requests) each event costs a few attribute checks."""
    from mitmproxy.proxy import commands, events, layer
    from mitmproxy.proxy.layers import http as http_layers
    from mitmproxy.proxy.layers import modes
    from mitmproxy.proxy.layers.http import _events, _http1

    Http1Server = _http1.Http1Server
    pipe_state = _http1.Http1Connection.passthrough
    stream_pipe = http_layers.HttpStream.passthrough
    SendData, DataReceived = commands.SendData, events.DataReceived
    CloseConnection, CloseTcpConnection = commands.CloseConnection, commands.CloseTcpConnection
    OpenConnection = commands.OpenConnection
    CommandCompleted, ConnectionClosed = events.CommandCompleted, events.ConnectionClosed

    class Tunnel:
        """The layers of one connection's CONNECT tunnel: HttpProxy -> NextLayer -> HttpLayer(regular)
        -> HttpStream (the CONNECT, in pipe state) -> `inner` (the tunnel's layers); the client's bytes
        reach the stream through the outer HttpLayer's Http1Server."""

        __slots__ = ("client", "inner", "outer", "outer_layers", "server", "stream")

        def __init__(self, client: Any, mode: Any, nxt: Any, outer: Any, server: Any, stream: Any) -> None:
            self.client, self.outer, self.server, self.stream = client, outer, server, stream
            self.inner = stream.child_layer
            self.outer_layers = (mode, nxt, outer, server, stream)

        def clear(self) -> bool:
            """No outer layer paused, and the CONNECT's stream still the outer layer's."""
            for part in self.outer_layers:
                if part._paused is not None:
                    return False
            return self.outer.streams.get(self.stream.stream_id) is self.stream

    def find(handler: Any) -> Tunnel | None:
        # mitmproxy's ServerInstance.handle_stream makes the mode layer the handler's root
        # (RegularInstance.make_top_layer: HttpProxy); every other mode keeps mitmproxy's routing.
        mode = handler.layer
        if type(mode) is not modes.HttpProxy:
            return None
        nxt = getattr(mode._handle_event, "__self__", None)
        outer = getattr(nxt, "layer", None)
        if type(nxt) is not layer.NextLayer or type(outer) is not http_layers.HttpLayer:
            return None
        client = handler.client
        server = outer.connections.get(client)
        if type(server) is not Http1Server or getattr(server.state, "__func__", None) is not pipe_state:
            return None
        stream = outer.streams.get(server.stream_id)
        if stream is None or getattr(stream._handle_event, "__func__", None) is not stream_pipe:
            return None
        response = stream.flow.response
        if response is None or response.status_code == 101 or "transfer-encoding" in response.headers:
            return None  # (101: the stream passes server data as HTTP; chunked: the server frames it)
        if any(part.debug is not None for part in (mode, nxt, outer, server, stream)):
            return None  # proxy_debug (set when a layer is made): every layer logs what passes through it
        return Tunnel(client, mode, nxt, outer, server, stream)

    def shortcut(tunnel: Tunnel, event: Any) -> Any:
        client = tunnel.client
        for command in tunnel.inner.handle_event(event):
            t = type(command)
            if t is SendData:
                # For the client, the outer Http1Server sends what it is given, unless it is empty; for a
                # server, the stream passes it on as it is.
                if command.data or command.connection is not client:
                    yield command
            elif t is OpenConnection:
                tunnel.outer.connections[command.connection] = tunnel.stream  # as event_to_child does
                yield command
            elif isinstance(command, CloseConnection):
                if command.connection is client:
                    # The stream's PASSTHROUGH_CLOSE through the outer Http1Server, as mitmproxy does.
                    error = _events.ResponseProtocolError(
                        tunnel.stream.stream_id, "EOF", _events.ErrorCode.PASSTHROUGH_CLOSE
                    )
                    yield from tunnel.outer.event_to_child(tunnel.server, error)
                elif isinstance(command, CloseTcpConnection):
                    yield CloseConnection(command.connection)  # the stream always closes in full
                else:
                    yield command
            else:
                yield command

    def route(handler: Any, event: Any) -> Any:
        tunnel = handler.__dict__.get("_s3proxy_tunnel")
        if tunnel is None:
            tunnel = find(handler)
            if tunnel is None:
                return _layer_route(handler, event)
            handler._s3proxy_tunnel = tunnel
        if isinstance(event, CommandCompleted):
            # A command the outer HttpLayer saw goes back through it (it routes by what it saw); one issued
            # through the shortcut goes straight back to the tunnel's layers, where mitmproxy would take it.
            if event.command in tunnel.outer.command_sources:
                return _layer_route(handler, event)
            return shortcut(tunnel, event)
        if tunnel.clear():
            t = type(event)
            if t is DataReceived or t is ConnectionClosed:
                conn = event.connection
                if conn is tunnel.client:
                    # Only the client's bytes: its close goes through the outer layers, which end the CONNECT.
                    if t is DataReceived and getattr(tunnel.server.state, "__func__", None) is pipe_state:
                        return shortcut(tunnel, event)
                elif tunnel.outer.connections.get(conn) is tunnel.stream:
                    return shortcut(tunnel, event)
        return _layer_route(handler, event)

    return route


def inline_hooks() -> None:
    from mitmproxy.proxy import commands, events, server
    from mitmproxy.utils import asyncio_utils

    coalesce = enabled("coalesced_writes")
    route = _tunnel_router() if enabled("tunnel_shortcut") else _layer_route

    async def hook_task(self: Any, hook: Any) -> None:
        # mitmproxy's ConnectionHandler.hook_task. A hook that finished within its task's eager first
        # step (no addon awaited anything pending) runs inside server_event, which holds the lock: its
        # HookCompleted joins that server_event's queue instead of waiting for the lock.
        await self.handle_hook(hook)
        if hook.blocking:
            completed = self.__dict__.get("_s3proxy_completed")
            if completed is not None:
                completed.append(events.HookCompleted(hook))
            else:
                await self.server_event(events.HookCompleted(hook))

    def start_hook(self: Any, hook: Any) -> None:
        # mitmproxy's asyncio_utils.create_task: its debug name and keep-alive reference are only for
        # tasks that outlive their eager first step; most hooks finish in it.
        task = asyncio.create_task(hook_task(self, hook))
        if not task.done():
            asyncio_utils.set_task_debug_info(
                task, name=f"handle_hook({hook.name})", client=self.client.peername
            )
            asyncio_utils._KEEP_ALIVE.add(task)
            task.add_done_callback(asyncio_utils._KEEP_ALIVE.discard)

    async def server_event(self: Any, event: Any) -> None:
        # mitmproxy's ConnectionHandler.server_event, with hooks run in place (start_hook) and the
        # HookCompleted events of those that finished handled right after, under the same lock.
        async with self._server_event_lock:
            # No `await` beyond this point: code that runs while `_s3proxy_completed` is set runs inside
            # this block (an eager task started here).
            completed: list[Any] = []
            self._s3proxy_completed = completed
            held_writer: Any = None  # coalesce: consecutive SendData for one connection, written once
            held: list[bytes] = []

            def flush() -> None:
                nonlocal held_writer, held
                writer, data = held_writer, held
                held_writer, held = None, []
                writer.write(data[0] if len(data) == 1 else b"".join(data))

            try:
                while True:
                    self.timeout_watchdog.register_activity()
                    try:
                        layer_commands = route(self, event)
                        for command in layer_commands:
                            if held and type(command) not in (commands.SendData, commands.Log):
                                flush()
                            if isinstance(command, commands.OpenConnection):
                                assert command.connection not in self.transports
                                handler = asyncio_utils.create_task(
                                    self.open_connection(command),
                                    name=f"server connection handler {command.connection.address}",
                                    keep_ref=False,
                                    client=self.client.peername,
                                )
                                self.transports[command.connection] = server.ConnectionIO(handler=handler)
                            elif isinstance(command, commands.RequestWakeup):
                                task = asyncio_utils.create_task(
                                    self.wakeup(command),
                                    name=f"wakeup timer ({command.delay:.1f}s)",
                                    keep_ref=False,
                                    client=self.client.peername,
                                )
                                assert task is not None
                                self.wakeup_timer.add(task)
                            elif (
                                isinstance(command, commands.ConnectionCommand)
                                and command.connection not in self.transports
                            ):
                                pass  # The connection has already been closed.
                            elif isinstance(command, commands.SendData):
                                writer = self.transports[command.connection].writer
                                assert writer
                                if not writer.is_closing():
                                    if writer is held_writer:
                                        held.append(command.data)
                                    elif coalesce and command.connection.transport_protocol == "tcp":
                                        if held:
                                            flush()
                                        held_writer, held = writer, [command.data]
                                    else:  # datagrams stay one write each
                                        if held:
                                            flush()
                                        writer.write(command.data)
                            elif isinstance(command, commands.CloseTcpConnection):
                                self.close_connection(command.connection, command.half_close)
                            elif isinstance(command, commands.CloseConnection):
                                self.close_connection(command.connection, False)
                            elif isinstance(command, commands.StartHook):
                                start_hook(self, command)
                            elif isinstance(command, commands.Log):
                                self.log(command.message, command.level)
                            else:
                                raise RuntimeError(f"Unexpected command: {command}")
                        if held:
                            flush()
                    except Exception:
                        self.log("mitmproxy has crashed!", logging.ERROR, exc_info=True)
                        if held:  # what came before the crash, written as mitmproxy would have
                            try:
                                flush()
                            except Exception:
                                self.log("mitmproxy has crashed!", logging.ERROR, exc_info=True)
                    if not completed:
                        return
                    event = completed.pop(0)
            finally:
                self._s3proxy_completed = None
                if completed or held:  # only after a BaseException: leave nothing behind
                    with contextlib.suppress(Exception):
                        if held:
                            flush()
                    for ev in completed:
                        asyncio_utils.create_task(
                            self.server_event(ev),
                            name="server_event(HookCompleted)",
                            keep_ref=True,
                            client=self.client.peername,
                        )

    _once(server.ConnectionHandler, "server_event", server_event)


def fast_hooks(manager: Any) -> None:
    """Replace `trigger_event` and `handle_lifecycle` of one mitmproxy AddonManager. The cache of
    implementing addons is dropped whenever addons are registered or removed and whenever options change
    (mitmproxy's script loader reorders its scripts then); an addon that rebinds its own hook methods at
    run time is not supported."""
    if not enabled("fast_hooks"):
        return
    import types

    from mitmproxy import addonmanager, exceptions, flow

    log = logging.getLogger(addonmanager.__name__)  # where mitmproxy logs "Addon error: ..."
    # Per hook name: per top-level addon, the hook functions of it and its children. mitmproxy runs each
    # top-level addon's tree inside one safecall: an error logs and skips the rest of that tree only.
    Group = tuple[Callable[..., Any], ...]
    cache: dict[str, tuple[Group, ...]] = {}

    def not_callable(name: str, addon: Any) -> Callable[..., Any]:
        def fail(*_args: Any) -> None:
            raise exceptions.AddonManagerError(  # type: ignore[no-untyped-call]
                f"Addon handler {name} ({addon}) not callable"
            )

        return fail

    def handlers(name: str) -> tuple[Group, ...]:
        found = cache.get(name)
        if found is None:
            groups = []
            for top in manager.chain:
                funcs: list[Callable[..., Any]] = []
                for addon in addonmanager.traverse([top]):  # type: ignore[no-untyped-call]
                    func = getattr(addon, name, None)
                    if not func:  # mitmproxy's own test (AddonManager._iter_hooks)
                        continue
                    if callable(func):
                        funcs.append(func)
                    elif not isinstance(func, types.ModuleType):
                        funcs.append(not_callable(name, addon))
                if funcs:
                    groups.append(tuple(funcs))
            found = cache[name] = tuple(groups)
        return found

    async def call(groups: tuple[Group, ...], args: list[Any]) -> None:
        for funcs in groups:
            try:
                for func in funcs:
                    res = func(*args)
                    if res is not None and inspect.isawaitable(res):
                        await res
            except (exceptions.AddonHalt, exceptions.OptionsError):
                raise
            except Exception as e:
                log.error(f"Addon error: {e}", exc_info=True)

    async def trigger_event(event: Any) -> None:
        groups = handlers(event.name)
        if groups:
            try:
                await call(groups, event.args())
            except exceptions.AddonHalt:
                return

    async def handle_lifecycle(event: Any) -> None:
        groups = handlers(event.name)
        args = event.args()
        if groups:
            try:
                await call(groups, args)
            except exceptions.AddonHalt:
                pass
        if isinstance(args[0], flow.Flow) and handlers("update"):
            from mitmproxy import hooks

            await trigger_event(hooks.UpdateHook([args[0]]))

    for mutator in ("register", "remove", "clear"):
        original = getattr(manager, mutator)

        def invalidating(*a: Any, _original: Any = original, **kw: Any) -> Any:
            cache.clear()
            try:
                return _original(*a, **kw)
            finally:
                cache.clear()

        setattr(manager, mutator, invalidating)

    def drop_cache(*_args: Any, **_kwargs: Any) -> None:
        cache.clear()

    # mitmproxy's signals hold their receivers weakly: the manager keeps this one alive.
    manager._s3proxy_drop_hook_cache = drop_cache
    manager.master.options.changed.connect(drop_cache)
    manager.trigger_event = trigger_event
    manager.handle_lifecycle = handle_lifecycle
