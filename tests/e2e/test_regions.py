"""A bucket in another region, reached through the legacy global host (`BUCKET.s3.amazonaws.com`).

SeaweedFS has no regions, so the tap plays S3's part: a request for EU_BUCKET that arrives under any
endpoint but eu-west-1's gets `301 PermanentRedirect` with `x-amz-bucket-region: eu-west-1` and is not
forwarded (`UpstreamTap.set_redirect`). Under the eu-west-1 endpoint it reaches SeaweedFS as usual.

- SigV2 (presigned) and anonymous clients, which carry no region: with `discover_region` (the default) the
  proxy asks S3 once (anonymous `HEAD /BUCKET` at the default region's endpoint), caches the answer, and the
  very first request goes to eu-west-1; concurrent requests share one probe. With it off, the first request
  gets S3's 301 unchanged and the proxy learns the region from it, so the next one works.
- SigV4 (boto3 configured for us-east-1): the credential scope says us-east-1, so the request goes there;
  S3's 301 passes through unchanged and boto3 follows it to the eu-west-1 name, which the proxy maps to the
  eu-west-1 endpoint.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from e2e.authkit import boto_presign, curl_args
from e2e.harness import ADMIN, ProxyProcess, S3Backend, UpstreamRequest

EU = "eu-west-1"
DISCOVER = {"upstream": {"discover_region": True}}


@pytest.fixture
def eu_bucket(s3_backend: S3Backend) -> Iterator[str]:
    """A fresh bucket (fresh name: nothing cached about it) that 'lives' in eu-west-1."""
    name = f"e2e-eu-{uuid.uuid4().hex[:10]}"
    s3 = s3_backend.direct_client()
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="obj", Body=b"from eu-west-1")
    s3_backend.tap.set_redirect(name, EU, s3_backend.endpoint(EU).domains)
    yield name
    s3_backend.tap.clear_redirects()


def curl(proxy: ProxyProcess, url: str) -> tuple[int, dict[str, str], bytes]:
    """curl (never follows redirects) through the proxy: (status, lower-case headers, body)."""
    out = subprocess.run(
        [*curl_args(proxy), "-D", "-", "-o", "-", url],
        capture_output=True,
        env=proxy.env(None),
        check=True,
        timeout=60,
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    while b"connection established" in head.split(b"\r\n")[0].lower():  # the proxy's CONNECT answer
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def eu_requests(backend: S3Backend, mark: int, bucket: str) -> list[UpstreamRequest]:
    eu = backend.endpoint(EU).domain
    return [r for r in backend.upstream_requests(mark) if bucket in r.target and (r.sni or "").endswith(eu)]


def discovery_heads(backend: S3Backend, mark: int, bucket: str) -> list[UpstreamRequest]:
    return [
        r
        for r in backend.upstream_requests(mark)
        if r.method == "HEAD" and r.target == f"/{bucket}" and r.header("authorization") is None
    ]


def test_sigv2_presigned_url_works_on_the_first_request(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, eu_bucket: str
) -> None:
    proxy = proxy_factory(DISCOVER)
    url = boto_presign(ADMIN, "GET", eu_bucket, "obj", signature_version="s3")
    assert ".s3.amazonaws.com/" in url  # the legacy global host
    mark = s3_backend.mark()
    status, _, body = curl(proxy, url)
    assert (status, body) == (200, b"from eu-west-1")
    (head,) = discovery_heads(s3_backend, mark, eu_bucket)
    assert head.sni == f"bucket.{s3_backend.endpoint('us-east-1').domain}"  # asked at the default region
    (get,) = eu_requests(s3_backend, mark, eu_bucket)
    assert get.method == "GET" and get.header("authorization") is None  # SigV2 query auth, unchanged
    # Cached: the next requests ask nothing more.
    mark = s3_backend.mark()
    for _ in range(3):
        assert curl(proxy, url)[0] == 200
    assert discovery_heads(s3_backend, mark, eu_bucket) == []
    assert len(eu_requests(s3_backend, mark, eu_bucket)) == 3


def test_anonymous_request_reaches_the_right_region_and_discovery_is_coalesced(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, eu_bucket: str
) -> None:
    proxy = proxy_factory(DISCOVER)
    mark = s3_backend.mark()
    url = f"https://{eu_bucket}.s3.amazonaws.com/obj"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: curl(proxy, url), range(8)))
    # The bucket is private: S3 in eu-west-1 (not a 301 from the wrong region) refuses the anonymous GET.
    assert {(status, b"<Code>AccessDenied</Code>" in body) for status, _, body in results} == {(403, True)}
    assert len(discovery_heads(s3_backend, mark, eu_bucket)) == 1
    assert len(eu_requests(s3_backend, mark, eu_bucket)) == 8
    assert not any(o.redirected and o.method == "GET" for o in s3_backend.tap.outcomes())


def test_without_discovery_the_redirect_passes_through_and_is_learned(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, eu_bucket: str
) -> None:
    proxy = proxy_factory()  # base config: discover_region off
    url = boto_presign(ADMIN, "GET", eu_bucket, "obj", signature_version="s3")
    mark = s3_backend.mark()
    status, headers, body = curl(proxy, url)
    # S3's own answer, unchanged: what an SDK follows.
    assert status == 301 and headers.get("x-amz-bucket-region") == EU
    assert b"<Code>PermanentRedirect</Code>" in body
    assert eu_requests(s3_backend, mark, eu_bucket) == []
    # Learned from that response: the same old client now works.
    status, _, body = curl(proxy, url)
    assert (status, body) == (200, b"from eu-west-1")
    assert len(eu_requests(s3_backend, mark, eu_bucket)) == 1


@pytest.mark.parametrize("style", ["virtual", "path"])
def test_sigv4_client_in_the_wrong_region_follows_the_redirect(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, eu_bucket: str, style: str
) -> None:
    proxy = proxy_factory(DISCOVER)
    s3 = proxy.boto3_client(region="us-east-1", addressing_style=style)
    mark = s3_backend.mark()
    assert s3.get_object(Bucket=eu_bucket, Key="obj")["Body"].read() == b"from eu-west-1"
    s3.put_object(Bucket=eu_bucket, Key="up", Body=b"written via the redirect")
    assert s3_backend.object_sha256(eu_bucket, "up") is not None
    eu = eu_requests(s3_backend, mark, eu_bucket)
    assert eu and all(f"/{EU}/s3/aws4_request" in (r.header("authorization") or "") for r in eu)
    # SigV4 carries its region: no discovery probe was needed.
    assert discovery_heads(s3_backend, mark, eu_bucket) == []
