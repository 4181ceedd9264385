"""Resolving S3 interface endpoint names with dnspython: candidates, cache, nameserver health, benching.

# Strategy: like dnspython's `_Resolution`, the decisions live apart from the I/O. `ResolverCore` owns all
# state (the answer cache, which nameservers are healthy, which addresses are benched, stats) and `_Query`
# decides which nameserver to ask next and what an answer or error means. `Resolver` adds two thin drivers
# that only send queries: an asyncio one (`resolve`, `pick`) for the proxy, which runs in mitmproxy's event
# loop, and a blocking one (`resolve_sync`, `pick_sync`) for `s3proxy check`. Time comes from an injected
# clock.

Names. An endpoint has a regional name and one per zone; AWS publishes them as wildcards
(`*.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com`, `*.vpce-1a2b3c4d-5e6f-us-east-1a.s3...`), so every
label under them - `bucket.`, `my-bucket.bucket.`, `accesspoint.`, `ap-123.accesspoint.` - resolves to the
same endpoint network interfaces. We therefore always resolve the endpoint-level name `<kind>.<domain>`, never
`BUCKET.bucket.<domain>`: one query and one cache entry per endpoint, zone and kind instead of one per bucket
(the cache stays small however many buckets clients use, and bucket names are not sent to DNS servers).

SNI and Host. Only the address to connect to comes from a zonal name. The Host header and the TLS server
name stay the name the request was rewritten to (normally the regional `bucket.VPCE`) because the SigV4
signature covers Host and is computed before a candidate is chosen - changing it per candidate would mean
re-signing on failover - and because AWS serves the same certificate (regional and zonal `*.` names) on every
endpoint address, so the regional name verifies on a zonal address.

Failures. Every failed lookup is a `DnsFailure(name, reason)`; `to_s3_error()` turns it into the retryable
503 ServiceUnavailable the proxy answers (fail closed: nothing here ever falls back to public S3 names).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple, Protocol, Self

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from s3proxy.endpoint import Endpoint, HostKind, parse_endpoint_name
from s3proxy.errors import S3Error

Nameserver = tuple[str, int]
"""(IP address, port) of a recursive nameserver."""

Clock = Callable[[], float]


class Reason(enum.StrEnum):
    NXDOMAIN = "NXDOMAIN"
    NO_ANSWER = "no address records"
    TIMEOUT = "timeout"
    SERVFAIL = "SERVFAIL"
    NO_NAMESERVERS = "no usable nameserver"


NEGATIVE = frozenset({Reason.NXDOMAIN, Reason.NO_ANSWER})
"""Answers that say the name has no address: cached for `negative_ttl`. The others are not cached."""

_HINTS = {
    Reason.NXDOMAIN: "the name does not exist; check the endpoint name in the config and that the endpoint "
    "exists and is available",
    Reason.NO_ANSWER: "the name exists but has no A/AAAA records; check the endpoint's DNS",
    Reason.TIMEOUT: "no nameserver answered in time; check dns.nameservers and that they are reachable",
    Reason.SERVFAIL: "the nameservers could not resolve it (SERVFAIL); check how they forward to the VPC",
    Reason.NO_NAMESERVERS: "no nameserver gave a usable answer; check dns.nameservers",
}


class DnsFailure(Exception):
    """A name could not be resolved; `reason` says how, `detail` which nameserver said what."""

    def __init__(self, name: str, reason: Reason, detail: str = "") -> None:
        super().__init__(f"DNS lookup of {name} failed: {reason}" + (f" ({detail})" if detail else ""))
        self.name = name
        self.reason = reason
        self.detail = detail

    @property
    def negative(self) -> bool:
        """True when DNS answered that the name has no address (as opposed to not answering)."""
        return self.reason in NEGATIVE

    def to_s3_error(self) -> S3Error:
        """The 503 the proxy answers: SDKs retry it, and the message names the endpoint and what to fix."""
        message = (
            f"s3proxy could not resolve the S3 interface endpoint name {self.name}: {self.reason} - "
            f"{_HINTS[self.reason]}"
        )
        if self.detail:
            message += f" [{self.detail}]"
        return S3Error(503, "ServiceUnavailable", message)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One DNS name to resolve for an endpoint, in preference order; `zone` is None for the regional name."""

    name: str
    zone: str | None = None


