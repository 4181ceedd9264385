"""s3proxy.tuning: each speed change behaves exactly like the mitmproxy code it replaces.

The replaced functions are compared with mitmproxy's originals on the same inputs (real OpenSSL, mitmproxy's
real HTTP/1 layers); the mitmproxy, h11 and pyOpenSSL internals they copy or call are pinned by a hash of
their source, so an upgrade that changes them fails here first."""

from __future__ import annotations

import asyncio
import collections.abc
import copy
import dataclasses
import hashlib
import inspect
import io
import logging
import random
import re
import types
from collections.abc import Iterator
from typing import Any

import h11._readers
import OpenSSL.SSL as SSL
import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import addonmanager, connection, exceptions, flow, http, master, options, optmanager
from mitmproxy.addons import proxyserver, termlog, tlsconfig
from mitmproxy.coretypes import multidict
from mitmproxy.net import tls as net_tls
from mitmproxy.proxy import commands, context, events, layer, server
from mitmproxy.proxy import mode_servers as server_modes
from mitmproxy.proxy import server_hooks as hooks
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers import modes, tls
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.test import tflow
from mitmproxy.utils import asyncio_utils

from s3proxy import tuning

tuning.tune_mitmproxy()

# --------------------------------------------------------------------------------------------- pins

PINNED = {
    "TLSLayer.receive_data": (
        tuning.ORIGINALS["mitmproxy.proxy.layers.tls.TLSLayer.receive_data"],
        "85c0e6b656c324e5",
    ),
    "TLSLayer.tls_interact": (
        tuning.ORIGINALS["mitmproxy.proxy.layers.tls.TLSLayer.tls_interact"],
        "62d6d57d43dd1a2e",
    ),
    "Http1Connection._handle_event": (
        tuning.ORIGINALS["mitmproxy.proxy.layers.http._http1.Http1Connection._handle_event"],
        "2ac8db3e43ae743f",
    ),
    # (also addons/s3proxy_addon.py install_trailer_protocol_error: its NotImplementedError for trailers)
    "Http1Connection.read_body": (_http1.Http1Connection.read_body, "aece271029af36e4"),
    "ContentLengthReader.__call__": (h11._readers.ContentLengthReader.__call__, "83205782bcb1dcf6"),
    "MessageData.__post_init__": (
        tuning.ORIGINALS["mitmproxy.http.MessageData.__post_init__"],
        "f65088e210cd9cc1",
    ),
    "AddonManager.trigger_event": (addonmanager.AddonManager.trigger_event, "b763c59bc4992e33"),
    "AddonManager.handle_lifecycle": (addonmanager.AddonManager.handle_lifecycle, "38c97e792d1db5b7"),
    "AddonManager.invoke_addon": (addonmanager.AddonManager.invoke_addon, "13180532440359de"),
    "AddonManager._iter_hooks": (addonmanager.AddonManager._iter_hooks, "350b419ab7284091"),
    "safecall": (addonmanager.safecall, "f2052c18340e99b0"),
    "Hook.args": (tuning.ORIGINALS["mitmproxy.hooks.Hook.args"], "5bab95f7aa358e18"),
    # cheap_option_reads, lean_context_fork:
    "_Option.current": (tuning.ORIGINALS["mitmproxy.optmanager._Option.current"], "6859c2d9c826806e"),
    "_Option.default": (optmanager._Option.default.fget, "cfc9882b8960757d"),
    "OptManager.__getattr__": (optmanager.OptManager.__getattr__, "a9d5792099cd82ef"),
    "Context.fork": (tuning.ORIGINALS["mitmproxy.proxy.context.Context.fork"], "cad9374a0689f10a"),
    "Context.__init__": (context.Context.__init__, "7ee4176662abb9c7"),
    # inline_watchdog:
    "ProxyConnectionHandler.handle_hook": (
        tuning.ORIGINALS["mitmproxy.proxy.mode_servers.ProxyConnectionHandler.handle_hook"],
        "9f8b52fd798203c9",
    ),
    "TimeoutWatchdog.disarm": (server.TimeoutWatchdog.disarm.__wrapped__, "99af75f94eed883a"),
    "TimeoutWatchdog.register_activity": (server.TimeoutWatchdog.register_activity, "41e033f7debf79d3"),
    "Flow.wait_for_resume": (flow.Flow.wait_for_resume, "a333ab3b51300b44"),
    # faster_header_lookups (Headers.get and __contains__ were Mapping's: see its test):
    "Headers.get_all": (tuning.ORIGINALS["mitmproxy.http.Headers.get_all"], "367b3317bc2ba45c"),
    "_MultiDict.get_all": (multidict._MultiDict.get_all, "5bff03c1afa25bb7"),
    "_MultiDict.__getitem__": (multidict._MultiDict.__getitem__, "482e7414c932e3e8"),
    "Headers._kconv": (http.Headers._kconv, "dd59639eb7c46701"),
    "Headers._reduce_values": (http.Headers._reduce_values, "d808a4075a1f266d"),
    "http._native": (http._native, "0ba4541fc6fa15ce"),
    "http._always_bytes": (http._always_bytes, "1f256dc3d66394a0"),
    "ConnectionHandler.server_event": (
        tuning.ORIGINALS["mitmproxy.proxy.server.ConnectionHandler.server_event"],
        "a2b42657ebe8bf6d",
    ),
    "ConnectionHandler.hook_task": (server.ConnectionHandler.hook_task, "9ac7970160526268"),
    "asyncio_utils.create_task": (asyncio_utils.create_task, "1e4ddcc5df8a95ab"),
    "Connection.bio_read": (SSL.Connection.bio_read, "bc83763ed40fc664"),
    "Connection._handle_bio_errors": (SSL.Connection._handle_bio_errors, "eaea77f2e1fab12e"),
    "Connection.recv": (SSL.Connection.recv, "84b0e9671ae37797"),
    # addons/s3proxy_addon.py install_stale_connection_replay:
    "HttpStream.handle_protocol_error": (http_layers.HttpStream.handle_protocol_error, "59fc3b2eeeabf63a"),
    "HttpStream.make_server_connection": (http_layers.HttpStream.make_server_connection, "ddc7bc72f4d2fbc7"),
    # addons/s3proxy_addon.py install_early_refusal wraps the first and, after it, does what the second does
    # at the end of a body; a request's events reach `client_state`; send_response answers at once:
    "HttpStream.state_wait_for_request_headers": (
        http_layers.HttpStream.state_wait_for_request_headers,
        "3706d5d5ce01dcd4",
    ),
    "HttpStream.state_consume_request_body": (
        http_layers.HttpStream.state_consume_request_body,
        "45459c1bbd8bdb1a",
    ),
    "HttpStream._handle_event": (http_layers.HttpStream._handle_event, "e3cbfef7310ae81f"),
    "HttpStream.send_response": (http_layers.HttpStream.send_response, "d581bc106152e369"),
    "HttpStream.flow_done": (http_layers.HttpStream.flow_done, "ad9969744785c572"),
    "HttpStream.check_killed": (http_layers.HttpStream.check_killed, "368cad352d1e82b6"),
    # ... and the connection closes once the request has ended, for the answer's `Connection: close`
    # (Http1Connection.mark_done, pinned below), after Http1Server.send has sent the answer at once:
    "Http1Server.send": (_http1.Http1Server.send, "cc218a1337c0f5cf"),
    "Connection._raise_ssl_error": (SSL.Connection._raise_ssl_error, "04b0d7964c73ea9e"),
    # s3proxy/reuse.py (endpoint connections across client connections) copies or relies on these
    # (inspect.getsource follows __wrapped__ to mitmproxy's own code once the glue is installed):
    "HttpLayer.get_connection": (http_layers.HttpLayer.get_connection, "1aa1c63e3175766c"),
    "HttpLayer.event_to_child": (http_layers.HttpLayer.event_to_child, "1095f6e1581d1780"),
    "HttpLayer._handle_event": (http_layers.HttpLayer._handle_event, "6ba31883cc7a06b3"),
    "GetHttpConnection.connection_spec_matches": (
        http_layers.GetHttpConnection.connection_spec_matches,
        "d1c7cdec843ece5f",
    ),
    "ConnectionHandler.__init__": (server.ConnectionHandler.__init__, "ffb8e6c9e6c6d020"),
    "ConnectionHandler.handle_client": (server.ConnectionHandler.handle_client, "01f1b7cc991c4711"),
    "ConnectionHandler.handle_connection": (server.ConnectionHandler.handle_connection, "95c3f93e9824e527"),
    "ConnectionHandler.open_connection": (server.ConnectionHandler.open_connection, "5e0b3cbaf7a4030a"),
    "Http1Connection.mark_done": (_http1.Http1Connection.mark_done, "dc5ed395ce4f0763"),
    "Http1Client.read_headers": (_http1.Http1Client.read_headers, "415454c5fa8b5981"),
    # tunnel_shortcut (s3proxy.tuning._tunnel_router) gives a CONNECT tunnel's events to the tunnel's layers
    # as these would, and converts the commands as the stream in pipe state and the outer Http1Server do
    # (Http1Server.send, HttpLayer.event_to_child and HttpLayer._handle_event are pinned above):
    "HttpStream.passthrough": (http_layers.HttpStream.passthrough, "a6df32aba1ae251a"),
    "HttpStream.handle_connect_finish": (http_layers.HttpStream.handle_connect_finish, "eb3a0054cb5b716e"),
    "Http1Connection.passthrough": (_http1.Http1Connection.passthrough, "aa59bc78ffbdcf54"),
    "Http1Connection.make_pipe": (_http1.Http1Connection.make_pipe, "a3af8fb481541632"),
    "HttpProxy._handle_event": (modes.HttpProxy._handle_event, "8147a0c98455987c"),
    "RegularInstance.make_top_layer": (server_modes.RegularInstance.make_top_layer, "85b8c941042003e1"),
    "ServerInstance.handle_stream": (server_modes.ServerInstance.handle_stream, "21eea06f208c752e"),
    "Layer.handle_event": (layer.Layer.handle_event, "fd88b0fb09ceddbb"),
    "NextLayer._ask": (layer.NextLayer._ask, "4d8ace76d8488336"),
    # s3proxy/ciphers.py builds mitmproxy's TLS contexts with these (uncached: __wrapped__) and relies on
    # tlsconfig asking for one per connection, through the module, before making the connection:
    "create_client_proxy_context": (net_tls.create_client_proxy_context, "8a3bd5b54ef3d093"),
    "create_proxy_server_context": (net_tls.create_proxy_server_context, "e2d90d71c5744797"),
    "_create_ssl_context": (net_tls._create_ssl_context, "d322b556bd36254f"),  # OP_CIPHER_SERVER_PREFERENCE
    "TlsConfig.tls_start_client": (tlsconfig.TlsConfig.tls_start_client, "d3093c897eeafc2f"),
    "TlsConfig.tls_start_server": (tlsconfig.TlsConfig.tls_start_server, "2e2dc9c25670cf64"),
    # Listeners come up before the `running` hooks, so S3Proxy installs its patches at `load`:
    "Master.run": (master.Master.run, "45c44c14f8f79349"),
    # s3proxy/runner.py whole_log_records writes what this prints, in one write:
    "TermLogHandler.emit": (termlog.TermLogHandler.emit, "a7def74fbd8a1ff4"),
    # addons/s3proxy_addon.py S3Proxy._point does what these setters do, once:
    "Request.scheme.fset": (http.Request.scheme.fset, "cf10dc42a888bc19"),
    "Request.host.fset": (http.Request.host.fset, "3749dd5a4ee517e8"),
    "Request.port.fset": (http.Request.port.fset, "d221b67f5fab9254"),
    "Request._update_host_and_authority": (http.Request._update_host_and_authority, "e75fe6d44e650729"),
    # wider_reads (the same in Python 3.12 and 3.13):
    "StreamReader.read": (tuning.ORIGINALS["asyncio.streams.StreamReader.read"], "b3e781f2317fe198"),
    "StreamReader.feed_data": (
        tuning.ORIGINALS["asyncio.streams.StreamReader.feed_data"],
        "f1dc194f7bceb07d",
    ),
    "StreamReader._wait_for_data": (
        asyncio.StreamReader._wait_for_data,  # type: ignore[attr-defined]
        "3064c5757b9dd9af",
    ),
    "StreamReader._maybe_resume_transport": (
        asyncio.StreamReader._maybe_resume_transport,  # type: ignore[attr-defined]
        "9f458ca68d19a38e",
    ),
    "StreamReader._wakeup_waiter": (
        asyncio.StreamReader._wakeup_waiter,  # type: ignore[attr-defined]
        "6d54176c6257ad87",
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_internals_tuning_relies_on_are_unchanged(name: str) -> None:
    func, digest = PINNED[name]
    got = hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]
    assert got == digest, (
        f"{name} changed in this mitmproxy/h11/pyOpenSSL: re-check what s3proxy.tuning (or the code "
        f"named above its pin) copies from it or relies on, then update the pin ({got})"
    )


def test_mitmproxy_still_names_a_connection_closed_before_the_response_as_replay_expects() -> None:
    from addons.s3proxy_addon import install_stale_connection_replay

    assert '"server closed connection"' in inspect.getsource(_http1.Http1Client.read_headers)
    install_stale_connection_replay()
    assert http_layers.HttpStream.handle_protocol_error.__wrapped__ is not None  # type: ignore[attr-defined]


def test_early_refusal_wraps_mitmproxy_once() -> None:
    from addons.s3proxy_addon import install_early_refusal

    install_early_refusal()
    wrapper = http_layers.HttpStream.state_wait_for_request_headers
    install_early_refusal()
    assert http_layers.HttpStream.state_wait_for_request_headers is wrapper
    assert wrapper.__wrapped__ is not None  # type: ignore[attr-defined]


def test_mitmproxy_still_reads_the_size_wider_reads_widens() -> None:
    from mitmproxy.proxy import server

    assert f"read({tuning.MITMPROXY_READ_SIZE})" in inspect.getsource(
        server.ConnectionHandler.handle_connection
    )


def test_every_change_is_applied_once() -> None:
    before = dict(tuning.ORIGINALS)
    tuning.tune_mitmproxy()
    assert tuning.ORIGINALS == before
    assert tls.TLSLayer.receive_data is not before["mitmproxy.proxy.layers.tls.TLSLayer.receive_data"]


# ------------------------------------------------------------------------------------------- reads

ORIGINAL_READ = tuning.ORIGINALS["asyncio.streams.StreamReader.read"]
ORIGINAL_FEED = tuning.ORIGINALS["asyncio.streams.StreamReader.feed_data"]


def test_asyncio_still_receives_max_size_and_pauses_above_twice_the_limit() -> None:
    from asyncio import selector_events

    receive = inspect.getsource(selector_events._SelectorSocketTransport._read_ready__data_received)
    assert "self._sock.recv(self.max_size)" in receive
    assert "len(self._buffer) > 2 * self._limit" in inspect.getsource(ORIGINAL_FEED)


class Transport:
    """What a StreamReader calls on its transport, recorded."""

    def __init__(self) -> None:
        self.max_size = tuning.ASYNCIO_RECEIVE_SIZE
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


async def _replay(ops: list[tuple[str, int]], wide: bool) -> tuple[list[Any], list[str], int, int]:
    """Run `ops` against one reader: s3proxy's wide reads of mitmproxy's size, or asyncio's own read and
    feed_data asking for READ_SIZE with READ_LIMIT, what wider_reads turns mitmproxy's reads into."""
    transport = Transport()
    reader = asyncio.StreamReader(limit=2**16 if wide else tuning.READ_LIMIT)
    reader.set_transport(transport)  # type: ignore[arg-type]
    feed = reader.feed_data if wide else types.MethodType(ORIGINAL_FEED, reader)

    def read() -> Any:
        if wide:
            return reader.read(tuning.MITMPROXY_READ_SIZE)
        return ORIGINAL_READ(reader, tuning.READ_SIZE)

    results: list[Any] = []
    pending: asyncio.Task[bytes] | None = None
    largest = 0

    async def settle() -> None:
        nonlocal pending
        for _ in range(3):
            await asyncio.sleep(0)
        if pending is not None and pending.done():
            try:
                results.append(("data", pending.result()))
            except Exception as e:  # compared, not handled
                results.append(("raised", type(e).__name__))
            pending = None

    rng = random.Random(len(ops))
    for op, size in ops:
        if op == "read" and pending is None:
            pending = asyncio.ensure_future(read())
        elif op == "feed" and not reader._eof:  # type: ignore[attr-defined]
            feed(rng.randbytes(size))
            largest = max(largest, size)
        elif op == "eof":
            reader.feed_eof()
        elif op == "error":
            reader.set_exception(ConnectionResetError())
        await settle()
    if pending is not None:
        pending.cancel()
    return results, transport.calls, transport.max_size, largest


_sizes = st.sampled_from(
    [1, 1000, 64 * 1024, 200_000, tuning.ASYNCIO_RECEIVE_SIZE, tuning.READ_SIZE, tuning.READ_SIZE + 1]
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.just(0)),
        st.tuples(st.just("feed"), _sizes),
        st.tuples(st.sampled_from(["eof", "error"]), st.just(0)),
    ),
    max_size=14,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_wide_reads_return_what_asyncio_returns_and_pause_as_it_pauses(ops: list[tuple[str, int]]) -> None:
    """Whatever order receives, reads, EOF and errors come in, s3proxy's reads (one receive held as is)
    give the same bytes at the same reads, raise the same errors and pause and resume the socket at the
    same points as asyncio's read of READ_SIZE on a reader with READ_LIMIT."""
    ops = [("read", 0), *ops, ("read", 0), ("read", 0)]  # mitmproxy's loop reads first and keeps reading
    wide = asyncio.run(_replay(ops, wide=True))
    plain = asyncio.run(_replay(ops, wide=False))
    assert wide[:2] == plain[:2]
    # and once a receive filled asyncio's size, the transport receives READ_SIZE per call
    filled = wide[3] >= tuning.ASYNCIO_RECEIVE_SIZE
    assert wide[2] == (tuning.READ_SIZE if filled else tuning.ASYNCIO_RECEIVE_SIZE)


