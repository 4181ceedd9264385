"""s3proxy.reuse: the idle pool (pure) and the checks for keeping a connection. The mitmproxy code the glue
relies on is pinned in tests/test_tuning.py; end to end (real proxy, clients, endpoint):
tests/e2e/test_reuse.py."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import options
from mitmproxy.connection import ConnectionState, Server
from mitmproxy.proxy import tunnel
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.tls import ServerTLSLayer
from mitmproxy.test.tflow import tclient_conn

from s3proxy import reuse
from s3proxy.reuse import IdlePool

# ------------------------------------------------------------------------------------------- IdlePool


def test_pool_is_off_until_both_limits_are_set() -> None:
    for idle, most in ((0, 4), (5, 0), (0, 0)):
        pool: IdlePool[str] = IdlePool(idle, most)
        assert not pool.enabled
        assert pool.put("h", "a", now=0) is False
        assert len(pool) == 0


def test_newest_first_and_bounded_per_name() -> None:
    pool: IdlePool[str] = IdlePool(10, 2)
    assert pool.put("h", "a", now=0) and pool.put("h", "b", now=1)
    assert pool.put("h", "c", now=2) is False  # full: the caller closes it
    assert pool.put("other", "x", now=2)  # another name has its own room
    assert len(pool) == 3
    assert pool.take("h", now=3) == ("b", [])
    assert pool.take("h", now=3) == ("a", [])
    assert pool.take("h", now=3) == (None, [])
    assert pool.take("nothing", now=3) == (None, [])


def test_expired_items_are_never_handed_out() -> None:
    pool: IdlePool[str] = IdlePool(5, 4)
    pool.put("h", "old", now=0)
    pool.put("h", "new", now=4)
    assert pool.take("h", now=5) == ("new", ["old"])  # old was due at 5: dropped on the way
    pool.put("h", "late", now=10)
    assert pool.take("h", now=15) == (None, ["late"])
    assert len(pool) == 0


def test_expired_sweep_remove_and_drain() -> None:
    pool: IdlePool[str] = IdlePool(5, 4)
    pool.put("h", "a", now=0)
    pool.put("h", "b", now=3)
    pool.put("g", "c", now=1)
    assert sorted(pool.expired(now=6)) == ["a", "c"]
    assert len(pool) == 1
    assert pool.remove_where("h", lambda x: x == "x") is False
    assert pool.remove_where("g", lambda x: x == "c") is False
    assert pool.remove_where("h", lambda x: x == "b") is True and len(pool) == 0
    pool.put("h", "d", now=0)
    pool.put("g", "e", now=0)
    assert sorted(pool.drain()) == ["d", "e"] and len(pool) == 0


def test_next_due_and_pool_keys() -> None:
    pool: IdlePool[str] = IdlePool(5, 4)
    assert pool.next_due() is None
    pool.put("h", "a", now=3)
    pool.put("g", "b", now=1)
    assert pool.next_due() == 6
    # One pool per endpoint name and port: a connection to another port is another pool.
    assert reuse.pool_key(("bucket.vpce-1.example", 443)) != reuse.pool_key(("bucket.vpce-1.example", 8443))


def test_configure_closes_what_was_kept() -> None:
    shared = reuse.Reuse()
    cancelled: list[str] = []
    task = SimpleNamespace(done=lambda: False, cancel=lambda msg=None: cancelled.append(msg))
    shared.configure(5, 4)
    shared.pool.put("h", reuse.Idle(object(), object(), SimpleNamespace(handler=task)), now=0)
    generation = shared.generation
    shared.configure(0, 4)
    assert cancelled == ["idle upstream connection closed"] and len(shared.pool) == 0
    assert not shared.pool.enabled
    assert shared.generation == generation + 1  # what was opened before is never kept or taken


# ------------------------------------------------------------------------------ what may be kept


class _Layer:
    def __init__(self, **kw: Any) -> None:
        self._paused = None
        self._paused_event_queue: list[Any] = []
        self.__dict__.update(kw)


def _idle_stack(**h1_changes: Any) -> tuple[Any, Any, Any]:
    """A Server, the root of its layer stack and its IO as mitmproxy leaves them between two exchanges."""
    srv = Server(address=("bucket.vpce-1.s3.us-east-1.vpce.amazonaws.com", 443))
    srv.state = ConnectionState.OPEN
    srv.tls = True
    srv.timestamp_start = time.time()
    srv.timestamp_tls_setup = time.time()
    srv.peername = ("127.0.0.1", 443)
    setattr(srv, reuse.GENERATION, 0)  # what a new Reuse() has
    setattr(srv, reuse.READING, True)  # its reading task waits in read()
    ctx = Context(tclient_conn(), options.Options())
    ctx.server = srv
    root = ServerTLSLayer(ctx)
    root.tunnel_state = tunnel.TunnelState.OPEN
    root.tls = SimpleNamespace(pending=lambda: 0)  # type: ignore[assignment]
    client_layer = http_layers.HttpClient(ctx)
    h1 = _http1.Http1Client(ctx)
    h1.state = h1.read_headers
    for k, v in h1_changes.items():
        setattr(h1, k, v)
    client_layer.child_layer = h1
    root.child_layer = client_layer
    reader = SimpleNamespace(_eof=False, _buffer=bytearray(), exception=lambda: None, at_eof=lambda: False)
    writer = SimpleNamespace(is_closing=lambda: False)
    task = SimpleNamespace(done=lambda: False, cancelling=lambda: 0)
    io = SimpleNamespace(reader=reader, writer=writer, handler=task)
    return srv, root, io


def _shared() -> reuse.Reuse:
    shared = reuse.Reuse()
    shared.wants = lambda host: host.endswith(".vpce.amazonaws.com")
    shared.keep_address = lambda host, address: address == "127.0.0.1"
    return shared


def test_an_idle_http1_connection_may_be_kept() -> None:
    srv, root, io = _idle_stack()
    assert _shared()._reusable(srv, root, io, None)


@pytest.mark.parametrize(
    "change",
    [
        {"stream_id": 3},  # a request in flight
        {"request": object()},
        {"response": object()},
        {"buf": bytearray(b"HTTP/1.1")},  # unread bytes
        {"state": "body"},  # not waiting for the next response head
    ],
)
def test_a_busy_http1_layer_is_never_kept(change: dict[str, Any]) -> None:
    if change.get("state") == "body":
        srv, root, io = _idle_stack()
        h1 = root.child_layer.child_layer
        h1.state = h1.read_body
    else:
        srv, root, io = _idle_stack(**change)
    assert not _shared()._reusable(srv, root, io, None)


def test_connection_level_reasons_not_to_keep() -> None:
    shared = _shared()
    cases: list[Any] = []

    def case(fn: Any) -> None:
        srv, root, io = _idle_stack()
        fn(srv, root, io)
        cases.append(shared._reusable(srv, root, io, None))

    case(lambda s, r, io: setattr(s, "state", ConnectionState.CAN_WRITE))  # the endpoint closed its side
    case(lambda s, r, io: setattr(s, "error", "boom"))
    case(lambda s, r, io: setattr(s, "timestamp_tls_setup", None))  # TLS not established
    case(lambda s, r, io: setattr(s, "timestamp_start", time.time() - reuse.MAX_AGE))  # too old
    case(lambda s, r, io: setattr(s, "peername", ("127.0.0.9", 443)))  # no longer the preferred address
    shared.wants = lambda host: False  # not one of our endpoints
    case(lambda s, r, io: None)
    shared.wants = lambda host: True
    case(lambda s, r, io: setattr(r, "tunnel_state", tunnel.TunnelState.CLOSED))
    case(lambda s, r, io: setattr(r, "tls", SimpleNamespace(pending=lambda: 5)))  # TLS bytes unread
    case(lambda s, r, io: setattr(r, "_paused", object()))  # waiting on a hook
    case(lambda s, r, io: setattr(io.reader, "_eof", True))
    case(lambda s, r, io: setattr(io.reader, "_buffer", bytearray(b"x")))
    case(lambda s, r, io: setattr(io.reader, "_s3proxy_held", b"x"))
    case(lambda s, r, io: setattr(io.writer, "is_closing", lambda: True))
    case(lambda s, r, io: setattr(io, "handler", SimpleNamespace(done=lambda: True, cancelling=lambda: 0)))
    case(lambda s, r, io: setattr(io, "handler", SimpleNamespace(done=lambda: False, cancelling=lambda: 1)))
    case(lambda s, r, io: setattr(s, reuse.GENERATION, -1))  # opened under an older config
    case(lambda s, r, io: setattr(s, reuse.READING, False))  # its task holds bytes it has not delivered
    case(lambda s, r, io: setattr(s, reuse.STRAY, True))  # bytes came while no request was out
    assert cases == [False] * len(cases)