class Target(NamedTuple):
    """An address to connect to and the DNS name it came from (for logs and errors)."""

    address: str
    name: str


@dataclass(slots=True)
class Stats:
    """Counters for metrics. `lookups` counts lookups that went to the network."""

    lookups: int = 0
    cache_hits: int = 0
    coalesced: int = 0
    failures: int = 0
    nameserver_errors: int = 0
    stale_served: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class DnsSettings(Protocol):
    """What `from_config` needs of the `dns:` config section (s3proxy.config.DNSConfig)."""

    @property
    def nameservers(self) -> tuple[Nameserver, ...]: ...
    @property
    def timeout(self) -> float: ...
    @property
    def cache_max_ttl(self) -> float: ...
    @property
    def negative_ttl(self) -> float: ...


class _Found(NamedTuple):
    addresses: tuple[str, ...]
    ttl: float


class _Failed(NamedTuple):
    reason: Reason
    detail: str = ""


_Result = _Found | _Failed


class _Entry(NamedTuple):
    result: _Result
    expires: float


def normalize_name(name: str) -> str:
    """Lower-case, no trailing dot; ValueError for text that is not a DNS name."""
    text = name.strip().lower().rstrip(".")
    try:
        dns.name.from_text(text)
    except dns.exception.DNSException as e:
        raise ValueError(f"not a valid DNS name: {e}") from None
    if not text:
        raise ValueError("empty DNS name")
    return text


def _zone_of(endpoint: Endpoint, host: str) -> tuple[bool, str | None]:
    """(host is a name of this endpoint, the zone it names or None for regional)."""
    labels = host.split(".")
    for i in range(len(labels)):
        try:
            parsed = parse_endpoint_name(".".join(labels[i:]))
        except ValueError:
            continue
        n = endpoint.name
        if (parsed.name, parsed.region, parsed.dns_suffix) == (n.name, n.region, n.dns_suffix):
            return True, parsed.zone
        return False, None
    return False, None


def candidates(endpoint: Endpoint, kind: HostKind, host: str | None = None) -> list[Candidate]:
    """The names to resolve for a request to `host` (default: the regional `<kind>.VPCE`), best first.

    Zonal names in `endpoint.zone_order()` (a zone that `host` itself names goes first), then the regional
    name. A host that is not a name of `endpoint` is resolved as given, alone (a route may point elsewhere).
    """
    target = normalize_name(host if host is not None else endpoint.host(kind))
    related, pinned = _zone_of(endpoint, target)
    if not related:
        return [Candidate(target)]
    zones = list(endpoint.zone_order())
    # zone_order() drops a preferred zone missing from `zones`; a preference still counts.
    for first in (endpoint.prefer_zone, pinned):
        if first:
            zones = [first, *(z for z in zones if z != first)]
    return [*(Candidate(endpoint.host(kind, z), z) for z in zones), Candidate(endpoint.host(kind))]


@functools.lru_cache(maxsize=1024)
def _candidates(endpoint: Endpoint, kind: HostKind, host: str | None) -> tuple[Candidate, ...]:
    """`candidates`, memoized: the same few endpoint names are asked for on every request."""
    return tuple(candidates(endpoint, kind, host))


def load_system_nameservers() -> tuple[Nameserver, ...]:
    """The nameservers of /etc/resolv.conf (via dnspython). Reads a file: call it from the shell only."""
    try:
        system = dns.resolver.Resolver(configure=True)
    except dns.exception.DNSException as e:
        raise ValueError(f"no dns.nameservers configured and the system resolver is unusable: {e}") from None
    out: list[Nameserver] = []
    for ns in system.nameservers:
        if isinstance(ns, str):
            out.append((ns, system.port))
        elif isinstance(ns, dns.nameserver.Do53Nameserver):
            out.append((ns.address, ns.port))
    if not out:
        raise ValueError("no dns.nameservers configured and /etc/resolv.conf lists none")
    return tuple(out)


