"""Tests for s3proxy.resolver: pure decisions with a fake clock, drivers against in-process DNS servers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]
from dnslib.server import DNSLogger, DNSServer  # type: ignore[import-untyped]

from s3proxy.endpoint import Endpoint, parse_endpoint_name
from s3proxy.resolver import (
    Candidate,
    DnsFailure,
    Reason,
    Resolver,
    ResolverCore,
    Target,
    _combine,
    _Failed,
    _Found,
    _Query,
    candidates,
    normalize_name,
)

VPCE = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
REGIONAL = f"bucket.{VPCE}"


def zonal(zone: str, kind: str = "bucket") -> str:
    return f"{kind}.vpce-1a2b3c4d-5e6f-{zone}.s3.us-east-1.vpce.amazonaws.com"


def endpoint(zones: tuple[str, ...] = (), prefer: str | None = None, name: str = VPCE) -> Endpoint:
    return Endpoint("us-east-1", parse_endpoint_name(name), zones, prefer)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- an in-process DNS server ---------------------------------------------------------------------------


class Zone:
    """dnslib resolver: exact names -> records; unknown names NXDOMAIN; counts questions."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[str, str, int]]] = {}
        self.rcodes: dict[str, int] = {}
        self.queries: Counter[tuple[str, str]] = Counter()
        self.delay = 0.0
        self.lock = threading.Lock()

    def add(self, name: str, *addresses: str, ttl: int = 60) -> None:
        for address in addresses:
            rtype = "AAAA" if ":" in address else "A"
            self.records.setdefault(name, []).append((rtype, address, ttl))

    def cname(self, name: str, target: str, ttl: int = 60) -> None:
        self.records.setdefault(name, []).append(("CNAME", target, ttl))

    def count(self, name: str) -> int:
        with self.lock:
            return sum(n for (q, _), n in self.queries.items() if q == name)

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries[(qname, qtype)] += 1
        if self.delay:
            time.sleep(self.delay)
        reply = request.reply()
        if qname in self.rcodes:
            reply.header.rcode = self.rcodes[qname]
            return reply
        name = qname
        while name in self.records:
            records = self.records[name]
            cnames = [r for r in records if r[0] == "CNAME"]
            if cnames:
                _, target, ttl = cnames[0]
                reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(target), ttl=ttl))
                name = target
                continue
            for rtype, address, ttl in records:
                if rtype == qtype:
                    rdata = A(address) if rtype == "A" else AAAA(address)
                    reply.add_answer(RR(name, getattr(QTYPE, rtype), rdata=rdata, ttl=ttl))
            return reply
        reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture
def zone() -> Iterator[Zone]:
    yield Zone()


def start_server(zone: Zone) -> tuple[DNSServer, tuple[str, int]]:
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda _s: None))
    # serve_forever's default 0.5 s poll would make every stop() take that long
    threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server, ("127.0.0.1", server.server.server_address[1])


@pytest.fixture
def ns(zone: Zone) -> Iterator[tuple[str, int]]:
    server, address = start_server(zone)
    yield address
    server.stop()
    server.server.server_close()


