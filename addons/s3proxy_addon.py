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
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.connection import Server
from mitmproxy.proxy import server_hooks

from s3proxy import access, hosts
from s3proxy.chunked import ChunkResigner
from s3proxy.config import Config, ConfigError, load_config
from s3proxy.engine import Decision, Engine
from s3proxy.errors import S3Error, error_headers, error_xml, new_request_id
from s3proxy.model import Request, split_target
from s3proxy.resolver import DnsFailure, Resolver
from s3proxy.signing import signer_from_config
from s3proxy.upstream import NoUsableAddress, Upstreams, upstream_ssl_context

log = logging.getLogger("s3proxy")

_AUTH_OK = "s3proxy_auth_ok"
_POINTED = "s3proxy_pointed"  # set on a client connection once one of its requests was routed to S3


def error_response(error: S3Error, extra: list[tuple[str, str]] | None = None) -> http.Response:
    request_id = new_request_id()
    body = error_xml(error, request_id)
    headers = error_headers(request_id, len(body)) + (extra or [])
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

    # -- options and config -------------------------------------------------------------------------
    def load(self, loader: object) -> None:
        loader.add_option(  # type: ignore[attr-defined]
            "s3proxy_config", str, "", "Path to the s3proxy YAML configuration file."
        )

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
        self.engine = Engine(config, signer)
        self.resolver = Resolver.from_config(config.dns)
        bundle = config.tls.upstream_ca_bundle
        u = config.upstream
        self.upstreams = Upstreams(
            self.resolver,
            dict(config.endpoints),
            ssl_context=upstream_ssl_context(str(bundle) if bundle else None),
            connect_timeout=u.connect_timeout,
            bench_seconds=u.bench_seconds,
            verify_interval=u.verify_interval,
        )
        self.config = config

    def running(self) -> None:
        install_s3_protocol_errors()
        # mitmproxy connects with asyncio.open_connection(host, port): answer its name lookups for our
        # vpce names (see module docstring); everything else keeps the loop's own getaddrinfo.
        loop = asyncio.get_running_loop()
        original = loop.getaddrinfo
        if getattr(original, "_s3proxy", False):
            return

        async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            upstreams = self.upstreams
            if upstreams is not None and isinstance(host, str) and isinstance(port, int):
                infos = await upstreams.addresses(host, port)
                if infos is not None:
                    return infos
            return await original(host, port, *args, **kwargs)

        getaddrinfo._s3proxy = True  # type: ignore[attr-defined]
        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]

    # -- access rules ---------------------------------------------------------------------------------
    def _refuse_client(self, flow: http.HTTPFlow) -> bool:
        """Apply access rules; True when the flow was answered with a refusal."""
        assert self.config is not None
        if flow.client_conn.peername is None:
            return False
        if flow.metadata.get(_AUTH_OK) or getattr(flow.client_conn, _AUTH_OK, False):
            return False
        refusal = access.check_client(flow.client_conn.peername[0], self.config.access)
        header = flow.request.headers.get("Proxy-Authorization")
        digest = hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest() if header else b""
        if refusal is None and digest not in self._proxy_auth_ok:
            refusal = access.check_proxy_auth(header, self.config.access)
            if refusal is None and header and self.config.access.users:
                if len(self._proxy_auth_ok) >= 4096:
                    self._proxy_auth_ok.clear()  # bounded: a flood of distinct valid credentials is unlikely
                self._proxy_auth_ok.add(digest)
        if refusal is None:
            setattr(flow.client_conn, _AUTH_OK, True)
            return False
        log.warning("refused client %s: %s", flow.client_conn.peername[0], refusal.reason)
        code = "AccessDenied" if refusal.status == 403 else "ProxyAuthenticationRequired"
        extra = [("Proxy-Authenticate", 'Basic realm="s3proxy"')] if refusal.status == 407 else None
        flow.response = error_response(S3Error(refusal.status, code, refusal.message), extra)
        return True

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.config is None or self._refuse_client(flow):
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
        if self.engine is None or self.resolver is None or self.config is None or flow.response:
            return
        if self._refuse_client(flow):
            return
        req = request_from_flow(flow.request)
        if not hosts.is_s3_host(req.host):
            if self.config.non_s3 == "deny" or flow.client_conn.tls_established:
                # Inside a decrypted tunnel the inner Host must be S3 too: never forward it elsewhere.
                flow.response = error_response(
                    S3Error(403, "AccessDenied", f"{req.host or '(no host)'} is not an S3 name")
                )
            else:
                flow.request.stream = True
            return
        now = datetime.fromtimestamp(self.clock(), UTC)
        decision = self.engine.decide(req, now)
        flow.metadata["s3proxy"] = decision
        log.info("%s", describe(req, decision))
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
            flow.response = error_response(e.to_s3_error().with_resource(req.path))
            return
        self._point(
            flow, decision, Upstreams.connection_name(decision.endpoint, decision.kind), decision.port
        )
        if decision.chunk is not None:
            flow.request.stream = ChunkStream(ChunkResigner(decision.chunk), req.path)
            flow.metadata["s3proxy_chunks"] = flow.request.stream

    def _point(self, flow: http.HTTPFlow, decision: Decision, address: str, port: int) -> None:
        r = flow.request
        r.scheme = "https"
        r.host = address
        r.port = port
        r.path = decision.target
        r.headers = http.Headers(
            [
                (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                for k, v in decision.headers
            ]
        )
        r.stream = True
        setattr(flow.client_conn, _POINTED, True)

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server: Server = data.server
        if self.upstreams is not None and server.address is not None:
            # A new connection to an endpoint: prove a candidate first (failover happens here, before any
            # byte of the request is sent); if none is reachable, refuse with a reason naming the endpoint.
            reason = await self.upstreams.check_route(str(server.address[0]))
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

    def response(self, flow: http.HTTPFlow) -> None:
        chunks = flow.metadata.get("s3proxy_chunks")
        if isinstance(chunks, ChunkStream) and chunks.error is not None:
            # Never present an upload as stored when a chunk failed verification: say why it failed.
            flow.response = error_response(chunks.error.with_resource(chunks.resource))


addons = [S3Proxy()]