def _combine(outcomes: Sequence[_Result]) -> _Result:
    """One result from the A and AAAA outcomes: any addresses win; both negative is negative."""
    found = [o for o in outcomes if isinstance(o, _Found)]
    if found:
        addresses = tuple(dict.fromkeys(a for o in found for a in o.addresses))
        return _Found(addresses, min(o.ttl for o in found))
    failed = [o for o in outcomes if isinstance(o, _Failed)]
    hard = [o for o in failed if o.reason not in NEGATIVE]
    if hard:
        # A/AAAA said "no such record" but the other family got no answer: we don't know, report that.
        return hard[0]
    if any(o.reason is Reason.NXDOMAIN for o in failed):
        return _Failed(Reason.NXDOMAIN)
    return _Failed(Reason.NO_ANSWER)


class ResolverCore:
    """All resolver state and decisions, no I/O (the drivers in `Resolver` do the sending)."""

    def __init__(
        self,
        nameservers: Sequence[Nameserver] = (),
        *,
        timeout: float = 2.0,
        lifetime: float | None = None,
        cache_max_ttl: float = 300.0,
        negative_ttl: float = 5.0,
        nameserver_holddown: float = 30.0,
        serve_stale: float = 0.0,
        families: Sequence[str] = ("A", "AAAA"),
        max_entries: int = 4096,
        clock: Clock = time.monotonic,
        system_nameservers: Callable[[], tuple[Nameserver, ...]] = load_system_nameservers,
    ) -> None:
        """`timeout`: per nameserver attempt. `lifetime`: whole lookup (default: every nameserver gets one
        `timeout`). `nameserver_holddown`: a nameserver that failed is asked last for this long, so a dead
        first nameserver costs one timeout per holddown, not one per request. `serve_stale`: seconds past
        expiry a cached answer may still be used when every nameserver fails (RFC 8767; 0 = never).
        No `nameservers` means the system's, from `system_nameservers()` (read once, here)."""
        nameservers = tuple(nameservers) or system_nameservers()
        for host, port in nameservers:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"nameserver {host!r} is not an IP address") from None
            if not 0 < port < 65536:
                raise ValueError(f"nameserver port {port} is out of range")
        if timeout <= 0 or (lifetime is not None and lifetime <= 0):
            raise ValueError("timeout and lifetime must be positive")
        for label, value in (
            ("cache_max_ttl", cache_max_ttl),
            ("negative_ttl", negative_ttl),
            ("nameserver_holddown", nameserver_holddown),
            ("serve_stale", serve_stale),
        ):
            if value < 0:
                raise ValueError(f"{label} must not be negative")
        if not families or any(f not in ("A", "AAAA") for f in families):
            raise ValueError("families must be A and/or AAAA")
        self.nameservers: tuple[Nameserver, ...] = tuple(nameservers)
        self.timeout = timeout
        self.lifetime = lifetime if lifetime is not None else timeout * max(1, len(self.nameservers))
        self.cache_max_ttl = cache_max_ttl
        self.negative_ttl = negative_ttl
        self.nameserver_holddown = nameserver_holddown
        self.serve_stale = serve_stale
        self.families = tuple(dns.rdatatype.RdataType.make(f) for f in families)
        self.max_entries = max_entries
        self.clock = clock
        self.stats = Stats()
        self._cache: dict[str, _Entry] = {}
        self._ns_down_until: dict[Nameserver, float] = {}
        self._bench: dict[str, float] = {}
        # Lookups in flight, for the asyncio driver to coalesce concurrent requests for one name.
        self._inflight: dict[str, asyncio.Task[_Result]] = {}

    @classmethod
    def from_config(cls, settings: DnsSettings, *, clock: Clock = time.monotonic) -> Self:
        """A resolver for the `dns:` config section; ValueError if the system resolver is unusable."""
        return cls(
            settings.nameservers,
            timeout=settings.timeout,
            cache_max_ttl=settings.cache_max_ttl,
            negative_ttl=settings.negative_ttl,
            clock=clock,
        )

    # --- cache -----------------------------------------------------------------------------------------

    def _cached(self, name: str) -> _Result | None:
        entry = self._cache.get(name)
        if entry is None or entry.expires <= self.clock():
            return None
        self.stats.cache_hits += 1
        return entry.result

    def _finish(self, name: str, outcomes: Sequence[_Result]) -> _Result:
        """Combine, cache and count the outcome of one network lookup."""
        result = _combine(outcomes)
        now = self.clock()
        if isinstance(result, _Found):
            self._store(name, result, now + min(result.ttl, self.cache_max_ttl))
            return result
        self.stats.failures += 1
        if result.reason in NEGATIVE:
            self._store(name, result, now + self.negative_ttl)
            return result
        old = self._cache.get(name)
        if old is not None and isinstance(old.result, _Found) and now < old.expires + self.serve_stale:
            self.stats.stale_served += 1
            return old.result
        return result

    def _store(self, name: str, result: _Result, expires: float) -> None:
        self._cache.pop(name, None)  # re-insert so dict order is age order
        self._cache[name] = _Entry(result, expires)
        if len(self._cache) > self.max_entries:
            now = self.clock()
            for key in [k for k, e in self._cache.items() if e.expires + self.serve_stale <= now]:
                del self._cache[key]
            while len(self._cache) > self.max_entries:
                del self._cache[next(iter(self._cache))]

    # --- nameserver health -----------------------------------------------------------------------------

    def nameserver_order(self) -> list[Nameserver]:
        """Healthy nameservers in configured order, then those that failed recently."""
        now = self.clock()
        healthy = [ns for ns in self.nameservers if self._ns_down_until.get(ns, 0.0) <= now]
        return healthy + [ns for ns in self.nameservers if ns not in healthy]

    def _nameserver_failed(self, ns: Nameserver) -> None:
        self.stats.nameserver_errors += 1
        self._ns_down_until[ns] = self.clock() + self.nameserver_holddown

    def _nameserver_ok(self, ns: Nameserver) -> None:
        self._ns_down_until.pop(ns, None)

    # --- benching (issue 5: failover) ------------------------------------------------------------------

    def bench(self, address: str, seconds: float) -> None:
        """Keep `address` out of `pick` results for `seconds` (extends, never shortens, a bench)."""
        until = self.clock() + seconds
        self._bench[address] = max(until, self._bench.get(address, until))

    def unbench(self, address: str) -> None:
        self._bench.pop(address, None)

    def is_benched(self, address: str) -> bool:
        until = self._bench.get(address)
        if until is None:
            return False
        if until <= self.clock():
            del self._bench[address]
            return False
        return True

    def benched(self) -> dict[str, float]:
        """Benched addresses and the seconds each has left."""
        now = self.clock()
        return {a: u - now for a, u in self._bench.items() if u > now}

    def _choose(self, cands: Sequence[Candidate], results: Sequence[_Result]) -> list[Target]:
        """Addresses in candidate order (an address the regional name shares with a zonal one keeps the
        zonal place), benched ones left out. If every address is benched, all of them, soonest back first:
        trying an address that may have recovered beats refusing the request outright."""
        targets: dict[str, Target] = {}
        for cand, result in zip(cands, results, strict=True):
            if isinstance(result, _Found):
                for address in result.addresses:
                    targets.setdefault(address, Target(address, cand.name))
        if not targets:
            failed = [r for r in results if isinstance(r, _Failed)]
            detail = "; ".join(f"{c.name}: {r.reason}" for c, r in zip(cands, failed, strict=True))
            last = failed[-1]
            if len(cands) > 1 and last.detail:
                detail += f" (last: {last.detail})"  # which nameservers did what
            raise DnsFailure(cands[-1].name, last.reason, detail if len(cands) > 1 else last.detail)
        live = [t for t in targets.values() if not self.is_benched(t.address)]
        if live:
            return live
        return sorted(targets.values(), key=lambda t: self._bench.get(t.address, 0.0))


