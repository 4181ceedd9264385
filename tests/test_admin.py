"""The admin listener over real sockets on 127.0.0.1: routes, readiness flips, PAC, hostile input."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from s3proxy.admin import AdminServer, RequestHead, parse_head, targets_admin
from s3proxy.config import parse_config
from s3proxy.metrics import Metrics
from s3proxy.pac import pac_file, proxy_host_for

CONFIG = parse_config(
    {"endpoints": {"us-east-1": "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"}},
    base_dir=Path("."),
    environ={},
)


def serve(server: AdminServer, scenario: Callable[[str, int], Awaitable[None]]) -> None:
    async def main() -> None:
        await server.start("127.0.0.1", 0)
        try:
            await scenario(*server.address)
        finally:
            await server.close()

    asyncio.run(main())


Answer = tuple[int, dict[str, str], bytes]


async def raw(host: str, port: int, data: bytes) -> Answer:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


async def get(host: str, port: int, path: str, method: str = "GET") -> Answer:
    req = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: test\r\n\r\n"
    return await raw(host, port, req.encode())


def urlopen(url: str) -> tuple[int, str, bytes]:
    """A real HTTP client (urllib), for what probes and scrapers do."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_healthz_metrics_pac_with_real_client() -> None:
    metrics = Metrics(version="0.1.0", process=False)
    metrics.redirect_learned()

    def pac(host: str | None) -> str:
        return pac_file(CONFIG, proxy_host_for("0.0.0.0", host), 3128)

    server = AdminServer(metrics=metrics.render, metrics_content_type=metrics.content_type, pac=pac)

    async def scenario(host: str, port: int) -> None:
        base = f"http://{host}:{port}"
        status, ctype, body = await asyncio.to_thread(urlopen, base + "/healthz")
        assert (status, body) == (200, b"ok\n") and ctype.startswith("text/plain")
        status, ctype, body = await asyncio.to_thread(urlopen, base + "/metrics")
        assert status == 200 and ctype == metrics.content_type
        names = {s.name for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
        assert "s3proxy_redirects_learned_total" in names
        status, ctype, body = await asyncio.to_thread(urlopen, base + "/proxy.pac?x=1")
        assert status == 200 and ctype == "application/x-ns-proxy-autoconfig"
        assert f'"PROXY {host}:3128"'.encode() in body  # the name the client used to fetch it
        status, _, _ = await asyncio.to_thread(urlopen, base + "/nope")
        assert status == 404

    serve(server, scenario)


def test_readyz_flips_with_the_check() -> None:
    state: dict[str, Any] = {"ok": False, "reason": "DNS for us-east-1 failed: NXDOMAIN"}

    async def ready() -> tuple[bool, str]:
        return state["ok"], state["reason"]

    async def scenario(host: str, port: int) -> None:
        status, _, body = await get(host, port, "/readyz")
        assert status == 503 and b"NXDOMAIN" in body
        state.update(ok=True, reason="")
        status, _, body = await get(host, port, "/readyz")
        assert (status, body) == (200, b"ready\n")
        state.update(ok=False, reason="no config loaded")
        assert (await get(host, port, "/readyz"))[0] == 503

    serve(AdminServer(ready=ready), scenario)


def test_readyz_slow_or_failing_check_is_not_ready() -> None:
    async def slow() -> tuple[bool, str]:
        await asyncio.sleep(10)
        return True, ""

    async def boom() -> tuple[bool, str]:
        raise RuntimeError("secret detail")

    async def scenario_slow(host: str, port: int) -> None:
        status, _, body = await get(host, port, "/readyz")
        assert status == 503 and b"took longer" in body

    async def scenario_boom(host: str, port: int) -> None:
        status, _, body = await get(host, port, "/readyz")
        assert status == 503 and b"RuntimeError" in body and b"secret detail" not in body

    serve(AdminServer(ready=slow, ready_timeout=0.2), scenario_slow)
    serve(AdminServer(ready=boom), scenario_boom)


def test_head_and_methods() -> None:
    server = AdminServer(metrics=lambda: b"m 1\n")

    async def scenario(host: str, port: int) -> None:
        status, headers, body = await get(host, port, "/metrics", "HEAD")
        assert status == 200 and body == b"" and headers["content-length"] == "4"
        assert headers["connection"] == "close"
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            status, headers, _ = await get(host, port, "/healthz", method)
            assert status == 405 and headers["allow"] == "GET, HEAD"
        assert (await get(host, port, "/proxy.pac"))[0] == 404  # no PAC source given

    serve(server, scenario)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz\r\n\r\n", 400),
        (b"GET healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET http://127.0.0.1:9090/healthz HTTP/1.1\r\n\r\n", 200),
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
    ],
)
def test_malformed_requests(data: bytes, status: int) -> None:
    async def scenario(host: str, port: int) -> None:
        assert (await raw(host, port, data))[0] == status

    serve(AdminServer(), scenario)


def test_slow_client_times_out_and_server_keeps_serving() -> None:
    async def scenario(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes its head
        await writer.drain()
        assert (await get(host, port, "/healthz"))[0] == 200  # others are served meanwhile
        response = await asyncio.wait_for(reader.read(), 5)
        assert response.startswith(b"HTTP/1.1 408 ")
        writer.close()
        # A client that closes before a full request gets nothing and breaks nothing.
        _, w2 = await asyncio.open_connection(host, port)
        w2.write(b"GET /hea")
        w2.close()
        assert (await get(host, port, "/healthz"))[0] == 200

    serve(AdminServer(read_timeout=0.3), scenario)


def test_pac_value_error_is_400() -> None:
    def pac(host: str | None) -> str:
        return pac_file(CONFIG, proxy_host_for("0.0.0.0", host), 3128)

    async def scenario(host: str, port: int) -> None:
        status, _, body = await raw(host, port, b"GET /proxy.pac HTTP/1.1\r\nHost: evil;DIRECT\r\n\r\n")
        assert status == 400 and b"DNS name" in body
        status, _, _ = await raw(host, port, b"GET /proxy.pac HTTP/1.0\r\n\r\n")  # no Host at all
        assert status == 400

    serve(AdminServer(pac=pac), scenario)


def test_parse_head() -> None:
    assert parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a:1") == RequestHead("GET", "/metrics", "a:1")
    with pytest.raises(ValueError):
        parse_head(b"GET /metrics HTTP/2\r\n")


@pytest.mark.parametrize(
    ("host", "port", "admin_host", "expected"),
    [
        ("127.0.0.1", 9090, "127.0.0.1", True),
        ("127.1.2.3", 9090, "127.0.0.1", True),
        ("localhost", 9090, "127.0.0.1", True),
        ("LOCALHOST.", 9090, "127.0.0.1", True),
        ("::1", 9090, "127.0.0.1", True),
        ("[::ffff:127.0.0.1]", 9090, "127.0.0.1", True),
        ("0.0.0.0", 9090, "127.0.0.1", True),
        ("10.0.0.5", 9090, "10.0.0.5", True),
        ("10.0.0.6", 9090, "0.0.0.0", True),  # wildcard listen: any address of this machine may be it
        ("10.0.0.6", 9090, "10.0.0.5", False),
        ("127.0.0.1", 9091, "127.0.0.1", False),
        ("bucket.s3.amazonaws.com", 9090, "127.0.0.1", False),
    ],
)
def test_targets_admin(host: str, port: int, admin_host: str, expected: bool) -> None:
    assert targets_admin(host, port, admin_host, 9090) is expected
