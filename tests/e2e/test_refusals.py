"""Every refusal through the real proxy: the exact S3 error a user sees, nothing forwarded, and the proxy
still serving the next request. Also DNS failure, endpoint down, and non-S3 CONNECTs (tunnel / deny).

Each refusal is checked three ways: the raw answer (status, S3 `<Error>` XML with Code/Message/Resource/
RequestId, `x-amz-request-id` header), the tap (nothing reached the upstream), and a valid request right
after it through the same proxy. Where a real client can produce the refused request, boto3 or the AWS CLI
shows the user-visible error too.
"""

from __future__ import annotations

import dataclasses
import http.client
import re
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from e2e.authkit import (
    Reply,
    TinyTlsSite,
    assert_clean_upstream,
    boto_presign,
    client_context,
    curl_args,
    send,
    sigv4_sign,
)
from e2e.harness import ADMIN, SEAWEED_ONLY, ProxyProcess, S3Backend, ensure_bucket

BUCKET = "e2e-refusals"
US_BUCKET_HOST = "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
WRONG = dataclasses.replace(ADMIN, secret_access_key="Wrong" + ADMIN.secret_access_key[5:])
NO_RETRY = Config(retries={"total_max_attempts": 1})


@pytest.fixture(scope="module", autouse=True)
def bucket(proxy: ProxyProcess) -> None:
    s3 = proxy.boto3_client(region="us-east-1")
    ensure_bucket(s3, BUCKET)
    s3.put_object(Bucket=BUCKET, Key="ok", Body=b"still serving")


@pytest.fixture(autouse=True)
def clean_upstream(s3_backend: S3Backend) -> Iterator[None]:
    mark = s3_backend.mark()
    yield
    assert_clean_upstream(s3_backend, s3_backend.upstream_requests(mark))


def good_get(proxy: ProxyProcess) -> Reply:
    url = f"https://{BUCKET}.s3.amazonaws.com/ok"
    return send(proxy, "GET", url, sigv4_sign(ADMIN, "GET", url, {}))


def assert_still_serving(proxy: ProxyProcess) -> None:
    reply = good_get(proxy)
    assert (reply.status, reply.body) == (200, b"still serving"), reply


def assert_s3_error(reply: Reply, status: int, code: str) -> dict[str, str]:
    assert reply.status == status, reply
    assert (reply.header("content-type") or "").startswith("application/xml")
    err = reply.error()
    assert err["Code"] == code, err
    assert err["Message"], err
    assert err["RequestId"] and reply.header("x-amz-request-id") == err["RequestId"]
    return err


def signed(key: Any, url: str, **kw: Any) -> Callable[[], list[tuple[str, str]]]:
    return lambda: sigv4_sign(key, "GET", url, {}, **kw)


def raw(*headers: tuple[str, str]) -> Callable[[], list[tuple[str, str]]]:
    return lambda: list(headers)


def presigned(key: Any, bucket: str = BUCKET) -> Callable[[], str]:
    return lambda: boto_presign(key, "GET", bucket, "ok")


V = f"https://{BUCKET}.s3.amazonaws.com/ok"
H = ("Host", f"{BUCKET}.s3.amazonaws.com")
DATE = ("X-Amz-Date", "20260101T000000Z")
UNSIGNED = ("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD")
CRED = f"Credential={ADMIN.access_key_id}/20260101/us-east-1/s3/aws4_request"
SIG = "Signature=" + "a" * 64


def _auth(value: str) -> tuple[str, str]:
    return ("Authorization", value)