class _Query:
    """One question (name, A or AAAA) asked of the nameservers in turn: which one next, and what its
    answer or error means. Sans-IO: the drivers send `message` and report back."""

    def __init__(self, core: ResolverCore, name: str, rdtype: dns.rdatatype.RdataType) -> None:
        self.core = core
        self.message = dns.message.make_query(dns.name.from_text(name), rdtype)
        self._todo = core.nameserver_order()
        self._deadline = core.clock() + core.lifetime
        self._problems: list[tuple[Reason, str]] = []

    def next_attempt(self) -> tuple[Nameserver, float] | None:
        """The nameserver to ask next and the timeout for it, or None when there is none left."""
        if not self._todo:
            return None
        remaining = self._deadline - self.core.clock()
        if remaining <= 0:
            self._problems.append((Reason.TIMEOUT, f"lifetime {self.core.lifetime:g}s exceeded"))
            return None
        return self._todo.pop(0), min(self.core.timeout, remaining)

    def failed(self, ns: Nameserver, error: BaseException) -> None:
        """The attempt raised (timeout, network error, malformed or mismatched response)."""
        self.core._nameserver_failed(ns)
        if isinstance(error, dns.exception.Timeout | TimeoutError):
            self._problems.append((Reason.TIMEOUT, f"{_ns_text(ns)} timed out"))
        else:
            what = str(error) or type(error).__name__
            self._problems.append((Reason.NO_NAMESERVERS, f"{_ns_text(ns)}: {what}"))

    def answered(self, ns: Nameserver, response: dns.message.Message) -> _Result | None:
        """The outcome, or None to ask the next nameserver."""
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            self.core._nameserver_ok(ns)
            return _Failed(Reason.NXDOMAIN)
        if rcode == dns.rcode.SERVFAIL:
            # Often about the name (upstream unreachable, DNSSEC), not this server: try the next, no holddown.
            self._problems.append((Reason.SERVFAIL, f"{_ns_text(ns)} answered SERVFAIL"))
            return None
        if rcode != dns.rcode.NOERROR or not isinstance(response, dns.message.QueryMessage):
            # REFUSED, NOTIMP, FORMERR...: this server will not help us.
            self.failed(ns, ValueError(f"answered {dns.rcode.to_text(rcode)}"))
            return None
        try:
            chain = response.resolve_chaining()
        except dns.exception.DNSException as e:
            self.failed(ns, e)
            return None
        self.core._nameserver_ok(ns)
        if chain.answer is None or len(chain.answer) == 0:
            return _Failed(Reason.NO_ANSWER)
        return _Found(tuple(rd.to_text() for rd in chain.answer), float(chain.minimum_ttl))

    def exhausted(self) -> _Failed:
        reasons = {r for r, _ in self._problems}
        reason = next(
            (r for r in (Reason.SERVFAIL, Reason.TIMEOUT) if r in reasons),
            Reason.NO_NAMESERVERS,
        )
        detail = "; ".join(d for _, d in self._problems) or "no nameservers configured"
        return _Failed(reason, detail)


