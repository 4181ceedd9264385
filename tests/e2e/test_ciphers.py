"""The TLS 1.3 suite on both sides of the real proxy (`tls.prefer_aes128`, s3proxy.ciphers).

The client: curl, with OpenSSL's default order (AES-256 first, as the AWS CLI and boto3 send it) or the
order a test gives it; the endpoint: the recording TLS tap in front of SeaweedFS, which picks the first suite
the proxy lists (as nginx does by default) and records it."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from e2e.authkit import curl_args
from e2e.harness import Admin, ProxyProcess, S3Backend, admin_proxy, ensure_bucket, write_config

BUCKET = "ciphers-e2e"
AES128, AES256, CHACHA = "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"


@pytest.fixture(scope="module", autouse=True)
def bucket(s3_backend: S3Backend) -> None:
    ensure_bucket(s3_backend.direct_client(), BUCKET)


def curl_get(proxy: ProxyProcess, s3_backend: S3Backend, *extra: str) -> tuple[str, str]:
    """A GET by curl through the proxy, on a new client connection and (no connection kept for reuse) a
    new endpoint connection: (the suite curl got from the proxy, the one the proxy got from the endpoint)."""
    data = os.urandom(5000)
    k = f"c-{uuid.uuid4().hex[:12]}"
    s3_backend.direct_client().put_object(Bucket=BUCKET, Key=k, Body=data)
    url = proxy.boto3_client(region="us-east-1").generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": k}, ExpiresIn=300
    )
    mark = s3_backend.tap.mark()
    out = subprocess.run(
        [*curl_args(proxy), *extra, "-v", "-f", "-o", "-", url],
        capture_output=True,
        env=proxy.env(None),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == data
    # "* SSL connection using TLSv1.3 / TLS_AES_128_GCM_SHA256 / X25519 / RSASSA-PSS"
    lines = [x for x in out.stderr.decode().splitlines() if "SSL connection using TLSv1.3" in x]
    assert len(lines) == 1, out.stderr
    serials = {r.connection for r in s3_backend.tap.requests(mark) if k in r.target}
    upstream = [c.cipher for c in s3_backend.tap.connections() if c.serial in serials]
    assert len(upstream) == 1
    return lines[0].split(" / ")[1].strip(), str(upstream[0])


NO_REUSE = {"upstream": {"reuse_idle": 0}}


def test_aes128_first_on_both_sides_by_default(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    proxy = proxy_factory(NO_REUSE)
    assert curl_get(proxy, s3_backend) == (AES128, AES128)


def test_a_client_that_lists_chacha20_first_gets_it(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    proxy = proxy_factory(NO_REUSE)
    chacha_first = f"{CHACHA}:{AES256}:{AES128}"
    assert curl_get(proxy, s3_backend, "--tls13-ciphers", chacha_first) == (CHACHA, AES128)


def test_a_client_that_offers_only_aes256_gets_it(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    proxy = proxy_factory(NO_REUSE)
    assert curl_get(proxy, s3_backend, "--tls13-ciphers", AES256) == (AES256, AES128)


def test_off_keeps_openssl_order_and_a_reload_turns_it_on(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    proxy, admin = admin_proxy(proxy_factory, {**NO_REUSE, "tls": {"prefer_aes128": False}})
    assert curl_get(proxy, s3_backend) == (AES256, AES256)
    reload(proxy, admin, {**proxy.config, "tls": {**proxy.config["tls"], "prefer_aes128": True}})
    assert curl_get(proxy, s3_backend) == (AES128, AES128)
    reload(proxy, admin, {**proxy.config, "tls": {**proxy.config["tls"], "prefer_aes128": False}})
    assert curl_get(proxy, s3_backend) == (AES256, AES256)


def reload(proxy: ProxyProcess, admin: Admin, config: dict[str, Any]) -> None:
    before = admin.value("s3proxy_config_reload_total", result="success")
    write_config(proxy, config)
    assert proxy.proc is not None
    os.kill(proxy.proc.pid, signal.SIGHUP)
    admin.wait_for("s3proxy_config_reload_total", before + 1, result="success")