# id, URL (or a callable making a presigned one), headers (callable), status, code, text in the message
LOCAL_REFUSALS = [
    pytest.param(V, signed(WRONG, V), 403, "SignatureDoesNotMatch", "", id="wrong-secret-header"),
    pytest.param(presigned(WRONG), raw(H), 403, "SignatureDoesNotMatch", "", id="wrong-secret-presigned"),
    pytest.param(
        V,
        signed(SEAWEED_ONLY, V),
        403,
        "InvalidAccessKeyId",
        SEAWEED_ONLY.access_key_id,
        id="unknown-key-header",
    ),
    pytest.param(presigned(SEAWEED_ONLY), raw(H), 403, "InvalidAccessKeyId", "", id="unknown-key-presigned"),
    pytest.param(
        V,
        raw(H, DATE, UNSIGNED, _auth(f"AWS4-HMAC-SHA256 {CRED}")),
        400,
        "AuthorizationHeaderMalformed",
        "SignedHeaders",
        id="malformed-no-signedheaders",
    ),
    pytest.param(
        V,
        raw(
            H,
            DATE,
            UNSIGNED,
            _auth(
                f"AWS4-HMAC-SHA256 Credential={ADMIN.access_key_id}/20260101/us-east-1/s3, "
                f"SignedHeaders=host;x-amz-date, {SIG}"
            ),
        ),
        400,
        "AuthorizationHeaderMalformed",
        "Credential",
        id="malformed-credential",
    ),
    pytest.param(
        V,
        raw(
            H,
            DATE,
            UNSIGNED,
            _auth(f"AWS4-HMAC-SHA256 {CRED}, SignedHeaders=host;x-amz-date, Signature=nothex"),
        ),
        400,
        "AuthorizationHeaderMalformed",
        "Signature",
        id="malformed-signature",
    ),
    pytest.param(
        V,
        raw(
            H,
            ("X-Amz-Date", "20260102T000000Z"),
            UNSIGNED,
            _auth(f"AWS4-HMAC-SHA256 {CRED}, SignedHeaders=host;x-amz-date, {SIG}"),
        ),
        400,
        "AuthorizationHeaderMalformed",
        "20260102",
        id="malformed-date-mismatch",
    ),
    pytest.param(
        V + f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={ADMIN.access_key_id}%2F2026%2Fus-east-1"
        "%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=" + "a" * 64,
        raw(H),
        400,
        "AuthorizationQueryParametersError",
        "X-Amz-Credential",
        id="malformed-presigned",
    ),
    pytest.param(V, raw(H, DATE, _auth("Bearer abc")), 400, "InvalidArgument", "", id="unsupported-scheme"),
]

_FIPS = f"https://{BUCKET}.s3-fips.us-east-1.amazonaws.com/ok"
_FIPS_PATH = f"https://s3-fips.us-east-1.amazonaws.com/{BUCKET}/ok"
_WEB = f"https://{BUCKET}.s3-website-us-east-1.amazonaws.com/ok"
_WEB_DOT = f"https://{BUCKET}.s3-website.eu-west-1.amazonaws.com/ok"
_ACC = f"https://{BUCKET}.s3-accelerate.amazonaws.com/ok"
_ACC_DS = f"https://{BUCKET}.s3-accelerate.dualstack.amazonaws.com/ok"
_NO_EP = f"https://{BUCKET}.s3.ap-south-1.amazonaws.com/ok"
_NO_EP_PATH = f"https://s3.ap-south-1.amazonaws.com/{BUCKET}/ok"
_NO_EP_DASH = f"https://s3-ap-south-1.amazonaws.com/{BUCKET}/ok"
_REGIONAL = f"https://{BUCKET}.s3.us-east-1.amazonaws.com/ok"
_REGIONAL_PATH = f"https://s3.us-east-1.amazonaws.com/{BUCKET}/ok"


def presigned_for_other_region() -> str:
    """A presigned URL signed for eu-west-1, sent to the us-east-1 host."""
    url = boto_presign(ADMIN, "GET", BUCKET, "ok", region="eu-west-1", addressing_style="path")
    return url.replace("://s3.eu-west-1.amazonaws.com/", "://s3.us-east-1.amazonaws.com/")


HOST_REFUSALS = [
    # Correctly signed (for the host the client used), refused for where they point.
    pytest.param(_FIPS, signed(ADMIN, _FIPS), 400, "InvalidRequest", "FIPS", id="fips-virtual"),
    pytest.param(_FIPS_PATH, signed(ADMIN, _FIPS_PATH), 400, "InvalidRequest", "FIPS", id="fips-path"),
    pytest.param(_WEB, signed(ADMIN, _WEB), 400, "InvalidRequest", "website", id="website-dash"),
    pytest.param(
        _WEB_DOT,
        signed(ADMIN, _WEB_DOT, region="eu-west-1"),
        400,
        "InvalidRequest",
        "website",
        id="website-dot",
    ),
    pytest.param(_ACC, signed(ADMIN, _ACC), 400, "InvalidRequest", "Acceleration", id="accelerate"),
    pytest.param(
        _ACC_DS, signed(ADMIN, _ACC_DS), 400, "InvalidRequest", "Acceleration", id="accelerate-dualstack"
    ),
    pytest.param(
        _NO_EP,
        signed(ADMIN, _NO_EP, region="ap-south-1"),
        400,
        "InvalidRequest",
        "ap-south-1",
        id="no-endpoint-virtual",
    ),
    pytest.param(
        _NO_EP_PATH,
        signed(ADMIN, _NO_EP_PATH, region="ap-south-1"),
        400,
        "InvalidRequest",
        "ap-south-1",
        id="no-endpoint-path",
    ),
    pytest.param(
        _NO_EP_DASH,
        signed(ADMIN, _NO_EP_DASH, region="ap-south-1"),
        400,
        "InvalidRequest",
        "ap-south-1",
        id="no-endpoint-legacy-dash",
    ),
    # Signed for another region than the regional host names: what S3 answers (SDKs re-sign with <Region>).
    pytest.param(
        _REGIONAL,
        signed(ADMIN, _REGIONAL, region="eu-west-1"),
        400,
        "AuthorizationHeaderMalformed",
        "the region 'eu-west-1' is wrong; expecting 'us-east-1'",
        id="scope-region-not-the-hosts",
    ),
    pytest.param(
        _REGIONAL_PATH,
        signed(ADMIN, _REGIONAL_PATH, region="us-west-2"),
        400,
        "AuthorizationHeaderMalformed",
        "the region 'us-west-2' is wrong; expecting 'us-east-1'",
        id="scope-region-not-the-hosts-path",
    ),
    pytest.param(
        presigned_for_other_region,
        raw(("Host", "s3.us-east-1.amazonaws.com")),
        400,
        "AuthorizationQueryParametersError",
        "the region 'eu-west-1' is wrong; expecting 'us-east-1'",
        id="scope-region-not-the-hosts-presigned",
    ),
]