async def _first_read(receive: bytes, wide: bool = True) -> tuple[asyncio.StreamReader, Transport, bytes]:
    """A reader on a recorded transport, after a first read (mitmproxy's, widened, or asyncio's own of
    READ_SIZE with READ_LIMIT) that got `receive`."""
    transport = Transport()
    reader = asyncio.StreamReader(limit=2**16 if wide else tuning.READ_LIMIT)
    reader.set_transport(transport)  # type: ignore[arg-type]
    first = asyncio.ensure_future(
        reader.read(tuning.MITMPROXY_READ_SIZE) if wide else ORIGINAL_READ(reader, tuning.READ_SIZE)
    )
    await asyncio.sleep(0)
    reader.feed_data(receive)
    return reader, transport, await first


def test_a_receive_is_handed_on_without_a_copy_and_a_second_joins_it_in_order() -> None:
    async def main() -> None:
        one = b"a" * 300_000
        reader, _, got = await _first_read(one)
        assert got is one
        reader.feed_data(b"b" * 10)
        reader.feed_data(b"c" * 10)
        assert await reader.read(tuning.MITMPROXY_READ_SIZE) == b"b" * 10 + b"c" * 10
        assert not reader._buffer  # type: ignore[attr-defined]
        reader.feed_eof()
        assert await reader.read(tuning.MITMPROXY_READ_SIZE) == b""

    asyncio.run(main())


