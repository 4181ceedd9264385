"""Real processes on loopback for end-to-end tests: SeaweedFS under S3 interface endpoint names, a
recording TLS tap in front of it, a test DNS server, and the real `s3proxy run`.

Strategy: everything binds 127.0.0.0/8 and nothing here may reach the internet.

    client --HTTPS_PROXY--> s3proxy --TLS, SNI/Host = vpce name--> UpstreamTap (127.0.0.1, .2 ...:P)
      --TLS--> SeaweedFS (127.0.0.1:S, HTTPS, real SigV4 checks, -s3.domainName=bucket.<each vpce name>)

* The proxy resolves vpce names through `DnsServer`: regional names -> 127.0.0.1, each zonal name -> its
  own 127.0.0.N, all served by the tap on the same port P (`endpoints.<region>.port` in the proxy config).
* The tap terminates TLS with the same trustme leaf SeaweedFS uses, logs the SNI and every request head
  the proxy sent (what "S3" saw: Host, X-Forwarded-*, Authorization scope...), and passes the bytes on
  unchanged. Per address it can be switched to refuse / reset / hang, to simulate an endpoint (or one
  zone) being down.
* `direct_client()` talks to SeaweedFS without the proxy, under the real vpce name (Host, SNI and the
  certificate check all use the name; only the TCP connect is pinned to 127.0.0.1), for test set-up and
  for checking what was stored.

Plain classes and functions, usable outside pytest (e.g. by a demo command); tests/conftest.py wraps
them in fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from prometheus_client.parser import text_string_to_metric_families

# The reusable stand-ins live in the product (`s3proxy demo` uses them); re-exported here so tests keep
# importing everything from e2e.harness.
from s3proxy.standin.certs import CertFiles, endpoint_sans, make_certs  # noqa: F401
from s3proxy.standin.procs import clean_client_env, free_ports, wait_for_port
from s3proxy.standin.procs import kill_group as _kill_group
from s3proxy.standin.seaweed import (  # noqa: F401
    ADMIN,
    BACKEND_KEYS,
    SEAWEED_ONLY,
    USER,
    AccessKey,
    SeaweedFS,
    _pinned_pool_class,
    direct_client,
    seaweed_identities,
    weed_binary,
)

from .dnsserver import DnsServer

REPO = Path(__file__).resolve().parents[2]

# The proxy's keyring in the tests (SEAWEED_ONLY is known to SeaweedFS only: the proxy must answer
# InvalidAccessKeyId itself). The keys themselves are defined with the stand-ins.
PROXY_KEYS = (ADMIN, USER)

# --- endpoints -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TestEndpoint:
    """One simulated S3 interface endpoint: a regional DNS name plus zonal ones."""

    __test__ = False  # not a pytest test class

    region: str
    domain: str  # regional endpoint domain, e.g. vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com
    zones: tuple[str, ...] = ()

    def zonal_domain(self, zone: str) -> str:
        label, rest = self.domain.split(".", 1)
        return f"{label}-{zone}.{rest}"

    @property
    def domains(self) -> tuple[str, ...]:
        """Regional domain first, then one per zone."""
        return (self.domain, *(self.zonal_domain(z) for z in self.zones))

    @property
    def bucket_host(self) -> str:
        return f"bucket.{self.domain}"


ENDPOINTS: tuple[TestEndpoint, ...] = (
    TestEndpoint(
        "us-east-1", "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com", ("us-east-1a", "us-east-1b")
    ),
    TestEndpoint(
        "eu-west-1", "vpce-0e25b8cdd720f900e-argc85vg.s3.eu-west-1.vpce.amazonaws.com", ("eu-west-1a",)
    ),
    TestEndpoint("cn-north-1", "vpce-0123456789abcdef0-abcdefgh.s3.cn-north-1.vpce.amazonaws.com.cn"),
)


def address_plan(endpoints: Iterable[TestEndpoint]) -> dict[str, str]:
    """Endpoint domain -> loopback address: regional names share 127.0.0.1, each zonal name gets its own."""
    plan: dict[str, str] = {}
    n = 2
    for ep in endpoints:
        plan[ep.domain] = "127.0.0.1"
        for z in ep.zones:
            plan[ep.zonal_domain(z)] = f"127.0.0.{n}"
            n += 1
    return plan


# --- small utilities -------------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict merge; an override value of None deletes the key."""
    out = copy.deepcopy(dict(base))
    for k, v in overrides.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def write_config(proxy: ProxyProcess, config: dict[str, Any] | str) -> None:
    """Replace the proxy's config file the way editors and ConfigMaps do: a new file renamed over the old
    one (its watcher never reads half a file)."""
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    tmp = proxy.config_path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, proxy.config_path)