@pytest.mark.parametrize(("url", "headers", "status", "code", "says"), LOCAL_REFUSALS + HOST_REFUSALS)
def test_refused_locally_with_s3_error_and_nothing_forwarded(
    proxy: ProxyProcess,
    s3_backend: S3Backend,
    url: str | Callable[[], str],
    headers: Callable[[], list[tuple[str, str]]],
    status: int,
    code: str,
    says: str,
) -> None:
    target = url() if callable(url) else url
    mark = s3_backend.mark()
    reply = send(proxy, "GET", target, headers())
    err = assert_s3_error(reply, status, code)
    assert says in err["Message"]
    if "region" in says:
        assert err["Region"] == "us-east-1"  # what SDKs re-sign with
        assert reply.header("x-amz-bucket-region") == "us-east-1"  # the same, for a HEAD (no body)
    # Never a secret or a signature in an error.
    assert ADMIN.secret_access_key not in reply.body.decode()
    assert not re.search(r"[0-9a-f]{64}", err["Message"])
    assert s3_backend.upstream_requests(mark) == []
    assert_still_serving(proxy)


# --- what a user of boto3 / the AWS CLI sees ----------------------------------------------------------------

BOTO3_REFUSALS = [
    pytest.param({"key": WRONG}, "SignatureDoesNotMatch", id="wrong-secret"),
    pytest.param({"key": SEAWEED_ONLY}, "InvalidAccessKeyId", id="unknown-key"),
    pytest.param({"config": Config(use_fips_endpoint=True)}, "InvalidRequest", id="fips"),
    pytest.param({"config": Config(s3={"use_accelerate_endpoint": True})}, "InvalidRequest", id="accelerate"),
    pytest.param({"region": "ap-south-1"}, "InvalidRequest", id="region-without-endpoint"),
]


@pytest.mark.parametrize(("client_kw", "code"), BOTO3_REFUSALS)
def test_boto3_user_sees_the_s3_error(
    proxy: ProxyProcess, s3_backend: S3Backend, client_kw: dict[str, Any], code: str
) -> None:
    kw: dict[str, Any] = {"region": "us-east-1", **client_kw}
    kw["config"] = NO_RETRY.merge(kw.get("config") or Config())
    s3 = proxy.boto3_client(**kw)
    mark = s3_backend.mark()
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=BUCKET, Key="ok")
    assert info.value.response["Error"]["Code"] == code
    assert s3_backend.upstream_requests(mark) == []
    assert proxy.boto3_client(region="us-east-1").get_object(Bucket=BUCKET, Key="ok")["Body"].read() == (
        b"still serving"
    )