def test_a_transport_receives_wider_once_a_receive_fills_asyncios_size() -> None:
    async def main() -> None:
        # a request, say: connections with small requests
        reader, transport, _ = await _first_read(b"r" * (tuning.ASYNCIO_RECEIVE_SIZE - 1))
        assert transport.max_size == tuning.ASYNCIO_RECEIVE_SIZE  # keep asyncio's size
        reader.feed_data(b"b" * tuning.ASYNCIO_RECEIVE_SIZE)  # a receive as large as asyncio allows
        assert transport.max_size == tuning.READ_SIZE
        assert await reader.read(tuning.MITMPROXY_READ_SIZE) == b"b" * tuning.ASYNCIO_RECEIVE_SIZE
        assert transport.calls == []

    asyncio.run(main())


async def _after_a_held_receive(wide: bool) -> asyncio.StreamReader:
    reader, _, got = await _first_read(b"abc\n", wide)
    assert got == b"abc\n"
    reader.feed_data(b"def\n")  # held by a wide reader: nothing else waits unread
    reader.feed_eof()
    return reader


@pytest.mark.parametrize(
    "use",
    [
        lambda r: r.at_eof(),
        lambda r: r.read(2),
        lambda r: r.read(),
        lambda r: r.readexactly(3),
        lambda r: r.readexactly(9),
        lambda r: r.readuntil(b"e"),
        lambda r: r.readline(),
    ],
)
def test_other_ways_of_reading_see_a_held_receive_as_asyncio_keeps_it(use: Any) -> None:
    """mitmproxy only ever reads its readers with read(65535); were anything else to read a widened
    reader, it gets what asyncio gives, and the reader stops holding receives."""
    got = []
    for wide in (True, False):

        async def main(wide: bool = wide) -> Any:
            reader = await _after_a_held_receive(wide)
            try:
                result = use(reader)
                first = await result if inspect.isawaitable(result) else result
            except asyncio.IncompleteReadError as e:
                first = ("incomplete", e.partial)
            return first, await reader.read()

        got.append(asyncio.run(main()))
    assert got[0] == got[1]


def test_a_widened_reader_read_another_way_stops_holding() -> None:
    async def main() -> None:
        reader, _, _ = await _first_read(b"abc")
        line = asyncio.ensure_future(reader.readline())
        await asyncio.sleep(0)
        reader.feed_data(b"def\n")  # would be held, unseen by readline, were the reader still wide
        assert await asyncio.wait_for(line, 2) == b"def\n"

    asyncio.run(main())


def test_other_reads_keep_asyncios_limit_and_size() -> None:
    async def main() -> None:
        transport = Transport()
        reader = asyncio.StreamReader()
        reader.set_transport(transport)  # type: ignore[arg-type]
        reader.feed_data(b"x" * 300_000)  # above asyncio's default pause point: 2 x 64 KiB
        assert transport.calls == ["pause"]
        assert await reader.read(1000) == b"x" * 1000
        assert transport.max_size == tuning.ASYNCIO_RECEIVE_SIZE
        assert reader._limit == 2**16  # type: ignore[attr-defined]

    asyncio.run(main())


# ------------------------------------------------------------------------------------- TLS in memory


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[SSL.Context, SSL.Context]:
    ca = trustme.CA()
    leaf = ca.issue_cert("s3.test")
    server_ctx = SSL.Context(SSL.TLS_METHOD)
    leaf.configure_cert(server_ctx)
    return server_ctx, SSL.Context(SSL.TLS_METHOD)


def _pump(a: SSL.Connection, b: SSL.Connection) -> None:
    try:
        b.bio_write(a.bio_read(1 << 20))
    except SSL.WantReadError:
        pass


def tls_pair(contexts: tuple[SSL.Context, SSL.Context]) -> tuple[SSL.Connection, SSL.Connection]:
    server = SSL.Connection(contexts[0], None)
    server.set_accept_state()
    client = SSL.Connection(contexts[1], None)
    client.set_connect_state()
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        _pump(client, server)
        _pump(server, client)
    return client, server


def _decrypt_all(client: SSL.Connection, records: list[bytes]) -> bytes:
    """What `client` decrypts from `records` (TLS output of the other side)."""
    if records:
        client.bio_write(b"".join(records))
    out = bytearray()
    while True:
        try:
            out += client.recv(1 << 20)
        except SSL.WantReadError:
            return bytes(out)


class Layer:
    """The parts of a TLSLayer that receive_data touches, around a real pyOpenSSL connection."""

    debug = None
    receive_data = tls.TLSLayer.receive_data
    tls_interact = tls.TLSLayer.tls_interact

    def __init__(self, conn: SSL.Connection) -> None:
        self.tls = conn
        self.conn = connection.Client(
            peername=("127.0.0.1", 1),
            sockname=("127.0.0.1", 2),
            timestamp_start=0,
            state=connection.ConnectionState.OPEN,
        )
        self.events: list[Any] = []

    def event_to_child(self, event: Any) -> Iterator[Any]:
        self.events.append(event)
        yield from ()

    def feed(self, data: bytes) -> list[Any]:
        """What one read of `data` produces: commands and child events, in order."""
        out: list[Any] = []
        self.events = out
        for cmd in self.receive_data(data):
            out.append(cmd)
        return out


class MitmproxyLayer(Layer):
    receive_data = tuning.ORIGINALS["mitmproxy.proxy.layers.tls.TLSLayer.receive_data"]
    tls_interact = tuning.ORIGINALS["mitmproxy.proxy.layers.tls.TLSLayer.tls_interact"]


def _shape(items: list[Any]) -> list[tuple[str, Any]]:
    shape: list[tuple[str, Any]] = []
    for item in items:
        if isinstance(item, events.DataReceived):
            shape.append(("data", item.data))
        elif isinstance(item, commands.Log):
            shape.append(("log", item.message.split(":")[0]))
        else:
            shape.append((type(item).__name__, None))
    return shape


def _received(items: list[Any]) -> bytes:
    return b"".join(i.data for i in items if isinstance(i, events.DataReceived))


def _ciphertext(client: SSL.Connection, plaintext: bytes, close: bool) -> bytes:
    client.sendall(plaintext)
    if close:
        client.shutdown()
    out = bytearray()
    while True:
        try:
            out += client.bio_read(1 << 20)
        except SSL.WantReadError:
            return bytes(out)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 400_000), seed=st.integers(0, 2**32), close=st.booleans())
def test_tls_reads_give_what_mitmproxy_gives(
    tls_contexts: tuple[SSL.Context, SSL.Context], size: int, seed: int, close: bool
) -> None:
    rng = random.Random(seed)
    plaintext = rng.randbytes(size)
    pieces: dict[str, list[Any]] = {}
    for name, cls in (("s3proxy", Layer), ("mitmproxy", MitmproxyLayer)):
        client, server = tls_pair(tls_contexts)
        wire = _ciphertext(client, plaintext, close)
        layer = cls(server)
        cuts = sorted(random.Random(seed).sample(range(1, len(wire)), min(12, max(0, len(wire) - 1))))
        got: list[Any] = []
        for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            got += [_shape(layer.feed(wire[a:b]))]
        pieces[name] = got
    # The same plaintext, delivered at the same reads (the same TLS records complete at the same cut).
    assert pieces["s3proxy"] == pieces["mitmproxy"]
    flat = [e for step in pieces["s3proxy"] for e in step]
    assert b"".join(d for k, d in flat if k == "data") == plaintext
    assert (bool(flat) and flat[-1][0] == "ConnectionClosed") == close


def test_tls_reads_leave_no_reference_cycles(tls_contexts: tuple[SSL.Context, SSL.Context]) -> None:
    """A read that ends in WantReadError (every read) must not tie the plaintext into a cycle with the
    exception's traceback: the buffers would pile up until the garbage collector runs (seen as RSS
    growing with the bytes moved)."""
    import gc

    client, server = tls_pair(tls_contexts)
    layer = Layer(server)
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            assert len(_received(layer.feed(_ciphertext(client, b"y" * 100_000, close=False)))) == 100_000
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_tls_read_larger_than_the_reused_buffer(tls_contexts: tuple[SSL.Context, SSL.Context]) -> None:
    """More plaintext in one read than the reused buffer holds is read in further passes, in order."""
    plaintext = random.Random(7).randbytes(1_200_000)
    got = []
    for cls in (Layer, MitmproxyLayer):
        client, server = tls_pair(tls_contexts)
        got.append(_shape(cls(server).feed(_ciphertext(client, plaintext, close=True))))
    assert got[0] == got[1]
    assert got[0][0] == ("data", plaintext)
    assert got[0][-1] == ("ConnectionClosed", None)


def test_tls_output_is_drained_whole_and_decrypts_to_what_was_sent(
    tls_contexts: tuple[SSL.Context, SSL.Context],
) -> None:
    plaintext = random.Random(8).randbytes(700_000)
    for cls in (Layer, MitmproxyLayer):
        client, server = tls_pair(tls_contexts)
        layer = cls(server)
        server.sendall(plaintext)
        sent = [c.data for c in layer.tls_interact() if isinstance(c, commands.SendData)]
        assert _decrypt_all(client, sent) == plaintext
        if cls is Layer:
            assert len(sent) <= 3  # drained in pieces of up to TLS_DRAIN_SIZE, not 64 KiB
        else:
            assert len(sent) > 10