def ensure_bucket(s3: Any, name: str) -> None:
    """Create bucket `name` with the S3 client `s3` (direct or through a proxy) unless it exists."""
    from botocore.exceptions import ClientError

    try:
        s3.create_bucket(Bucket=name)
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the recording TLS tap in front of SeaweedFS ---------------------------------------------------

TapMode = Literal["up", "refuse", "reset", "hang", "badcert"]
FaultKind = Literal["cut-response", "cut-request", "stall-response"]


@dataclass(frozen=True, slots=True)
class TapFault:
    """A fault injected into the next `times` requests whose target contains `match`.

    cut-response: pass `after` bytes of the response (head included), then abort both connections (the
    upstream "dies" mid-download). cut-request: pass the head and `after` bytes of the request body, then
    abort both (the upstream dies mid-upload; SeaweedFS sees an incomplete request). stall-response: pass
    `after` response bytes, then go silent (connection open) until `UpstreamTap.release()` or the proxy
    gives up and closes it."""

    kind: FaultKind
    after: int
    match: str = ""
    times: int = 1


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """How one request's body went through the tap: `complete` is False when the connection ended (either
    side) before the whole body (by Content-Length or chunked framing) had been passed upstream."""

    connection: int
    method: str
    target: str
    body_expected: int | None  # Content-Length, None for chunked
    body_passed: int
    complete: bool
    redirected: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request head as the proxy sent it upstream (what S3 would have seen)."""

    address: str  # the loopback address the proxy connected to (which zone it picked)
    sni: str | None
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    connection: int  # serial number of the TLS connection it arrived on
    at: float

    def header(self, name: str) -> str | None:
        n = name.lower()
        return next((v for k, v in self.headers if k.lower() == n), None)

    @property
    def host(self) -> str | None:
        return self.header("host")

    def forwarded_headers(self) -> list[tuple[str, str]]:
        """X-Forwarded-*, Forwarded and Via: headers the proxy must never add (SeaweedFS trusts
        X-Forwarded-Host when checking the signed host; real S3 does not)."""
        return [
            (k, v)
            for k, v in self.headers
            if k.lower().startswith("x-forwarded-") or k.lower() in ("forwarded", "via", "x-real-ip")
        ]


@dataclass(frozen=True, slots=True)
class TapConnection:
    address: str
    sni: str | None
    alpn: str | None
    ok: bool  # TLS handshake with the proxy and upstream connect both succeeded
    serial: int
    at: float
    cipher: str | None = None  # the TLS suite the proxy and the tap agreed on


class _RequestHeadObserver:
    """Incremental HTTP/1.1 request framing (sans-IO): sees the bytes passed upstream and reports each
    request head. Bodies are skipped by Content-Length or chunked framing; it never alters a byte."""

    MAX_HEAD = 256 * 1024

    def __init__(self, on_head: Callable[[str, str, list[tuple[str, str]]], None]) -> None:
        self._on_head = on_head
        self._buf = b""
        self._state = "head"
        self._remaining = 0
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self._buf += data
        while self._buf and not self.broken:
            if not self._step():
                return

    def _line(self) -> bytes | None:
        i = self._buf.find(b"\r\n")
        if i < 0:
            if len(self._buf) > self.MAX_HEAD:
                self.broken = True
            return None
        line, self._buf = self._buf[:i], self._buf[i + 2 :]
        return line

    def _step(self) -> bool:
        """Consume one unit; False when more bytes are needed."""
        if self._state == "head":
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self.MAX_HEAD:
                    self.broken = True
                return False
            head, self._buf = self._buf[:end].decode("latin-1"), self._buf[end + 4 :]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                self.broken = True
                return False
            headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])]
            self._on_head(parts[0], parts[1], headers)
            te = ",".join(v for k, v in headers if k.lower() == "transfer-encoding").lower()
            cl = next((v for k, v in headers if k.lower() == "content-length"), None)
            if "chunked" in te:
                self._state = "chunk-size"
            elif cl is not None and cl.isdigit() and int(cl) > 0:
                self._state, self._remaining = "body", int(cl)
            return True
        if self._state == "body":
            n = min(self._remaining, len(self._buf))
            self._buf, self._remaining = self._buf[n:], self._remaining - n
            if self._remaining == 0:
                self._state = "head"
            return True
        if self._state == "chunk-size":
            line = self._line()
            if line is None:
                return False
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.broken = True
                return False
            self._state, self._remaining = ("trailer", 0) if size == 0 else ("chunk-data", size + 2)
            return True
        if self._state == "chunk-data":
            n = min(self._remaining, len(self._buf))
            self._buf, self._remaining = self._buf[n:], self._remaining - n
            if self._remaining == 0:
                self._state = "chunk-size"
            return True
        # trailer section: lines until an empty one
        line = self._line()
        if line is None:
            return False
        if line == b"":
            self._state = "head"
        return True


class UpstreamTap:
    """TLS man-in-the-middle we own, standing where the interface endpoint's IPs would be.

    Listens on each of `addresses` at one shared port; forwards to SeaweedFS over TLS with the SNI the
    proxy presented; records connections (address, SNI) and request heads. Runs an asyncio loop in a
    daemon thread.
    """

    def __init__(
        self,
        addresses: Iterable[str],
        upstream: tuple[str, int],
        certs: CertFiles,
        default_sni: str,
        port: int = 0,
    ) -> None:
        self.addresses = tuple(dict.fromkeys(addresses))
        self.upstream = upstream
        self.default_sni = default_sni
        self.port = port
        self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_ctx.load_cert_chain(str(certs.cert), str(certs.key))
        self._server_ctx.set_alpn_protocols(["http/1.1"])  # the observer parses HTTP/1.1 only
        self._server_ctx.sni_callback = self._on_sni
        # Pick the suite the proxy lists first, as nginx does by default, so tests see the proxy's order.
        self._server_ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        self._client_ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
        self._client_ctx.set_alpn_protocols(["http/1.1"])
        self._lock = threading.Lock()
        self._requests: list[UpstreamRequest] = []
        self._connections: list[TapConnection] = []
        self._modes: dict[str, TapMode] = dict.fromkeys(self.addresses, "up")
        self._servers: dict[str, asyncio.Server] = {}
        self._serial = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._mode_changed: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._faults: list[list[Any]] = []  # [TapFault, uses left]
        self._fired: list[tuple[TapFault, str]] = []  # (fault, target it hit)
        self._outcomes: list[RequestOutcome] = []
        self._redirects: dict[str, tuple[str, tuple[str, ...]]] = {}  # bucket -> (region, its domains)
        self._bad_ctx: ssl.SSLContext | None = None
        self._release: asyncio.Event | None = None
        self._live: set[_TapConn] = set()  # relayed connections still open

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> UpstreamTap:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="upstream-tap", daemon=True)
        self._thread.start()
        self._call(self._start_all())
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._stop_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop.close()
        self._loop = None

    def _call(self, coro: Any, timeout: float = 10) -> Any:
        assert self._loop is not None, "tap not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start_all(self) -> None:
        self._mode_changed = asyncio.Event()
        self._release = asyncio.Event()
        requested = self.port
        for _attempt in range(20):
            try:
                for addr in self.addresses:
                    await self._listen(addr)
                return
            except OSError:
                # The kernel-chosen port of the first address was taken on another one; try again.
                for s in self._servers.values():
                    s.close()
                self._servers.clear()
                if requested:
                    raise
                self.port = 0
        raise RuntimeError("could not bind one port on all tap addresses")

    async def _listen(self, addr: str) -> None:
        server = await asyncio.start_server(
            self._handle, addr, self.port, reuse_address=True, limit=1024 * 1024
        )
        if not self.port:
            self.port = server.sockets[0].getsockname()[1]
        self._servers[addr] = server

    async def _stop_all(self) -> None:
        for s in self._servers.values():
            s.close()
        self._servers.clear()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.sleep(0)

    # --- fault injection -----------------------------------------------------------------------

    def set_mode(self, mode: TapMode, addresses: Iterable[str] | None = None) -> None:
        """`up`; `refuse` (nothing listening: connection refused); `reset` (accept, then RST);
        `hang` (accept, never answer: the proxy's connect/TLS timeout fires); `badcert` (TLS with a
        certificate for another name from an untrusted CA: the proxy's verification must fail)."""
        targets = self.addresses if addresses is None else tuple(addresses)
        self._call(self._set_mode(mode, targets))

    async def _set_mode(self, mode: TapMode, targets: tuple[str, ...]) -> None:
        for addr in targets:
            if addr not in self._modes:
                raise ValueError(f"tap does not listen on {addr}")
            self._modes[addr] = mode
            if mode == "refuse" and addr in self._servers:
                self._servers.pop(addr).close()
            elif mode != "refuse" and addr not in self._servers:
                await self._listen(addr)
        assert self._mode_changed is not None
        self._mode_changed.set()
        self._mode_changed = asyncio.Event()

    def mode(self, address: str) -> TapMode:
        return self._modes[address]

    def add_fault(self, fault: TapFault) -> None:
        with self._lock:
            self._faults.append([fault, fault.times])

    def clear_faults(self) -> None:
        """Drop pending faults and let stalled responses go on."""
        with self._lock:
            self._faults.clear()
        self._call(self._release_all())

    def close_connections(self) -> int:
        """Close every relayed connection the way a server ends idle kept-alive ones (TLS close_notify,
        then FIN); returns how many were open."""

        async def close_all() -> int:
            live = list(self._live)
            for conn in live:
                for w in (conn.client, conn.up):
                    with contextlib.suppress(Exception):
                        w.close()
            return len(live)

        return int(self._call(close_all()))

    def live_connections(self) -> int:
        """How many relayed connections are open now."""

        async def count() -> int:
            return len(self._live)

        return int(self._call(count()))

    def release(self) -> None:
        """End every `stall-response` currently holding a connection (the connection is then cut)."""
        self._call(self._release_all())

    async def _release_all(self) -> None:
        assert self._release is not None
        self._release.set()
        self._release = asyncio.Event()

    def fired(self) -> list[tuple[TapFault, str]]:
        with self._lock:
            return list(self._fired)

    def _take_fault(self, target: str) -> TapFault | None:
        with self._lock:
            for entry in self._faults:
                fault, left = entry
                if left > 0 and fault.match in target:
                    entry[1] = left - 1
                    self._fired.append((fault, target))
                    return fault  # type: ignore[no-any-return]
        return None

    def set_redirect(self, bucket: str, region: str, domains: Iterable[str]) -> None:
        """Answer like S3 for a bucket in another region: a request for `bucket` that arrives under any
        endpoint name other than `domains` (the endpoint of `region`) gets 301 PermanentRedirect with
        `x-amz-bucket-region: region` and is not forwarded; under `domains` it is forwarded as usual."""
        with self._lock:
            self._redirects[bucket] = (region, tuple(domains))

    def clear_redirects(self) -> None:
        with self._lock:
            self._redirects.clear()

    def _add_outcome(self, outcome: RequestOutcome) -> None:
        with self._lock:
            self._outcomes.append(outcome)

    def outcomes(self) -> list[RequestOutcome]:
        with self._lock:
            return list(self._outcomes)

    # --- records -------------------------------------------------------------------------------

    def mark(self) -> int:
        with self._lock:
            return len(self._requests)

    def requests(self, since: int = 0) -> list[UpstreamRequest]:
        with self._lock:
            return self._requests[since:]

    def connections(self) -> list[TapConnection]:
        with self._lock:
            return list(self._connections)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._connections.clear()

    # --- connection handling -------------------------------------------------------------------

    @staticmethod
    def _on_sni(sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.tap_sni = server_name

    def _record_conn(
        self, addr: str, sni: str | None, alpn: str | None, ok: bool, cipher: str | None = None
    ) -> int:
        with self._lock:
            self._serial += 1
            self._connections.append(
                TapConnection(addr, sni, alpn, ok, self._serial, time.monotonic(), cipher)
            )
            return self._serial

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("sockname")[0]
        mode = self._modes.get(addr, "up")
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()
            self._record_conn(addr, None, None, ok=False)
            return
        if mode == "hang":
            self._record_conn(addr, None, None, ok=False)
            assert self._mode_changed is not None
            await self._mode_changed.wait()  # hold the socket open, silent, until the test changes mode
            return
        try:
            await writer.start_tls(self._bad_context() if mode == "badcert" else self._server_ctx)
        except (OSError, ssl.SSLError):
            self._record_conn(addr, None, None, ok=False)  # e.g. the proxy rejected our certificate
            raise
        sslobj = writer.get_extra_info("ssl_object")
        sni = getattr(sslobj, "tap_sni", None)
        alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
        if mode == "badcert":
            self._record_conn(addr, sni, alpn, ok=False)  # a client that accepted a wrong certificate
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                *self.upstream, ssl=self._client_ctx, server_hostname=sni or self.default_sni
            )
        except (OSError, ssl.SSLError):
            self._record_conn(addr, sni, alpn, ok=False)
            raise
        serial = self._record_conn(addr, sni, alpn, ok=True, cipher=sslobj.cipher()[0] if sslobj else None)
        conn = _TapConn(addr, sni, serial, writer, up_writer)
        conn.sink = self._add_outcome
        self._live.add(conn)
        relays = [
            asyncio.ensure_future(self._relay_requests(reader, conn)),
            asyncio.ensure_future(self._relay_responses(up_reader, conn)),
        ]
        try:
            # TLS has no half-close here; when either direction ends, end both (HTTP/1.1 copes).
            await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in relays:
                t.cancel()
            await asyncio.gather(*relays, return_exceptions=True)
            self._live.discard(conn)
            conn.close_body()
            for w in (up_writer, writer):
                with contextlib.suppress(Exception):
                    w.close()

    def _bad_context(self) -> ssl.SSLContext:
        """A server context with a certificate for another name from a CA nobody trusts."""
        if self._bad_ctx is None:
            import trustme

            ca = trustme.CA(organization_name="not the endpoint CA")
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("wrong.example.com").configure_cert(ctx)
            ctx.sni_callback = self._on_sni
            self._bad_ctx = ctx
        return self._bad_ctx

    async def _relay_requests(self, reader: asyncio.StreamReader, conn: _TapConn) -> None:
        """Proxy -> SeaweedFS, one request at a time (the proxy never pipelines): record the head, apply
        redirect rules and request faults, pass the body through by its framing, byte for byte."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    conn.up.write(e.partial)
                return
            lines = head[:-4].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                conn.up.write(head)  # not HTTP/1.1 as we know it: pass on and stop parsing
                while data := await reader.read(256 * 1024):
                    conn.up.write(data)
                return
            method, target = parts[0], parts[1]
            headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])]
            req = UpstreamRequest(
                conn.addr, conn.sni, method, target, tuple(headers), conn.serial, time.monotonic()
            )
            with self._lock:
                self._requests.append(req)
            te = ",".join(v for k, v in headers if k.lower() == "transfer-encoding").lower()
            cl_text = req.header("content-length")
            expected = None if "chunked" in te else int(cl_text) if cl_text and cl_text.isdigit() else 0
            redirect = self._redirect_for(req)
            fault = self._take_fault(target)
            conn.begin(req, expected, redirected=redirect is not None)
            if redirect is None:
                conn.up.write(head)
            if fault is not None and fault.kind != "cut-request":
                conn.response_fault, conn.response_seen = fault, 0
            cut_at = fault.after if fault is not None and fault.kind == "cut-request" else None
            forward = redirect is None
            if expected is None:
                await self._pass_chunked(reader, conn, forward, cut_at)
            else:
                await self._pass_length(reader, conn, expected, forward, cut_at)
            conn.finish_body()
            if redirect is not None:
                conn.client.write(redirect)
            await conn.up.drain()

    async def _pass_length(
        self, reader: asyncio.StreamReader, conn: _TapConn, n: int, forward: bool, cut_at: int | None
    ) -> None:
        while n > 0:
            data = await reader.read(min(n, 256 * 1024))
            if not data:
                raise ConnectionError("request body ended early")
            n -= len(data)
            await self._pass_body(conn, data, forward, cut_at)

    async def _pass_chunked(
        self, reader: asyncio.StreamReader, conn: _TapConn, forward: bool, cut_at: int | None
    ) -> None:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            await self._pass_body(conn, line, forward, cut_at)
            if size == 0:
                break
            while size + 2 > 0:
                data = await reader.read(min(size + 2, 256 * 1024))
                if not data:
                    raise ConnectionError("chunked request body ended early")
                size -= len(data)
                await self._pass_body(conn, data, forward, cut_at)
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":  # trailer section
            await self._pass_body(conn, line, forward, cut_at)
        await self._pass_body(conn, line, forward, cut_at)

    @staticmethod
    async def _pass_body(conn: _TapConn, data: bytes, forward: bool, cut_at: int | None) -> None:
        if cut_at is not None and conn.body_passed + len(data) >= cut_at:
            data = data[: cut_at - conn.body_passed]
            conn.up.write(data)
            conn.body_passed += len(data)
            await conn.up.drain()
            conn.abort()
            raise ConnectionError("cut by a cut-request fault")
        if forward:
            conn.up.write(data)
            if conn.up.transport.get_write_buffer_size() > 1024 * 1024:
                await conn.up.drain()
        conn.body_passed += len(data)

    async def _relay_responses(self, up_reader: asyncio.StreamReader, conn: _TapConn) -> None:
        """SeaweedFS -> proxy, unchanged, except where a response fault is armed."""
        while data := await up_reader.read(256 * 1024):
            fault = conn.response_fault
            if fault is not None and conn.response_seen + len(data) >= fault.after:
                data = data[: fault.after - conn.response_seen]
                conn.client.write(data)
                await conn.client.drain()
                conn.response_fault = None
                if fault.kind == "stall-response":
                    assert self._release is not None
                    await self._release.wait()
                conn.abort()
                return
            if fault is not None:
                conn.response_seen += len(data)
            conn.client.write(data)
            await conn.client.drain()

    def _redirect_for(self, req: UpstreamRequest) -> bytes | None:
        """S3's 301 PermanentRedirect for a bucket asked for under another region's endpoint, or None."""
        host = (req.host or req.sni or "").split(":")[0].lower()
        with self._lock:
            rules = dict(self._redirects)
        if not rules:
            return None
        path = req.target.split("?")[0]
        bucket = host.split(".bucket.", 1)[0] if ".bucket." in host else path.lstrip("/").split("/")[0]
        rule = rules.get(bucket)
        if rule is None:
            return None
        region, domains = rule
        if any(host == f"bucket.{d}" or host.endswith(f".bucket.{d}") for d in domains):
            return None
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PermanentRedirect</Code><Message>The '
            "bucket you are attempting to access must be addressed using the specified endpoint. Please "
            f"send all future requests to this endpoint.</Message><Endpoint>{bucket}.s3.{region}."
            f"amazonaws.com</Endpoint><Bucket>{bucket}</Bucket><RequestId>TAP301</RequestId></Error>"
        ).encode()
        head = (
            "HTTP/1.1 301 Moved Permanently\r\n"
            f"x-amz-bucket-region: {region}\r\nx-amz-request-id: TAP301\r\n"
            f"Content-Type: application/xml\r\n"
            f"Content-Length: {len(body) if req.method != 'HEAD' else 0}\r\n\r\n"
        ).encode()
        return head + (body if req.method != "HEAD" else b"")


class _TapConn:
    """Per-connection state of the tap's relays."""

    def __init__(
        self, addr: str, sni: str | None, serial: int, client: asyncio.StreamWriter, up: asyncio.StreamWriter
    ) -> None:
        self.addr, self.sni, self.serial = addr, sni, serial
        self.client, self.up = client, up
        self.response_fault: TapFault | None = None
        self.response_seen = 0
        self.body_passed = 0
        self._current: tuple[UpstreamRequest, int | None, bool] | None = None
        self.outcomes: list[RequestOutcome] = []
        self.sink: Callable[[RequestOutcome], None] | None = None

    def begin(self, req: UpstreamRequest, expected: int | None, *, redirected: bool) -> None:
        self._current, self.body_passed = (req, expected, redirected), 0

    def finish_body(self, complete: bool = True) -> None:
        if self._current is None:
            return
        req, expected, redirected = self._current
        self._current = None
        outcome = RequestOutcome(
            self.serial, req.method, req.target, expected, self.body_passed, complete, redirected
        )
        if self.sink is not None:
            self.sink(outcome)

    def close_body(self) -> None:
        """The connection ended: a body still in progress is incomplete."""
        self.finish_body(complete=False)

    def abort(self) -> None:
        """Cut both connections at once, without a TLS close_notify (as a crashed server would)."""
        for w in (self.client, self.up):
            with contextlib.suppress(Exception):
                w.transport.abort()


# --- the backend as a whole ------------------------------------------------------------------------


@dataclass
class S3Backend:
    """Certificates + DNS + SeaweedFS + tap: everything the proxy talks to, none of it the proxy."""

    workdir: Path
    endpoints: tuple[TestEndpoint, ...] = ENDPOINTS
    keys: tuple[AccessKey, ...] = BACKEND_KEYS
    certs: CertFiles = field(init=False)
    dns: DnsServer = field(init=False)
    seaweed: SeaweedFS = field(init=False)
    tap: UpstreamTap = field(init=False)
    addresses: dict[str, str] = field(init=False)  # endpoint domain -> loopback address
    startup_seconds: dict[str, float] = field(init=False, default_factory=dict)

    def start(self) -> S3Backend:
        t0 = time.monotonic()
        domains = [d for ep in self.endpoints for d in ep.domains]
        self.addresses = address_plan(self.endpoints)
        self.certs = make_certs(self.workdir / "certs", domains)
        t1 = time.monotonic()
        self.dns = DnsServer(
            {
                **{suffix: (addr,) for suffix, addr in self.addresses.items()},
                # Only configured endpoints exist; other vpce names are NXDOMAIN, as for a foreign VPC.
            }
        ).start()
        try:
            self.seaweed = SeaweedFS(self.workdir / "seaweedfs", self.certs, domains, self.keys).start()
            t2 = time.monotonic()
            self.tap = UpstreamTap(
                sorted(set(self.addresses.values())),
                (self.seaweed.host, self.seaweed.https_port),
                self.certs,
                default_sni=self.endpoints[0].bucket_host,
            ).start()
        except BaseException:
            self.stop()
            raise
        t3 = time.monotonic()
        self.startup_seconds = {"certs": t1 - t0, "seaweedfs": t2 - t1, "tap": t3 - t2, "total": t3 - t0}
        return self

    def stop(self) -> None:
        for part in ("tap", "seaweed", "dns"):
            obj = getattr(self, part, None)
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.stop()

    def __enter__(self) -> S3Backend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- convenience ---------------------------------------------------------------------------

    def endpoint(self, region: str) -> TestEndpoint:
        for ep in self.endpoints:
            if ep.region == region:
                return ep
        raise KeyError(region)

    @property
    def endpoint_port(self) -> int:
        """The port the proxy must dial (the tap); `endpoints.<region>.port` in its config."""
        return self.tap.port

    @property
    def direct_port(self) -> int:
        """SeaweedFS's own HTTPS port (bypasses the tap)."""
        return self.seaweed.https_port

    @property
    def ca_cert(self) -> Path:
        return self.certs.ca_cert

    def direct_client(
        self,
        region: str = "us-east-1",
        key: AccessKey = ADMIN,
        addressing_style: str = "path",
        zone: str | None = None,
        **config: Any,
    ) -> Any:
        """boto3 client straight to SeaweedFS under `bucket.<vpce domain>` (no proxy, no tap)."""
        ep = self.endpoint(region)
        domain = ep.zonal_domain(zone) if zone else ep.domain
        return self.seaweed.client(
            domain, key=key, region=region, addressing_style=addressing_style, **config
        )

    def object_sha256(self, bucket: str, key: str, region: str = "us-east-1") -> str | None:
        """sha256 of what SeaweedFS stored, read without the proxy; None when there is no such object."""
        from botocore.exceptions import ClientError

        try:
            body = self.direct_client(region).get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
                return None
            raise
        return sha256(body)

    def upstream_requests(self, since: int = 0) -> list[UpstreamRequest]:
        return self.tap.requests(since)

    def mark(self) -> int:
        return self.tap.mark()


# --- the proxy under test --------------------------------------------------------------------------


def proxy_executable() -> str:
    exe = Path(sys.executable).parent / "s3proxy"
    return str(exe) if exe.exists() else str(REPO / ".venv" / "bin" / "s3proxy")


def base_proxy_config(backend: S3Backend, workdir: Path, port: int) -> dict[str, Any]:
    """A config for `s3proxy run` wired to the backend (dict; written as YAML)."""
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "default_region": backend.endpoints[0].region,
        "endpoints": {
            ep.region: {"dns_name": ep.domain, "port": backend.endpoint_port} for ep in backend.endpoints
        },
        "dns": {"nameservers": [backend.dns.address]},
        "tls": {"ca_dir": str(workdir / "ca"), "upstream_ca_bundle": str(backend.certs.ca_cert)},
        # Off in the shared base so tests can count exactly the requests a client caused upstream; the
        # region tests (test_regions.py) turn it on (the product default).
        "upstream": {"discover_region": False},
        # Every stand-in site of the tests lives on loopback, which tunnels may not reach by default
        # (tests/e2e/test_abuse.py checks that default with this key removed).
        "tunnel_allow": ["127.0.0.0/8"],
        # One process, so a test sees every request in one log and one set of metrics at once; the default
        # (one worker per core) is exercised by tests/e2e/test_workers.py.
        "workers": 1,
        "signing": {
            "mode": "keyring",
            "keys": [
                {"access_key_id": k.access_key_id, "secret_access_key": k.secret_access_key}
                for k in PROXY_KEYS
            ],
        },
    }