def _ns_text(ns: Nameserver) -> str:
    host, port = ns
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _raise_or_list(name: str, result: _Result) -> list[str]:
    if isinstance(result, _Failed):
        raise DnsFailure(name, result.reason, result.detail)
    return list(result.addresses)


class Resolver(ResolverCore):
    """The resolver the proxy uses: `ResolverCore` plus an asyncio driver and a blocking one.

    The blocking methods are for the CLI; never call them inside the event loop.
    """

    candidates = staticmethod(candidates)

    # --- asyncio driver ---------------------------------------------------------------------------------

    async def resolve(self, name: str) -> list[str]:
        """Addresses of `name` (IPv4 first), from the cache or the nameservers; raises DnsFailure."""
        key = normalize_name(name)
        return _raise_or_list(key, await self._result(key))

    async def pick(self, endpoint: Endpoint, kind: HostKind, host: str | None = None) -> list[Target]:
        """Addresses to connect to for `host` (default the regional `<kind>.VPCE`), best first, benched
        ones left out; every candidate is resolved at once so failover has the whole list. Raises
        DnsFailure (naming the regional name) only when no candidate resolved."""
        cands = _candidates(endpoint, kind, host)
        # Every request of a busy proxy gets here with all answers cached: no task per candidate then.
        cached = [self._cached(c.name) for c in cands]
        missing = [i for i, r in enumerate(cached) if r is None]
        if missing:
            fetched = await asyncio.gather(*(self._result(cands[i].name) for i in missing))
            for i, r in zip(missing, fetched, strict=True):
                cached[i] = r
        return self._choose(cands, [r for r in cached if r is not None])

    def pick_cached(self, endpoint: Endpoint, kind: HostKind) -> list[Target] | None:
        """What `pick` would answer now from the cache alone (nothing counted, nothing asked), or None when
        a candidate's answer is missing or expired or no candidate resolved."""
        cands = _candidates(endpoint, kind, None)
        now = self.clock()
        results: list[_Result] = []
        for c in cands:
            entry = self._cache.get(c.name)
            if entry is None or entry.expires <= now:
                return None
            results.append(entry.result)
        try:
            return self._choose(cands, results)
        except DnsFailure:
            return None

    async def _result(self, key: str) -> _Result:
        cached = self._cached(key)
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(key))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._forget(key, t))
        else:
            self.stats.coalesced += 1
        # shield: one waiter giving up (client gone) must not cancel the lookup the others wait for.
        return await asyncio.shield(task)

    def _forget(self, key: str, task: asyncio.Task[_Result]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _lookup(self, key: str) -> _Result:
        self.stats.lookups += 1
        outcomes = await asyncio.gather(*(self._ask(_Query(self, key, rd)) for rd in self.families))
        return self._finish(key, outcomes)

    async def _ask(self, query: _Query) -> _Result:
        while (attempt := query.next_attempt()) is not None:
            (host, port), timeout = attempt
            try:
                response, _ = await dns.asyncquery.udp_with_fallback(
                    query.message, host, timeout=timeout, port=port
                )
            except Exception as e:  # any I/O or parse error is this nameserver's failure; try the next
                query.failed((host, port), e)
                continue
            outcome = query.answered((host, port), response)
            if outcome is not None:
                return outcome
        return query.exhausted()

    # --- blocking driver (s3proxy check) ----------------------------------------------------------------

    def resolve_sync(self, name: str) -> list[str]:
        key = normalize_name(name)
        return _raise_or_list(key, self._result_sync(key))

    def pick_sync(self, endpoint: Endpoint, kind: HostKind, host: str | None = None) -> list[Target]:
        cands = candidates(endpoint, kind, host)
        return self._choose(cands, [self._result_sync(c.name) for c in cands])

    def _result_sync(self, key: str) -> _Result:
        cached = self._cached(key)
        if cached is not None:
            return cached
        self.stats.lookups += 1
        return self._finish(key, [self._ask_sync(_Query(self, key, rd)) for rd in self.families])

    @staticmethod
    def _ask_sync(query: _Query) -> _Result:
        while (attempt := query.next_attempt()) is not None:
            (host, port), timeout = attempt
            try:
                response, _ = dns.query.udp_with_fallback(query.message, host, timeout=timeout, port=port)
            except Exception as e:  # as in _ask
                query.failed((host, port), e)
                continue
            outcome = query.answered((host, port), response)
            if outcome is not None:
                return outcome
        return query.exhausted()