@pytest.mark.parametrize("size", [0, 1, 100_000, 2 * tuning.TLS_DRAIN_SIZE + 5])
def test_tls_output_of_any_size_decrypts_to_what_was_sent(
    tls_contexts: tuple[SSL.Context, SSL.Context], size: int
) -> None:
    """Draining stops at the first short read (a memory BIO gives all it holds), and when nothing is held."""
    plaintext = random.Random(size).randbytes(size)
    client, server = tls_pair(tls_contexts)
    if plaintext:
        server.sendall(plaintext)
    sent = [c.data for c in Layer(server).tls_interact() if isinstance(c, commands.SendData)]
    assert len(sent) == -(-sum(map(len, sent)) // tuning.TLS_DRAIN_SIZE)
    with pytest.raises(SSL.WantReadError):
        server.bio_read(1)  # nothing left behind
    assert _decrypt_all(client, sent) == plaintext


@pytest.mark.parametrize("helper_name", ["_verify_helper", "_alpn_select_helper", "_ocsp_helper"])
def test_a_problem_left_by_a_tls_callback_is_raised_as_pyopenssl_raises_it(
    tls_contexts: tuple[SSL.Context, SSL.Context], helper_name: str
) -> None:
    """pyOpenSSL raises what a callback left behind before it reports WantReadError; so does s3proxy."""
    for cls in (Layer, MitmproxyLayer):
        client, server = tls_pair(tls_contexts)
        wire = _ciphertext(client, b"x" * 10, close=False)
        helper = SSL._CallbackExceptionHelper()
        helper._problems.append(LookupError("left by a callback"))
        ctx: Any = server.get_context()
        saved = getattr(ctx, helper_name)
        setattr(ctx, helper_name, helper)
        try:
            with pytest.raises(LookupError, match="left by a callback"):
                cls(server).feed(wire)
        finally:
            setattr(ctx, helper_name, saved)


def test_tls_read_of_a_partial_record_gives_nothing_until_it_completes(
    tls_contexts: tuple[SSL.Context, SSL.Context],
) -> None:
    client, server = tls_pair(tls_contexts)
    wire = _ciphertext(client, b"hello, s3", close=False)
    layer = Layer(server)
    assert _received(layer.feed(wire[:-1])) == b""
    assert _received(layer.feed(wire[-1:])) == b"hello, s3"


def test_tls_garbage_is_logged_as_mitmproxy_logs_it(tls_contexts: tuple[SSL.Context, SSL.Context]) -> None:
    shapes = []
    for cls in (Layer, MitmproxyLayer):
        client, server = tls_pair(tls_contexts)
        good = _ciphertext(client, b"x" * 1000, close=False)
        shapes.append(_shape(cls(server).feed(good + b"\x17\x03\x03\x00\x20" + b"\x00" * 32)))
    assert shapes[0] == shapes[1]
    assert ("log", "TLS Error") in shapes[0]
    assert ("data", b"x" * 1000) in shapes[0]


# ------------------------------------------------------------------------------------------ HTTP/1


class MitmproxyServer(_http1.Http1Server):
    _handle_event = tuning.ORIGINALS["mitmproxy.proxy.layers.http._http1.Http1Connection._handle_event"]


class MitmproxyClient(_http1.Http1Client):
    _handle_event = tuning.ORIGINALS["mitmproxy.proxy.layers.http._http1.Http1Connection._handle_event"]


def _http_shape(cmds: list[Any]) -> list[tuple[str, bytes]]:
    out = []
    for c in cmds:
        if isinstance(c, ReceiveHttp):
            out.append((type(c.event).__name__, bytes(getattr(c.event, "data", b"") or b"")))
        elif isinstance(c, commands.SendData):
            out.append(("SendData", c.data))
        else:
            out.append((type(c).__name__, b""))
    return out


def _client() -> connection.Client:
    return connection.Client(
        peername=("127.0.0.1", 1),
        sockname=("127.0.0.1", 2),
        timestamp_start=0,
        state=connection.ConnectionState.OPEN,
    )


def _run_server(cls: type[_http1.Http1Server], reads: list[bytes], close: bool) -> list[tuple[str, bytes]]:
    client = connection.Client(
        peername=("127.0.0.1", 1),
        sockname=("127.0.0.1", 2),
        timestamp_start=0,
        state=connection.ConnectionState.OPEN,
    )
    layer = cls(context.Context(client, options.Options()))
    cmds = list(layer.handle_event(events.Start()))
    for r in reads:
        cmds += list(layer.handle_event(events.DataReceived(client, r)))
    if close:
        cmds += list(layer.handle_event(events.ConnectionClosed(client)))
    return _http_shape(cmds)


REQUESTS = [
    b"PUT /b/k HTTP/1.1\r\nHost: s3.amazonaws.com\r\nContent-Length: %d\r\n\r\n",
    b"PUT /b/k HTTP/1.1\r\nHost: s3.amazonaws.com\r\nTransfer-Encoding: chunked\r\n\r\n",
]


def _chunked(body: bytes) -> bytes:
    return (
        b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 700]), body[i : i + 700]) for i in range(0, len(body), 700)
        )
        + b"0\r\n\r\n"
    )


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(0, 5000),
    chunked=st.booleans(),
    pipelined=st.booleans(),
    truncated=st.booleans(),
    cuts=st.lists(st.integers(1, 20_000), max_size=8),
)
def test_request_bodies_reach_mitmproxy_as_its_own_path_delivers_them(
    size: int, chunked: bool, pipelined: bool, truncated: bool, cuts: list[int]
) -> None:
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    head = REQUESTS[1] if chunked else REQUESTS[0] % size
    wire = head + (_chunked(body) if chunked else body)
    if truncated and size:
        wire = wire[:-1]
    if pipelined:
        wire += b"GET /b/next HTTP/1.1\r\nHost: s3.amazonaws.com\r\n\r\n"
    points = sorted({c for c in cuts if c < len(wire)})
    reads = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    ours = _run_server(_http1.Http1Server, reads, close=truncated)
    assert ours == _run_server(MitmproxyServer, reads, close=truncated)
    if not truncated:
        assert b"".join(d for k, d in ours if k == "RequestData") == body


def test_the_direct_path_is_taken_for_content_length_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    """h11's reader is asked only for the end of the message, not for each read of the body."""
    calls = []
    original = h11._readers.ContentLengthReader.__call__

    def counting(self: Any, buf: Any) -> Any:
        calls.append(len(buf))
        return original(self, buf)

    monkeypatch.setattr(h11._readers.ContentLengthReader, "__call__", counting)
    body = b"b" * 50_000
    reads = [REQUESTS[0] % len(body)] + [body[i : i + 5000] for i in range(0, len(body), 5000)]
    shape = _run_server(_http1.Http1Server, reads, close=False)
    assert b"".join(d for k, d in shape if k == "RequestData") == body
    assert calls == [0, 0]  # the head's read (empty buffer), then the end of the message


def test_the_direct_path_is_still_taken_with_the_trailer_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    from addons.s3proxy_addon import install_trailer_protocol_error

    install_trailer_protocol_error()  # wraps Http1Connection.read_body, which the direct path compares with
    test_the_direct_path_is_taken_for_content_length_bodies(monkeypatch)


def _run_client(cls: type[_http1.Http1Client], method: str, reads: list[bytes]) -> list[tuple[str, bytes]]:
    from mitmproxy.proxy.layers.http import _events

    server = connection.Server(address=("s3.test", 443))
    server.state = connection.ConnectionState.OPEN
    ctx = context.Context(_client(), options.Options())
    ctx.server = server
    layer = cls(ctx)
    cmds = list(layer.handle_event(events.Start()))
    req = http.Request.make(method, "https://s3.test/b/k")
    cmds += list(layer.handle_event(_events.RequestHeaders(1, req, end_stream=True)))
    cmds += list(layer.handle_event(_events.RequestEndOfMessage(1)))
    for r in reads:
        cmds += list(layer.handle_event(events.DataReceived(server, r)))
    return _http_shape(cmds)


@pytest.mark.parametrize(
    ("method", "wire"),
    [
        pytest.param("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", id="head-with-length"),
        pytest.param("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", id="204"),
        pytest.param("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n", id="304"),
        pytest.param(
            "GET", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody" + b"HTTP/1.1 200 OK\r\n", id="extra"
        ),
        pytest.param(
            "GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody", id="1xx"
        ),
        pytest.param(
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
            id="chunked",
        ),
    ],
)
@pytest.mark.parametrize("split", [1, 7, 10_000])
def test_responses_without_a_plain_body_are_mitmproxys_own(method: str, wire: bytes, split: int) -> None:
    reads = [wire[i : i + split] for i in range(0, len(wire), split)]
    assert _run_client(_http1.Http1Client, method, reads) == _run_client(MitmproxyClient, method, reads)


def test_response_bodies_take_the_direct_path_and_end_once() -> None:
    """The client side (responses from the endpoint): with a Content-Length body read in pieces the direct
    path delivers each read as it came and the end of the message exactly once, like mitmproxy."""
    shapes = []
    for cls in (_http1.Http1Client, MitmproxyClient):
        server = connection.Server(address=("s3.test", 443))
        server.state = connection.ConnectionState.OPEN
        client = connection.Client(
            peername=("127.0.0.1", 1),
            sockname=("127.0.0.1", 2),
            timestamp_start=0,
            state=connection.ConnectionState.OPEN,
        )
        ctx = context.Context(client, options.Options())
        ctx.server = server
        layer = cls(ctx)
        cmds = list(layer.handle_event(events.Start()))
        from mitmproxy.proxy.layers.http import _events

        req = http.Request.make("GET", "https://s3.test/b/k")
        cmds += list(layer.handle_event(_events.RequestHeaders(1, req, end_stream=True)))
        cmds += list(layer.handle_event(_events.RequestEndOfMessage(1)))
        body = b"0123456789" * 1000
        wire = b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + body
        for a in range(0, len(wire), 3000):
            cmds += list(layer.handle_event(events.DataReceived(server, wire[a : a + 3000])))
        shapes.append(_http_shape(cmds))
    assert shapes[0] == shapes[1]
    assert [k for k, _ in shapes[0]].count("ResponseEndOfMessage") == 1
    assert b"".join(d for k, d in shapes[0] if k == "ResponseData") == b"0123456789" * 1000