def test_boto3_signing_for_another_region_than_its_endpoint_follows_the_region_s3_names(
    proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    # An application pinned to the us-east-1 endpoint but configured with eu-west-1: S3 answers 400
    # AuthorizationHeaderMalformed naming us-east-1, and botocore signs again for it. The proxy answers
    # the same (the cases above), so such an application keeps working through it, as it does without.
    s3 = proxy.boto3_client(region="eu-west-1", endpoint_url="https://s3.us-east-1.amazonaws.com")
    mark = s3_backend.mark()
    assert s3.get_object(Bucket=BUCKET, Key="ok")["Body"].read() == b"still serving"
    forwarded = s3_backend.upstream_requests(mark)
    assert len(forwarded) == 1
    assert "/us-east-1/s3/aws4_request" in (forwarded[0].header("authorization") or "")
    # A HEAD's refusal has no body: botocore finds the region in x-amz-bucket-region (a new client, which
    # has not learned the bucket's region from the GET).
    s3 = proxy.boto3_client(region="eu-west-1", endpoint_url="https://s3.us-east-1.amazonaws.com")
    mark = s3_backend.mark()
    assert s3.head_object(Bucket=BUCKET, Key="ok")["ContentLength"] == len(b"still serving")
    assert len(s3_backend.upstream_requests(mark)) == 1


@pytest.mark.parametrize(
    ("env", "args", "code"),
    [
        ({"AWS_SECRET_ACCESS_KEY": WRONG.secret_access_key}, [], "SignatureDoesNotMatch"),
        (
            {
                "AWS_ACCESS_KEY_ID": SEAWEED_ONLY.access_key_id,
                "AWS_SECRET_ACCESS_KEY": SEAWEED_ONLY.secret_access_key,
            },
            [],
            "InvalidAccessKeyId",
        ),
        ({"AWS_USE_FIPS_ENDPOINT": "true"}, ["--region", "us-east-1"], "InvalidRequest"),
        ({}, ["--region", "ap-south-1"], "InvalidRequest"),
    ],
    ids=["wrong-secret", "unknown-key", "fips", "region-without-endpoint"],
)
def test_aws_cli_user_sees_the_s3_error(
    proxy: ProxyProcess,
    s3_backend: S3Backend,
    tmp_path: Path,
    env: dict[str, str],
    args: list[str],
    code: str,
) -> None:
    aws = str(Path(__import__("sys").executable).parent / "aws")
    mark = s3_backend.mark()
    out = subprocess.run(
        [aws, "s3api", "get-object", "--bucket", BUCKET, "--key", "ok", str(tmp_path / "out"), *args],
        env={**proxy.env(), "AWS_MAX_ATTEMPTS": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert f"({code})" in out.stderr, out.stderr
    assert s3_backend.upstream_requests(mark) == []
    assert_still_serving(proxy)


# --- DNS failure --------------------------------------------------------------------------------------------

DNS_OVERRIDES = {"dns": {"negative_ttl": 0.5, "cache_max_ttl": 0, "timeout": 0.3}}


@pytest.mark.parametrize(
    ("mode", "reason"), [("nxdomain", "NXDOMAIN"), ("servfail", "SERVFAIL"), ("drop", "timeout")]
)
def test_dns_failure_is_503_naming_the_endpoint_then_recovers(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, mode: str, reason: str
) -> None:
    proxy = proxy_factory(DNS_OVERRIDES)
    assert_still_serving(proxy)
    mark, dns_mark = s3_backend.mark(), s3_backend.dns.mark()
    s3_backend.dns.set_mode(mode)  # type: ignore[arg-type]
    try:
        err = assert_s3_error(good_get(proxy), 503, "ServiceUnavailable")
        assert US_BUCKET_HOST in err["Message"] and reason in err["Message"], err
        # What a boto3 user sees (503 is retryable; one attempt keeps the test fast).
        s3 = proxy.boto3_client(region="us-east-1", config=NO_RETRY)
        with pytest.raises(ClientError) as info:
            s3.get_object(Bucket=BUCKET, Key="ok")
        assert info.value.response["Error"]["Code"] == "ServiceUnavailable"
        assert s3_backend.upstream_requests(mark) == []
        # The proxy asked only for interface endpoint names, never a public S3 name.
        asked = s3_backend.dns.names_asked(dns_mark)
        assert asked and all(n.endswith(".vpce.amazonaws.com") for n in asked), asked
    finally:
        s3_backend.dns.set_mode("normal")
    # Back once the negative cache entry (negative_ttl) has expired.
    deadline = time.monotonic() + 0.5 + 5
    while (reply := good_get(proxy)).status != 200:
        assert time.monotonic() < deadline, reply
        time.sleep(0.1)
    assert reply.body == b"still serving"


# --- endpoint down ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["refuse", "reset"])
def test_endpoint_down_client_gets_an_error_then_proxy_recovers(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, mode: str
) -> None:
    proxy = proxy_factory()
    assert_still_serving(proxy)
    mark = s3_backend.mark()
    s3_backend.tap.set_mode(mode)  # type: ignore[arg-type]
    # Down: the connections it had go too (the one the proxy kept idle for reuse included).
    s3_backend.tap.close_connections()
    try:
        reply = good_get(proxy)
        assert reply.status in (502, 503, 504), reply  # a status SDKs treat as transient and retry
        s3 = proxy.boto3_client(region="us-east-1", config=NO_RETRY)
        with pytest.raises(ClientError) as info:
            s3.get_object(Bucket=BUCKET, Key="ok")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] in (502, 503, 504)
        assert s3_backend.upstream_requests(mark) == []
    finally:
        s3_backend.tap.set_mode("up")
    assert_still_serving(proxy)
    s3 = proxy.boto3_client(region="us-east-1")
    assert s3.get_object(Bucket=BUCKET, Key="ok")["Body"].read() == b"still serving"


@pytest.mark.parametrize("mode", ["refuse", "reset"])
def test_endpoint_down_is_an_s3_style_503_naming_the_endpoint(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, mode: str
) -> None:
    proxy = proxy_factory()
    assert_still_serving(proxy)
    s3_backend.tap.set_mode(mode)  # type: ignore[arg-type]
    s3_backend.tap.close_connections()  # down: its connections go too
    try:
        reply = good_get(proxy)
    finally:
        s3_backend.tap.set_mode("up")
    err = assert_s3_error(reply, 503, "ServiceUnavailable")
    assert US_BUCKET_HOST in err["Message"]


# --- non-S3 CONNECT: tunnelled untouched, or denied ---------------------------------------------------------


@pytest.fixture
def tiny_site(tmp_path: Path) -> Iterator[TinyTlsSite]:
    site = TinyTlsSite(tmp_path / "site")
    try:
        yield site
    finally:
        site.close()


def _fetch_through_proxy(proxy: ProxyProcess, host: str, port: int, ca: Path) -> tuple[int, bytes, bytes]:
    """(status, body, DER of the certificate the client was shown) for GET / via CONNECT host:port."""
    conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=15, context=client_context(ca))
    conn.set_tunnel(host, port)
    try:
        conn.request("GET", "/")
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        resp = conn.getresponse()
        return resp.status, resp.read(), der
    finally:
        conn.close()


def test_non_s3_connect_is_tunnelled_without_decryption(
    proxy: ProxyProcess, s3_backend: S3Backend, tiny_site: TinyTlsSite
) -> None:
    mark = s3_backend.mark()
    status, body, der = _fetch_through_proxy(proxy, "127.0.0.1", tiny_site.port, tiny_site.ca_path)
    assert (status, body) == (200, tiny_site.body)
    assert der == tiny_site.cert_der  # the site's own certificate, not one from the proxy's CA

    # curl trusting only the site's CA works; trusting only the proxy's CA fails: no proxy certificate.
    site_url = f"https://127.0.0.1:{tiny_site.port}/"
    ok = subprocess.run(
        ["curl", "-sS", "--proxy", proxy.url, "--cacert", str(tiny_site.ca_path), site_url],
        capture_output=True,
        timeout=30,
        env=proxy.env(None),
    )
    assert (ok.returncode, ok.stdout) == (0, tiny_site.body), ok.stderr
    bad = subprocess.run([*curl_args(proxy), site_url], capture_output=True, timeout=30, env=proxy.env(None))
    assert bad.returncode == 60, bad  # curl: peer certificate cannot be authenticated with known CAs
    with pytest.raises(ssl.SSLCertVerificationError):
        _fetch_through_proxy(proxy, "127.0.0.1", tiny_site.port, proxy.ca_cert)
    assert s3_backend.upstream_requests(mark) == []
    assert_still_serving(proxy)


def test_non_s3_connect_denied(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, tiny_site: TinyTlsSite
) -> None:
    proxy = proxy_factory({"non_s3": "deny"})
    with pytest.raises(OSError, match="403"):
        _fetch_through_proxy(proxy, "127.0.0.1", tiny_site.port, tiny_site.ca_path)
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "--proxy",
            proxy.url,
            "--cacert",
            str(tiny_site.ca_path),
            f"https://localhost:{tiny_site.port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=proxy.env(None),
    )
    assert out.returncode != 0 and out.stdout == "403", (out.stdout, out.stderr)
    assert tiny_site.handshakes == 0  # the site was never reached
    assert_still_serving(proxy)  # S3 still works through the deny-mode proxy


def test_upstream_only_ever_saw_vpce_names_and_no_forwarded_headers(s3_backend: S3Backend) -> None:
    """Over the whole session so far (every test in this run), not just one test."""
    seen = s3_backend.upstream_requests(0)
    assert seen, "no upstream traffic recorded"
    assert_clean_upstream(s3_backend, seen)
    for conn in s3_backend.tap.connections():
        assert (
            conn.sni is None
            or conn.sni.endswith(".vpce.amazonaws.com")
            or conn.sni.endswith(".vpce.amazonaws.com.cn")
        ), conn