class ProxyProcess:
    """`s3proxy run --config FILE` as a subprocess in its own process group."""

    def __init__(
        self,
        config: Mapping[str, Any],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        command: Iterable[str] | None = None,
    ) -> None:
        # `command`: how to invoke s3proxy (default: the venv's console script); `run --config F` is appended.
        self.command = list(command) if command is not None else [proxy_executable()]
        self.config = dict(config)
        self.workdir = workdir
        self.config_path = workdir / "s3proxy.yaml"
        self.log_path = workdir / "s3proxy.log"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        listen = self.config.get("listen", {})
        self.host: str = listen.get("host", "127.0.0.1")
        self.port: int = int(listen.get("port", 3128))
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """The proxy's CA certificate (PEM), what clients trust via AWS_CA_BUNDLE."""
        return (
            Path(self.config.get("tls", {}).get("ca_dir", str(self.workdir / "ca"))) / "mitmproxy-ca-cert.pem"
        )

    def start(self, timeout: float = 30) -> ProxyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = clean_client_env()
        env.update(self.extra_env)
        t0 = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*self.command, "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )
        try:
            wait_for_port(self.host, self.port, timeout, self.alive)
            deadline = time.monotonic() + 5
            while not self.ca_cert.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"proxy CA certificate not written: {self.ca_cert}")
                time.sleep(0.05)
        except BaseException as e:
            self.stop()
            raise RuntimeError(f"s3proxy failed to start: {e}\n--- log ---\n{self.logs()[-6000:]}") from e
        self.startup_seconds = time.monotonic() - t0
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 5) -> int | None:
        """Stop (SIGTERM, then SIGKILL after `grace` s); returns the exit code."""
        if self.proc is None:
            return None
        _kill_group(self.proc, grace)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def env(self, key: AccessKey | None = ADMIN, **extra: str) -> dict[str, str]:
        """Environment for a client subprocess (AWS CLI, curl, another SDK) that knows only the proxy.

        No region is set: clients fall back to their defaults (boto3/CLI: us-east-1 legacy global host)."""
        env = clean_client_env()
        ca = str(self.ca_cert)
        env.update(
            HTTPS_PROXY=self.url,
            HTTP_PROXY=self.url,
            https_proxy=self.url,  # curl reads only the lower-case http_proxy
            http_proxy=self.url,
            NO_PROXY="",
            no_proxy="",
            AWS_CA_BUNDLE=ca,
            REQUESTS_CA_BUNDLE=ca,
            SSL_CERT_FILE=ca,
            CURL_CA_BUNDLE=ca,
        )
        if key is not None:
            env.update(AWS_ACCESS_KEY_ID=key.access_key_id, AWS_SECRET_ACCESS_KEY=key.secret_access_key)
        env.update(extra)
        return env

    def boto3_client(
        self,
        service: str = "s3",
        *,
        key: AccessKey = ADMIN,
        region: str | None = None,
        addressing_style: str | None = None,
        config: Any = None,
        **client_kw: Any,
    ) -> Any:
        """An in-process boto3 client configured only with the proxy and its CA (never endpoint_url)."""
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=key.access_key_id,
            aws_secret_access_key=key.secret_access_key,
            region_name=region,
        )
        cfg = Config(proxies={"https": self.url, "http": self.url}, connect_timeout=10, read_timeout=60)
        if addressing_style is not None:
            cfg = cfg.merge(Config(s3={"addressing_style": addressing_style}))
        if config is not None:
            cfg = cfg.merge(config)
        return session.client(service, verify=str(self.ca_cert), config=cfg, **client_kw)

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_proxy(
    backend: S3Backend,
    workdir: Path,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[ProxyProcess]:
    port = free_ports(1)[0]
    cfg = deep_merge(base_proxy_config(backend, workdir, port), overrides or {})
    proxy = ProxyProcess(cfg, workdir, env).start()
    try:
        yield proxy
    finally:
        proxy.stop()


# --- the admin listener of a running proxy -------------------------------------------------------------


class Admin:
    """The admin listener of one proxy."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body); never through a proxy."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.base + path, timeout=10) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read().decode()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, _, text = self.get("/metrics")
        assert status == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.metrics().items() if n == name and want <= ls)

    def wait_for(self, name: str, at_least: float, timeout: float = 15, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        while True:
            v = self.value(name, **labels)
            if v >= at_least:
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}{labels} stayed at {v}, expected >= {at_least}")
            time.sleep(0.1)


def admin_proxy(
    factory: Callable[..., ProxyProcess], overrides: dict[str, Any] | None = None
) -> tuple[ProxyProcess, Admin]:
    port = free_ports(1)[0]
    cfg = {"admin": {"listen": f"127.0.0.1:{port}"}}
    proxy = factory({**cfg, **(overrides or {})})
    admin = Admin(port)
    deadline = time.monotonic() + 10
    while True:  # the admin listener starts with mitmproxy's loop, just after the proxy port
        try:
            if admin.get("/healthz")[0] == 200:
                return proxy, admin
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"admin listener not up:\n{proxy.logs()[-3000:]}")
        time.sleep(0.05)