# ----------------------------------------------------------------------------------------- hooks


class Recorder:
    def __init__(self, name: str, seen: list[str], fail: BaseException | None = None) -> None:
        self.name = name
        self.seen = seen
        self.fail = fail

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.seen.append(self.name)
        if self.fail is not None:
            raise self.fail


class AsyncRecorder(Recorder):
    async def requestheaders(self, flow: http.HTTPFlow) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        self.seen.append(self.name)


class Parent:
    def __init__(self, seen: list[str]) -> None:
        self.addons = [Recorder("child", seen)]


class FailingParent(Recorder):
    def __init__(self, seen: list[str]) -> None:
        super().__init__("parent", seen, ValueError("parent fails"))
        self.addons = [Recorder("child", seen)]


class NotCallable:
    requestheaders = "not a function"


class Updates:
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def update(self, flows: list[Any]) -> None:
        self.seen.append("update")


def _manager(*addons: Any, fast: bool) -> master.Master:
    m = master.Master(options.Options())
    m.addons.add(*addons)
    if fast:
        tuning.fast_hooks(m.addons)
    return m


def _dispatch(fast: bool, make: Any) -> tuple[list[str], list[str]]:
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook

    seen: list[str] = []
    errors: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(re.sub(r" at 0x[0-9a-f]+", "", record.getMessage()))

    async def main() -> None:
        m = _manager(*make(seen), fast=fast)
        try:
            await m.addons.handle_lifecycle(HttpRequestHeadersHook(tflow.tflow()))
        finally:
            m._legacy_log_events.uninstall()

    handler = Catch(level=logging.ERROR)
    logging.getLogger(addonmanager.__name__).addHandler(handler)
    try:
        asyncio.run(main())
    finally:
        logging.getLogger(addonmanager.__name__).removeHandler(handler)
    return seen, errors


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda s: [Recorder("a", s), Recorder("b", s)], id="order"),
        pytest.param(
            lambda s: [Recorder("a", s, ValueError("boom")), Recorder("b", s)], id="error-logged-next-runs"
        ),
        pytest.param(lambda s: [Recorder("a", s, exceptions.AddonHalt()), Recorder("b", s)], id="halt-stops"),
        pytest.param(lambda s: [AsyncRecorder("a", s), Recorder("b", s)], id="async-awaited"),
        pytest.param(lambda s: [Parent(s), Recorder("b", s)], id="children"),
        pytest.param(lambda s: [Recorder("a", s), Updates(s)], id="update-hook"),
        pytest.param(lambda s: [FailingParent(s), Recorder("b", s)], id="error-skips-own-children-only"),
        pytest.param(lambda s: [NotCallable(), Recorder("b", s)], id="not-callable-logged"),
    ],
)
def test_hook_dispatch_matches_mitmproxy(make: Any) -> None:
    assert _dispatch(True, make) == _dispatch(False, make)


def test_options_errors_propagate_as_in_mitmproxy() -> None:
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook

    for fast in (True, False):

        async def main(fast: bool = fast) -> None:
            m = _manager(Recorder("a", [], exceptions.OptionsError("bad option")), fast=fast)
            try:
                with pytest.raises(exceptions.OptionsError):
                    await m.addons.handle_lifecycle(HttpRequestHeadersHook(tflow.tflow()))
            finally:
                m._legacy_log_events.uninstall()

        asyncio.run(main())


def test_hook_cache_is_dropped_when_options_change() -> None:
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook

    seen: list[str] = []

    async def main() -> None:
        m = _manager(Recorder("a", seen), fast=True)
        late = Recorder("late", seen)
        try:
            await m.addons.trigger_event(HttpRequestHeadersHook(tflow.tflow()))
            m.addons.chain.append(late)  # as a loader that reorders its addons does, without register()
            m.options.update(http2=False)
            await m.addons.trigger_event(HttpRequestHeadersHook(tflow.tflow()))
        finally:
            m._legacy_log_events.uninstall()

    asyncio.run(main())
    assert seen == ["a", "a", "late"]


def test_hook_cache_follows_added_and_removed_addons() -> None:
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook

    seen: list[str] = []

    async def main() -> None:
        m = _manager(Recorder("a", seen), fast=True)
        await m.addons.trigger_event(HttpRequestHeadersHook(tflow.tflow()))
        late = Recorder("late", seen)
        m.addons.add(late)
        await m.addons.trigger_event(HttpRequestHeadersHook(tflow.tflow()))
        m.addons.remove(late)
        await m.addons.trigger_event(HttpRequestHeadersHook(tflow.tflow()))
        m._legacy_log_events.uninstall()

    asyncio.run(main())
    assert seen == ["a", "a", "late", "a"]


def test_hook_args_are_the_fields_in_order() -> None:
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook

    f = tflow.tflow()
    hook = HttpRequestHeadersHook(f)
    original = tuning.ORIGINALS["mitmproxy.hooks.Hook.args"]
    assert hook.args() == original(hook) == [f]
    data = hooks.ServerConnectionHookData(f.server_conn, f.client_conn)
    assert hooks.ServerConnectHook(data).args() == original(hooks.ServerConnectHook(data)) == [data]


def test_option_values_read_as_mitmproxy_reads_them_copying_only_what_deepcopy_would_copy() -> None:

    original = tuning.ORIGINALS["mitmproxy.optmanager._Option.current"]
    # What is handed out uncopied is exactly what deepcopy hands out uncopied.
    for kind in tuning._ATOMIC_OPTION_TYPES:
        assert copy._deepcopy_dispatch[kind] is copy._deepcopy_atomic  # type: ignore[attr-defined]
    opts = options.Options()
    opts.update(
        listen_port=9999,
        mode=["regular@9999"],
        ignore_hosts=["a.test"],
        confdir="/tmp/s3proxy-confdir",
        ssl_insecure=True,
    )
    kinds = set()
    for opt in opts._options.values():
        kinds.add(type(opt.current()))
        assert opt.current() == original(opt), opt.name
        if type(opt.current()) not in tuning._ATOMIC_OPTION_TYPES:
            # A list or dict is still a copy: changing it changes no option.
            assert opt.current() is not opt.current(), opt.name
    assert {str, int, bool, list, type(None)} <= kinds
    mode = opts.mode
    mode.append("socks5")
    assert opts.mode == ["regular@9999"]
    opts.update(ignore_hosts=[])
    assert opts.ignore_hosts == []


def test_a_forked_context_is_mitmproxys_fork() -> None:
    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2))
    ctx = context.Context(client, options.Options())
    ctx.server = connection.Server(address=("s3.test", 443))
    ctx.layers = [object(), object()]
    ours = ctx.fork()
    theirs = tuning.ORIGINALS["mitmproxy.proxy.context.Context.fork"](ctx)
    assert type(ours) is type(theirs) is context.Context
    assert vars(ours).keys() == vars(theirs).keys() == {"client", "options", "server", "layers"}
    for name in ("client", "options", "server"):
        assert getattr(ours, name) is getattr(theirs, name) is getattr(ctx, name)
    assert ours.layers == theirs.layers == ctx.layers
    assert ours.layers is not ctx.layers
    ours.layers.append(object())
    assert len(ctx.layers) == 2


_HEADER_NAMES = ["Content-Length", "content-length", "CONTENT-LENGTH", "Host", "x-amz-date", "X-Amz-\xe9"]
_header_name = st.one_of(st.sampled_from(_HEADER_NAMES), st.text(min_size=0, max_size=6))
_header_value = st.one_of(st.text(max_size=8), st.binary(max_size=8).map(lambda b: b.decode("latin-1")))


def _original_lookups(headers: http.Headers, name: Any) -> tuple[Any, ...]:

    get_all = tuning.ORIGINALS["mitmproxy.http.Headers.get_all"]

    class Plain(http.Headers):  # mitmproxy's own lookups, on the same fields
        pass

    Plain.get_all = get_all  # type: ignore[method-assign]
    Plain.get = collections.abc.Mapping.get  # type: ignore[method-assign]
    Plain.__contains__ = collections.abc.Mapping.__contains__  # type: ignore[assignment,method-assign]
    plain = Plain()
    plain.fields = headers.fields
    return _lookups(plain, name)


def _lookups(headers: http.Headers, name: Any) -> tuple[Any, ...]:
    def attempt(f: Any) -> Any:
        try:
            return f()
        except (KeyError, TypeError, AttributeError) as e:  # AttributeError: a None name, in both
            return type(e)

    return (
        attempt(lambda: headers.get_all(name)),
        attempt(lambda: headers.get(name)),
        attempt(lambda: headers.get(name, "default")),
        attempt(lambda: name in headers),
        attempt(lambda: headers[name]),
    )


def test_header_lookups_were_mappings_before_tuning() -> None:

    assert tuning.ORIGINALS["mitmproxy.http.Headers.get"] is collections.abc.Mapping.get
    assert tuning.ORIGINALS["mitmproxy.http.Headers.__contains__"] is collections.abc.Mapping.__contains__
    # and headers[name] is still the MultiDict's, which goes through get_all:
    assert http.Headers.__getitem__ is multidict._MultiDict.__getitem__


def test_headers_whose_fields_are_not_a_tuple_are_looked_up_as_mitmproxy_does() -> None:
    headers = http.Headers()
    headers.fields = [(b"A", b"1")]  # type: ignore[assignment]  # a list, changed in place below
    assert headers.get("a") == "1"
    headers.fields.append((b"X", b"2"))  # type: ignore[attr-defined]
    assert headers.get("x") == "2" and "x" in headers


