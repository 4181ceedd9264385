"""Endpoint connections shared across client connections (`upstream.reuse_idle`, s3proxy.reuse).

A legacy client that opens a new connection per request: the endpoint connection the previous client
connection left idle carries the next one's requests, with no new TCP+TLS handshake or address probe. The
proxy is the real process, the clients boto3 and curl (one new client connection each), the endpoint the
recording TLS tap in front of SeaweedFS (which verifies every signature); the tap says which endpoint
connection each request arrived on, and the admin listener's metrics say what the proxy kept and reused."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from e2e.authkit import curl_args
from e2e.harness import ENDPOINTS, Admin, ProxyProcess, S3Backend, TapFault, admin_proxy, ensure_bucket

BUCKET = "reuse-e2e"
NO_RETRY = Config(retries={"total_max_attempts": 1})
IDLE = "s3proxy_upstream_idle_connections"
REUSED = "s3proxy_upstream_connections_reused_total"
PROBES = "s3proxy_upstream_probes_total"


@pytest.fixture(scope="module", autouse=True)
def bucket(s3_backend: S3Backend) -> None:
    ensure_bucket(s3_backend.direct_client(), BUCKET)


@pytest.fixture(autouse=True)
def no_faults_left(s3_backend: S3Backend) -> Any:
    yield
    s3_backend.tap.clear_faults()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_direct(s3_backend: S3Backend, data: bytes) -> str:
    k = f"r-{uuid.uuid4().hex[:12]}"
    s3_backend.direct_client().put_object(Bucket=BUCKET, Key=k, Body=data)
    return k


def get_on_new_connection(proxy: ProxyProcess, k: str, region: str = "us-east-1") -> bytes:
    """One GET on a client connection of its own, closed when it is done."""
    s3 = proxy.boto3_client(region=region, config=NO_RETRY)
    try:
        return bytes(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())
    finally:
        s3.close()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def one_kept(
    proxy_factory: Callable[..., ProxyProcess],
    s3_backend: S3Backend,
    data: bytes,
    overrides: dict[str, Any] | None = None,
) -> tuple[ProxyProcess, Admin, str]:
    """A proxy (with its admin listener) that keeps one idle endpoint connection: `data` stored directly as
    the returned key, then fetched once on a client connection of its own."""
    proxy, admin = admin_proxy(proxy_factory, overrides)
    k = put_direct(s3_backend, data)
    assert get_on_new_connection(proxy, k) == data
    admin.wait_for(IDLE, 1)
    return proxy, admin, k


def connections_of(s3_backend: S3Backend, mark: int, k: str) -> list[int]:
    return [r.connection for r in s3_backend.tap.requests(mark) if k in r.target]


def test_new_client_connections_take_the_idle_endpoint_connection(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    proxy, admin = admin_proxy(proxy_factory)
    data = os.urandom(100_000)
    k = put_direct(s3_backend, data)
    mark = s3_backend.tap.mark()
    for i in range(5):
        assert sha(get_on_new_connection(proxy, k)) == sha(data)
        # The client connection is gone; its endpoint connection is kept for the next one.
        admin.wait_for(IDLE, 1)
        assert admin.value(REUSED) == i
    used = connections_of(s3_backend, mark, k)
    assert len(used) == 5 and len(set(used)) == 1, used
    # One new endpoint connection, so one address probe (upstream.verify_interval 0), not five.
    assert admin.value(PROBES) == 1


def test_curl_per_request_reuses_the_endpoint_connection(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    """curl in a shell loop: one process, one client connection per request (a presigned URL, re-signed
    by the proxy for the endpoint)."""
    proxy, admin = admin_proxy(proxy_factory)
    data = os.urandom(50_000)
    k = put_direct(s3_backend, data)
    url = proxy.boto3_client(region="us-east-1").generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": k}, ExpiresIn=300
    )
    mark = s3_backend.tap.mark()
    for _ in range(3):
        out = subprocess.run(
            [*curl_args(proxy), "-f", "-o", "-", url], capture_output=True, env=proxy.env(None), timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert sha(out.stdout) == sha(data)
        admin.wait_for(IDLE, 1)
    assert len(set(connections_of(s3_backend, mark, k))) == 1
    assert admin.value(REUSED) == 2


def test_reuse_off_gives_each_client_connection_its_own(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    proxy, admin = admin_proxy(proxy_factory, {"upstream": {"discover_region": False, "reuse_idle": 0}})
    data = os.urandom(1000)
    k = put_direct(s3_backend, data)
    mark = s3_backend.tap.mark()
    for _ in range(3):
        assert get_on_new_connection(proxy, k) == data
    assert len(set(connections_of(s3_backend, mark, k))) == 3
    assert admin.value(REUSED) == 0 and admin.value(IDLE) == 0


def test_idle_connection_is_closed_after_reuse_idle(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    data = os.urandom(1000)
    mark = s3_backend.tap.mark()
    overrides = {"upstream": {"discover_region": False, "reuse_idle": 0.5}}
    proxy, admin, k = one_kept(proxy_factory, s3_backend, data, overrides)
    # Expired: closed by the proxy (the endpoint sees it go), not handed to the next client connection.
    wait_until(lambda: admin.value(IDLE) == 0, "the idle connection was never closed")
    assert get_on_new_connection(proxy, k) == data
    assert len(set(connections_of(s3_backend, mark, k))) == 2
    assert admin.value(REUSED) == 0


def test_endpoint_closing_an_idle_connection_costs_nothing(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    """S3 closes idle kept-alive connections: a kept one it closes is dropped at once, and the next client
    connection gets a new one without an error."""
    data = os.urandom(1000)
    proxy, admin, k = one_kept(proxy_factory, s3_backend, data)
    assert s3_backend.tap.close_connections() >= 1
    wait_until(lambda: admin.value(IDLE) == 0, "a connection the endpoint closed is still kept")
    for _ in range(2):
        assert get_on_new_connection(proxy, k) == data
    assert admin.value(REUSED) == 1  # the second GET took the first one's new connection


def test_get_on_a_kept_connection_that_dies_is_sent_again(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    """The kept connection is cut just as the next client's GET goes out on it (the endpoint closed it at
    that moment): the GET goes out once more on a new connection and the client gets the object."""
    data = os.urandom(20_000)
    proxy, admin, k = one_kept(proxy_factory, s3_backend, data)
    mark = s3_backend.tap.mark()
    s3_backend.tap.add_fault(TapFault("cut-response", 0, match=k))
    assert sha(get_on_new_connection(proxy, k)) == sha(data)
    assert admin.value(REUSED) == 1
    used = connections_of(s3_backend, mark, k)
    assert len(used) == 2 and used[0] != used[1]


def test_the_replay_of_a_get_goes_on_a_new_connection_not_another_kept_one(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    """An endpoint closes idle connections in batches: when the GET on one kept connection finds it dead,
    the other kept ones are likely dead too, so the one replay goes on a new (probed) connection."""
    proxy, admin = admin_proxy(proxy_factory)
    data = os.urandom(5000)
    k = put_direct(s3_backend, data)
    # Two client connections at once leave two idle endpoint connections.
    first, second = (proxy.boto3_client(region="us-east-1", config=NO_RETRY) for _ in range(2))
    assert first.get_object(Bucket=BUCKET, Key=k)["Body"].read() == data
    assert second.get_object(Bucket=BUCKET, Key=k)["Body"].read() == data
    first.close()
    second.close()
    admin.wait_for(IDLE, 2)
    mark = s3_backend.tap.mark()
    probes = admin.value(PROBES)
    s3_backend.tap.add_fault(TapFault("cut-response", 0, match=k))
    assert sha(get_on_new_connection(proxy, k)) == sha(data)
    used = connections_of(s3_backend, mark, k)
    assert len(used) == 2 and used[1] > used[0], used
    assert admin.value(REUSED) == 1  # the failed GET took a kept one; the replay did not
    assert admin.value(PROBES) == probes + 1  # the replay's connection was proven first
    admin.wait_for(IDLE, 2)  # the other kept one is still there, plus the replay's


def test_put_on_a_kept_connection_that_dies_fails_and_stores_nothing(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    """A body cannot be sent twice by the proxy: the client gets the error (an SDK retries), the endpoint
    stores nothing partial, and the proxy goes on serving."""
    proxy, admin, k0 = one_kept(proxy_factory, s3_backend, b"warm")
    k = f"r-{uuid.uuid4().hex[:12]}"
    s3_backend.tap.add_fault(TapFault("cut-request", 1000, match=k))
    s3 = proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    with pytest.raises(Exception):  # noqa: B017 - a cut connection or a 5xx, whichever the client meets
        s3.put_object(Bucket=BUCKET, Key=k, Body=os.urandom(200_000))
    s3.close()
    assert admin.value(REUSED) == 1
    with pytest.raises(ClientError):
        s3_backend.direct_client().head_object(Bucket=BUCKET, Key=k)
    assert get_on_new_connection(proxy, k0) == b"warm"


def test_many_clients_at_once_each_get_their_own_bytes(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    """8 clients, each opening a new connection per request, PUT and GET their own objects at once:
    every byte is the client's own, every object is stored whole, and the endpoint connections are
    shared rather than one per client connection."""
    proxy, admin = admin_proxy(proxy_factory)
    mark = s3_backend.tap.mark()

    def worker(n: int) -> list[tuple[str, str]]:
        done = []
        for i in range(4):
            k, data = f"r-{uuid.uuid4().hex[:8]}-{n}-{i}", os.urandom(30_000 + 997 * n + i)
            s3 = proxy.boto3_client(region="us-east-1", config=NO_RETRY)
            try:
                s3.put_object(Bucket=BUCKET, Key=k, Body=data)
            finally:
                s3.close()
            assert sha(get_on_new_connection(proxy, k)) == sha(data)
            done.append((k, sha(data)))
        return done

    with ThreadPoolExecutor(8) as pool:
        results = [x for r in pool.map(worker, range(8)) for x in r]
    direct = s3_backend.direct_client()
    for k, digest in results:
        assert sha(direct.get_object(Bucket=BUCKET, Key=k)["Body"].read()) == digest
    used = {r.connection for r in s3_backend.tap.requests(mark) if "r-" in r.target}
    assert len(used) < 64  # 64 client connections
    assert admin.value(REUSED) >= 64 - len(used)


def test_each_endpoint_keeps_its_own_connections(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    """Client connections for two regions, alternating: a request only ever travels on a connection to
    its own endpoint (SNI and Host name the same endpoint)."""
    proxy, admin = admin_proxy(proxy_factory)
    data = os.urandom(1000)
    k = put_direct(s3_backend, data)
    mark = s3_backend.tap.mark()
    for region in ("us-east-1", "eu-west-1") * 3:
        assert get_on_new_connection(proxy, k, region) == data
    reqs = [r for r in s3_backend.tap.requests(mark) if k in r.target]
    assert len(reqs) == 6
    for r in reqs:
        endpoint = next(ep for ep in ENDPOINTS if (r.host or "").endswith(ep.domain))
        assert r.sni is not None and r.sni.endswith(endpoint.domain), r
    assert len({r.connection for r in reqs}) == 2
    assert admin.value(REUSED) == 4


def test_reload_closes_kept_connections(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    """Kept connections were made under the old config (endpoints, CA bundle): a reload closes them."""
    data = os.urandom(1000)
    proxy, admin, k = one_kept(proxy_factory, s3_backend, data)
    assert proxy.proc is not None
    os.kill(proxy.proc.pid, signal.SIGHUP)
    wait_until(lambda: admin.value(IDLE) == 0, "a reload left kept connections open")
    assert get_on_new_connection(proxy, k) == data
    assert admin.value(REUSED) == 0
