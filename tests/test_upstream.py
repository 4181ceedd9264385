"""The `upstream:` config section (timeouts, region learning) and Upstreams.bucket_region over real TLS."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest

from s3proxy.config import ConfigError, UpstreamConfig, parse_config
from s3proxy.endpoint import Endpoint, parse_endpoint_name
from s3proxy.resolver import Resolver
from s3proxy.upstream import Upstreams

VPCE = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"


def parse_upstream(section: Any) -> UpstreamConfig:
    data = {"endpoints": {"us-east-1": VPCE}, "upstream": section}
    return parse_config(data, base_dir=Path("/nonexistent"), environ={}).upstream


def test_defaults_are_safe() -> None:
    u = parse_upstream({})
    assert (u.idle_timeout, u.request_timeout, u.discover_region) == (120.0, 0.0, True)
    assert (u.region_cache_ttl, u.region_cache_size) == (3600.0, 10000)
    assert (u.reuse_idle, u.reuse_max) == (5.0, 16)


def test_reuse_can_be_turned_off() -> None:
    assert parse_upstream({"reuse_idle": 0}).reuse_idle == 0
    assert parse_upstream({"reuse_max": 0}).reuse_max == 0


def test_all_keys() -> None:
    u = parse_upstream(
        {
            "idle_timeout": 5,
            "request_timeout": 600,
            "discover_region": False,
            "region_cache_ttl": 60,
            "region_cache_size": 10,
        }
    )
    assert (u.idle_timeout, u.request_timeout, u.discover_region) == (5.0, 600.0, False)
    assert (u.region_cache_ttl, u.region_cache_size) == (60.0, 10)


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({"idle_timeout": 0}, "upstream.idle_timeout"),
        ({"request_timeout": -1}, "upstream.request_timeout"),
        ({"discover_region": "yes"}, "upstream.discover_region"),
        ({"region_cache_size": 1.5}, "upstream.region_cache_size"),
        ({"region_cache_size": 0}, "upstream.region_cache_size"),
        ({"idle_timeuot": 3}, "idle_timeuot"),
        ({"reuse_idle": -1}, "upstream.reuse_idle"),
        ({"reuse_idle": 61}, "upstream.reuse_idle"),  # kept connections never outlive 60 s anyway
        ({"reuse_max": 1.5}, "upstream.reuse_max"),
        ({"reuse_max": -1}, "upstream.reuse_max"),
    ],
)
def test_bad_values_name_the_key(section: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match=path):
        parse_upstream(section)


# --- bucket_region: one anonymous HEAD over verified TLS ---------------------------------------------------


class FakeResolver(Resolver):
    def __init__(self) -> None:
        super().__init__([("127.0.0.1", 53)])

    async def _result(self, key: str) -> Any:
        from s3proxy.resolver import _Found

        return _Found(("127.0.0.1",), 60.0)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(f"*.{VPCE}", VPCE).configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@pytest.mark.parametrize(
    ("answer", "region"),
    [
        (
            b"HTTP/1.1 301 Moved Permanently\r\nx-amz-bucket-region: eu-west-1\r\nContent-Length: 0\r\n\r\n",
            "eu-west-1",
        ),
        (b"HTTP/1.1 403 Forbidden\r\nX-Amz-Bucket-Region: us-east-1\r\n\r\n", "us-east-1"),
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", None),
        (b"", None),  # closed without an answer
    ],
)
def test_bucket_region_asks_with_an_anonymous_head(
    tls_files: tuple[ssl.SSLContext, ssl.SSLContext], answer: bytes, region: str | None
) -> None:
    server_ctx, client_ctx = tls_files
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def run() -> str | None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        endpoint = Endpoint("us-east-1", parse_endpoint_name(VPCE), port=port)
        ups = Upstreams(FakeResolver(), {"us-east-1": endpoint}, ssl_context=client_ctx)
        try:
            return await ups.bucket_region(endpoint, "my-bucket", timeout=5)
        finally:
            server.close()

    assert asyncio.run(run()) == region
    (head,) = seen
    assert head.startswith(b"HEAD /my-bucket HTTP/1.1\r\n")
    assert b"authorization" not in head.lower()
    assert f"Host: bucket.{VPCE}:".encode() in head