@settings(max_examples=150, deadline=None)
@given(
    fields=st.lists(st.tuples(_header_name, _header_value), max_size=6),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["lookup", "set", "add", "del", "fields", "set_all", "insert"]),
            _header_name,
            _header_value,
        ),
        max_size=8,
    ),
)
def test_header_lookups_answer_as_mitmproxys_through_changes(
    fields: list[tuple[str, str]], steps: list[tuple[str, str, str]]
) -> None:
    headers = http.Headers([(k.encode("utf-8", "surrogateescape"), v.encode()) for k, v in fields])
    for op, name, value in steps:
        for asked in (name, name.upper(), name.encode("utf-8", "surrogateescape"), None):
            assert _lookups(headers, asked) == _original_lookups(headers, asked)
        if op == "set":
            headers[name] = value
        elif op == "add":
            headers.add(name, value)
        elif op == "del" and name in headers:
            del headers[name]
        elif op == "fields":
            headers.fields = headers.fields[1:]
        elif op == "set_all":
            headers.set_all(name, [value, value])
        elif op == "insert":
            headers.insert(0, name, value)
    for asked in _HEADER_NAMES:
        assert _lookups(headers, asked) == _original_lookups(headers, asked)


def test_the_names_header_lookups_remember_are_bounded() -> None:
    remembered = dict(tuning._HEADER_KEYS)
    try:
        headers = http.Headers([(b"X-A", b"1")])
        for i in range(tuning._HEADER_KEYS_MAX + 100):
            assert headers.get(f"x-name-{i}") is None
        assert len(tuning._HEADER_KEYS) <= tuning._HEADER_KEYS_MAX
        assert headers.get("X-A") == headers.get("x-a") == "1"
        assert headers.get("x-name-99999") is None
    finally:
        tuning._HEADER_KEYS.clear()
        tuning._HEADER_KEYS.update(remembered)


def test_header_lookups_of_a_parsed_request() -> None:
    fields = http.Headers([(b"Content-Length", b"0"), (b"X-A", b"1"), (b"x-a", b"2")])
    req = http.Request.make("GET", "https://s3.test/b/k", b"", fields)
    assert req.headers.get("x-a") == "1, 2"
    assert req.headers.get_all(b"X-A") == ["1", "2"]
    assert "transfer-encoding" not in req.headers
    assert req.headers.get("transfer-encoding", "none") == "none"
    req.headers["Transfer-Encoding"] = "chunked"
    assert "transfer-encoding" in req.headers
    assert req.headers.copy().get("transfer-encoding") == "chunked"


def test_messages_are_not_type_checked_but_still_built() -> None:
    req = http.Request.make("GET", "https://s3.test/b/k", b"", {"x": "1"})
    assert req.headers["x"] == "1"
    assert tuning.ORIGINALS["mitmproxy.http.MessageData.__post_init__"] is not http.MessageData.__post_init__


def test_no_tune_names_the_changes_to_leave_out() -> None:
    assert tuning.enabled("direct_bodies", {})
    assert not tuning.enabled("direct_bodies", {"S3PROXY_NO_TUNE": "1"})
    assert not tuning.enabled("direct_bodies", {"S3PROXY_NO_TUNE": "fast_hooks, direct_bodies"})
    assert tuning.enabled("wider_reads", {"S3PROXY_NO_TUNE": "fast_hooks,direct_bodies"})


def test_no_tune_turns_everything_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3PROXY_NO_TUNE", "1")

    async def main() -> None:
        m = master.Master(options.Options())
        before = m.addons.trigger_event
        tuning.fast_hooks(m.addons)
        m._legacy_log_events.uninstall()
        assert m.addons.trigger_event == before

    asyncio.run(main())


# ------------------------------------------------------------------------------------ inline_hooks


@dataclasses.dataclass
class TuningProbeHook(commands.StartHook):
    n: int


class HookLayer(layer.Layer):
    """Asks for three blocking hooks in a row on Start and notes every event it sees."""

    def __init__(self, context: context.Context, seen: list[Any]) -> None:
        super().__init__(context)
        self.seen = seen

    def _handle_event(self, event: events.Event) -> Any:
        self.seen.append(("event", type(event).__name__))
        if isinstance(event, events.Start):
            for n in range(3):
                yield TuningProbeHook(n)
                self.seen.append(("resumed", n))
            yield commands.Log("done", logging.DEBUG)


class ProbeHandler(server.ConnectionHandler):
    """A connection handler whose hooks do what `behaviour` says per hook number: nothing, await a loop
    pass (a hook that suspends), or raise."""

    def __init__(self, seen: list[Any], behaviour: dict[int, str], original: bool) -> None:
        client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0)
        super().__init__(context.Context(client, options.Options()))
        self.layer = HookLayer(context.Context(client, options.Options()), seen)
        self.seen = seen
        self.behaviour = behaviour
        if original:
            self.server_event = types.MethodType(  # type: ignore[method-assign]
                tuning.ORIGINALS["mitmproxy.proxy.server.ConnectionHandler.server_event"], self
            )

    async def handle_hook(self, hook: commands.StartHook) -> None:
        assert isinstance(hook, TuningProbeHook)
        self.seen.append(("hook", hook.n, asyncio.current_task() is not None))
        what = self.behaviour.get(hook.n)
        if what == "await":
            await asyncio.sleep(0)
            self.seen.append(("hook-resumed", hook.n))
        elif what == "raise":
            raise ValueError(f"hook {hook.n} failed")

    def log(self, message: str, level: int = logging.INFO, exc_info: Any = None) -> None:
        self.seen.append(("log", message))


def _run_hooks(behaviour: dict[int, str], *, eager: bool, original: bool) -> list[Any]:
    seen: list[Any] = []
    errors: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: errors.append(repr(ctx.get("exception"))))
        if eager:
            loop.set_task_factory(asyncio.eager_task_factory)
        handler = ProbeHandler(seen, behaviour, original)
        await handler.server_event(events.Start())
        for _ in range(10):  # let suspended hooks finish
            await asyncio.sleep(0)
        import gc

        gc.collect()  # a failed task's exception is reported when the task is collected

    asyncio.run(main())
    return seen + [("error", e) for e in errors]


@pytest.mark.parametrize("eager", [True, False], ids=["eager-tasks", "plain-tasks"])
@pytest.mark.parametrize(
    "behaviour",
    [{}, {1: "await"}, {0: "await", 2: "await"}, {1: "raise"}],
    ids=["all-finish-at-once", "one-suspends", "two-suspend", "one-raises"],
)
def test_hooks_run_and_complete_as_in_mitmproxy(behaviour: dict[int, str], eager: bool) -> None:
    tuned = _run_hooks(behaviour, eager=eager, original=False)
    assert tuned == _run_hooks(behaviour, eager=eager, original=True)
    assert ("hook", 0, True) in tuned  # hooks run in a task of their own, as in mitmproxy
    if "raise" not in behaviour.values():
        assert tuned[-2:] == [("resumed", 2), ("log", "done")]


def test_hooks_that_finish_at_once_complete_without_a_loop_pass() -> None:
    seen: list[Any] = []

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        handler = ProbeHandler(seen, {}, original=False)
        await handler.server_event(events.Start())  # no loop pass in between
        assert ("resumed", 2) in seen
        assert handler._s3proxy_completed is None

    asyncio.run(main())


class WriteLayer(layer.Layer):
    """On Start: writes to two connections, with a Log and a hook in between."""

    def __init__(self, context: context.Context, a: connection.Connection, b: connection.Connection) -> None:
        super().__init__(context)
        self.a, self.b = a, b

    def _handle_event(self, event: events.Event) -> Any:
        if isinstance(event, events.Start):
            a, b = self.a, self.b
            yield commands.SendData(a, b"1")
            yield commands.SendData(a, b"2")
            yield commands.Log("between", logging.DEBUG)
            yield commands.SendData(a, b"3")
            yield commands.SendData(b, b"x")
            yield commands.SendData(a, b"4")
            yield TuningProbeHook(0)
            yield commands.SendData(a, b"5")
            yield commands.SendData(a, b"6")


class FakeWriter:
    def __init__(self, name: str, log: list[tuple[str, bytes]], fail_after_eof: bool = False) -> None:
        self.name, self.log = name, log
        self.eof = False
        self.fail_after_eof = fail_after_eof

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        if self.eof and self.fail_after_eof:
            raise RuntimeError("Cannot call write() after write_eof()")  # asyncio's StreamWriter
        self.log.append((self.name, bytes(data)))

    def write_eof(self) -> None:
        self.eof = True
        self.log.append((self.name, b"EOF"))


_SERVER_EVENT = "mitmproxy.proxy.server.ConnectionHandler.server_event"


