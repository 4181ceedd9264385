"""The mitmproxy addon: a thin shell that turns flows into core values, asks the core, writes back the answer.

Load it with `mitmdump -s addons/s3proxy_addon.py --set s3proxy_config=FILE`, or run `s3proxy run`, which
embeds mitmproxy with the options this needs (regular mode, lazy connections, verified upstream TLS).

Strategy:
- `http_connect` / `requestheaders` apply the access rules; only S3 names are decrypted (`allow_hosts` is
  set by the runner; with `non_s3: deny` other CONNECTs are refused here).
- `requestheaders` does all the work, because headers go upstream as soon as body streaming starts: the
  Engine decides (rewrite + verify + re-sign), `Upstreams` makes sure a verified endpoint address exists (or
  the client gets a 503 naming the endpoint), the request is pointed at the endpoint-level vpce name with the
  Host header as the rewrite chose, and the aws-chunked re-signer is plugged into the body stream.
- Upstream connections are pooled by mitmproxy per (name, port), and the name is the SNI and the name the
  certificate is verified against. The event loop's `getaddrinfo` is answered by `Upstreams` for our vpce
  names (dnspython, zonal preference, benched addresses skipped), so mitmproxy never uses the system
  resolver for them and asyncio fails over to the next candidate if a connect is refused.
- Every answer the proxy gives itself is S3-style XML from `s3proxy.errors`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.connection import Server
from mitmproxy.net.http import url
from mitmproxy.proxy import server_hooks

from s3proxy import access, ciphers, guard, hosts, reuse
from s3proxy.chunked import ChunkResigner
from s3proxy.config import Config, ConfigError, load_config
from s3proxy.engine import Decision, Engine
from s3proxy.errors import S3Error, error_headers, error_xml, new_request_id
from s3proxy.model import Request, split_target
from s3proxy.regions import RegionCache, region_from_headers
from s3proxy.resolver import DnsFailure, Resolver
from s3proxy.signing import signer_from_config
from s3proxy.upstream import NoUsableAddress, Upstreams, upstream_ssl_context

log = logging.getLogger("s3proxy")

_AUTH_OK = "s3proxy_auth_ok"
_POINTED = "s3proxy_pointed"  # set on a client connection once one of its requests was routed to S3
REQUEST_KEY = "s3proxy_request"  # flow.metadata: the core Request as the client sent it
REFUSAL_KEY = "s3proxy_refusal"  # flow.metadata: why the proxy answered itself (a metrics label)
HEAD_ERROR_KEY = "s3proxy_head_error"  # flow.metadata: the error body a HEAD's answer went without


def error_response(error: S3Error, extra: list[tuple[str, str]] | None = None) -> http.Response:
    request_id = new_request_id()
    body = error_xml(error, request_id)
    headers = error_headers(request_id, len(body), error.region) + (extra or [])
    return http.Response.make(error.status, body, [(k.encode(), v.encode()) for k, v in headers])


_PROTOCOL_ERROR_CODES = {
    400: (400, "InvalidRequest"),
    407: (407, "ProxyAuthenticationRequired"),
    413: (400, "EntityTooLarge"),
    431: (400, "RequestHeaderSectionTooLarge"),
    502: (503, "ServiceUnavailable"),
    503: (503, "ServiceUnavailable"),
    504: (503, "ServiceUnavailable"),
}


def protocol_error_bytes(status_code: int, message: str = "") -> bytes:
    """S3-style stand-in for mitmproxy's HTML error page (connection to the endpoint failed, malformed
    request, ...). 5xx become 503 ServiceUnavailable, which SDKs retry."""
    from mitmproxy.net.http import http1

    status, code = _PROTOCOL_ERROR_CODES.get(status_code, (500, "InternalError"))
    detail = message.removeprefix("Connection killed: ")
    if status == 503 and "s3proxy could not" not in detail:
        detail = f"s3proxy could not complete the request to the S3 interface endpoint: {detail}"
    resp = error_response(S3Error(status, code, detail))
    resp.headers["Connection"] = "close"
    return bytes(http1.assemble_response(resp))


def install_s3_protocol_errors() -> None:
    """Make the errors mitmproxy itself answers (it has no hook for them) S3-style XML too."""
    from mitmproxy.proxy.layers.http import _http1

    if hasattr(_http1, "make_error_response"):
        _http1.make_error_response = protocol_error_bytes


def install_header_limit(limit: Callable[[], int]) -> None:
    """Bound a request head that is still arriving: mitmproxy buffers it without limit ("FIXME: protect
    against header size DoS" in its HTTP/1 server), so a client could make the proxy hold any amount of
    memory. Past `limit()` bytes without a complete head the client gets a 400 and the connection closes."""
    from mitmproxy.proxy import commands, events
    from mitmproxy.proxy.layers.http import _http1

    server_cls = getattr(_http1, "Http1Server", None)
    original = getattr(server_cls, "read_headers", None)
    if server_cls is None or original is None or getattr(original, "_s3proxy", False):
        return

    def read_headers(self: Any, event: Any) -> Any:
        yield from original(self, event)
        if (
            isinstance(event, events.DataReceived)
            and getattr(self.state, "__func__", None) is read_headers
            and len(self.buf) > limit()
        ):
            error = S3Error(
                400,
                "RequestHeaderSectionTooLarge",
                f"Your request header section exceeds the maximum allowed size ({limit()} bytes).",
            )
            resp = error_response(error)
            resp.headers["Connection"] = "close"
            from mitmproxy.net.http import http1

            yield commands.SendData(self.conn, bytes(http1.assemble_response(resp)))
            yield commands.CloseConnection(self.conn)
            self.buf.maybe_extract_at_most(len(self.buf))  # drop what was held (h11's buffer has no clear)
            self.state = self.done

    read_headers._s3proxy = True  # type: ignore[attr-defined]
    server_cls.read_headers = read_headers


# Requests replayed on a new upstream connection when theirs closed before any answer (see below).
REPLAYABLE_METHODS = frozenset({"GET", "HEAD"})
REPLAYED_KEY = reuse.NEW_CONNECTION_KEY  # s3proxy.reuse hands such a flow a new connection, never a kept one


def install_stale_connection_replay() -> None:
    """An upstream connection the endpoint closes just as a request goes out (S3 closes idle kept-alive
    connections; an endpoint may go away) ends the request with "server closed connection" before any
    response byte. An SDK would retry; a legacy client gets an error. So, like nginx's
    `proxy_next_upstream error`, a GET or HEAD without a body whose upstream connection closed before any
    byte of the response is sent once more, on a new connection (proven first, as every new one is).
    Anything else, a second failure, or a connection that closed after response bytes stays the error it
    was (an upstream cut mid-response is never hidden). tests/test_tuning.py pins the mitmproxy code this
    relies on."""
    from mitmproxy.proxy.layers import http as http_layers
    from mitmproxy.proxy.layers.http import _events

    stream_cls = http_layers.HttpStream
    original = stream_cls.handle_protocol_error
    if getattr(original, "_s3proxy", False):
        return

    def handle_protocol_error(self: Any, event: Any) -> Any:
        flow = self.flow
        if (
            isinstance(event, _events.ResponseProtocolError)
            and event.message == "server closed connection"
            and self.server_state == self.state_wait_for_response_headers
            and self.client_state == self.state_done
            and flow.response is None
            and flow.request.method in REPLAYABLE_METHODS
            and not flow.request.raw_content
            and not flow.request.trailers
            and not flow.metadata.get(REPLAYED_KEY)
        ):
            flow.metadata[REPLAYED_KEY] = True
            log.info(
                "upstream closed the connection before answering %s %s: sent again on a new one",
                flow.request.method,
                _loggable(flow.request.path)[:200],
            )
            if not (yield from self.make_server_connection()):
                return  # make_server_connection has answered the client with the connect error
            yield http_layers.SendHttp(
                _events.RequestHeaders(self.stream_id, flow.request, True), self.context.server
            )
            yield http_layers.SendHttp(_events.RequestEndOfMessage(self.stream_id), self.context.server)
            return
        yield from original(self, event)

    handle_protocol_error._s3proxy = True  # type: ignore[attr-defined]
    handle_protocol_error.__wrapped__ = original  # type: ignore[attr-defined]
    stream_cls.handle_protocol_error = handle_protocol_error  # type: ignore[method-assign]


def install_early_refusal() -> None:
    """A request refused at its head (signature, key, access rules, policy, host, endpoint, DNS) is answered
    at once, as S3 does, not after its body. mitmproxy would first read a refused request's whole body into
    memory (one large PUT with a wrong key would take the proxy's memory) and, for `Expect: 100-continue`,
    invite that body with a 100 first. Here no 100 is sent, the answer goes out with `Connection: close`
    before the body, and what of the body still comes is read and dropped, never kept; the connection closes
    when the request ends (closing right after the answer could reset it before the client read the
    answer). tests/test_tuning.py pins the mitmproxy code this relies on."""
    from mitmproxy.proxy.layers import http as http_layers
    from mitmproxy.proxy.layers.http import _events, _hooks

    stream_cls = http_layers.HttpStream
    original = stream_cls.state_wait_for_request_headers
    if getattr(original, "_s3proxy", False):
        return

    def state_wait_for_request_headers(self: Any, event: Any) -> Any:
        commands = original(self, event)
        reply = None
        while True:
            try:
                command = commands.send(reply)
            except StopIteration:
                break
            reply = None
            if (
                self.flow.response is not None
                and isinstance(command, http_layers.SendHttp)
                and isinstance(command.event, _events.ResponseHeaders)
                and command.event.response.status_code == 100
            ):
                continue  # no "100 Continue" for a request already answered
            reply = yield command
        flow = self.flow
        if flow.response is None or event.end_stream or self.client_state != self.state_consume_request_body:
            return

        def discard_request_body(event: Any) -> Any:
            if isinstance(event, _events.RequestEndOfMessage):
                flow.request.timestamp_end = time.time()
                self.client_state = self.state_done
                if self.server_state == self.state_done:
                    yield from self.flow_done()
            yield from ()

        flow.response.headers["connection"] = "close"
        flow.response.timestamp_start = time.time()
        self.client_state = discard_request_body
        yield _hooks.HttpResponseHeadersHook(flow)
        if (yield from self.check_killed(True)):
            return
        yield from self.send_response()

    state_wait_for_request_headers._s3proxy = True  # type: ignore[attr-defined]
    state_wait_for_request_headers.__wrapped__ = original  # type: ignore[attr-defined]
    stream_cls.state_wait_for_request_headers = state_wait_for_request_headers  # type: ignore[method-assign]


def install_trailer_protocol_error() -> None:
    """A chunked body with HTTP trailers makes mitmproxy raise NotImplementedError ("mitmproxy has
    crashed!" in the log) and leaves the connection hanging until its idle timeout, the upload neither
    finished nor failed. Here it is what mitmproxy makes of any other malformed chunked body: an HTTP/1
    protocol error that closes the connection (and aborts the request upstream, so nothing is stored).
    S3 takes no HTTP trailers (SDKs send checksums as aws-chunked trailers inside the body).
    tests/test_tuning.py pins the mitmproxy code this relies on."""
    from mitmproxy.proxy import commands as proxy_commands
    from mitmproxy.proxy.layers.http import _http1
    from mitmproxy.proxy.layers.http._base import ReceiveHttp

    cls = _http1.Http1Connection
    original = cls.read_body
    if getattr(original, "_s3proxy", False):
        return

    def read_body(self: Any, event: Any) -> Any:
        try:
            yield from original(self, event)
        except NotImplementedError as e:  # only "HTTP trailers are not implemented yet."
            yield proxy_commands.CloseConnection(self.conn)
            yield ReceiveHttp(
                self.ReceiveProtocolError(
                    self.stream_id,
                    f"HTTP/1 protocol error: {e} (s3proxy does not carry HTTP trailers)",
                    code=self.ReceiveProtocolError.code,
                )
            )

    read_body._s3proxy = True  # type: ignore[attr-defined]
    read_body.__wrapped__ = original  # type: ignore[attr-defined]
    cls.read_body = read_body  # type: ignore[method-assign]


def pause_reading(io: Any) -> asyncio.ReadTransport | None:
    """Stop reading a connection (mitmproxy's ConnectionIO: an asyncio StreamReader and StreamWriter);
    returns the transport to resume afterwards, or None when there is nothing to resume. If asyncio's reader
    had paused it itself (more than its limit unread), the pause becomes ours: the reader would resume it as
    soon as mitmproxy had drained it, and the reader pauses again by itself once resumed."""
    transport = getattr(getattr(io, "writer", None), "transport", None)
    if not isinstance(transport, asyncio.ReadTransport) or transport.is_closing():
        return None
    reader = getattr(io, "reader", None)
    if transport.is_reading():
        transport.pause_reading()
    elif isinstance(reader, asyncio.StreamReader) and getattr(reader, "_paused", False):
        reader._paused = False  # type: ignore[attr-defined]
    else:
        return None  # paused by something else, which resumes it
    return transport


def is_local_address(address: str) -> bool:
    """True if `address` belongs to this host: binding a socket to it succeeds only then (nothing is sent)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((address, 0))
    except OSError:
        return False
    return True


def request_from_flow(req: http.Request) -> Request:
    """The core's view of a mitmproxy request. Path and query stay raw (surrogate-escaped like mitmproxy)."""
    host_header = req.host_header or req.host
    host, _, port_text = host_header.rpartition(":") if host_header.count(":") == 1 else (host_header, "", "")
    port = int(port_text) if port_text.isdigit() else None
    path, query, has_query = split_target(req.path)
    headers = tuple(
        (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
        for k, v in req.headers.fields
    )
    return Request(
        method=req.method,
        scheme=req.scheme,
        host=host.lower().rstrip("."),
        port=port,
        path=path,
        query=query,
        headers=headers,
        has_query=has_query,
    )


# Query parameters that carry a signature or a session token: never written to the log.
_SECRET_PARAMS = ("x-amz-signature=", "x-amz-security-token=", "signature=")


def _loggable(target: str) -> str:
    path, sep, query = target.partition("?")
    if not sep:
        return path
    parts = [
        f"{p.partition('=')[0]}=..." if p.lower().startswith(_SECRET_PARAMS) else p for p in query.split("&")
    ]
    return f"{path}?{'&'.join(parts)}"


def describe(req: Request, d: Decision) -> str:
    """One log line per request: what the client asked for -> what goes upstream (never a secret)."""
    port = "" if req.port is None else f":{req.port}"
    asked = f"{req.method} {req.scheme}://{req.host}{port}{_loggable(req.target)}"
    if d.action == "reject":
        assert d.error is not None
        return f"{asked} -> refused {d.error.status} {d.error.code} ({d.plan.family})"
    sent = f"{d.method} https://{d.host}{'' if d.port == 443 else f':{d.port}'}{_loggable(d.target)}"
    why = "passthrough" if d.action == "passthrough" else f"{d.plan.region} from {d.plan.region_source}"
    return f"{asked} -> {sent} ({why}; signature {d.signing})"


class ChunkStream:
    """Plugs the aws-chunked re-signer into mitmproxy's request body stream.

    On a bad chunk nothing valid is emitted again: the rest of the body (as many bytes as the client sends,
    so Content-Length still holds) is replaced by filler that is not aws-chunked framing, so S3 rejects the
    upload and stores nothing; the response is then replaced by the proxy's own error.
    """

    def __init__(self, resigner: ChunkResigner, resource: str = "") -> None:
        self.resigner = resigner
        self.resource = resource  # the path the client sent, for the error's <Resource>
        self.error: S3Error | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    def __call__(self, data: bytes) -> bytes:
        self.bytes_in += len(data)
        if self.error is None:
            try:
                out = self.resigner.feed(data) if data else self.resigner.finish()
            except S3Error as e:
                self.error = e
            else:
                self.bytes_out += len(out)
                return out
        filler = b"X" * (self.bytes_in - self.bytes_out)
        self.bytes_out = self.bytes_in
        return filler


def _max_header_bytes() -> int:
    config = _LOADED[-1].config
    return config.limits.max_header_bytes if config is not None else 64 * 1024


class S3Proxy:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.config: Config | None = None
        self.engine: Engine | None = None
        self.resolver: Resolver | None = None
        self.upstreams: Upstreams | None = None
        # Why the last config was refused: mitmproxy rolls a failed option update back and calls
        # `configure` again with the old (empty) path, which must not mask the real reason.
        self._config_error: str | None = None
        # SHA-256 of Proxy-Authorization values that passed: a password hash at production strength costs
        # ~0.4 s of CPU on the event loop, so it is paid once per credential, not once per connection.
        # Only digests are kept (never the password); cleared whenever the config changes.
        self._proxy_auth_ok: set[bytes] = set()
        self.password_checks = 0  # Proxy-Authorization headers checked against the hashes (a metric)
        self.previous_upstreams: Upstreams | None = None
        # Bumped by every config load: a client connection admitted under an older config is checked
        # against the access rules again on its next request.
        self.generation = 0
        # Bucket -> region learned from S3 (x-amz-bucket-region); kept across reloads.
        self.regions = RegionCache()
        self._discovering: dict[str, asyncio.Task[str | None]] = {}
        # Flows with a whole-request deadline (upstream.request_timeout), by flow id.
        self._deadlines: dict[str, asyncio.TimerHandle] = {}

    # -- options and config -------------------------------------------------------------------------
    def load(self, loader: object) -> None:
        loader.add_option(  # type: ignore[attr-defined]
            "s3proxy_config", str, "", "Path to the s3proxy YAML configuration file."
        )
        # Before the listeners start: mitmproxy accepts connections before it runs the `running` hooks.
        self._install()

    def configure(self, updated: set[str]) -> None:
        if "s3proxy_config" not in updated:
            return
        path = ctx.options.s3proxy_config
        if not path:
            raise exceptions.OptionsError(
                self._config_error or "s3proxy_config is not set: pass --set s3proxy_config=FILE"
            )
        try:
            self.apply_config(load_config(Path(path), os.environ))
        except (ConfigError, ValueError) as e:
            # ValueError: the signer cannot be built (e.g. proxy-identity finds no credentials); a clear
            # one-line refusal to start, never an "Addon error" traceback.
            self._config_error = f"{path}: {e}"
            raise exceptions.OptionsError(self._config_error) from None

    def apply_config(self, config: Config) -> None:
        signer = signer_from_config(config.signing, access_restricted=config.access.restricted)
        self._proxy_auth_ok = set()
        if config.signing.mode == "keyring" and not config.signing.keys and not config.signing.profiles:
            log.warning(
                "the keyring is empty (signing.keys, signing.keys_file, signing.profiles): every signed "
                "request will be refused with InvalidAccessKeyId until keys are configured"
            )
        engine = Engine(config, signer)
        resolver = Resolver.from_config(config.dns)
        bundle = config.tls.upstream_ca_bundle
        u = config.upstream
        upstreams = Upstreams(
            resolver,
            dict(config.endpoints),
            ssl_context=upstream_ssl_context(str(bundle) if bundle else None),
            connect_timeout=u.connect_timeout,
            bench_seconds=u.bench_seconds,
            verify_interval=u.verify_interval,
        )
        # Swapped only once everything was built (a reload that fails half-way changes nothing). Requests
        # already routed keep what they captured; a connection they open after the swap still finds its
        # endpoint in the previous pool (`upstreams_for`).
        self.previous_upstreams = self.upstreams
        self.engine, self.resolver, self.upstreams = engine, resolver, upstreams
        self.config = config
        self.generation += 1
        self.regions.max_entries, self.regions.ttl = u.region_cache_size, u.region_cache_ttl
        # Kept endpoint connections were made under the old config (endpoints, CA bundle): close them.
        reuse.REUSE.configure(u.reuse_idle, u.reuse_max)
        ciphers.ORDER.prefer_aes128 = config.tls.prefer_aes128

    def reload(self) -> str | None:
        """Read the config file again and swap it in for new requests; open connections are untouched.
        Returns None on success, else why it was refused (the current config keeps serving)."""
        path = ctx.options.s3proxy_config
        try:
            self.apply_config(load_config(Path(path), os.environ))
        except (ConfigError, ValueError, OSError) as e:
            # OSError: e.g. tls.upstream_ca_bundle vanished between validation and loading it.
            return f"{path}: {e}"
        return None

    def upstreams_for(self, host: str) -> Upstreams | None:
        """The pool that routes `host`: the current one, or the one before the last reload (a request
        routed just before it may still open its connection), or None when `host` is not an endpoint."""
        for pool in (self.upstreams, self.previous_upstreams):
            if pool is not None and pool.route(host) is not None:
                return pool
        return None

    def running(self) -> None:
        self._install()  # where `load` ran without an event loop: the name lookups (nothing else to do)

    def _install(self) -> None:
        """The process-wide patches this addon relies on (each once per process), and, once an event loop
        runs, its name lookups. The patches are installed once per process, by the first instance, and ask
        the latest loaded instance (`_LOADED`): mitmdump -s loads a new one when the script changes."""
        _LOADED[:] = [self]
        ciphers.install()
        install_s3_protocol_errors()
        install_stale_connection_replay()
        install_early_refusal()
        install_trailer_protocol_error()
        install_header_limit(_max_header_bytes)
        reuse.install()
        shared = reuse.REUSE
        shared.wants = lambda host: self.upstreams_for(host) is not None
        shared.keep_address = self._still_preferred
        shared.on_reuse = self._count_reuse
        # mitmproxy connects with asyncio.open_connection(host, port): answer its name lookups for our
        # vpce names (see module docstring); everything else keeps the loop's own getaddrinfo.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        original = loop.getaddrinfo
        if getattr(original, "_s3proxy", False):
            return

        async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            upstreams = _LOADED[-1].upstreams_for(host) if isinstance(host, str) else None
            if upstreams is not None and isinstance(host, str) and isinstance(port, int):
                infos = await upstreams.addresses(host, port)
                if infos is not None:
                    return infos
            return await original(host, port, *args, **kwargs)

        getaddrinfo._s3proxy = True  # type: ignore[attr-defined]
        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]

    def _still_preferred(self, host: str, address: str) -> bool:
        # A kept connection is reused only while its address is the one a new connection would try first:
        # after a failover it is not, once the preferred address's bench time is over.
        pool = self.upstreams_for(host)
        return pool is not None and pool.preferred(host) == address

    def _count_reuse(self, host: str) -> None:
        pool = self.upstreams_for(host)
        if pool is not None:
            pool.stats.reused += 1

    def client_disconnected(self, client: Any) -> None:
        # Its idle endpoint connections are kept for the next client connection (upstream.reuse_idle).
        handler = getattr(client, reuse.HANDLER, None)
        if handler is not None:
            reuse.REUSE.park_idle(handler)

    def done(self) -> None:
        reuse.REUSE.configure(0, 0)  # close what is kept, keep nothing more

    # -- access rules ---------------------------------------------------------------------------------
    async def _refuse_client(self, flow: http.HTTPFlow) -> bool:
        """Apply access rules; True when the flow was answered with a refusal."""
        assert self.config is not None
        if flow.client_conn.peername is None:
            return False
        if flow.metadata.get(_AUTH_OK) or getattr(flow.client_conn, _AUTH_OK, None) == self.generation:
            return False
        refusal = access.check_client(flow.client_conn.peername[0], self.config.access)
        header = flow.request.headers.get("Proxy-Authorization")
        digest = hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest() if header else b""
        if refusal is None and digest not in self._proxy_auth_ok:
            # A password hash costs ~0.4 s of CPU by design: never on the event loop, which would stall
            # every other client while a wrong (or a flood of wrong) passwords are checked.
            if header and self.config.access.users:
                self.password_checks += 1
            refusal = await asyncio.to_thread(access.check_proxy_auth, header, self.config.access)
            if refusal is None and header and self.config.access.users:
                if len(self._proxy_auth_ok) >= 4096:
                    self._proxy_auth_ok.clear()  # bounded: a flood of distinct valid credentials is unlikely
                self._proxy_auth_ok.add(digest)
        if refusal is None:
            setattr(flow.client_conn, _AUTH_OK, self.generation)
            return False
        log.warning("refused client %s: %s", flow.client_conn.peername[0], refusal.reason)
        code = "AccessDenied" if refusal.status == 403 else "ProxyAuthenticationRequired"
        extra = [("Proxy-Authenticate", 'Basic realm="s3proxy"')] if refusal.status == 407 else None
        flow.metadata[REFUSAL_KEY] = "access"
        flow.response = error_response(S3Error(refusal.status, code, refusal.message), extra)
        return True

    def _own_ports(self) -> tuple[int, ...]:
        assert self.config is not None
        admin = self.config.admin.listen
        return (self.config.listen.port, *((admin[1],) if admin else ()))

    async def _tunnel_refusal(self, host: str, port: int) -> tuple[str | None, str | None]:
        """(why a tunnel to host:port is refused, or None; the checked address to connect to). Every address
        the name resolves to is checked (guard.destination_refusal), so a name pointing at loopback or the
        metadata service is refused like the literal; configured endpoint names are trusted."""
        assert self.config is not None
        if self.upstreams is not None and self.upstreams.route(host) is not None:
            return None, None
        literal = guard.parse_address(host)
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                return None, None  # unresolvable: the connect fails as it would without the proxy
            addresses = [str(info[4][0]) for info in infos]
        for address in addresses:
            reason = guard.destination_refusal(
                address,
                port,
                own_ports=self._own_ports(),
                allow=self.config.tunnel_allow,
                is_local=is_local_address,
            )
            if reason is not None:
                return reason, None
        return None, addresses[0] if addresses else None

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.config is None or flow.error or await self._refuse_client(flow):
            return
        host, port = flow.request.host, flow.request.port
        if self.config.non_s3 == "tunnel" and not hosts.is_s3_host(host):
            # Not an SSRF hop: loopback, link-local (instance metadata), this host and the proxy's own
            # ports are never tunnel destinations unless `tunnel_allow` lists them.
            reason, _ = await self._tunnel_refusal(host, port)
            if reason is not None:
                log.warning("refused tunnel to %s:%s: %s", host[:255], port, reason)
                flow.response = error_response(
                    S3Error(
                        403,
                        "AccessDenied",
                        f"s3proxy does not open tunnels to {host[:255]}:{port}: {reason} "
                        "(tunnel_allow lists networks that may be reached)",
                    )
                )
                return
        if self.config.non_s3 == "deny" and not hosts.is_s3_host(flow.request.host):
            flow.response = error_response(
                S3Error(
                    403,
                    "AccessDenied",
                    f"{flow.request.host} is not an S3 name and non_s3 is 'deny': "
                    "s3proxy only carries S3 traffic",
                )
            )

    # -- requests ---------------------------------------------------------------------------------------
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        # While this hook waits (a proxy password's hash, a DNS lookup, region discovery), mitmproxy goes on
        # reading the client and queues every piece of a body in memory until the hook returns: so the
        # client is not read meanwhile. Then a refused body is dropped as it comes (install_early_refusal),
        # and an accepted one streams.
        # (HTTP/2 has per-stream flow control, and one stream's pause would stall the whole connection.)
        r = flow.request
        h = r.headers
        body_expected = not (r.is_http2 or r.is_http3) and (
            h.get("content-length", "0").strip() not in ("", "0") or "transfer-encoding" in h
        )
        paused = pause_reading(self._client_io(flow)) if body_expected else None
        try:
            await self._requestheaders(flow)
        finally:
            if paused is not None and not paused.is_closing():
                paused.resume_reading()

    async def _requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.engine is None or self.resolver is None or self.config is None or flow.response:
            return
        if flow.error:  # mitmproxy refused the request head itself (smuggling checks): it answers
            return
        if await self._refuse_client(flow):
            return
        r = flow.request
        abuse = guard.check_head(
            r.method, r.path, r.headers.fields, self.config.limits.max_header_bytes
        ) or guard.check_authority(r.host_header, r.host, flow.client_conn.sni)
        if abuse is not None:
            log.warning("refused request: %s %s", abuse.code, abuse.message)
            flow.response = error_response(abuse)
            return
        req = request_from_flow(flow.request)
        flow.metadata[REQUEST_KEY] = req  # as the client sent it, for the access log
        if not hosts.is_s3_host(req.host):
            transparent_plain = (
                self.config.listen.mode == "transparent" and not flow.client_conn.tls_established
            )
            if self.config.non_s3 == "deny" or not transparent_plain:
                # Inside a decrypted tunnel the inner Host must be S3 too, and a plain-HTTP proxy request
                # (absolute-form) to another host is refused: `tunnel` means CONNECT tunnels, never
                # decrypted; the proxy is no open HTTP relay. Transparent plain HTTP is a tunnel.
                flow.response = error_response(
                    S3Error(403, "AccessDenied", f"{req.host[:255] or '(no host)'} is not an S3 name")
                )
            else:
                flow.request.stream = True
            return
        now = datetime.fromtimestamp(self.clock(), UTC)
        decision = await self._decide(req, now)
        flow.metadata["s3proxy"] = decision
        if log.isEnabledFor(logging.DEBUG):  # describe() formats the whole request: only when shown
            log.debug("%s", describe(req, decision))  # the access log has one line per request at info
        if decision.action == "reject":
            assert decision.error is not None
            flow.response = error_response(decision.error.with_resource(req.path))
            return
        if decision.action == "passthrough":
            self._point(flow, decision, decision.host, decision.port)
            return
        assert decision.endpoint is not None and self.upstreams is not None
        try:
            await self.upstreams.usable(decision.endpoint, decision.kind)
        except (DnsFailure, NoUsableAddress) as e:
            flow.metadata[REFUSAL_KEY] = "dns" if isinstance(e, DnsFailure) else "upstream"
            flow.response = error_response(e.to_s3_error().with_resource(req.path))
            return
        self._point(
            flow, decision, Upstreams.connection_name(decision.endpoint, decision.kind), decision.port
        )
        if decision.chunk is not None:
            limits = self.config.limits
            resigner = ChunkResigner(
                decision.chunk, max_chunk_size=limits.max_chunk_size, max_trailer_size=limits.max_trailer_size
            )
            flow.request.stream = ChunkStream(resigner, req.path)
            flow.metadata["s3proxy_chunks"] = flow.request.stream

    async def _decide(self, req: Request, now: datetime) -> Decision:
        """The engine's decision with learned bucket regions. For the legacy global host with no region in
        the request, S3 is asked for the bucket's region first (`upstream.discover_region`; see
        s3proxy.regions for why this and not a retry)."""
        assert self.engine is not None and self.config is not None
        decision = self.engine.decide(req, now, learned_region=self.regions.get)
        bucket = decision.plan.bucket
        if (
            decision.plan.region_source != "default_region"
            or not bucket
            or not self.config.upstream.discover_region
            or self.regions.known(bucket)
        ):
            return decision
        endpoint = self.config.endpoints.get(self.config.default_region)
        if endpoint is None or self.upstreams is None:
            return decision
        task = self._discovering.get(bucket)
        if task is None:
            upstreams, timeout = self.upstreams, self.config.upstream.connect_timeout * 2
            task = asyncio.get_running_loop().create_task(upstreams.bucket_region(endpoint, bucket, timeout))
            self._discovering[bucket] = task
            task.add_done_callback(lambda _t: self._discovering.pop(bucket, None))
        # shield: a client that goes away must not cancel the probe other requests wait for.
        region = await asyncio.shield(task)
        if region is None:
            self.regions.learn_unknown(bucket)
            return decision
        if self.regions.learn(bucket, region):
            log.info("bucket %s is in %s (asked S3)", bucket, region)
        return self.engine.decide(req, now, learned_region=self.regions.get)

    def _arm_deadline(self, flow: http.HTTPFlow) -> None:
        """upstream.request_timeout: past it the client connection (and its upstream ones) is closed, so a
        transfer in progress ends as a cut connection, never as a short complete one."""
        limit = self.config.upstream.request_timeout if self.config is not None else 0.0
        if limit <= 0 or flow.id in self._deadlines:
            return
        loop = asyncio.get_running_loop()
        self._deadlines[flow.id] = loop.call_later(limit, lambda: loop.create_task(self._expire(flow, limit)))

    def _disarm_deadline(self, flow: http.HTTPFlow) -> None:
        handle = self._deadlines.pop(flow.id, None)
        if handle is not None:
            handle.cancel()

    async def _expire(self, flow: http.HTTPFlow, limit: float) -> None:
        if self._deadlines.pop(flow.id, None) is None:
            return
        log.warning(
            "request %s %s exceeded upstream.request_timeout (%gs): connection closed",
            flow.request.method,
            _loggable(flow.request.path)[:200],
            limit,
        )
        # mitmproxy cannot kill a flow in transit (flow.kill() is only honoured at hook boundaries); close
        # the client connection the way its own inactivity timeout does, which also closes the upstream ones.
        server = ctx.master.addons.get("proxyserver")
        handler = getattr(server, "connections", {}).get(flow.client_conn.id)
        if handler is not None:
            await handler.on_timeout()

    def _point(self, flow: http.HTTPFlow, decision: Decision, address: str, port: int) -> None:
        r = flow.request
        # What the scheme, host and port setters do, once instead of after each: each setter rewrites the
        # Host header (replaced below anyway) and the authority (kept only by absolute-form requests).
        data = r.data
        data.scheme, data.host, data.port = b"https", address, port
        if data.authority:
            r.authority = url.hostport("https", address, port)
        r.path = decision.target
        r.headers = http.Headers(
            [
                (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                for k, v in decision.headers
            ]
        )
        r.stream = True
        setattr(flow.client_conn, _POINTED, True)
        self._arm_deadline(flow)

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server: Server = data.server
        if self.upstreams is not None and server.address is not None:
            # A new connection to an endpoint: prove a candidate first (failover happens here, before any
            # byte of the request is sent); if none is reachable, refuse with a reason naming the endpoint.
            pool = self.upstreams_for(str(server.address[0])) or self.upstreams
            reason = await pool.check_route(str(server.address[0]))
            if reason is not None:
                server.error = reason
                return
        if (
            self.config is not None
            and self.config.non_s3 == "deny"
            and not getattr(data.client, _POINTED, False)
        ):
            # Every S3 request is pointed (`_point`) before its connection opens; a client connection that
            # never had one is a non-S3 tunnel. In regular mode http_connect already refused it; in
            # transparent mode there is no CONNECT, and the ignored (never decrypted) connection is
            # refused here instead.
            log.warning("refused non-S3 connection to %s (non_s3: deny)", server.address)
            server.error = "non_s3 is 'deny': s3proxy only carries S3 traffic"
            return
        if (
            self.config is not None
            and server.address is not None
            and not getattr(data.client, _POINTED, False)
        ):
            # A tunnel (never decrypted): check every address the name resolves to now, and connect to the
            # address that was checked, so DNS cannot answer differently between check and connect.
            host, port = str(server.address[0]), int(server.address[1])
            reason, address = await self._tunnel_refusal(host, port)
            if reason is not None:
                log.warning("refused tunnel to %s:%s: %s", host[:255], port, reason)
                server.error = f"s3proxy does not open tunnels there: {reason}"
            elif address is not None and guard.parse_address(host) is None:
                server.address = (address, port)

    def tls_failed_server(self, data: Any) -> None:
        # The certificate or handshake of one endpoint address failed on a real connection: bench it so the
        # next request goes to another candidate (the probe normally catches this before any request).
        peer = data.conn.peername
        if self.upstreams is not None and peer and self.upstreams.route(data.conn.sni or "") is not None:
            self.upstreams.connection_failed(peer[0], f"TLS failed: {data.conn.error}")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        chunks = flow.metadata.get("s3proxy_chunks")
        # After a failed chunk the (small) upstream error is read whole and replaced in `response`.
        flow.response.stream = not (isinstance(chunks, ChunkStream) and chunks.error is not None)
        if flow.request.method.upper() == "HEAD" and flow.response.raw_content:
            # An answer of the proxy's own (an error) to a HEAD: headers only, as S3 sends it; a body would be
            # read as the start of the next response on the connection. Content-Length still gives its size;
            # the body is kept for the access log's error code.
            flow.metadata[HEAD_ERROR_KEY] = flow.response.raw_content
            flow.response.raw_content = b""
        self._learn_region(flow)

    def _learn_region(self, flow: http.HTTPFlow) -> None:
        """Remember the bucket's region when S3 names it (any response, including 301/400 redirects)."""
        decision = flow.metadata.get("s3proxy")
        if flow.response is None or not isinstance(decision, Decision) or not decision.plan.bucket:
            return
        fields = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in flow.response.headers.fields]
        region = region_from_headers(fields)
        if region is not None and self.regions.get(decision.plan.bucket) != region:
            self.regions.learn(decision.plan.bucket, region)
            log.info("bucket %s is in %s (learned from a response)", decision.plan.bucket, region)

    def error(self, flow: http.HTTPFlow) -> None:
        self._disarm_deadline(flow)
        if (
            flow.request.timestamp_end is None
            and flow.response is None
            and flow.client_conn.id
            # Only when the endpoint side failed: a request mitmproxy itself refused (malformed head) never
            # opened an upstream connection and is answered with an S3-style 400, which must not be cut off.
            and flow.server_conn.timestamp_start is not None
        ):
            # The endpoint failed while the client was still sending the body. mitmproxy then closes the
            # client connection gracefully, which waits for its last bytes to be read - by a client that
            # is blocked sending a body nobody reads: both wait until the client's own timeout. Abort
            # instead (RST): the client's send fails at once, and the descriptor is freed.
            transport = self._client_transport(flow)
            if transport is not None:
                transport.abort()

    @staticmethod
    def _client_io(flow: http.HTTPFlow) -> Any:
        """mitmproxy's ConnectionIO (reader, writer) of the flow's client connection, or None."""
        server = ctx.master.addons.get("proxyserver")
        handler = getattr(server, "connections", {}).get(flow.client_conn.id)
        return getattr(handler, "transports", {}).get(flow.client_conn)

    @staticmethod
    def _client_transport(flow: http.HTTPFlow) -> asyncio.WriteTransport | None:
        transport = getattr(getattr(S3Proxy._client_io(flow), "writer", None), "transport", None)
        return transport if isinstance(transport, asyncio.WriteTransport) else None

    def response(self, flow: http.HTTPFlow) -> None:
        self._disarm_deadline(flow)
        chunks = flow.metadata.get("s3proxy_chunks")
        if isinstance(chunks, ChunkStream) and chunks.error is not None:
            # Never present an upload as stored when a chunk failed verification: say why it failed.
            flow.response = error_response(chunks.error.with_resource(chunks.resource))


# The instance the process-wide patches ask (S3Proxy._install): the one loaded last.
_LOADED: list[S3Proxy] = []

addons = [S3Proxy()]