@pytest.fixture
def dead_ns() -> Iterator[tuple[str, int]]:
    """A UDP port that takes queries and never answers (a nameserver that is down or firewalled)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()
    sock.close()


def make(nameservers: list[tuple[str, int]], clock: FakeClock | None = None, **kw: Any) -> Resolver:
    kw.setdefault("timeout", 0.3)
    return Resolver(tuple(nameservers), clock=clock or FakeClock(), **kw)


# --- candidates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zones", "prefer", "kind", "host", "expected"),
    [
        ((), None, "bucket", None, [Candidate(REGIONAL)]),
        # virtual-hosted upstream host: resolve the endpoint-level name, never the bucket's
        ((), None, "bucket", f"my-bucket.bucket.{VPCE}", [Candidate(REGIONAL)]),
        (
            ("us-east-1a", "us-east-1b"),
            "us-east-1b",
            "bucket",
            f"My-Bucket.bucket.{VPCE}.",
            [
                Candidate(zonal("us-east-1b"), "us-east-1b"),
                Candidate(zonal("us-east-1a"), "us-east-1a"),
                Candidate(REGIONAL),
            ],
        ),
        (
            ("us-east-1a", "us-east-1b", "us-east-1c"),
            None,
            "accesspoint",
            f"ap-123456789012.accesspoint.{VPCE}",
            [
                Candidate(zonal("us-east-1a", "accesspoint"), "us-east-1a"),
                Candidate(zonal("us-east-1b", "accesspoint"), "us-east-1b"),
                Candidate(zonal("us-east-1c", "accesspoint"), "us-east-1c"),
                Candidate(f"accesspoint.{VPCE}"),
            ],
        ),
        # a preferred zone missing from `zones` still comes first
        (
            (),
            "us-east-1c",
            "control",
            None,
            [Candidate(zonal("us-east-1c", "control"), "us-east-1c"), Candidate(f"control.{VPCE}")],
        ),
        # a host naming a zone puts that zone first
        (
            ("us-east-1a", "us-east-1b"),
            "us-east-1a",
            "bucket",
            zonal("us-east-1b"),
            [
                Candidate(zonal("us-east-1b"), "us-east-1b"),
                Candidate(zonal("us-east-1a"), "us-east-1a"),
                Candidate(REGIONAL),
            ],
        ),
        # a name of another endpoint, or no endpoint at all, is resolved as given
        (
            ("us-east-1a",),
            None,
            "bucket",
            "bucket.vpce-0000-1111.s3.us-east-1.vpce.amazonaws.com",
            [Candidate("bucket.vpce-0000-1111.s3.us-east-1.vpce.amazonaws.com")],
        ),
        (
            ("us-east-1a",),
            None,
            "bucket",
            "s3.us-east-1.amazonaws.com",
            [Candidate("s3.us-east-1.amazonaws.com")],
        ),
    ],
)
def test_candidates(
    zones: tuple[str, ...], prefer: str | None, kind: Any, host: str | None, expected: list[Candidate]
) -> None:
    assert candidates(endpoint(zones, prefer), kind, host) == expected
    assert Resolver.candidates(endpoint(zones, prefer), kind, host) == expected


def test_candidates_china_partition() -> None:
    ep = endpoint(("cn-north-1a",), name="vpce-0abc-def1.s3.cn-north-1.vpce.amazonaws.com.cn")
    ep = Endpoint("cn-north-1", ep.name, ep.zones)
    assert [
        c.name
        for c in candidates(ep, "bucket", "b.bucket.vpce-0abc-def1.s3.cn-north-1.vpce.amazonaws.com.cn")
    ] == [
        "bucket.vpce-0abc-def1-cn-north-1a.s3.cn-north-1.vpce.amazonaws.com.cn",
        "bucket.vpce-0abc-def1.s3.cn-north-1.vpce.amazonaws.com.cn",
    ]


@pytest.mark.parametrize("bad", ["", ".", "a..b", "x" * 64 + ".com"])
def test_normalize_name_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_name(bad)


# --- pure decisions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([_Found(("10.0.0.1",), 60), _Found(("fd00::1",), 30)], _Found(("10.0.0.1", "fd00::1"), 30)),
        ([_Found(("10.0.0.1",), 60), _Failed(Reason.NO_ANSWER)], _Found(("10.0.0.1",), 60)),
        ([_Failed(Reason.TIMEOUT, "x"), _Found(("fd00::1",), 5)], _Found(("fd00::1",), 5)),
        ([_Failed(Reason.NO_ANSWER), _Failed(Reason.NO_ANSWER)], _Failed(Reason.NO_ANSWER)),
        ([_Failed(Reason.NXDOMAIN), _Failed(Reason.NXDOMAIN)], _Failed(Reason.NXDOMAIN)),
        ([_Failed(Reason.NO_ANSWER), _Failed(Reason.TIMEOUT, "t")], _Failed(Reason.TIMEOUT, "t")),
        ([_Failed(Reason.SERVFAIL, "s"), _Failed(Reason.NXDOMAIN)], _Failed(Reason.SERVFAIL, "s")),
    ],
)
def test_combine(outcomes: list[Any], expected: Any) -> None:
    assert _combine(outcomes) == expected


@pytest.mark.parametrize("reason", list(Reason))
def test_to_s3_error(reason: Reason) -> None:
    err = DnsFailure(REGIONAL, reason, "127.0.0.1:53 timed out").to_s3_error()
    assert (err.status, err.code) == (503, "ServiceUnavailable")
    assert REGIONAL in err.message and str(reason) in err.message and "127.0.0.1:53" in err.message
    assert DnsFailure(REGIONAL, reason).negative == (reason in (Reason.NXDOMAIN, Reason.NO_ANSWER))


def test_bench_with_clock() -> None:
    clock = FakeClock()
    core = ResolverCore([("127.0.0.1", 53)], clock=clock)
    assert not core.is_benched("10.0.0.1")
    core.bench("10.0.0.1", 30)
    assert core.is_benched("10.0.0.1") and core.benched() == {"10.0.0.1": 30}
    core.bench("10.0.0.1", 5)  # a shorter bench never shortens the current one
    clock.advance(29.9)
    assert core.is_benched("10.0.0.1")
    clock.advance(0.1)
    assert not core.is_benched("10.0.0.1") and core.benched() == {}
    core.bench("10.0.0.2", 10)
    core.unbench("10.0.0.2")
    assert not core.is_benched("10.0.0.2")


def test_choose_orders_dedupes_and_skips_benched() -> None:
    clock = FakeClock()
    core = ResolverCore([("127.0.0.1", 53)], clock=clock)
    cands = candidates(endpoint(("us-east-1a", "us-east-1b"), "us-east-1b"), "bucket")
    results: list[_Found | _Failed] = [
        _Found(("10.0.2.1",), 60),
        _Failed(Reason.NXDOMAIN),
        _Found(("10.0.1.1", "10.0.2.1", "10.0.3.1"), 60),
    ]
    assert core._choose(cands, results) == [
        Target("10.0.2.1", zonal("us-east-1b")),
        Target("10.0.1.1", REGIONAL),
        Target("10.0.3.1", REGIONAL),
    ]
    core.bench("10.0.2.1", 10)
    assert [t.address for t in core._choose(cands, results)] == ["10.0.1.1", "10.0.3.1"]
    core.bench("10.0.1.1", 5)
    core.bench("10.0.3.1", 20)
    # all benched: all of them, the one back soonest first, rather than refusing
    assert [t.address for t in core._choose(cands, results)] == ["10.0.1.1", "10.0.2.1", "10.0.3.1"]
    clock.advance(5)
    assert [t.address for t in core._choose(cands, results)] == ["10.0.1.1"]


def test_choose_all_failed_names_regional() -> None:
    core = ResolverCore([("127.0.0.1", 53)], clock=FakeClock())
    cands = candidates(endpoint(("us-east-1a",), "us-east-1a"), "bucket")
    with pytest.raises(DnsFailure) as info:
        core._choose(cands, [_Failed(Reason.NXDOMAIN), _Failed(Reason.TIMEOUT, "x")])
    assert info.value.name == REGIONAL and info.value.reason is Reason.TIMEOUT
    assert zonal("us-east-1a") in info.value.detail


def test_nameserver_holddown_order() -> None:
    clock = FakeClock()
    a, b, c = ("127.0.0.1", 53), ("127.0.0.2", 53), ("::1", 5353)
    core = ResolverCore([a, b, c], nameserver_holddown=30, clock=clock)
    assert core.nameserver_order() == [a, b, c]
    q = _Query(core, "x.example", dns.rdatatype.A)
    assert q.next_attempt() == (a, 2.0)
    q.failed(a, TimeoutError())
    assert core.nameserver_order() == [b, c, a]
    clock.advance(30)
    assert core.nameserver_order() == [a, b, c]
    assert q.exhausted() == _Failed(Reason.TIMEOUT, "127.0.0.1:53 timed out")


def _response(query: dns.message.Message, rcode: dns.rcode.Rcode = dns.rcode.NOERROR) -> dns.message.Message:
    r = dns.message.make_response(query)
    r.set_rcode(rcode)
    return r


def test_query_interprets_answers() -> None:
    core = ResolverCore([("127.0.0.1", 53), ("127.0.0.2", 53)], clock=FakeClock())
    q = _Query(core, "a.example", dns.rdatatype.A)
    ns1, _ = q.next_attempt() or pytest.fail()
    assert q.answered(ns1, _response(q.message, dns.rcode.SERVFAIL)) is None
    assert core.nameserver_order()[0] == ns1  # SERVFAIL is about the name: no holddown
    ns2, _ = q.next_attempt() or pytest.fail()
    r = dns.message.make_response(q.message)
    r.answer.append(dns.rrset.from_text("a.example.", 300, "IN", "CNAME", "b.example."))
    r.answer.append(dns.rrset.from_text("b.example.", 20, "IN", "A", "10.0.0.1", "10.0.0.2"))
    r = dns.message.from_wire(r.to_wire())  # as the driver gets it
    found = q.answered(ns2, r)
    assert isinstance(found, _Found)
    assert sorted(found.addresses) == ["10.0.0.1", "10.0.0.2"] and found.ttl == 20  # min TTL along the chain
    assert q.next_attempt() is None

    q = _Query(core, "a.example", dns.rdatatype.A)
    ns1, _ = q.next_attempt() or pytest.fail()
    assert q.answered(ns1, _response(q.message, dns.rcode.REFUSED)) is None
    assert core.nameserver_order()[-1] == ns1  # REFUSED: this server won't help, ask it last
    ns2, _ = q.next_attempt() or pytest.fail()
    assert q.answered(ns2, _response(q.message, dns.rcode.SERVFAIL)) is None
    assert q.next_attempt() is None
    failed = q.exhausted()
    assert failed.reason is Reason.SERVFAIL and "REFUSED" in failed.detail

    q = _Query(core, "a.example", dns.rdatatype.A)
    ns, _ = q.next_attempt() or pytest.fail()
    assert q.answered(ns, _response(q.message, dns.rcode.NXDOMAIN)) == _Failed(Reason.NXDOMAIN)
    q = _Query(core, "a.example", dns.rdatatype.A)
    ns, _ = q.next_attempt() or pytest.fail()
    assert q.answered(ns, _response(q.message)) == _Failed(Reason.NO_ANSWER)


def test_lifetime_bounds_attempts() -> None:
    clock = FakeClock()
    core = ResolverCore([("127.0.0.1", 53), ("127.0.0.2", 53)], timeout=2, lifetime=3, clock=clock)
    q = _Query(core, "a.example", dns.rdatatype.A)
    assert q.next_attempt() == (("127.0.0.1", 53), 2)
    clock.advance(2)
    assert q.next_attempt() == (("127.0.0.2", 53), 1)
    clock.advance(1)
    assert q.next_attempt() is None


def test_constructor_checks_and_system_nameservers() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        ResolverCore([("dns.example", 53)])
    with pytest.raises(ValueError, match="port"):
        ResolverCore([("127.0.0.1", 0)])
    with pytest.raises(ValueError, match="positive"):
        ResolverCore([("127.0.0.1", 53)], timeout=0)
    with pytest.raises(ValueError, match="families"):
        ResolverCore([("127.0.0.1", 53)], families=("MX",))
    core = ResolverCore((), system_nameservers=lambda: (("10.9.9.9", 53),))
    assert core.nameservers == (("10.9.9.9", 53),) and core.lifetime == 2.0


# --- the asyncio driver against a real (in-process) DNS server ------------------------------------------


def test_resolve_and_ttl_cache(zone: Zone, ns: tuple[str, int]) -> None:
    zone.add(REGIONAL, "127.0.0.11", "::1", "127.0.0.12", ttl=60)
    clock = FakeClock()
    r = make([ns], clock, cache_max_ttl=300)

    async def go() -> None:
        assert await r.resolve(REGIONAL.upper() + ".") == ["127.0.0.11", "127.0.0.12", "::1"]
        assert zone.count(REGIONAL) == 2  # A and AAAA
        clock.advance(59)
        assert await r.resolve(REGIONAL) == ["127.0.0.11", "127.0.0.12", "::1"]
        assert zone.count(REGIONAL) == 2
        zone.records[REGIONAL] = [("A", "127.0.0.13", 60)]
        clock.advance(1)  # TTL over: asked again, new answer
        assert await r.resolve(REGIONAL) == ["127.0.0.13"]
        assert zone.count(REGIONAL) == 4

    asyncio.run(go())
    assert (r.stats.lookups, r.stats.cache_hits, r.stats.failures) == (2, 1, 0)


def test_cache_max_ttl_caps(zone: Zone, ns: tuple[str, int]) -> None:
    zone.add(REGIONAL, "127.0.0.11", ttl=86400)
    clock = FakeClock()
    r = make([ns], clock, cache_max_ttl=10, families=("A",))

    async def go() -> None:
        await r.resolve(REGIONAL)
        clock.advance(9.9)
        await r.resolve(REGIONAL)
        assert zone.count(REGIONAL) == 1
        clock.advance(0.1)
        await r.resolve(REGIONAL)
        assert zone.count(REGIONAL) == 2

    asyncio.run(go())


def test_cname_chain(zone: Zone, ns: tuple[str, int]) -> None:
    zone.cname(REGIONAL, "target.example", ttl=5)
    zone.add("target.example", "127.0.0.20", ttl=60)
    clock = FakeClock()
    r = make([ns], clock, families=("A",))

    async def go() -> None:
        assert await r.resolve(REGIONAL) == ["127.0.0.20"]
        clock.advance(5)
        await r.resolve(REGIONAL)
        assert zone.count(REGIONAL) == 2  # cached for the CNAME's shorter TTL only

    asyncio.run(go())


@pytest.mark.parametrize(("setup", "reason"), [("nxdomain", Reason.NXDOMAIN), ("noanswer", Reason.NO_ANSWER)])
def test_negative_cache(zone: Zone, ns: tuple[str, int], setup: str, reason: Reason) -> None:
    if setup == "noanswer":
        zone.records[REGIONAL] = []
    clock = FakeClock()
    r = make([ns], clock, negative_ttl=5)

    async def go() -> None:
        for _ in range(2):
            with pytest.raises(DnsFailure) as info:
                await r.resolve(REGIONAL)
            assert (info.value.name, info.value.reason) == (REGIONAL, reason)
        assert zone.count(REGIONAL) == 2
        clock.advance(5)
        zone.add(REGIONAL, "127.0.0.11")  # the name appears: found once the negative entry expires
        assert await r.resolve(REGIONAL) == ["127.0.0.11"]
        assert zone.count(REGIONAL) == 4

    asyncio.run(go())
    assert r.stats.failures == 1 and r.stats.cache_hits == 1


def test_timeout_when_every_nameserver_is_silent(dead_ns: tuple[str, int]) -> None:
    r = make([dead_ns], timeout=0.2)

    async def go() -> DnsFailure:
        start = time.monotonic()
        with pytest.raises(DnsFailure) as info:
            await r.resolve(REGIONAL)
        assert time.monotonic() - start < 1.5
        return info.value

    failure = asyncio.run(go())
    assert failure.reason is Reason.TIMEOUT and "timed out" in failure.detail
    assert failure.to_s3_error().status == 503
    assert r.stats.failures == 1


def test_timeouts_are_not_cached(zone: Zone, dead_ns: tuple[str, int]) -> None:
    zone.add(REGIONAL, "127.0.0.11")
    server, live = start_server(zone)
    try:
        r = make([dead_ns], timeout=0.2, families=("A",))

        async def go() -> None:
            with pytest.raises(DnsFailure):
                await r.resolve(REGIONAL)
            r.nameservers = (live,)  # DNS comes back: recovered on the next request
            assert await r.resolve(REGIONAL) == ["127.0.0.11"]

        asyncio.run(go())
    finally:
        server.stop()
        server.server.server_close()


def test_second_nameserver_when_first_is_dead(
    zone: Zone, ns: tuple[str, int], dead_ns: tuple[str, int]
) -> None:
    zone.add(REGIONAL, "127.0.0.11")
    zone.add(zonal("us-east-1a"), "127.0.0.12")
    clock = FakeClock()
    r = make([dead_ns, ns], clock, timeout=0.3, nameserver_holddown=30)

    async def timed(name: str) -> tuple[list[str], float]:
        start = time.monotonic()
        addresses = await r.resolve(name)
        return addresses, time.monotonic() - start

    async def go() -> None:
        addresses, took = await timed(REGIONAL)
        assert addresses == ["127.0.0.11"] and took >= 0.25
        # the dead one is now asked last: the next lookup does not pay its timeout
        addresses, took = await timed(zonal("us-east-1a"))
        assert addresses == ["127.0.0.12"] and took < 0.25
        clock.advance(30)  # holddown over: the first nameserver is tried first again
        assert r.nameserver_order() == [dead_ns, ns]

    asyncio.run(go())
    assert r.stats.nameserver_errors == 2  # A and AAAA each timed out once


def test_servfail_then_next_nameserver(zone: Zone, ns: tuple[str, int]) -> None:
    bad = Zone()
    bad.rcodes[REGIONAL] = RCODE.SERVFAIL
    zone.add(REGIONAL, "127.0.0.11")
    server, bad_ns = start_server(bad)
    try:
        r = make([bad_ns, ns], families=("A",))
        assert asyncio.run(r.resolve(REGIONAL)) == ["127.0.0.11"]
        only_bad = make([bad_ns], families=("A",))
        with pytest.raises(DnsFailure) as info:
            asyncio.run(only_bad.resolve(REGIONAL))
        assert info.value.reason is Reason.SERVFAIL
    finally:
        server.stop()
        server.server.server_close()


def test_concurrent_lookups_coalesce(zone: Zone, ns: tuple[str, int]) -> None:
    zone.add(REGIONAL, "127.0.0.11")
    zone.delay = 0.2
    r = make([ns], timeout=2)

    async def go() -> list[list[str]]:
        return await asyncio.gather(*(r.resolve(REGIONAL) for _ in range(10)))

    assert asyncio.run(go()) == [["127.0.0.11"]] * 10
    assert zone.count(REGIONAL) == 2 and r.stats.lookups == 1 and r.stats.coalesced == 9


def test_cancelled_waiter_does_not_cancel_the_lookup(zone: Zone, ns: tuple[str, int]) -> None:
    zone.add(REGIONAL, "127.0.0.11")
    zone.delay = 0.2
    r = make([ns], timeout=2, families=("A",))

    async def go() -> list[str]:
        first = asyncio.create_task(r.resolve(REGIONAL))
        second = asyncio.create_task(r.resolve(REGIONAL))
        await asyncio.sleep(0.05)
        first.cancel()
        return await second

    assert asyncio.run(go()) == ["127.0.0.11"]
    assert zone.count(REGIONAL) == 1


def test_serve_stale_when_dns_fails(zone: Zone, dead_ns: tuple[str, int]) -> None:
    zone.add(REGIONAL, "127.0.0.11", ttl=10)
    server, live = start_server(zone)
    clock = FakeClock()
    try:
        r = make([live], clock, timeout=0.2, serve_stale=60, families=("A",))

        async def go() -> None:
            await r.resolve(REGIONAL)
            r.nameservers = (dead_ns,)
            clock.advance(30)
            assert await r.resolve(REGIONAL) == ["127.0.0.11"]
            clock.advance(40)
            with pytest.raises(DnsFailure):
                await r.resolve(REGIONAL)

        asyncio.run(go())
        assert r.stats.stale_served == 1
    finally:
        server.stop()
        server.server.server_close()


def test_pick_zonal_preference_and_bench(zone: Zone, ns: tuple[str, int]) -> None:
    zone.add(zonal("us-east-1a"), "127.0.1.1")
    zone.add(zonal("us-east-1b"), "127.0.2.1")
    zone.add(REGIONAL, "127.0.1.1", "127.0.2.1", "127.0.3.1")
    clock = FakeClock()
    r = make([ns], clock, families=("A",))
    ep = endpoint(("us-east-1a", "us-east-1b", "us-east-1c"), "us-east-1b")

    async def go() -> None:
        picked = await r.pick(ep, "bucket")
        assert picked == [
            Target("127.0.2.1", zonal("us-east-1b")),
            Target("127.0.1.1", zonal("us-east-1a")),
            Target("127.0.3.1", REGIONAL),  # us-east-1c has no zonal name here: NXDOMAIN, skipped
        ]
        r.bench("127.0.2.1", 60)
        assert [a for a, _ in await r.pick(ep, "bucket", f"my-bucket.bucket.{VPCE}")] == [
            "127.0.1.1",
            "127.0.3.1",
        ]
        # one lookup per endpoint-level name, however the host was spelled
        assert r.stats.lookups == 4 and zone.count(f"my-bucket.bucket.{VPCE}") == 0
        clock.advance(60)
        assert (await r.pick(ep, "bucket"))[0].address == "127.0.2.1"

    asyncio.run(go())


def test_pick_cached_answers_from_the_cache_alone(zone: Zone, ns: tuple[str, int]) -> None:
    """What s3proxy.reuse asks before reusing a kept connection: where a new connection would go now,
    without a lookup, and without counting as a cache hit."""
    import ssl

    from s3proxy.upstream import Upstreams

    zone.add(zonal("us-east-1a"), "127.0.1.1", ttl=60)
    zone.add(zonal("us-east-1b"), "127.0.2.1", ttl=60)
    zone.add(REGIONAL, "127.0.1.1", "127.0.2.1", ttl=60)
    clock = FakeClock()
    r = make([ns], clock, families=("A",))
    ep = endpoint(("us-east-1a", "us-east-1b"), "us-east-1b")
    ups = Upstreams(r, {"us-east-1": ep}, ssl_context=ssl.create_default_context())
    host = f"bucket.{VPCE}"
    assert r.pick_cached(ep, "bucket") is None and ups.preferred(host) is None  # nothing cached: no lookup
    assert r.stats.lookups == 0

    async def go() -> None:
        picked = await r.pick(ep, "bucket")
        assert r.pick_cached(ep, "bucket") == picked

    asyncio.run(go())
    hits = r.stats.cache_hits
    assert ups.preferred(host) == "127.0.2.1"
    assert ups.preferred("bucket.vpce-other.s3.us-east-1.vpce.amazonaws.com") is None  # not ours
    r.bench("127.0.2.1", 30)
    assert ups.preferred(host) == "127.0.1.1"  # failed over
    clock.advance(31)
    assert ups.preferred(host) == "127.0.2.1"  # the preferred zone's bench is over
    assert r.stats.cache_hits == hits and r.stats.lookups == 3
    clock.advance(60)
    assert ups.preferred(host) is None  # expired: a new connection looks the names up again


def test_pick_fails_with_regional_name(zone: Zone, ns: tuple[str, int]) -> None:
    r = make([ns])
    with pytest.raises(DnsFailure) as info:
        asyncio.run(r.pick(endpoint(("us-east-1a",)), "control"))
    assert info.value.name == f"control.{VPCE}" and info.value.reason is Reason.NXDOMAIN
    assert f"control.{VPCE}" in info.value.to_s3_error().message


# --- the blocking driver --------------------------------------------------------------------------------


def test_sync_driver(zone: Zone, ns: tuple[str, int], dead_ns: tuple[str, int]) -> None:
    zone.add(zonal("us-east-1a"), "127.0.1.1")
    zone.add(REGIONAL, "127.0.1.1", "127.0.3.1", "::1")
    r = make([dead_ns, ns], timeout=0.2)
    assert r.pick_sync(endpoint(("us-east-1a",), "us-east-1a"), "bucket") == [
        Target("127.0.1.1", zonal("us-east-1a")),
        Target("127.0.3.1", REGIONAL),
        Target("::1", REGIONAL),
    ]
    assert r.resolve_sync(REGIONAL) == ["127.0.1.1", "127.0.3.1", "::1"]
    assert r.stats.cache_hits == 1
    with pytest.raises(DnsFailure) as info:
        r.resolve_sync("nothing.example")
    assert info.value.reason is Reason.NXDOMAIN


def test_from_config() -> None:
    from s3proxy.config import DNSConfig

    clock = FakeClock()
    r = Resolver.from_config(DNSConfig((("127.0.0.1", 5353),), 0.5, 30, 2), clock=clock)
    assert isinstance(r, Resolver)
    assert (r.nameservers, r.timeout, r.cache_max_ttl, r.negative_ttl, r.clock) == (
        (("127.0.0.1", 5353),),
        0.5,
        30,
        2,
        clock,
    )
