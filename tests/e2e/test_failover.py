"""Endpoint failover through the real proxy: a dead zonal address, every address dead, DNS outages and
several nameservers.

The us-east-1 endpoint is configured with two zones, so the proxy's candidates are, best first,
`bucket.<vpce>-us-east-1a` (127.0.0.2), `bucket.<vpce>-us-east-1b` (127.0.0.3) and the regional name
(127.0.0.1), all served by the recording tap. Each new client connection makes the proxy open a new upstream
connection, which is where it probes and fails over; the tap log says which address served each request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from e2e.authkit import Reply, send, sigv4_sign
from e2e.harness import ADMIN, ProxyProcess, S3Backend, ensure_bucket, free_ports
from s3proxy.standin.dns import DnsServer

BUCKET = "e2e-failover"
US = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
ZONE_A, ZONE_B, REGIONAL = "127.0.0.2", "127.0.0.3", "127.0.0.1"
NO_RETRY = Config(retries={"total_max_attempts": 1})
BENCH = 1.5


def zonal_overrides(s3_backend: S3Backend, **upstream: Any) -> dict[str, Any]:
    return {
        "endpoints": {
            "us-east-1": {
                "dns_name": US,
                "port": s3_backend.endpoint_port,
                "zones": ["us-east-1a", "us-east-1b"],
            }
        },
        "upstream": {"bench_seconds": BENCH, "connect_timeout": 0.5, **upstream},
        "dns": {"cache_max_ttl": 0, "negative_ttl": 0.2, "timeout": 0.5},
    }


@pytest.fixture(scope="module", autouse=True)
def bucket(s3_backend: S3Backend) -> None:
    s3 = s3_backend.direct_client()
    ensure_bucket(s3, BUCKET)
    s3.put_object(Bucket=BUCKET, Key="ok", Body=b"served")


@pytest.fixture(autouse=True)
def restore(s3_backend: S3Backend) -> Any:
    yield
    s3_backend.tap.set_mode("up")
    s3_backend.dns.set_mode("normal")


def get_with_new_connection(proxy: ProxyProcess) -> bytes:
    """One GET on a fresh client (so a fresh upstream connection, probed by the proxy)."""
    s3 = proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    data: bytes = s3.get_object(Bucket=BUCKET, Key="ok")["Body"].read()
    return data


def served_by(s3_backend: S3Backend, mark: int) -> list[str]:
    return [r.address for r in s3_backend.upstream_requests(mark) if r.target.endswith("/ok")]


def raw_get(proxy: ProxyProcess) -> Reply:
    url = f"https://s3.us-east-1.amazonaws.com/{BUCKET}/ok"
    return send(proxy, "GET", url, sigv4_sign(ADMIN, "GET", url, {}), timeout=20)


def bench_count(proxy: ProxyProcess, address: str) -> int:
    return proxy.logs().count(f"endpoint address {address} benched")


# --- one zonal address dead -----------------------------------------------------------------------------


def test_candidates_in_zonal_order_when_all_are_up(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    proxy = proxy_factory(zonal_overrides(s3_backend))
    mark = s3_backend.mark()
    assert get_with_new_connection(proxy) == b"served"
    assert served_by(s3_backend, mark) == [ZONE_A]
    # SNI and Host stay the regional name the request was signed for, on the zonal address.
    (req,) = [r for r in s3_backend.upstream_requests(mark) if r.target.endswith("/ok")]
    assert req.sni == f"bucket.{US}"


@pytest.mark.parametrize("mode", ["refuse", "badcert", "reset", "hang"])
def test_dead_zonal_address_fails_over_and_is_retried_after_its_bench_time(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, mode: str
) -> None:
    proxy = proxy_factory(zonal_overrides(s3_backend))
    s3_backend.tap.set_mode(mode, [ZONE_A])  # type: ignore[arg-type]
    mark = s3_backend.mark()
    started = time.monotonic()
    for _ in range(4):
        assert get_with_new_connection(proxy) == b"served"
    # Every request went to the next candidate, and the dead address was probed once, not per request.
    assert served_by(s3_backend, mark) == [ZONE_B] * 4
    took = time.monotonic() - started
    assert took < 4 * 0.5 + 3  # a hang costs one connect_timeout (0.5 s), not one per request
    # Probed once per bench period, not once per request (a slow machine may have started a second).
    assert bench_count(proxy, ZONE_A) <= 1 + int(took // BENCH)
    if mode == "badcert":
        assert "certificate" in proxy.logs()
    # Still dead after the bench time: probed again (once), and requests still succeed.
    benched = bench_count(proxy, ZONE_A)
    time.sleep(BENCH + 0.1)
    assert get_with_new_connection(proxy) == b"served"
    assert bench_count(proxy, ZONE_A) == benched + 1
    # Back up: after its bench time the preferred zone serves again.
    s3_backend.tap.set_mode("up", [ZONE_A])
    time.sleep(BENCH + 0.1)
    mark = s3_backend.mark()
    assert get_with_new_connection(proxy) == b"served"
    assert served_by(s3_backend, mark) == [ZONE_A]


def test_both_zones_dead_falls_back_to_the_regional_name(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    proxy = proxy_factory(zonal_overrides(s3_backend))
    s3_backend.tap.set_mode("refuse", [ZONE_A])
    s3_backend.tap.set_mode("reset", [ZONE_B])
    mark = s3_backend.mark()
    assert get_with_new_connection(proxy) == b"served"
    assert served_by(s3_backend, mark) == [REGIONAL]


@pytest.mark.parametrize("mode", ["refuse", "badcert"])
def test_every_address_dead_is_a_503_naming_the_endpoint_then_recovers(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, mode: str
) -> None:
    proxy = proxy_factory(zonal_overrides(s3_backend))
    s3_backend.tap.set_mode(mode)  # type: ignore[arg-type]
    mark = s3_backend.mark()
    reply = raw_get(proxy)
    assert reply.status == 503, reply
    err = reply.error()
    assert err["Code"] == "ServiceUnavailable"
    assert f"bucket.{US}" in err["Message"]
    for address in (ZONE_A, ZONE_B, REGIONAL):
        assert address in err["Message"], err  # each candidate and why it failed
    s3 = proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=BUCKET, Key="ok")
    assert info.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert s3_backend.upstream_requests(mark) == []
    # The endpoint comes back: once the bench time is over, requests succeed again.
    s3_backend.tap.set_mode("up")
    time.sleep(BENCH + 0.1)
    assert get_with_new_connection(proxy) == b"served"


# --- DNS ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "reason"), [("nxdomain", "NXDOMAIN"), ("drop", "timeout"), ("servfail", "SERVFAIL")]
)
def test_dns_down_is_a_503_naming_the_endpoint_and_the_proxy_recovers(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, mode: str, reason: str
) -> None:
    proxy = proxy_factory(zonal_overrides(s3_backend))
    assert get_with_new_connection(proxy) == b"served"
    mark = s3_backend.mark()
    s3_backend.dns.set_mode(mode)  # type: ignore[arg-type]
    started = time.monotonic()
    reply = raw_get(proxy)
    assert time.monotonic() - started < 5  # never a hang: a few DNS timeouts at most
    assert reply.status == 503, reply
    err = reply.error()
    assert err["Code"] == "ServiceUnavailable"
    assert US in err["Message"] and reason in err["Message"], err
    assert s3_backend.upstream_requests(mark) == []
    s3_backend.dns.set_mode("normal")
    deadline = time.monotonic() + 5
    while (reply := raw_get(proxy)).status != 200:
        assert time.monotonic() < deadline, reply
        time.sleep(0.1)
    assert reply.body == b"served"


@pytest.fixture
def silent_nameserver() -> Any:
    srv = DnsServer().start()
    srv.set_mode("drop")
    yield srv
    srv.stop()


@pytest.mark.parametrize("dead", ["silent", "closed-port"])
def test_nameservers_are_tried_in_turn(
    proxy_factory: Callable[..., ProxyProcess],
    s3_backend: S3Backend,
    silent_nameserver: DnsServer,
    dead: str,
) -> None:
    first = silent_nameserver.address if dead == "silent" else f"127.0.0.1:{free_ports(1)[0]}"
    overrides = zonal_overrides(s3_backend)
    overrides["dns"] = {**overrides["dns"], "nameservers": [first, s3_backend.dns.address]}
    proxy = proxy_factory(overrides)
    dns_mark = s3_backend.dns.mark()
    started = time.monotonic()
    assert get_with_new_connection(proxy) == b"served"
    assert time.monotonic() - started < 3
    assert s3_backend.dns.names_asked(dns_mark)  # the second nameserver answered
    # The dead first one is held down: later lookups go straight to the live one, without a timeout each.
    started = time.monotonic()
    for _ in range(3):
        assert get_with_new_connection(proxy) == b"served"
    assert time.monotonic() - started < 3
    # Both down: a 503 that names the endpoint and says what each nameserver did.
    s3_backend.dns.set_mode("drop")
    reply = raw_get(proxy)
    assert reply.status == 503, reply
    err = reply.error()
    assert US in err["Message"] and "timeout" in err["Message"], err
    assert s3_backend.dns.address in err["Message"]
    s3_backend.dns.set_mode("normal")
    deadline = time.monotonic() + 5
    while raw_get(proxy).status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