def _writes(original: bool) -> list[tuple[str, bytes]]:
    log: list[tuple[str, bytes]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        handler = ProbeHandler([], {}, original)
        a = connection.Server(address=("a.test", 443))
        b = connection.Server(address=("b.test", 443))
        handler.layer = WriteLayer(handler.layer.context, a, b)
        handler.transports[a] = server.ConnectionIO(handler=None, reader=None, writer=FakeWriter("a", log))  # type: ignore[arg-type]
        handler.transports[b] = server.ConnectionIO(handler=None, reader=None, writer=FakeWriter("b", log))  # type: ignore[arg-type]
        await handler.server_event(events.Start())
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(main())
    return log


def test_consecutive_writes_to_one_connection_are_coalesced_in_order() -> None:
    assert _writes(original=True) == [
        ("a", b"1"), ("a", b"2"), ("a", b"3"), ("b", b"x"), ("a", b"4"), ("a", b"5"), ("a", b"6")
    ]  # fmt: skip
    # The same bytes per connection in the same order across connections: one write per run of SendData,
    # not split by the Log, split by the other connection's write and by the hook.
    assert _writes(original=False) == [("a", b"123"), ("b", b"x"), ("a", b"4"), ("a", b"56")]


def test_writes_are_not_coalesced_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3PROXY_NO_TUNE", "coalesced_writes")
    original = server.ConnectionHandler.server_event
    monkeypatch.setattr(server.ConnectionHandler, "server_event", tuning.ORIGINALS.pop(_SERVER_EVENT))
    try:
        tuning.inline_hooks()  # records mitmproxy's server_event in ORIGINALS again
        assert server.ConnectionHandler.server_event is not original
        assert _writes(original=False) == _writes(original=True)
    finally:
        monkeypatch.setattr(server.ConnectionHandler, "server_event", original)


class HalfCloseLayer(layer.Layer):
    """On Start: data, a hook that a child layer blocks on (the outer layer goes on), more data, a
    half-close, and, when asked to, data after the half-close (a write error in asyncio)."""

    def __init__(
        self, context: context.Context, seen: list[Any], a: connection.Connection, late: bool
    ) -> None:
        super().__init__(context)
        self.seen, self.a, self.late = seen, a, late

    def _handle_event(self, event: events.Event) -> Any:
        self.seen.append(("event", type(event).__name__))
        if isinstance(event, events.Start):
            hook = TuningProbeHook(0)
            hook.blocking = object()  # type: ignore[assignment]  # as a child layer's blocking hook looks
            yield commands.SendData(self.a, b"1")
            yield hook
            yield commands.SendData(self.a, b"2")
            yield commands.CloseTcpConnection(self.a, half_close=True)
            if self.late:
                yield commands.SendData(self.a, b"3")
            yield commands.Log("after-hook", logging.DEBUG)


def _half_close(original: bool, late: bool) -> tuple[list[Any], list[tuple[str, bytes]]]:
    seen: list[Any] = []
    writes: list[tuple[str, bytes]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        handler = ProbeHandler(seen, {}, original)
        a = connection.Server(address=("a.test", 443))
        a.state = connection.ConnectionState.OPEN
        handler.layer = HalfCloseLayer(handler.layer.context, seen, a, late)
        writer = FakeWriter("a", writes, fail_after_eof=True)
        handler.transports[a] = server.ConnectionIO(handler=None, reader=None, writer=writer)  # type: ignore[arg-type]
        await handler.server_event(events.Start())
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(main())
    return seen, writes


def test_held_writes_go_before_a_half_close_as_in_mitmproxy() -> None:
    tuned = _half_close(original=False, late=False)
    assert tuned == _half_close(original=True, late=False)
    seen, writes = tuned
    assert writes == [("a", b"1"), ("a", b"2"), ("a", b"EOF")]
    assert ("log", "after-hook") in seen


def test_a_failing_held_write_is_logged_as_mitmproxy_logs_it() -> None:
    seen, writes = _half_close(original=False, late=True)
    mitmproxy_seen, mitmproxy_writes = _half_close(original=True, late=True)
    assert writes == mitmproxy_writes == [("a", b"1"), ("a", b"2"), ("a", b"EOF")]
    # The write after write_eof() raises: the event ends with mitmproxy's crash log in both, and the hook
    # still completes. Only a Log command between the failed write and the point where it is written
    # (here, the end of the event) is still logged when the write is held.
    assert [x for x in seen if x != ("log", "after-hook")] == mitmproxy_seen
    assert ("log", "mitmproxy has crashed!") in seen
    assert seen[-1] == ("event", "HookCompleted")


def test_lean_log_records_change_no_line_the_process_writes(monkeypatch: pytest.MonkeyPatch) -> None:

    from mitmproxy.log import MitmFormatter

    for name in ("_srcfile", "logThreads", "logMultiprocessing", "logAsyncioTasks"):
        monkeypatch.setattr(logging, name, getattr(logging, name))

    def at_fixed_time(record: logging.LogRecord) -> bool:
        record.created, record.msecs = 1_700_000_000.0, 123.0
        return True

    def lines() -> tuple[list[str], logging.LogRecord]:
        out, seen = [], []
        for formatter in (logging.Formatter("%(message)s"), MitmFormatter(colorize=False)):
            stream = io.StringIO()
            handler = logging.StreamHandler(stream)
            handler.setFormatter(formatter)
            handler.addFilter(at_fixed_time)
            handler.addFilter(lambda record: seen.append(record) or True)
            logger = logging.getLogger("s3proxy.test-lean-records")
            monkeypatch.setattr(logger, "handlers", [handler])
            monkeypatch.setattr(logger, "propagate", False)
            logger.setLevel(logging.INFO)
            logger.info('{"method":"GET","key":"%s"}', "k")
            logger.warning("refused tunnel to %s", "example.test", extra={"client": ("127.0.0.1", 5)})
            try:
                raise ValueError("boom")
            except ValueError:
                logger.error("Addon error: boom", exc_info=True)
            out.append(stream.getvalue())
        return out, seen[0]

    before, record = lines()
    assert record.funcName == "lines" and record.threadName is not None
    tuning.lean_log_records()
    after, record = lines()
    assert after == before
    assert "refused tunnel to example.test" in after[1] and "127.0.0.1:5" in after[1]
    assert "ValueError: boom" in after[1]
    # What the records no longer look up:
    assert record.funcName != "lines" and record.threadName is None and record.processName is None


def _watchdog_run(handle_hook: Any, scenario: str) -> list[Any]:
    """What a hook run by `handle_hook` shows of the connection's watchdog, before, during and after."""
    seen: list[Any] = []

    async def main() -> None:
        watchdog = server.TimeoutWatchdog(10, _never)
        watchdog.last_activity = 0.0
        f = tflow.tflow()
        if scenario == "intercepted":
            f.intercept()
            asyncio.get_running_loop().call_later(0.01, f.resume)

        async def handle_lifecycle(hook: Any) -> None:
            seen.append(("during", watchdog.blocker, watchdog.can_timeout.is_set(), hook.args() == [f]))
            if scenario == "nested" and isinstance(hook, http_layers.HttpRequestHook):
                await handle_hook(
                    handler,
                    hooks.ServerConnectedHook(hooks.ServerConnectionHookData(f.server_conn, f.client_conn)),
                )
                seen.append(("after nested", watchdog.blocker, watchdog.can_timeout.is_set()))
            if scenario == "raises":
                raise RuntimeError("addon")
            if scenario == "cancelled":
                await asyncio.sleep(10)  # cancelled while the hook waits

        handler = types.SimpleNamespace(
            timeout_watchdog=watchdog,
            master=types.SimpleNamespace(addons=types.SimpleNamespace(handle_lifecycle=handle_lifecycle)),
        )
        hook = http_layers.HttpRequestHook(f)
        task = asyncio.ensure_future(handle_hook(handler, hook))
        if scenario == "cancelled":
            await asyncio.sleep(0.01)
            task.cancel()
        try:
            await task
        except RuntimeError as e:
            seen.append(("raised", str(e)))
        except asyncio.CancelledError:
            seen.append(("cancelled",))
        seen.append(
            (
                "after",
                watchdog.blocker,
                watchdog.can_timeout.is_set(),
                watchdog.last_activity > 0,
                f.intercepted,
            )
        )

    asyncio.run(main())
    return seen


async def _never() -> None:
    raise AssertionError("the watchdog fired")


@pytest.mark.parametrize("scenario", ["plain", "nested", "raises", "cancelled", "intercepted"])
def test_hooks_disarm_and_rearm_the_watchdog_as_mitmproxy_does(scenario: str) -> None:
    ours = _watchdog_run(server_modes.ProxyConnectionHandler.handle_hook, scenario)
    theirs = _watchdog_run(
        tuning.ORIGINALS["mitmproxy.proxy.mode_servers.ProxyConnectionHandler.handle_hook"], scenario
    )
    assert ours == theirs
    assert ours[0][:3] == ("during", 1, False)
    assert ours[-1] == ("after", 0, True, True, False)


@pytest.mark.parametrize("authority", [b"", b"s3.us-east-1.amazonaws.com:80"])
def test_point_sets_what_mitmproxys_setters_would(authority: bytes) -> None:
    """S3Proxy._point writes scheme, host and port once instead of through their setters (pinned above):
    the request sent upstream is the same, an absolute-form request's authority included."""
    from addons.s3proxy_addon import S3Proxy
    from s3proxy.engine import Decision

    host, port = "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com", 8443
    headers = (("Host", host), ("x-amz-date", "20261128T000000Z"), ("Authorization", "AWS4-HMAC-SHA256 x"))
    decision = Decision(action="forward", plan=None, path="/k", query="a=1", headers=headers)  # type: ignore[arg-type]
    pointed, expected = tflow.tflow(), tflow.tflow()
    for f in (pointed, expected):
        f.request.scheme, f.request.authority = "http", authority.decode()
    S3Proxy()._point(pointed, decision, host, port)
    r = expected.request
    r.scheme, r.host, r.port, r.path = "https", host, port, decision.target
    r.headers = http.Headers([(k.encode(), v.encode()) for k, v in headers])
    got, want = pointed.request.data, r.data
    assert (got.scheme, got.host, got.port, got.authority, got.path) == (
        want.scheme,
        want.host,
        want.port,
        want.authority,
        want.path,
    )
    assert got.headers.fields == want.headers.fields
    assert pointed.request.url == r.url


# --------------------------------------------------------------------------------- tunnel_shortcut


@dataclasses.dataclass
class TunnelProbeHook(commands.StartHook):
    what: str


class TunnelProbeLayer(layer.Layer):
    """What runs inside a CONNECT tunnel (in the proxy: TLS and HTTP): each client message asks for one
    kind of command, so every conversion the outer layers make is exercised."""

    def __init__(self, context: context.Context) -> None:
        super().__init__(context)
        self.server = connection.Server(address=("upstream.example", 443))

    def _handle_event(self, event: events.Event) -> Any:
        client = self.context.client
        if isinstance(event, events.DataReceived) and event.connection is client:
            what = event.data
            if what == b"open":
                err = yield commands.OpenConnection(self.server)
                yield commands.SendData(client, b"opened:%s" % str(err).encode())
            elif what.startswith(b"echo:"):
                yield commands.SendData(client, what[5:].upper())
                yield commands.SendData(self.server, what[5:])
                yield commands.Log("echoed", logging.DEBUG)
            elif what == b"hook":
                yield TunnelProbeHook("probe")
                yield commands.SendData(client, b"after-hook")
            elif what == b"wake":
                yield commands.RequestWakeup(0.5)
            elif what == b"empty":
                yield commands.SendData(client, b"")
            elif what == b"half-close-server":
                yield commands.CloseTcpConnection(self.server, half_close=True)
            elif what == b"close-server":
                yield commands.CloseConnection(self.server)
            elif what == b"half-close-client":
                yield commands.CloseTcpConnection(client, half_close=True)
            elif what == b"close-client":
                yield commands.CloseConnection(client)
        elif isinstance(event, events.Wakeup):
            yield commands.SendData(client, b"woken")
        elif isinstance(event, events.DataReceived):
            yield commands.SendData(client, b"from-server:" + event.data)
        elif isinstance(event, events.ConnectionClosed):
            if event.connection is client:  # a hook asked for on mitmproxy's path (the client's close)
                yield TunnelProbeHook("closing")
            other = self.server if event.connection is client else client
            yield commands.SendData(other, b"closed")


class TunnelDriver:
    """A regular-mode connection as mitmproxy builds it (the HttpProxy mode layer at the root, where
    ServerInstance.handle_stream puts it), driven event by event the way ConnectionHandler drives it:
    blocking commands are answered (hooks completed, the tunnel's next layer chosen, connections opened)
    and every command is noted in a form both drivers can be compared in."""

    def __init__(self, route: Any, debug: bool = False) -> None:
        opts = options.Options()
        proxyserver.Proxyserver().load(types.SimpleNamespace(add_option=opts.add_option))
        opts.connection_strategy = "lazy"  # as s3proxy runs mitmproxy
        opts.proxy_debug = debug
        self.client = connection.Client(
            peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0
        )
        self.client.state = connection.ConnectionState.OPEN
        self.handler = types.SimpleNamespace(layer=modes.HttpProxy(context.Context(self.client, opts)))
        self.handler.client = self.client
        self.route = route
        self.seen: list[Any] = []
        self.names: dict[int, str] = {id(self.client): "client"}
        self.wakeups: list[commands.RequestWakeup] = []

    def name(self, conn: Any) -> str:
        return self.names.setdefault(id(conn), f"server{len(self.names)}")

    def feed(self, event: events.Event) -> None:
        pending = [event]
        while pending:
            for command in self.route(self.handler, pending.pop(0)):
                entry: tuple[Any, ...] = (type(command).__name__,)
                if isinstance(command, commands.ConnectionCommand):
                    entry += (self.name(command.connection),)
                if isinstance(command, commands.SendData):
                    entry += (bytes(command.data),)
                if isinstance(command, commands.CloseTcpConnection):
                    entry += (command.half_close,)
                if isinstance(command, commands.StartHook):
                    entry += (command.name,)
                self.seen.append(entry)
                if isinstance(command, layer.NextLayerHook):
                    outer = command.data.context.layers[-1] if command.data.context.layers else None
                    if type(outer) is http_layers.HttpStream:
                        command.data.layer = TunnelProbeLayer(command.data.context)
                    else:
                        command.data.layer = http_layers.HttpLayer(
                            command.data.context, http_layers.HTTPMode.regular
                        )
                if isinstance(command, commands.OpenConnection):
                    command.connection.state = connection.ConnectionState.OPEN
                    pending.append(events.OpenConnectionCompleted(command, None))
                elif isinstance(command, commands.StartHook) and command.blocking:
                    pending.append(events.HookCompleted(command))
                elif isinstance(command, commands.RequestWakeup):
                    self.wakeups.append(command)

    def outer(self) -> Any:
        nxt = self.handler.layer._handle_event.__self__
        return nxt.layer

    def state(self) -> tuple[Any, ...]:
        outer = self.outer()
        # (The outer HttpLayer's command_sources is not compared: on the shortcut nothing is recorded there,
        # see test_the_shortcut_leaves_nothing_behind_in_the_outer_layer.)
        return (sorted(self.name(c) for c in outer.connections), sorted(outer.streams))


CONNECT = b"CONNECT s3.amazonaws.com:443 HTTP/1.1\r\nHost: s3.amazonaws.com:443\r\n\r\n"
TUNNEL_SCRIPT: list[tuple[str, bytes]] = [
    ("client", b"echo:first"),  # the tunnel's next layer is chosen here
    ("client", b"open"),
    ("client", b"echo:abc"),
    ("server", b"response"),
    ("client", b"hook"),
    ("client", b"empty"),
    ("client", b"wake"),
    ("wakeup", b""),
    ("client", b"half-close-server"),
    ("server", b"more"),
    ("server-closed", b""),
    ("client", b"half-close-client"),
    ("client", b"close-client"),
    ("client-closed", b""),
]


def _drive_tunnel(route: Any, script: list[tuple[str, bytes]], debug: bool = False) -> TunnelDriver:
    d = TunnelDriver(route, debug)
    d.feed(events.Start())
    d.feed(events.DataReceived(d.client, CONNECT))
    for source, data in script:
        probe = None
        stream = next(iter(d.outer().streams.values()), None)
        if stream is not None and isinstance(stream.child_layer, layer.NextLayer):
            probe = stream.child_layer.layer
        if source == "client":
            d.feed(events.DataReceived(d.client, data))
        elif source == "client-closed":
            d.feed(events.ConnectionClosed(d.client))
        elif source == "wakeup":
            d.feed(events.Wakeup(d.wakeups.pop(0)))
        else:
            assert isinstance(probe, TunnelProbeLayer)
            if source == "server":
                d.feed(events.DataReceived(probe.server, data))
            else:
                d.feed(events.ConnectionClosed(probe.server))
        d.seen.append(("state", *d.state()))
    return d


def _counting_passthrough(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = http_layers.HttpStream.passthrough

    def passthrough(self: Any, event: events.Event) -> Any:
        calls[0] += 1
        return original(self, event)

    monkeypatch.setattr(http_layers.HttpStream, "passthrough", passthrough)
    return calls


def test_tunnel_shortcut_gives_the_commands_and_state_mitmproxys_layers_give(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _counting_passthrough(monkeypatch)
    mitmproxy_path = _drive_tunnel(tuning._layer_route, TUNNEL_SCRIPT)
    through_layers = calls[0]
    calls[0] = 0
    shortcut = _drive_tunnel(tuning._tunnel_router(), TUNNEL_SCRIPT)
    assert shortcut.seen == mitmproxy_path.seen
    # The script reached the tunnel's layers through the CONNECT stream on mitmproxy's path; with the
    # shortcut only the client's close did (it takes mitmproxy's path), once per event it carries.
    assert through_layers > 10
    assert calls[0] <= 2
    assert ("SendData", "client", b"ABC") in shortcut.seen
    assert ("SendData", "client", b"from-server:response") in shortcut.seen
    assert ("SendData", "client", b"after-hook") in shortcut.seen
    assert ("SendData", "client", b"woken") in shortcut.seen
    assert ("CloseTcpConnection", "server1", True) not in shortcut.seen  # a half-close became a close
    assert ("CloseConnection", "server1") in shortcut.seen
    # Every completion went back the way its command came: nothing is left waiting in the outer layer.
    assert shortcut.outer().command_sources == mitmproxy_path.outer().command_sources == {}


@pytest.mark.parametrize("step", range(len(TUNNEL_SCRIPT)))
def test_tunnel_shortcut_matches_mitmproxy_after_each_step(step: int) -> None:
    script = TUNNEL_SCRIPT[: step + 1]
    mitmproxy_path = _drive_tunnel(tuning._layer_route, script)
    assert _drive_tunnel(tuning._tunnel_router(), script).seen == mitmproxy_path.seen


def test_a_hook_issued_before_the_shortcut_completes_through_mitmproxys_layers() -> None:
    # The CONNECT's own hooks are recorded by the outer HttpLayer: their completions must go back through it.
    route = tuning._tunnel_router()
    d = TunnelDriver(route)
    d.feed(events.Start())
    d.feed(events.DataReceived(d.client, CONNECT))
    assert [e for e in d.seen if e[0] == "HttpConnectHook"] and d.outer().command_sources == {}
    assert any(e[:2] == ("SendData", "client") and e[2].startswith(b"HTTP/1.1 200") for e in d.seen)


def test_the_shortcut_leaves_nothing_behind_in_the_outer_layer() -> None:
    # A keep-alive connection carries thousands of requests through the shortcut: nothing may pile up in
    # the outer HttpLayer (mitmproxy's path records each hook and timer there until it completes).
    d = TunnelDriver(tuning._tunnel_router())
    d.feed(events.Start())
    d.feed(events.DataReceived(d.client, CONNECT))
    d.feed(events.DataReceived(d.client, b"open"))
    for _ in range(50):
        d.feed(events.DataReceived(d.client, b"hook"))
        d.feed(events.DataReceived(d.client, b"wake"))
        d.feed(events.Wakeup(d.wakeups.pop(0)))
        assert d.outer().command_sources == {}
    assert d.seen.count(("SendData", "client", b"after-hook")) == 50
    assert d.seen.count(("SendData", "client", b"woken")) == 50
    assert d.state() == (["client", "server1"], [1])


def test_with_proxy_debug_every_event_takes_mitmproxys_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    # proxy_debug has every layer log what passes through it: the shortcut would leave out the outer ones.
    calls = _counting_passthrough(monkeypatch)
    mitmproxy_path = _drive_tunnel(tuning._layer_route, TUNNEL_SCRIPT, debug=True)
    through_layers, calls[0] = calls[0], 0
    routed = _drive_tunnel(tuning._tunnel_router(), TUNNEL_SCRIPT, debug=True)
    assert routed.seen == mitmproxy_path.seen
    assert calls[0] == through_layers > 10
