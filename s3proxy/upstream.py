"""Which endpoint address a new upstream connection goes to: resolved candidates, health, failover.

Strategy: the request is pointed at the endpoint-level vpce name (`bucket.VPCE`), so mitmproxy pools upstream
connections per endpoint and uses that name for SNI and certificate verification. When mitmproxy opens a new
connection it asks the event loop's `getaddrinfo` for that name; `Upstreams.addresses` answers instead of the
system resolver: the dnspython candidates in preference order (zonal first), benched addresses left out, and
the first one proven by a TCP+TLS probe (verified certificate) before use. An address that fails a probe or a
real connection is benched for `bench_seconds`, so the next candidate is used before any byte of a request is
sent. asyncio itself tries the returned addresses in order, so a connection refused on one falls through to
the next. When no address is left, the caller answers a retryable 503 naming the endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from s3proxy.endpoint import Endpoint, HostKind
from s3proxy.errors import S3Error
from s3proxy.regions import discovery_request, region_from_response_head
from s3proxy.resolver import DnsFailure, Resolver, Target

log = logging.getLogger("s3proxy.upstream")

Clock = Callable[[], float]
AddrInfo = tuple[
    socket.AddressFamily, socket.SocketKind, int, str, tuple[str, int] | tuple[str, int, int, int]
]


class NoUsableAddress(Exception):
    """Every candidate address of an endpoint failed or is benched."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"no reachable address for {name}: {detail}")
        self.name = name
        self.detail = detail

    def to_s3_error(self) -> S3Error:
        return S3Error(
            503,
            "ServiceUnavailable",
            f"s3proxy could not reach the S3 interface endpoint {self.name}: {self.detail}. Every candidate "
            "address failed (connect or TLS); check the endpoint, the network path and "
            "tls.upstream_ca_bundle",
        )


@dataclass(slots=True)
class UpstreamStats:
    probes: int = 0
    probe_failures: int = 0
    connect_failures: int = 0
    failovers: int = 0
    reused: int = 0  # endpoint connections a client connection left idle, taken by a later one


@dataclass(frozen=True, slots=True)
class Route:
    endpoint: Endpoint
    kind: HostKind


@dataclass(slots=True)
class _Health:
    verified_until: dict[str, float] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)


