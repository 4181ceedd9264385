"""Every S3 auth form through the real proxy (keyring mode), checked against SeaweedFS and the tap.

What each test proves, end to end:
- presigned URLs (SigV4 and SigV2, GET and PUT, several hosts/regions/keys) work with curl through the proxy;
  a re-signed SigV4 URL keeps X-Amz-Date/X-Amz-Expires/X-Amz-Credential (validity never grows); a tampered
  one is refused locally; an expired one reaches S3 with its original dates and S3 refuses it;
- header auth with a payload hash, UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, and SigV2 headers;
- aws-chunked uploads with signed chunks (with and without trailer, plain http:// and CONNECT+TLS) store
  exactly the payload, and a tampered chunk makes the upload fail with nothing stored;
- session tokens are kept (and stay signed); anonymous requests are forwarded unchanged; SigV4A is refused;
- a signed `Expect` header is verified, then left out of the upstream signature (upstream never gets it);
- after every test, everything the upstream saw carried a vpce Host/SNI and no X-Forwarded-* header.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qsl, urlsplit

import botocore.auth
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from e2e.authkit import (
    assert_clean_upstream,
    boto_presign,
    curl_args,
    send,
    sha,
    signed_chunked_request,
    sigv4_sign,
)
from e2e.harness import ADMIN, USER, ProxyProcess, S3Backend, ensure_bucket

BUCKET = "e2e-auth-forms"
EU_BUCKET = "e2e-auth-forms-eu"
US_VPCE = "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE/session+token=="


@pytest.fixture(scope="module", autouse=True)
def buckets(proxy: ProxyProcess) -> None:
    s3 = proxy.boto3_client(region="us-east-1")
    for b in (BUCKET, EU_BUCKET):
        ensure_bucket(s3, b)


@pytest.fixture(autouse=True)
def clean_upstream(s3_backend: S3Backend) -> Iterator[None]:
    """Whatever a test made the proxy send, S3 only ever saw vpce names and no X-Forwarded-* headers."""
    mark = s3_backend.mark()
    yield
    assert_clean_upstream(s3_backend, s3_backend.upstream_requests(mark))


def curl(proxy: ProxyProcess, *args: str, data: bytes | None = None) -> tuple[int, bytes]:
    """curl through the proxy; returns (HTTP status, body)."""
    out = subprocess.run(
        [*curl_args(proxy), "-o", "-", "-w", "\n%{http_code}", *args],
        input=data,
        capture_output=True,
        env=proxy.env(None),
        check=True,
        timeout=60,
    ).stdout
    body, _, code = out.rpartition(b"\n")
    return int(code), body


def query(url_or_target: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url_or_target).query, keep_blank_values=True))


# --- presigned URLs ------------------------------------------------------------------------------------

PRESIGN_CASES = [
    # id, signature version, region of the client (None: boto3's legacy global host), addressing, bucket
    pytest.param("s3v4", None, None, BUCKET, id="v4-global-virtual"),
    pytest.param("s3v4", "us-east-1", "path", BUCKET, id="v4-regional-path"),
    pytest.param("s3v4", "eu-west-1", "virtual", EU_BUCKET, id="v4-eu-virtual"),
    pytest.param("s3", None, None, BUCKET, id="v2-global-virtual"),
    pytest.param("s3", "us-east-1", "path", BUCKET, id="v2-regional-path"),
]


@pytest.mark.parametrize(("version", "region", "style", "bucket"), PRESIGN_CASES)
def test_presigned_put_then_get_with_curl(
    proxy: ProxyProcess,
    s3_backend: S3Backend,
    tmp_path: Path,
    version: str,
    region: str | None,
    style: str | None,
    bucket: str,
) -> None:
    key = f"presigned/{version}-{region}-{style}/a b+c~d.bin"
    payload = os.urandom(70_000)
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)

    put_url = boto_presign(
        ADMIN, "PUT", bucket, key, signature_version=version, region=region, addressing_style=style
    )
    mark = s3_backend.mark()
    status, body = curl(proxy, "-T", str(src), put_url)
    assert status == 200, body
    assert s3_backend.object_sha256(bucket, key) == sha(payload)

    get_url = boto_presign(
        ADMIN, "GET", bucket, key, signature_version=version, region=region, addressing_style=style
    )
    status, body = curl(proxy, get_url)
    assert status == 200, body[:300]
    assert sha(body) == sha(payload)

    seen = s3_backend.upstream_requests(mark)
    assert [r.method for r in seen] == ["PUT", "GET"]
    for client_url, up in zip((put_url, get_url), seen, strict=True):
        sent, got = query(client_url), query(up.target)
        if version == "s3v4":
            # Re-signed for the vpce host, but the validity window is the client's: never extended.
            for name in ("X-Amz-Date", "X-Amz-Expires", "X-Amz-Credential", "X-Amz-SignedHeaders"):
                assert got[name] == sent[name], name
            assert got["X-Amz-Signature"] != sent["X-Amz-Signature"]
            assert set(got) == set(sent)
        else:
            # SigV2 does not sign the host of a path-style request: forwarded byte for byte.
            assert up.target.partition("?")[2] == urlsplit(client_url).query
        assert up.header("authorization") is None


def test_presigned_url_with_session_token_is_resigned_keeping_the_token(
    proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    url = boto_presign(ADMIN, "GET", BUCKET, "token-object", token=TOKEN)
    assert query(url)["X-Amz-Security-Token"] == TOKEN
    mark = s3_backend.mark()
    status, body = curl(proxy, url)
    # SeaweedFS knows no session tokens and refuses it; what matters is what the proxy forwarded.
    assert status in (200, 403, 404), body
    (up,) = s3_backend.upstream_requests(mark)
    got = query(up.target)
    assert got["X-Amz-Security-Token"] == TOKEN
    assert got["X-Amz-Signature"] != query(url)["X-Amz-Signature"]


@pytest.mark.parametrize(
    ("param", "new_value"),
    [
        ("X-Amz-Expires", "604800"),  # stretch the validity
        ("X-Amz-Date", None),  # move the start (computed below)
        ("X-Amz-Signature", "0" * 64),
    ],
)
def test_tampered_presigned_v4_url_refused_locally(
    proxy: ProxyProcess, s3_backend: S3Backend, param: str, new_value: str | None
) -> None:
    url = boto_presign(ADMIN, "GET", BUCKET, "tampered")
    sent = query(url)
    value = new_value
    if value is None:  # one second later
        t = dt.datetime.strptime(sent[param], "%Y%m%dT%H%M%SZ") + dt.timedelta(seconds=1)
        value = t.strftime("%Y%m%dT%H%M%SZ")
    tampered = url.replace(f"{param}={sent[param]}", f"{param}={value}")
    assert tampered != url
    mark = s3_backend.mark()
    status, body = curl(proxy, "-i", tampered)
    assert status == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in body
    assert b"x-amz-request-id" in body.lower()
    assert s3_backend.upstream_requests(mark) == []
    # ... and the untampered URL still works through the same proxy.
    proxy.boto3_client(region="us-east-1").put_object(Bucket=BUCKET, Key="tampered", Body=b"ok")
    assert curl(proxy, url) == (200, b"ok")


def test_tampered_presigned_v2_url_is_forwarded_and_s3_refuses_it(
    proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    """SigV2 is forwarded unchanged (the proxy does not verify it): S3 itself refuses a bad one."""
    url = boto_presign(ADMIN, "GET", BUCKET, "tampered", signature_version="s3")
    expires = query(url)["Expires"]
    tampered = url.replace(f"Expires={expires}", f"Expires={int(expires) + 3600}")
    mark = s3_backend.mark()
    status, body = curl(proxy, tampered)
    assert status == 403, body
    assert b"<Code>SignatureDoesNotMatch</Code>" in body or b"<Code>AccessDenied</Code>" in body
    (up,) = s3_backend.upstream_requests(mark)
    assert up.target.partition("?")[2] == urlsplit(tampered).query


def test_expired_presigned_v4_url_reaches_s3_with_its_dates_and_s3_refuses(
    proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    proxy.boto3_client(region="us-east-1").put_object(Bucket=BUCKET, Key="expired", Body=b"old")
    two_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    url = boto_presign(ADMIN, "GET", BUCKET, "expired", expires=60, when=two_hours_ago)
    mark = s3_backend.mark()
    status, body = curl(proxy, url)
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in body and b"expired" in body.lower()
    (up,) = s3_backend.upstream_requests(mark)
    got, sent = query(up.target), query(url)
    assert (got["X-Amz-Date"], got["X-Amz-Expires"]) == (sent["X-Amz-Date"], "60")
    assert got["X-Amz-Date"] == two_hours_ago.strftime("%Y%m%dT%H%M%SZ")


# --- header auth -------------------------------------------------------------------------------------------

HEADER_FORMS = [
    # id, client options, the x-amz-content-sha256 the PUT must have carried (None: a hex SHA-256)
    pytest.param({}, None, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", id="boto3-default-trailer"),
    pytest.param(
        {},
        Config(s3={"payload_signing_enabled": False}, request_checksum_calculation="when_required"),
        "UNSIGNED-PAYLOAD",
        id="unsigned-payload",
    ),
    pytest.param(
        {},
        Config(s3={"payload_signing_enabled": True}, request_checksum_calculation="when_required"),
        None,
        id="payload-hash-https",
    ),
    pytest.param({"use_ssl": False}, None, None, id="payload-hash-plain-http"),
    pytest.param({}, Config(signature_version="s3"), "sigv2", id="sigv2-header"),
    pytest.param({"use_ssl": False}, Config(signature_version="s3"), "sigv2", id="sigv2-header-http"),
]


@pytest.mark.parametrize(("client_kw", "config", "expected"), HEADER_FORMS)
def test_header_auth_forms_roundtrip(
    proxy: ProxyProcess,
    s3_backend: S3Backend,
    client_kw: dict[str, object],
    config: Config | None,
    expected: str | None,
) -> None:
    s3 = proxy.boto3_client(region="us-east-1", config=config, **client_kw)
    key = f"header-auth/{expected}/{'http' if client_kw else 'https'} é+%.bin"
    payload = os.urandom(300_000)
    mark = s3_backend.mark()
    s3.put_object(Bucket=BUCKET, Key=key, Body=payload)
    assert sha(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()) == sha(payload)
    assert s3_backend.object_sha256(BUCKET, key) == sha(payload)

    put = next(r for r in s3_backend.upstream_requests(mark) if r.method == "PUT")
    auth = put.header("authorization") or ""
    if expected == "sigv2":
        assert auth.startswith(f"AWS {ADMIN.access_key_id}:")
        assert put.header("x-amz-content-sha256") is None
    else:
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ADMIN.access_key_id}/")
        content = put.header("x-amz-content-sha256")
        assert content == (expected or sha(payload))
    assert put.host == US_VPCE


def test_header_auth_with_session_token_keeps_the_token_signed(
    proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    url = f"https://{BUCKET}.s3.amazonaws.com/token-object"
    headers = sigv4_sign(ADMIN, "GET", url, {}, token=TOKEN)
    mark = s3_backend.mark()
    reply = send(proxy, "GET", url, headers)
    # SeaweedFS does not know the token (InvalidAccessKeyId/AccessDenied): the proxy forwarded it.
    assert reply.status in (200, 403, 404)
    (up,) = s3_backend.upstream_requests(mark)
    assert up.header("x-amz-security-token") == TOKEN
    assert "x-amz-security-token" in (up.header("authorization") or "").split("SignedHeaders=")[1]

    # The token is signed: changing it is caught by the proxy itself.
    forged = [(k, "forged" + v if k.lower() == "x-amz-security-token" else v) for k, v in headers]
    mark = s3_backend.mark()
    reply = send(proxy, "GET", url, forged)
    assert (reply.status, reply.error()["Code"]) == (403, "SignatureDoesNotMatch")
    assert s3_backend.upstream_requests(mark) == []


def test_boto3_with_session_token_through_proxy(proxy: ProxyProcess, s3_backend: S3Backend) -> None:
    """A temporary-credential client: the token rides along unchanged (SeaweedFS then refuses it)."""
    import boto3

    session = boto3.session.Session(
        aws_access_key_id=USER.access_key_id,
        aws_secret_access_key=USER.secret_access_key,
        aws_session_token=TOKEN,
        region_name="us-east-1",
    )
    s3 = session.client(
        "s3",
        verify=str(proxy.ca_cert),
        config=Config(proxies={"https": proxy.url}, retries={"total_max_attempts": 1}),
    )
    mark = s3_backend.mark()
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key="anything")
    (up,) = s3_backend.upstream_requests(mark)
    assert up.header("x-amz-security-token") == TOKEN
    assert f"Credential={USER.access_key_id}/" in (up.header("authorization") or "")


# --- aws-chunked with signed chunks -------------------------------------------------------------------------


@pytest.mark.parametrize("trailer", [False, True], ids=["payload", "payload-trailer"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_signed_chunked_upload_stores_the_payload(
    proxy: ProxyProcess, s3_backend: S3Backend, scheme: str, trailer: bool
) -> None:
    key = f"chunked/{scheme}-{trailer}/a b.bin"
    payload = os.urandom(3 * 64 * 1024 + 1234)  # three full chunks and a short one
    url = f"{scheme}://{BUCKET}.s3.amazonaws.com/chunked/{scheme}-{trailer}/a%20b.bin"
    headers, body = signed_chunked_request(ADMIN, url, payload, trailer=trailer)
    mark = s3_backend.mark()
    reply = send(proxy, "PUT", url, headers, body)
    assert reply.status == 200, reply.body
    assert s3_backend.object_sha256(BUCKET, key) == sha(payload)
    (up,) = s3_backend.upstream_requests(mark)
    marker = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")
    assert up.header("x-amz-content-sha256") == marker
    assert up.header("content-length") == dict((k.lower(), v) for k, v in headers)["content-length"]
    assert up.header("x-amz-decoded-content-length") == str(len(payload))
    assert up.target == f"/{BUCKET}/chunked/{scheme}-{trailer}/a%20b.bin"


@pytest.mark.parametrize("tamper_chunk", [0, 2, 3], ids=["first", "middle", "last-data"])
@pytest.mark.parametrize("trailer", [False, True], ids=["payload", "payload-trailer"])
def test_signed_chunked_upload_with_a_tampered_chunk_stores_nothing(
    proxy: ProxyProcess, s3_backend: S3Backend, trailer: bool, tamper_chunk: int
) -> None:
    key = f"chunked-tampered/{trailer}-{tamper_chunk}"
    payload = os.urandom(3 * 64 * 1024 + 1234)
    url = f"http://{BUCKET}.s3.amazonaws.com/{key}"
    headers, body = signed_chunked_request(ADMIN, url, payload, trailer=trailer, tamper_chunk=tamper_chunk)
    reply = send(proxy, "PUT", url, headers, body)
    assert reply.status == 403, reply.body
    err = reply.error()
    assert err["Code"] == "SignatureDoesNotMatch"
    assert err["Resource"] == f"/{key}"
    assert s3_backend.object_sha256(BUCKET, key) is None
    # The same upload, untampered, then succeeds through the same proxy.
    headers, body = signed_chunked_request(ADMIN, url, payload, trailer=trailer)
    assert send(proxy, "PUT", url, headers, body).status == 200
    assert s3_backend.object_sha256(BUCKET, key) == sha(payload)


def test_signed_chunked_upload_with_a_tampered_trailer_stores_nothing(
    proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    key = "chunked-tampered/trailer"
    payload = os.urandom(2 * 64 * 1024 + 5)
    url = f"https://{BUCKET}.s3.amazonaws.com/{key}"
    headers, body = signed_chunked_request(ADMIN, url, payload, trailer=True, tamper_trailer=True)
    reply = send(proxy, "PUT", url, headers, body)
    assert (reply.status, reply.error()["Code"]) == (403, "SignatureDoesNotMatch"), reply.body
    assert s3_backend.object_sha256(BUCKET, key) is None


def test_signed_chunked_upload_signed_with_wrong_secret_is_refused_before_upstream(
    proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    key = "chunked-wrong-secret"
    wrong = dataclasses.replace(ADMIN, secret_access_key="x" + ADMIN.secret_access_key[1:])
    url = f"https://{BUCKET}.s3.amazonaws.com/{key}"
    headers, body = signed_chunked_request(wrong, url, os.urandom(100_000))
    mark = s3_backend.mark()
    reply = send(proxy, "PUT", url, headers, body)
    assert (reply.status, reply.error()["Code"]) == (403, "SignatureDoesNotMatch")
    assert s3_backend.upstream_requests(mark) == []
    assert s3_backend.object_sha256(BUCKET, key) is None


# --- anonymous, SigV4A ------------------------------------------------------------------------------------


def test_anonymous_request_is_forwarded_unchanged(proxy: ProxyProcess, s3_backend: S3Backend) -> None:
    proxy.boto3_client(region="us-east-1").put_object(Bucket=BUCKET, Key="anon", Body=b"private")
    mark = s3_backend.mark()
    status, body = curl(proxy, "-H", "x-custom: kept", f"https://{BUCKET}.s3.amazonaws.com/anon?x=1")
    # S3 (not the proxy) decides: the bucket is private, so AccessDenied from upstream.
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in body
    (up,) = s3_backend.upstream_requests(mark)
    assert up.target == f"/{BUCKET}/anon?x=1"
    assert up.header("authorization") is None
    assert up.header("x-custom") == "kept"


@pytest.mark.parametrize("form", ["header", "query"])
def test_sigv4a_is_refused_locally(proxy: ProxyProcess, s3_backend: S3Backend, form: str) -> None:
    url = f"https://{BUCKET}.s3.amazonaws.com/sigv4a"
    headers = [("Host", f"{BUCKET}.s3.amazonaws.com")]
    if form == "header":
        headers += [
            ("X-Amz-Date", "20260101T000000Z"),
            ("X-Amz-Region-Set", "*"),
            ("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD"),
            (
                "Authorization",
                f"AWS4-ECDSA-P256-SHA256 Credential={ADMIN.access_key_id}/20260101/s3/aws4_request, "
                "SignedHeaders=host;x-amz-date;x-amz-region-set, Signature=3045022100" + "ab" * 30,
            ),
        ]
    else:
        url += (
            "?X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256"
            f"&X-Amz-Credential={ADMIN.access_key_id}%2F20260101%2Fs3%2Faws4_request"
            "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Region-Set=%2A"
            "&X-Amz-Signature=3045022100" + "ab" * 30
        )
    mark = s3_backend.mark()
    reply = send(proxy, "GET", url, headers)
    assert reply.status == 400
    err = reply.error()
    assert err["Code"] == "InvalidRequest"
    assert "SigV4A" in err["Message"]
    assert reply.header("x-amz-request-id") == err["RequestId"]
    assert s3_backend.upstream_requests(mark) == []


# --- Expect signed by the client ----------------------------------------------------------------------------


def test_signed_expect_header_is_verified_and_left_unsigned_upstream(
    proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    """A signer that signs `Expect: 100-continue` (botocore does not; hand-written ones do): the proxy answers
    100-continue itself and mitmproxy drops the header, so upstream gets a signature without `expect`."""
    key = "expect-signed/object.bin"
    url = f"https://{BUCKET}.s3.amazonaws.com/{key}"
    body = os.urandom(100_000)
    with mock.patch.object(botocore.auth, "SIGNED_HEADERS_BLACKLIST", ["user-agent", "x-amzn-trace-id"]):
        headers = sigv4_sign(
            ADMIN, "PUT", url, {"Expect": "100-continue", "Content-Length": str(len(body))}, body
        )
    assert "expect;" in dict(headers)["Authorization"]
    mark = s3_backend.mark()
    reply = send(proxy, "PUT", url, headers, body)
    assert reply.status == 200, reply.body
    assert s3_backend.object_sha256(BUCKET, key) == sha(body)
    (up,) = s3_backend.upstream_requests(mark)
    assert up.header("expect") is None
    assert "expect" not in (up.header("authorization") or "").split("SignedHeaders=")[1].split(",")[0].split(
        ";"
    )

    # `expect` is still verified: the same request with another Expect value is refused by the proxy.
    forged = [(k, "100-Continue" if k.lower() == "expect" else v) for k, v in headers]
    mark = s3_backend.mark()
    reply = send(proxy, "PUT", url, forged, body)
    assert (reply.status, reply.error()["Code"]) == (403, "SignatureDoesNotMatch")
    assert s3_backend.upstream_requests(mark) == []