class Upstreams:
    def __init__(
        self,
        resolver: Resolver,
        endpoints: dict[str, Endpoint] | None = None,
        *,
        ssl_context: ssl.SSLContext,
        connect_timeout: float = 5.0,
        bench_seconds: float = 30.0,
        verify_interval: float = 0.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.bench_seconds = bench_seconds
        self.verify_interval = verify_interval
        self.clock = clock
        self.stats = UpstreamStats()
        self._health = _Health()
        self._probing: dict[tuple[str, int, str], asyncio.Task[str | None]] = {}
        self._routes: dict[str, Route] = {}
        for endpoint in (endpoints or {}).values():
            for kind in ("bucket", "accesspoint", "control"):
                self._routes[endpoint.host(kind)] = Route(endpoint, kind)

    def route(self, name: str) -> Route | None:
        """The endpoint behind a connection name this proxy points requests at, or None."""
        return self._routes.get(name.lower().rstrip("."))

    @staticmethod
    def connection_name(endpoint: Endpoint, kind: HostKind) -> str:
        """The name requests are pointed at: one upstream pool per endpoint and kind."""
        return endpoint.host(kind)

    async def usable(self, endpoint: Endpoint, kind: HostKind, *, probe: bool = False) -> list[Target]:
        """Candidate addresses best first, benched ones left out. With `probe` (a new connection is about
        to be opened) the first is proven by a TCP+TLS probe unless one succeeded within `verify_interval`,
        and failing ones are benched. Raises DnsFailure or NoUsableAddress."""
        name = endpoint.host(kind)
        picks = await self.resolver.pick(endpoint, kind)
        # When every candidate is benched, try them all again (soonest due first) rather than refuse
        # outright: the endpoint may be back, and a probe costs at most connect_timeout.
        live = [t for t in picks if not self.resolver.is_benched(t.address)] or list(picks)
        if not probe:
            return live
        for i, target in enumerate(live):
            error = await self._verified(target.address, endpoint.port, name)
            if error is None:
                if i:
                    self.stats.failovers += 1
                return live[i:]
            self.bench(target.address, error)
        details = "; ".join(
            f"{t.address} ({self._health.last_error.get(t.address, 'benched')})" for t in picks
        )
        raise NoUsableAddress(name, details or "no candidates")

    async def check_route(self, host: str) -> str | None:
        """Before a new upstream connection to `host`: None if it may proceed (not ours, or a candidate was
        proven), else the reason none can be reached (naming the endpoint) to refuse the connection with."""
        route = self.route(host)
        if route is None:
            return None
        try:
            await self.usable(route.endpoint, route.kind, probe=True)
        except NoUsableAddress as e:
            return str(e.to_s3_error().message)
        except DnsFailure as e:
            return str(e.to_s3_error().message)
        return None

    async def addresses(self, host: str, port: int) -> list[AddrInfo] | None:
        """`getaddrinfo` results for a connection name of ours (None: not ours, use the system)."""
        route = self.route(host)
        if route is None:
            return None
        try:
            targets = await self.usable(route.endpoint, route.kind)
        except (DnsFailure, NoUsableAddress) as e:
            raise OSError(str(e)) from None
        out: list[AddrInfo] = []
        for t in targets:
            if ":" in t.address:
                out.append(
                    (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (t.address, port, 0, 0))
                )
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (t.address, port)))
        return out

    def preferred(self, host: str) -> str | None:
        """The address a new connection to `host` (one of our connection names) would try first, from the
        DNS cache alone; None when not ours or not known without a lookup."""
        route = self.route(host)
        if route is None:
            return None
        picks = self.resolver.pick_cached(route.endpoint, route.kind)
        if not picks:
            return None
        live = [t for t in picks if not self.resolver.is_benched(t.address)] or picks
        return live[0].address

    def bench(self, address: str, reason: str) -> None:
        log.warning("endpoint address %s benched for %.0fs: %s", address, self.bench_seconds, reason)
        self._health.last_error[address] = reason
        self._health.verified_until.pop(address, None)
        self.resolver.bench(address, self.bench_seconds)

    def connection_failed(self, address: str, reason: str) -> None:
        """A real upstream connection (not a probe) failed to connect or to complete TLS."""
        self.stats.connect_failures += 1
        self.bench(address, reason)

    async def _verified(self, address: str, port: int, server_name: str) -> str | None:
        if self._health.verified_until.get(address, 0.0) > self.clock():
            return None
        key = (address, port, server_name)
        task = self._probing.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._probe(address, port, server_name))
            self._probing[key] = task
            task.add_done_callback(lambda _t: self._probing.pop(key, None))
        error = await asyncio.shield(task)
        if error is None:
            self._health.verified_until[address] = self.clock() + self.verify_interval
        return error

    async def _probe(self, address: str, port: int, server_name: str) -> str | None:
        """None when a verified TLS handshake with `server_name` succeeds on address:port, else why not."""
        self.stats.probes += 1
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(address, port, ssl=self.ssl_context, server_hostname=server_name),
                self.connect_timeout,
            )
        except ssl.SSLCertVerificationError as e:
            error = f"TLS certificate not valid for {server_name}: {e.verify_message}"
        except (ssl.SSLError, ConnectionError) as e:
            error = f"TLS handshake failed: {e}"
        except TimeoutError:
            error = f"no answer within {self.connect_timeout:g}s"
        except OSError as e:
            error = f"connect failed: {e.strerror or e}"
        else:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
            return None
        self.stats.probe_failures += 1
        return error

    async def bucket_region(self, endpoint: Endpoint, bucket: str, timeout: float) -> str | None:
        """Ask S3 which region `bucket` is in: one anonymous `HEAD /BUCKET` at `endpoint`, read only the
        response head. S3 names the region in `x-amz-bucket-region` on the 200, and on the 403 and 301 it
        answers when the bucket is private or elsewhere. None when it did not say (or did not answer)."""
        name = endpoint.host("bucket")
        try:
            targets = await self.usable(endpoint, "bucket", probe=True)
        except (DnsFailure, NoUsableAddress) as e:
            log.warning("region discovery for bucket %s skipped: %s", bucket, e)
            return None
        host = name if endpoint.port == 443 else f"{name}:{endpoint.port}"
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    targets[0].address, endpoint.port, ssl=self.ssl_context, server_hostname=name
                )
                try:
                    writer.write(discovery_request(bucket, host))
                    head = await reader.readuntil(b"\r\n\r\n")
                finally:
                    writer.close()
        except (
            OSError,
            ssl.SSLError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as e:
            log.warning(
                "region discovery for bucket %s at %s failed: %s", bucket, name, e or type(e).__name__
            )
            return None
        return region_from_response_head(head)


def upstream_ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Verified TLS 1.2+ like the proxy's upstream connections (PrivateLink for S3 has no TLS 1.0)."""
    ctx = ssl.create_default_context(cafile=ca_bundle)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
